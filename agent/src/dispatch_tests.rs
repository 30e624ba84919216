//! Unit tests of `dispatch.rs`.

use std::sync::Mutex;

use tokio::sync::Notify;

use super::*;
use crate::runtime::EngineInfo;

/// Records calls; `create` waits until the gate opens.
#[derive(Default)]
struct Gated {
    log: Mutex<Vec<String>>,
    gate: Notify,
}

impl Gated {
    fn log(&self, s: String) -> Result<pb::EngineContainer, RuntimeError> {
        self.log.lock().unwrap().push(s);
        Ok(pb::EngineContainer::default())
    }
    fn calls(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl ContainerRuntime for Arc<Gated> {
    async fn info(&self) -> Result<EngineInfo, RuntimeError> {
        Ok(EngineInfo::default())
    }
    async fn create_and_start(
        &self,
        spec: &pb::CreateCommand,
    ) -> Result<pb::EngineContainer, RuntimeError> {
        self.gate.notified().await;
        self.log(format!("create {}", spec.id))
    }
    async fn start(&self, id: &str) -> Result<pb::EngineContainer, RuntimeError> {
        self.log(format!("start {id}"))
    }
    async fn inspect(&self, id: &str) -> Result<pb::EngineContainer, RuntimeError> {
        self.log(format!("inspect {id}"))
    }
    async fn stop(&self, id: &str, _: i32) -> Result<pb::EngineContainer, RuntimeError> {
        self.log(format!("stop {id}"))
    }
    async fn restart(&self, id: &str, _: i32) -> Result<pb::EngineContainer, RuntimeError> {
        self.log(format!("restart {id}"))
    }
    async fn remove(&self, id: &str, _: bool) -> Result<(), RuntimeError> {
        self.log(format!("remove {id}")).map(|_| ())
    }
    async fn inventory(&self) -> Result<Vec<pb::EngineContainer>, RuntimeError> {
        self.log("inventory".into()).map(|_| vec![])
    }
    async fn running_count(&self) -> Result<i32, RuntimeError> {
        Ok(0)
    }
    async fn wait_exit(
        &self,
        id: &str,
        _: Duration,
    ) -> Result<Option<pb::EngineContainer>, RuntimeError> {
        self.log(format!("wait {id}")).map(Some)
    }
    fn engine_events(&self, _: i64) -> crate::runtime::EngineEvents {
        Box::pin(futures::stream::empty())
    }
    async fn running(&self) -> Result<Vec<crate::runtime::Running>, RuntimeError> {
        Ok(vec![])
    }
    async fn exec(
        &self,
        id: &str,
        _: &pb::ExecStart,
    ) -> Result<crate::runtime::ExecSession, RuntimeError> {
        Err(RuntimeError::NotFound(id.to_string()))
    }
    fn stats(&self, _: &crate::runtime::Running) -> crate::runtime::StatsSamples {
        Box::pin(futures::stream::empty())
    }
    /// "web" runs as this test process (whose namespace and cgroup
    /// stand in for a container's); others do not exist.
    async fn init_process(&self, id: &str) -> Result<crate::runtime::InitProcess, RuntimeError> {
        if id != "web" {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = cgroups
            .lines()
            .filter_map(|l| l.rsplit(':').next())
            .max_by_key(|p| p.len())
            .unwrap()
            .to_string();
        Ok(crate::runtime::InitProcess {
            name: "web".into(),
            runtime_id: own,
            pid: std::process::id(),
        })
    }
    async fn logs(
        &self,
        id: &str,
        _: crate::runtime::LogOptions,
    ) -> Result<crate::runtime::OutputChunks, RuntimeError> {
        self.log(format!("logs {id}"))?;
        Ok(Box::pin(futures::stream::empty()))
    }
}

fn cmd(c: Command) -> Result<pb::AgentCommand, prost::DecodeError> {
    Ok(pb::AgentCommand { command: Some(c) })
}

fn create(id: &str) -> Command {
    Command::Create(pb::CreateCommand {
        id: id.into(),
        ..Default::default()
    })
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Handles `c` on a task of its own.
fn spawn_on(d: &Arc<Dispatcher<Arc<Gated>>>, c: Command) -> tokio::task::JoinHandle<Handled> {
    let d = Arc::clone(d);
    tokio::spawn(async move { d.handle(cmd(c)).await })
}

#[tokio::test]
async fn commands_for_one_container_run_in_order_others_do_not_wait() {
    let rt = Arc::new(Gated::default());
    let d = Arc::new(Dispatcher::new(Arc::clone(&rt), EngineLimit::new(8)));
    let spawn = |c: Command| spawn_on(&d, c);
    let create_a = spawn(create("a"));
    settle().await;
    let remove_a = spawn(Command::Remove(pb::RemoveCommand {
        id: "a".into(),
        force: true,
    }));
    let start_b = spawn(Command::Start(pb::StartCommand { id: "b".into() }));
    start_b.await.unwrap();
    settle().await;
    assert!(
        !remove_a.is_finished(),
        "remove waits for the create of the same container"
    );
    assert_eq!(rt.calls(), ["start b"]);
    rt.gate.notify_one();
    create_a.await.unwrap();
    remove_a.await.unwrap();
    assert_eq!(rt.calls(), ["start b", "create a", "remove a"]);
}

#[tokio::test]
async fn an_inventory_waits_for_commands_in_flight() {
    let rt = Arc::new(Gated::default());
    let d = Arc::new(Dispatcher::new(Arc::clone(&rt), EngineLimit::new(8)));
    let create_a = spawn_on(&d, create("a"));
    settle().await;
    let inventory = spawn_on(&d, Command::Inventory(pb::InventoryCommand {}));
    settle().await;
    assert!(!inventory.is_finished());
    rt.gate.notify_one();
    create_a.await.unwrap();
    inventory.await.unwrap();
    assert_eq!(rt.calls(), ["create a", "inventory"]);
}

#[tokio::test]
async fn opening_logs_does_not_wait_for_the_containers_operations() {
    let rt = Arc::new(Gated::default());
    let d = Arc::new(Dispatcher::new(Arc::clone(&rt), EngineLimit::new(8)));
    let create_a = spawn_on(&d, create("a"));
    settle().await;
    let logs = d
        .handle(cmd(Command::Logs(pb::LogsCommand {
            id: "a".into(),
            stream: Some(pb::StreamSetup::default()),
            ..Default::default()
        })))
        .await;
    assert!(matches!(logs.reply.result, Some(Reply::Opened(_))));
    assert!(logs.stream.is_some());
    assert!(!create_a.is_finished());
    rt.gate.notify_one();
    create_a.await.unwrap();
    assert_eq!(rt.calls(), ["logs a", "create a"]);
}

fn tunnel(kind: pb::TunnelKind, port: u32) -> pb::TunnelCommand {
    pb::TunnelCommand {
        id: "web".into(),
        kind: kind as i32,
        port,
        up: Some(pb::StreamSetup::default()),
        down: Some(pb::StreamSetup::default()),
        ..Default::default()
    }
}

fn refusal(h: Handled) -> pb::AgentError {
    assert!(h.tunnel.is_none());
    match h.reply.result {
        Some(Reply::Error(e)) => e,
        other => panic!("{other:?}"),
    }
}

async fn open(d: &Dispatcher<Arc<Gated>>, t: pb::TunnelCommand) -> Handled {
    d.handle(cmd(Command::Tunnel(t))).await
}

/// Whether this process may enter network namespaces (setns needs
/// CAP_SYS_ADMIN); tests of real connections need it.
fn may_enter_namespaces() -> bool {
    let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
    let entered =
        std::thread::spawn(move || nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET))
            .join()
            .unwrap();
    if let Err(e) = &entered {
        eprintln!("skipped: setns: {e}");
    }
    entered.is_ok()
}

#[tokio::test]
async fn incomplete_tunnels_are_bad_commands() {
    let d = Dispatcher::new(Arc::new(Gated::default()), EngineLimit::new(8));
    let mut no_setup = tunnel(pb::TunnelKind::Tcp, 80);
    no_setup.down = None;
    for t in [
        no_setup,
        tunnel(pb::TunnelKind::Unspecified, 80),
        tunnel(pb::TunnelKind::Tcp, 0),
        tunnel(pb::TunnelKind::Tcp, 70000),
        tunnel(pb::TunnelKind::Ssh, 0),
    ] {
        let e = refusal(open(&d, t.clone()).await);
        assert_eq!(
            e.code,
            pb::AgentErrorCode::BadCommand as i32,
            "{t:?}: {e:?}"
        );
    }
}

#[tokio::test]
async fn a_tunnel_into_a_missing_container_is_refused() {
    let d = Dispatcher::new(Arc::new(Gated::default()), EngineLimit::new(8));
    let mut t = tunnel(pb::TunnelKind::Tcp, 80);
    t.id = "gone".into();
    let e = refusal(open(&d, t).await);
    assert_eq!(e.code, pb::AgentErrorCode::ContainerNotFound as i32);
}

#[tokio::test]
async fn an_ssh_tunnel_needs_a_host_certificate_for_this_agents_key() {
    use devctl_proto::ssh::{SshCa, new_key};
    let host_key = new_key("host").unwrap();
    let ca = SshCa::from_key(new_key("ca").unwrap());
    let d = Dispatcher::new(Arc::new(Gated::default()), EngineLimit::new(8)).with_tunnels(
        TunnelSettings {
            host_key: Some(Arc::new(host_key.clone())),
            ..Default::default()
        },
    );
    let certified = |key: &PrivateKey| {
        let mut t = tunnel(pb::TunnelKind::Ssh, 0);
        t.ssh = Some(pb::SshAccess {
            host_certificate: ca
                .sign_host(
                    key.public_key(),
                    "web.devctl",
                    1,
                    std::time::SystemTime::now(),
                    Duration::from_secs(600),
                )
                .unwrap()
                .to_openssh()
                .unwrap(),
            ca_public_key: ca.public_key_line(),
            principal: "alice".into(),
        });
        t
    };
    let opened = open(&d, certified(&host_key)).await;
    assert!(
        matches!(opened.reply.result, Some(Reply::Opened(_))),
        "{opened:?}"
    );
    assert!(matches!(
        opened.tunnel,
        Some(OpenedTunnel {
            target: Target::Ssh(_),
            ..
        })
    ));
    let e = refusal(open(&d, certified(&new_key("another").unwrap())).await);
    assert_eq!(e.code, pb::AgentErrorCode::Invalid as i32);
    assert!(e.message.contains("another key"), "{}", e.message);
    // No host key: no SSH.
    let keyless = Dispatcher::new(Arc::new(Gated::default()), EngineLimit::new(8));
    let e = refusal(open(&keyless, certified(&host_key)).await);
    assert_eq!(e.code, pb::AgentErrorCode::Engine as i32);
}

#[tokio::test]
async fn a_tcp_tunnel_connects_inside_the_containers_namespace() {
    if !may_enter_namespaces() {
        return;
    }
    let d = Dispatcher::new(Arc::new(Gated::default()), EngineLimit::new(8));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let opened = open(&d, tunnel(pb::TunnelKind::Tcp, u32::from(port))).await;
    assert!(
        matches!(opened.reply.result, Some(Reply::Opened(_))),
        "{opened:?}"
    );
    let Some(OpenedTunnel {
        target: Target::Tcp(tcp),
        ..
    }) = opened.tunnel
    else {
        panic!("no TCP target")
    };
    let (accepted, _) = listener.accept().await.unwrap();
    assert_eq!(accepted.peer_addr().unwrap(), tcp.local_addr().unwrap());
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_refused_as_invalid() {
    if !may_enter_namespaces() {
        return;
    }
    let d = Dispatcher::new(Arc::new(Gated::default()), EngineLimit::new(8));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = refusal(open(&d, tunnel(pb::TunnelKind::Tcp, u32::from(port))).await);
    assert_eq!(e.code, pb::AgentErrorCode::Invalid as i32);
    assert_eq!(
        e.message,
        format!("nothing listens on port {port} in container web")
    );
}

#[tokio::test]
async fn undecodable_and_empty_commands_are_refused() {
    let d = Dispatcher::new(Arc::new(Gated::default()), EngineLimit::new(8));
    let r = d.handle(Ok(pb::AgentCommand { command: None })).await;
    let Some(Reply::Error(e)) = r.reply.result else {
        panic!("{r:?}")
    };
    assert_eq!(e.code, pb::AgentErrorCode::BadCommand as i32);
}
