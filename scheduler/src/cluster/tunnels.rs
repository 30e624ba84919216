//! Tunnels into containers (TunnelService): where one goes
//! ([`tunnel_target`], checked before anything is looked up), what must
//! hold before its agent is asked (the container running, its node ready,
//! for SSH the agent's host key known), the host certificate an SSH tunnel
//! carries, and its session (an SSH or port-forward session, recorded as
//! events and counted as use as exec sessions are, by the task that relays
//! the tunnel). The bytes are relayed by the API (`api/tunnel.rs`) between
//! the client and the pipes opened here.

use devctl_proto::{
    container::ContainerExt,
    pb,
    ssh::{DEFAULT_SUFFIX, host_name_matches},
    validate::{self, InvalidField},
};

use super::{
    Cluster, Error, ErrorKind, Session, SessionWhat,
    error::{self, tunnel_error},
    link::{TunnelPipes, TunnelSink, TunnelSource},
};

/// The longest host name a client may dial (a DNS name).
const MAX_HOST_NAME_LEN: usize = 253;

/// Where a tunnel goes, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelTarget {
    /// The container.
    pub name: String,
    /// What in it.
    pub to: TunnelTo,
}

/// What in a container a tunnel reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelTo {
    /// Its SSH server (run by the node's agent), presenting a host
    /// certificate for `host_name`.
    Ssh {
        /// The name the SSH client dialled and checks the certificate
        /// against.
        host_name: String,
    },
    /// A TCP port in its network namespace.
    Tcp {
        /// The port.
        port: u16,
    },
}

impl TunnelTarget {
    fn what(&self) -> SessionWhat {
        match self.to {
            TunnelTo::Ssh { .. } => SessionWhat::Ssh,
            TunnelTo::Tcp { port } => SessionWhat::Forward { port },
        }
    }
}

/// Checks where `open` asks to go: a container name, a kind, and the kind's
/// port (TCP: 1-65535) or host name (SSH: the name, or the name and a DNS
/// suffix; empty: `<name>.devctl`).
pub fn tunnel_target(open: &pb::TunnelOpen) -> Result<TunnelTarget, Error> {
    let name = &open.name;
    validate::dns_label("open.name", name)?;
    let to = match pb::TunnelKind::try_from(open.kind) {
        Ok(pb::TunnelKind::Ssh) => {
            let host_name = if open.host_name.is_empty() {
                format!("{name}.{DEFAULT_SUFFIX}")
            } else {
                validate::max_len("open.host_name", &open.host_name, MAX_HOST_NAME_LEN)?;
                open.host_name.clone()
            };
            if !host_name_matches(name, &host_name) {
                return Err(InvalidField::new(
                    "open.host_name",
                    format!(
                        "{host_name:?} does not name container {name:?}: use {name} or {name} followed by a dot and a DNS suffix (e.g. {name}.{DEFAULT_SUFFIX}), or leave it empty"
                    ),
                )
                .into());
            }
            TunnelTo::Ssh { host_name }
        }
        Ok(pb::TunnelKind::Tcp) => match u16::try_from(open.port) {
            Ok(port) if port > 0 => TunnelTo::Tcp { port },
            _ => {
                return Err(InvalidField::new(
                    "open.port",
                    format!(
                        "{} is not a TCP port; give the port inside the container, 1-65535",
                        open.port
                    ),
                )
                .into());
            }
        },
        _ => {
            return Err(InvalidField::new(
                "open.kind",
                format!(
                    "{} is not a tunnel kind; use TUNNEL_KIND_SSH or TUNNEL_KIND_TCP",
                    open.kind
                ),
            )
            .into());
        }
    };
    Ok(TunnelTarget {
        name: name.clone(),
        to,
    })
}

/// An open tunnel: its session and the scheduler's ends of its pipes.
/// Whoever relays it records the session: [`Cluster::session_started`] as
/// it starts, [`Cluster::session_ended`] when it is over (both from the
/// task that owns the tunnel, so a caller that goes away cannot leave a
/// session counted as open).
#[derive(Debug)]
pub struct Tunnel {
    session: Session,
    pipes: TunnelPipes,
}

impl Tunnel {
    /// Its session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session and the pipe ends: bytes from the container's end, and
    /// to it.
    pub(crate) fn into_parts(self) -> (Session, Box<dyn TunnelSource>, Box<dyn TunnelSink>) {
        (self.session, self.pipes.up, self.pipes.down)
    }
}

impl Cluster {
    /// Opens a tunnel to `target` for `actor` (whom the API admitted to the
    /// container): the container must be running on a ready node, and for
    /// SSH its agent must have reported a host key, which is certified for
    /// `target`'s host name for this tunnel alone; the SSH server admits
    /// `actor` only. The session is not recorded yet (see [`Tunnel`]).
    pub async fn open_tunnel(&self, target: TunnelTarget, actor: &str) -> Result<Tunnel, Error> {
        let c = self.record(&target.name)?;
        super::streams::must_be_running(&c)?;
        let node = c.status().node.clone();
        if !self.settles_ready(&node).await {
            return Err(error::node_not_ready(
                &node,
                format!(
                    "node {node:?} of container {:?} is down; nothing can reach the container now",
                    c.name
                ),
            ));
        }
        let mut session = Session::new(&c, actor, target.what());
        session.id = uuid::Uuid::new_v4().simple().to_string();
        let (kind, port, ssh) = match &target.to {
            TunnelTo::Ssh { host_name } => {
                let Some(host_key) = self.shared.nodes.ssh_host_key(&node) else {
                    let message =
                        format!("the agent of node {node:?} runs no SSH server (upgrade it)");
                    return Err(Error::new(ErrorKind::NoSshServer { node }, message));
                };
                let access = pb::SshAccess {
                    host_certificate: self.sign_host_key(&host_key, host_name, &session.id)?,
                    ca_public_key: self.ssh_ca_public_key(),
                    principal: actor.to_string(),
                };
                (pb::TunnelKind::Ssh, 0, Some(access))
            }
            TunnelTo::Tcp { port } => (pb::TunnelKind::Tcp, u32::from(*port), None),
        };
        let command = pb::TunnelCommand {
            id: c.id.clone(),
            kind: kind as i32,
            port,
            up: None,
            down: None,
            ssh,
            session: session.id.clone(),
        };
        let timeout = self.shared.settings.command_timeout;
        let pipes = match self.shared.link.open_tunnel(&node, command, timeout).await {
            Ok(pipes) => pipes,
            Err(Ok(reply)) => return Err(tunnel_error(reply, &c)),
            Err(Err(e)) => return Err(e.into()),
        };
        Ok(Tunnel { session, pipes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(name: &str, kind: pb::TunnelKind, port: u32, host: &str) -> pb::TunnelOpen {
        pb::TunnelOpen {
            name: name.into(),
            kind: kind as i32,
            port,
            host_name: host.into(),
        }
    }

    fn refused_field(open: &pb::TunnelOpen) -> String {
        match tunnel_target(open).unwrap_err().kind() {
            ErrorKind::InvalidSpec { field } => field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn targets_are_checked_by_field() {
        use pb::TunnelKind::{Ssh, Tcp, Unspecified};
        let t = tunnel_target(&open("web", Ssh, 0, "")).unwrap();
        assert_eq!(
            t.to,
            TunnelTo::Ssh {
                host_name: "web.devctl".into()
            }
        );
        let t = tunnel_target(&open("web", Ssh, 0, "web.dev.example.com")).unwrap();
        assert_eq!(t.what(), SessionWhat::Ssh);
        let t = tunnel_target(&open("web", Tcp, 8080, "")).unwrap();
        assert_eq!(t.to, TunnelTo::Tcp { port: 8080 });
        assert_eq!(t.what(), SessionWhat::Forward { port: 8080 });
        let long = format!("web.{}", "a.".repeat(200));
        let cases = [
            (open("Web!", Tcp, 80, ""), "open.name"),
            (open("web", Unspecified, 80, ""), "open.kind"),
            (
                pb::TunnelOpen {
                    kind: 9,
                    ..open("web", Tcp, 80, "")
                },
                "open.kind",
            ),
            (open("web", Tcp, 0, ""), "open.port"),
            (open("web", Tcp, 65536, ""), "open.port"),
            (open("web", Ssh, 0, "api.devctl"), "open.host_name"),
            (open("web", Ssh, 0, "webx.devctl"), "open.host_name"),
            (open("web", Ssh, 0, "web.\u{1b}[2J"), "open.host_name"),
            (open("web", Ssh, 0, &long), "open.host_name"),
        ];
        for (o, field) in cases {
            assert_eq!(refused_field(&o), field, "{o:?}");
        }
    }
}
