//! `devctl port-forward NAME [LOCAL:]PORT…`: like `kubectl port-forward`,
//! local TCP ports carried to ports inside a dev container (its 127.0.0.1
//! too), one tunnel per connection, until interrupted.

use anyhow::{Context, Result, bail};
use devctl_proto::pb;
use tokio::{net::TcpListener, task::JoinSet};

use crate::{client::Client, tunnel};

/// Flags of `port-forward`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// Container name.
    pub name: String,
    /// Ports: PORT (the same locally), LOCAL:PORT, or :PORT (any free
    /// local port).
    #[arg(required = true)]
    pub ports: Vec<String>,
}

/// One LOCAL:REMOTE pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// Local port (0: any free one).
    pub local: u16,
    /// Port in the container.
    pub remote: u16,
}

/// Reads `PORT`, `LOCAL:PORT` or `:PORT`.
pub fn parse_pair(s: &str) -> Result<Pair> {
    let port = |p: &str, what: &str| -> Result<u16> {
        p.parse::<u16>().map_err(|_| {
            anyhow::anyhow!("{s:?}: {what} port {p:?} is not a number from 1 to 65535")
        })
    };
    let (local, remote) = match s.split_once(':') {
        None => {
            let p = port(s, "the")?;
            (p, p)
        }
        Some(("", r)) => (0, port(r, "the container")?),
        Some((l, r)) => (port(l, "the local")?, port(r, "the container")?),
    };
    if remote == 0 {
        bail!("{s:?}: the container port must be from 1 to 65535");
    }
    Ok(Pair { local, remote })
}

/// Runs the subcommand until SIGINT or SIGTERM.
pub async fn run(client: &mut Client, args: Args) -> Result<()> {
    let pairs = args
        .ports
        .iter()
        .map(|p| parse_pair(p))
        .collect::<Result<Vec<_>>>()?;
    // Fail at once, with the reason, for a container that is not there or
    // not running.
    let c = client
        .containers
        .get_container(pb::GetContainerRequest {
            name: args.name.clone(),
        })
        .await?
        .into_inner();
    use devctl_proto::container::ContainerExt;
    if c.status().state() != pb::ContainerState::Running {
        bail!(
            "container {:?} is not running (`devctl start {}` starts it)",
            args.name,
            args.name
        );
    }
    let mut listeners = Vec::new();
    for pair in &pairs {
        let l = TcpListener::bind((args.address, pair.local))
            .await
            .with_context(|| format!("listening on {}:{}", args.address, pair.local))?;
        let at = l.local_addr()?;
        println!("Forwarding from {at} -> {}", pair.remote);
        listeners.push((l, pair.remote));
    }
    // Owned here: every listener and connection task ends with the command.
    let mut tasks = JoinSet::new();
    for (listener, remote) in listeners {
        let (client, name) = (client.clone(), args.name.clone());
        tasks.spawn(accept_loop(listener, client, name, remote));
    }
    tokio::select! {
        _ = devctl_proto::process::shutdown_signal() => Ok(()),
        Some(done) = tasks.join_next() => done.context("a listener task")?,
    }
}

async fn accept_loop(
    listener: TcpListener,
    client: Client,
    name: String,
    remote: u16,
) -> Result<()> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (sock, peer) = accepted.context("accepting a connection")?;
                let _ = sock.set_nodelay(true);
                eprintln!("Handling connection for {} from {peer}", listener.local_addr()?.port());
                let (mut client, name) = (client.clone(), name.clone());
                conns.spawn(async move {
                    let open = pb::TunnelOpen {
                        name: name.clone(),
                        kind: pb::TunnelKind::Tcp as i32,
                        port: remote.into(),
                        host_name: String::new(),
                    };
                    let (rd, wr) = sock.into_split();
                    let result = match tunnel::open(&mut client, open).await {
                        Ok(t) => t.join(rd, wr).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = result {
                        eprintln!("devctl: port {remote} of {name}: {}", crate::error_text(&e));
                        // The container is gone: nothing more to forward.
                        if let Some(s) = e.downcast_ref::<tonic::Status>()
                            && s.code() == tonic::Code::NotFound
                        {
                            return Err(e);
                        }
                    }
                    Ok(())
                });
            }
            Some(done) = conns.join_next() => {
                if let Ok(Err(e)) = done {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs_read_like_kubectl() {
        assert_eq!(
            parse_pair("8080").unwrap(),
            Pair {
                local: 8080,
                remote: 8080
            }
        );
        assert_eq!(
            parse_pair("8080:80").unwrap(),
            Pair {
                local: 8080,
                remote: 80
            }
        );
        assert_eq!(
            parse_pair(":80").unwrap(),
            Pair {
                local: 0,
                remote: 80
            }
        );
        for bad in ["", "x", "8080:", "1:0", "70000", "1:2:3"] {
            assert!(parse_pair(bad).is_err(), "{bad}");
        }
    }
}
