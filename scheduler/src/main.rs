use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use devctl_proto::identity::Role;
use devctl_scheduler::{
    activity::IdlePolicy,
    api::enroll::CertPolicy,
    cluster::{ExpiryAction, LeasePolicy, Settings},
    config::{Cli, Command, GraphCommand, TokenCommand},
    datadir::{AGENT_CERT_VALIDITY, DataDir, USER_CERT_VALIDITY},
    placement::Strategy,
    quota::Quotas,
    ratelimit::Limit,
    revocation::{self, Target},
    server::{ServeConfig, serve},
    store::{IdentityKind, Store},
};

#[tokio::main]
async fn main() -> ExitCode {
    devctl_proto::process::init_tracing();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devctl-scheduler: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Records the identity `issue-cert` makes in the store's registry, refusing
/// a name that is an identity of another kind. If a running scheduler holds
/// the store, leaves it in `DIR/identities` for that scheduler to record
/// (before its next join and at its next start).
fn register_issued(dir: &DataDir, name: &str, role: Role) -> anyhow::Result<()> {
    devctl_proto::validate::dns_label("--name", name)?;
    dir.ensure_initialized()?;
    let kind = IdentityKind::of(role);
    match Store::open(&dir.state_file()) {
        Ok(store) => {
            if let Some(other) = store.register_identity_blocking(name, kind)? {
                anyhow::bail!(
                    "--name: {name:?} is already an identity of this cluster ({other}), not a {kind}; pick another name"
                );
            }
        }
        Err(e) if e.is_held_elsewhere() => dir.add_pending_identity(name, kind)?,
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    devctl_proto::pki::install_crypto_provider();
    match cli.command {
        Command::Init {
            data_dir,
            sans,
            force,
        } => {
            let dir = DataDir::new(data_dir);
            dir.init(&sans, force)?;
            println!(
                "initialized {}\nadmin client bundle: {}\nSSH CA key: {}\nstart the bus with: nats-server -c {}",
                dir.root().display(),
                dir.client_dir("admin").display(),
                dir.ssh_ca_file().display(),
                dir.nats_config().display()
            );
        }
        Command::IssueCert {
            data_dir,
            name,
            role,
            out,
            valid_for,
        } => {
            let role = role.parse().context("--role")?;
            let dir = DataDir::new(data_dir);
            let valid_for = valid_for.unwrap_or(if role == devctl_proto::identity::Role::Agent {
                AGENT_CERT_VALIDITY
            } else {
                USER_CERT_VALIDITY
            });
            register_issued(&dir, &name, role)?;
            let serial = dir.issue_cert(&name, role, &out, valid_for)?;
            println!("wrote {role} bundle for {name} to {}", out.display());
            if role == Role::Agent {
                if dir.admit_agent(&name, &serial)? {
                    println!("admitted node {name} to the bus (nats-server reloaded)");
                } else {
                    println!(
                        "admitted node {name} to the bus; no nats-server of {} runs here: reload yours with `nats-server --signal reload`",
                        dir.root().display()
                    );
                }
            }
        }
        Command::Graph(GraphCommand::Resync {
            data_dir,
            nats,
            graph,
        }) => {
            let config = graph.config().map_err(anyhow::Error::msg)?.context(
                "--neo4j-uri: name the graph server to re-project into (bolt://HOST:7687)",
            )?;
            let dir = DataDir::new(data_dir);
            let store = match Store::open(&dir.state_file()) {
                Ok(s) => s,
                Err(e) if e.is_held_elsewhere() => anyhow::bail!(
                    "a running scheduler holds {}: ask it instead with `devctl graph resync` (admin), or stop it first",
                    dir.state_file().display()
                ),
                Err(e) => return Err(e.into()),
            };
            let bus = devctl_scheduler::bus::Bus::connect(&nats, &dir.bus_dir()).await?;
            let done = devctl_scheduler::graph::project::resync_once(config, store, bus).await?;
            println!(
                "re-projected {} containers and {} events",
                done.containers, done.events
            );
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    data_dir,
                    role,
                    name,
                    ttl,
                },
        } => {
            let role = role.parse().context("--role")?;
            let token = DataDir::new(data_dir).create_join_token(role, name.as_deref(), ttl)?;
            // The token alone on stdout, for scripts; the rest on stderr.
            println!("{token}");
            eprintln!(
                "one-time {role} join token, valid for {}; use it with {}",
                humantime::format_duration(ttl),
                if role == devctl_proto::identity::Role::Agent {
                    "`devctl-agent join --server URL --token TOKEN --node NAME --data-dir DIR`"
                } else {
                    "`devctl login --server URL --token TOKEN`"
                }
            );
        }
        Command::Revoke { data_dir, target } => {
            let dir = DataDir::new(data_dir);
            let target = Target::parse(&target)?;
            revocation::revoke(&dir.revoked_file(), &target)?;
            match target {
                Target::Name(n) => {
                    println!("revoked every certificate of {n} issued so far");
                    if dir.admitted_agents()?.contains(&n) {
                        // Its bus user goes too: the reload disconnects it.
                        if dir.remove_agent(&n)? {
                            println!("removed node {n} from the bus (nats-server reloaded)");
                        } else {
                            println!(
                                "removed node {n} from the bus configuration; reload nats-server (`nats-server --signal reload`) to disconnect it"
                            );
                        }
                    }
                }
                Target::Serial(s) => {
                    println!("revoked certificate {s}");
                    if let Some((node, reloaded)) = dir.remove_agent_certificate(&s)? {
                        println!(
                            "removed it from the bus (it was node {node}'s){}",
                            if reloaded {
                                ""
                            } else {
                                "; reload nats-server (`nats-server --signal reload`) to disconnect it"
                            }
                        );
                    }
                }
            }
        }
        Command::Serve(args) => {
            if args.ssh_cert_ttl.is_zero() {
                anyhow::bail!(
                    "--ssh-cert-ttl must be longer than zero (e.g. 8h): it is how long SSH user certificates are valid"
                );
            }
            if args.default_ttl > args.max_ttl {
                anyhow::bail!(
                    "--default-ttl ({}) is longer than --max-ttl ({}); lower it or raise --max-ttl",
                    humantime::format_duration(args.default_ttl),
                    humantime::format_duration(args.max_ttl)
                );
            }
            let config = ServeConfig {
                data_dir: DataDir::new(args.data_dir),
                listen: args.listen,
                nats: args.nats,
                node_timeout: args.node_timeout,
                node_caps: devctl_scheduler::nodes::Caps {
                    milli_cpus: args.max_node_cpus,
                    memory_bytes: args.max_node_memory,
                },
                event_retention: args.event_retention,
                audit_retention: args.audit_retention,
                audit_max_bytes: args.audit_max_size,
                image_store_bytes: args.image_store_size.max(0) as u64,
                rate_limit: Limit::new(args.rate_limit, args.rate_burst),
                anonymous_rate_limit: Limit::new(
                    args.anonymous_rate_limit,
                    args.anonymous_rate_burst,
                ),
                max_streams_per_identity: args.max_streams_per_identity,
                certs: CertPolicy {
                    agent_ttl: args.agent_cert_ttl,
                    user_ttl: args.user_cert_ttl,
                },
                graph: args.graph.config().map_err(anyhow::Error::msg)?,
                settings: Settings {
                    command_timeout: args.command_timeout,
                    strategy: if args.placement == "binpack" {
                        Strategy::Binpack
                    } else {
                        Strategy::Spread
                    },
                    memory_threshold_percent: args.memory_threshold,
                    cpu_overcommit: args.cpu_overcommit,
                    default_milli_cpus: args.default_cpus,
                    default_memory_bytes: args.default_memory,
                    leases: LeasePolicy {
                        default_ttl: args.default_ttl,
                        max_ttl: args.max_ttl,
                        allow_none: args.allow_no_ttl,
                        on_expiry: if args.lease_expiry == "remove" {
                            ExpiryAction::Remove
                        } else {
                            ExpiryAction::Stop
                        },
                    },
                    idle: IdlePolicy {
                        timeout: args.idle_timeout,
                        exec: args.idle_signals.iter().any(|s| s == "exec"),
                        sessions: args.idle_signals.iter().any(|s| s == "sessions"),
                        cpu: args.idle_signals.iter().any(|s| s == "cpu"),
                        cpu_percent: args.idle_cpu,
                    },
                    reconcile_interval: args.reconcile_interval,
                    orphan_grace: args.orphan_grace,
                    quotas: Quotas {
                        roles: args.role_quotas.iter().cloned().collect(),
                        users: args.user_quotas.iter().cloned().collect(),
                        admins_too: args.quota_admins,
                    },
                    ssh_cert_ttl: args.ssh_cert_ttl,
                    max_build_context: args.max_build_context.max(0) as u64,
                    ..Settings::default()
                },
            };
            serve(config, devctl_proto::process::shutdown_signal()).await?;
        }
    }
    Ok(())
}
