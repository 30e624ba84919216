//! The scheduler's data directory and what `init` and `issue-cert` write
//! into it.
//!
//! One file on purpose: nothing else reads or writes the data directory's
//! files (keys, certificates, the bus configuration).
//!
//! ```text
//! DIR/ca/ca.pem, ca-key.pem          the cluster CA (key 0600, dir 0700)
//! DIR/server/{ca,cert,key}.pem       the scheduler's server certificate
//! DIR/clients/admin/{ca,cert,key}.pem  the first admin's client bundle
//! DIR/ca/join-key                    the MAC key of join tokens (0600)
//! DIR/ssh/ca_ed25519                 the SSH CA's key (OpenSSH format, 0600; dir 0700)
//! DIR/revoked                        revoked certificates (see revocation)
//! DIR/bus/{ca,cert,key}.pem          the scheduler's own bus (NATS) client certificate
//! DIR/nats/nats.conf                 nats-server's configuration: TLS, JetStream, users
//! DIR/nats/users.conf                the bus users and their permissions (generated)
//! DIR/nats/agents/<node>             one (empty) file per admitted agent: the source
//!                                    users.conf is generated from
//! DIR/nats/jetstream/                JetStream's store
//! DIR/nats/nats.pid                  the pid of the nats-server running on it
//! DIR/state.redb                     the store
//! DIR/identities/<name>              an identity `issue-cert` made while the scheduler
//!                                    held the store (its kind); imported by the scheduler
//! DIR/scheduler.addr                 the address `serve` listens on
//! ```
//!
//! The bus maps each client certificate to a NATS user by its subject
//! (`verify_and_map`): the scheduler's, and one per admitted agent, each
//! confined by [`bus::agent_permissions`]. Certificates of any other
//! subject (API users, unknown nodes) cannot log in.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use devctl_proto::{
    bus,
    identity::Role,
    pki::{self, Bundle, ClusterCa, PkiError},
    ssh::{SshCa, SshError},
    validate::{self, InvalidField},
};
use thiserror::Error;

use crate::store::IdentityKind;

/// Validity of the server certificate.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default validity of agent certificates (agents renew them over the bus).
pub const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default validity of people's certificates (`devctl login --renew`).
pub const USER_CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Validity of the first admin bundle `init` writes (renew it with
/// `devctl login --renew --tls-dir DIR/clients/admin`).
pub const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// A failure of `init` or `issue-cert`.
#[derive(Debug, Error)]
pub enum DataDirError {
    /// The directory already holds a cluster.
    #[error(
        "{0} already holds a cluster CA; pass --force to replace it (every certificate issued so far stops working)"
    )]
    AlreadyInitialized(PathBuf),
    /// The directory holds no cluster.
    #[error("{0} holds no cluster CA; run `devctl-scheduler init --data-dir {0}` first")]
    NotInitialized(PathBuf),
    /// A flag is wrong.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Certificates or files.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The SSH CA's key.
    #[error("SSH CA: {0}")]
    Ssh(#[from] SshError),
    /// A file of the bus configuration.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Validity of the scheduler's bus certificate.
pub const BUS_CERT_VALIDITY: Duration = SERVER_CERT_VALIDITY;
/// The longest a join token may be valid.
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The CA's directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// The server bundle's directory.
    pub fn server_dir(&self) -> PathBuf {
        self.root.join("server")
    }

    /// A client bundle's directory.
    pub fn client_dir(&self, name: &str) -> PathBuf {
        self.root.join("clients").join(name)
    }

    /// The scheduler's bus client bundle's directory.
    pub fn bus_dir(&self) -> PathBuf {
        self.root.join("bus")
    }

    /// The directory of nats-server's configuration and store.
    pub fn nats_dir(&self) -> PathBuf {
        self.root.join("nats")
    }

    /// nats-server's configuration: `nats-server -c` this.
    pub fn nats_config(&self) -> PathBuf {
        self.nats_dir().join("nats.conf")
    }

    /// The bus users, generated from [`DataDir::agents_dir`].
    pub fn nats_users(&self) -> PathBuf {
        self.nats_dir().join("users.conf")
    }

    /// Where nats-server writes its pid.
    pub fn nats_pid_file(&self) -> PathBuf {
        self.nats_dir().join("nats.pid")
    }

    /// One file per admitted agent.
    pub fn agents_dir(&self) -> PathBuf {
        self.nats_dir().join("agents")
    }

    /// Image archives being uploaded by `devctl images push` (one
    /// `<sha256>.part` each, until stored in the bus's object store).
    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// The store file.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.redb")
    }

    /// Identities `issue-cert` made while the store was held by a running
    /// scheduler: one file per name, holding its kind. The scheduler
    /// records them before every join and at start.
    pub fn pending_identities_dir(&self) -> PathBuf {
        self.root.join("identities")
    }

    /// Leaves `name` (of `kind`) for the scheduler to record.
    pub fn add_pending_identity(&self, name: &str, kind: IdentityKind) -> Result<(), DataDirError> {
        validate::dns_label("--name", name)?;
        pki::create_private_dir(&self.pending_identities_dir())?;
        pki::write_file(
            &self.pending_identities_dir().join(name),
            kind.as_str().as_bytes(),
            0o600,
        )?;
        Ok(())
    }

    /// The identities left by `issue-cert` (unreadable or misnamed files
    /// are skipped).
    pub fn pending_identities(&self) -> Vec<(String, IdentityKind)> {
        let Ok(entries) = fs::read_dir(self.pending_identities_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                validate::dns_label("name", &name).ok()?;
                let kind = fs::read_to_string(e.path()).ok()?;
                Some((name, IdentityKind::parse(kind.trim())))
            })
            .collect()
    }

    /// Forgets the pending identities `names` (once recorded).
    pub fn remove_pending_identities(&self, names: &[String]) {
        for n in names {
            let _ = fs::remove_file(self.pending_identities_dir().join(n));
        }
    }

    /// The names of the client bundles under `DIR/clients` (the first
    /// admin's, and any `issue-cert --out DIR/clients/NAME` wrote).
    pub fn client_bundle_names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.root.join("clients")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| validate::dns_label("name", n).is_ok())
            .collect()
    }

    /// Fails unless `init` made a cluster here.
    pub fn ensure_initialized(&self) -> Result<(), DataDirError> {
        if !self.ca_dir().join(pki::CA_FILE).exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        Ok(())
    }

    /// The SSH CA's private key.
    pub fn ssh_ca_file(&self) -> PathBuf {
        self.root.join("ssh").join("ca_ed25519")
    }

    /// The SSH CA, made (in a private directory, key 0600) when there is
    /// none: `init` makes it, and `serve` for a data directory made before
    /// SSH access existed. The second value says whether it was made now.
    pub fn ssh_ca(&self) -> Result<(SshCa, bool), DataDirError> {
        self.ensure_initialized()?;
        let path = self.ssh_ca_file();
        let created = !path.exists();
        if let Some(dir) = path.parent() {
            pki::create_private_dir(dir)?;
        }
        Ok((SshCa::load_or_create(&path)?, created))
    }

    /// The revocation list.
    pub fn revoked_file(&self) -> PathBuf {
        self.root.join("revoked")
    }

    /// The key join tokens are signed with, made on first use (0600).
    pub fn join_key(&self) -> Result<Vec<u8>, DataDirError> {
        let path = self.ca_dir().join("join-key");
        match pki::read_secret(&path) {
            Ok(key) => Ok(key),
            Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                if !self.ca_dir().join(pki::CA_FILE).exists() {
                    return Err(DataDirError::NotInitialized(self.root.clone()));
                }
                let key = devctl_proto::enroll::random_bytes::<32>();
                // Two first uses at once: the rename makes one of them win;
                // read back whichever did.
                pki::write_file(&path, &key, 0o600)?;
                Ok(pki::read_secret(&path)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A join token for `role` (and `name`, if given) valid for `ttl`.
    pub fn create_join_token(
        &self,
        role: Role,
        name: Option<&str>,
        ttl: Duration,
    ) -> Result<String, DataDirError> {
        if let Some(n) = name {
            validate::dns_label("--name", n)?;
        } else if matches!(role, Role::Agent | Role::Admin) {
            return Err(InvalidField::new(
                "--name",
                "is required for agent and admin tokens (the node's or the admin's name): a token that names nobody lets its holder choose a name",
            )
            .into());
        }
        if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
            return Err(InvalidField::new(
                "--ttl",
                "must be more than zero and at most 30d (e.g. 1h): a join token is a one-time credential, made shortly before it is used",
            )
            .into());
        }
        // The pin needs the CA certificate only, not its key.
        let ca_file = self.ca_dir().join(pki::CA_FILE);
        let ca_pem = fs::read_to_string(&ca_file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataDirError::NotInitialized(self.root.clone()),
            _ => io_err(&ca_file)(e),
        })?;
        let key = self.join_key()?;
        let claims = devctl_proto::enroll::JoinClaims::new(
            pki::fingerprint(&ca_pem)?,
            role,
            name.map(str::to_string),
            ttl,
        );
        Ok(claims.sign(&key))
    }

    /// Where `serve` writes the address it listens on.
    pub fn addr_file(&self) -> PathBuf {
        self.root.join("scheduler.addr")
    }

    /// Creates the cluster CA, the server certificate (for
    /// [`pki::default_server_sans`] plus `extra_sans`) and the admin bundle.
    pub fn init(&self, extra_sans: &[String], force: bool) -> Result<(), DataDirError> {
        if self.ca_dir().join(pki::CA_FILE).exists() && !force {
            return Err(DataDirError::AlreadyInitialized(self.root.clone()));
        }
        pki::create_private_dir(&self.root)?;
        // Also when the directory existed before: it holds the CA key and
        // every container's environment.
        pki::restrict_dir(&self.root)?;
        let ca = ClusterCa::generate(
            &self
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "devctl".into()),
        )?;
        let server =
            ca.issue_server(&pki::default_server_sans(extra_sans), SERVER_CERT_VALIDITY)?;
        let admin = ca.issue_client("admin", Role::Admin, ADMIN_CERT_VALIDITY)?;
        let bus = ca.issue_scheduler_bus(BUS_CERT_VALIDITY)?;
        ca.write(&self.ca_dir())?;
        // A new CA: tokens of the old one must not verify.
        let _ = std::fs::remove_file(self.ca_dir().join("join-key"));
        // Nor SSH certificates of the old SSH CA (a replaced cluster
        // admits no one its predecessor admitted).
        if force {
            let old = self.ssh_ca_file();
            match fs::remove_file(&old) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err(&old)(e));
                }
                _ => {}
            }
        }
        self.ssh_ca()?;
        server.write(&self.server_dir())?;
        pki::create_private_dir(&self.root.join("clients"))?;
        admin.write(&self.client_dir("admin"))?;
        bus.write(&self.bus_dir())?;
        // Agents admitted under the old CA hold certificates nobody trusts
        // any more.
        if force {
            let agents = self.agents_dir();
            if agents.exists() {
                fs::remove_dir_all(&agents).map_err(io_err(&agents))?;
            }
        }
        self.write_nats_config()?;
        self.update_users(|_| Ok(()))?;
        Ok(())
    }

    /// Writes nats-server's configuration (absolute paths: the server may
    /// run from any directory). `-a`/`-p` on nats-server's command line
    /// override its `listen`.
    fn write_nats_config(&self) -> Result<(), DataDirError> {
        let root = fs::canonicalize(&self.root).map_err(io_err(&self.root))?;
        let dir = DataDir::new(root);
        pki::create_private_dir(&dir.nats_dir())?;
        pki::create_private_dir(&dir.agents_dir())?;
        let q = |p: PathBuf| quote(&p.to_string_lossy());
        let conf = format!(
            "# Written by `devctl-scheduler init`: the bus of the cluster in {root}.\n\
             # Run: nats-server -c {conf}   (-a HOST and -p PORT override `listen`)\n\
             listen: \"0.0.0.0:4222\"\n\
             pid_file: {pid}\n\
             \n\
             # Clients must present a certificate from the cluster CA; its subject\n\
             # is their user name (users.conf).\n\
             tls {{\n  cert_file: {cert}\n  key_file: {key}\n  ca_file: {ca}\n  verify_and_map: true\n  timeout: 5\n}}\n\
             \n\
             jetstream {{\n  store_dir: {store}\n}}\n\
             \n\
             # Relative to this file (nats-server resolves includes so).\n\
             include users.conf\n",
            root = dir.root().display(),
            conf = dir.nats_config().display(),
            pid = q(dir.nats_pid_file()),
            cert = q(dir.server_dir().join(pki::CERT_FILE)),
            key = q(dir.server_dir().join(pki::KEY_FILE)),
            ca = q(dir.ca_dir().join(pki::CA_FILE)),
            store = q(dir.nats_dir().join("jetstream")),
        );
        pki::write_file(&dir.nats_config(), conf.as_bytes(), 0o600)?;
        Ok(())
    }

    /// Writes the scheduler's bus certificate and nats-server's
    /// configuration if this data directory (made before they existed)
    /// lacks them.
    pub fn ensure_bus(&self) -> Result<(), DataDirError> {
        if !self.ca_dir().join(pki::CA_FILE).exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        if !self.bus_dir().join(pki::CERT_FILE).exists() {
            let ca = ClusterCa::load(&self.ca_dir())?;
            ca.issue_scheduler_bus(BUS_CERT_VALIDITY)?
                .write(&self.bus_dir())?;
        }
        if !self.nats_config().exists() {
            self.write_nats_config()?;
        }
        if !self.nats_users().exists() {
            pki::write_file(
                &self.nats_users(),
                render_users(&self.agents_with_serials()?).as_bytes(),
                0o600,
            )?;
        }
        Ok(())
    }

    /// Rewrites the bus's users when this version's permissions differ
    /// from what the file holds (a data directory made by an older
    /// version), and tells the running nats-server to reload. Returns
    /// whether it rewrote them.
    pub fn refresh_bus_users(&self) -> Result<bool, DataDirError> {
        let current = fs::read_to_string(self.nats_users()).unwrap_or_default();
        if current == render_users(&self.agents_with_serials()?) {
            return Ok(false);
        }
        self.update_users(|_| Ok(()))?;
        tracing::info!(path = %self.nats_users().display(), "bus permissions updated to this version's");
        self.reload_nats()?;
        Ok(true)
    }

    /// Lets `node`'s agent onto the bus: adds its user (confined by
    /// [`bus::agent_permissions`]) and asks the running nats-server to
    /// reload. Returns whether a reload was signalled; if not (no
    /// nats-server of this data directory runs here), the operator must
    /// reload it (`nats-server --signal reload`) for the change to apply.
    ///
    /// Each certificate is a bus user of its own (its serial is in its
    /// subject): admitting the node with the certificate `serial` makes it
    /// the node's only one, so any older certificate of the node (a lost
    /// laptop's, a revoked one's) no longer logs in.
    pub fn admit_agent(&self, node: &str, serial: &str) -> Result<bool, DataDirError> {
        validate::dns_label("node", node)?;
        check_serial(serial)?;
        self.update_users(|agents| write_serials(&agents.join(node), &[serial.to_string()]))?;
        self.reload_nats()
    }

    /// Adds the renewed certificate `serial` of an admitted node, keeping
    /// `current` (the certificate the agent holds, which it reconnects with
    /// until the new one is in place) if it is one of the node's, else the
    /// newest before, and dropping the rest. Refused for a node not
    /// admitted.
    pub fn renew_agent(
        &self,
        node: &str,
        current: &str,
        serial: &str,
    ) -> Result<bool, DataDirError> {
        validate::dns_label("node", node)?;
        check_serial(serial)?;
        self.update_users(|agents| {
            let marker = agents.join(node);
            if !marker.exists() {
                return Err(InvalidField::new("node", "is not admitted to the bus").into());
            }
            let mut serials = read_serials(&marker)?;
            serials.retain(|s| s != serial);
            let keep = if serials.iter().any(|s| s == current) {
                Some(current.to_string())
            } else {
                serials.pop()
            };
            write_serials(
                &marker,
                &keep
                    .into_iter()
                    .chain([serial.to_string()])
                    .collect::<Vec<_>>(),
            )
        })?;
        self.reload_nats()
    }

    /// Takes the certificate `serial` off the bus if it is an admitted
    /// agent's. Returns its node and whether nats-server was signalled.
    pub fn remove_agent_certificate(
        &self,
        serial: &str,
    ) -> Result<Option<(String, bool)>, DataDirError> {
        check_serial(serial)?;
        let mut found = None;
        self.update_users(|agents| {
            for node in list_agents(agents)? {
                let marker = agents.join(&node);
                let mut serials = read_serials(&marker)?;
                if serials.iter().any(|s| s == serial) {
                    serials.retain(|s| s != serial);
                    if serials.is_empty() {
                        fs::remove_file(&marker).map_err(io_err(&marker))?;
                    } else {
                        write_serials(&marker, &serials)?;
                    }
                    found = Some(node);
                }
            }
            Ok(())
        })?;
        match found {
            Some(node) => Ok(Some((node, self.reload_nats()?))),
            None => Ok(None),
        }
    }

    fn agents_with_serials(&self) -> Result<Vec<(String, Vec<String>)>, DataDirError> {
        self.admitted_agents()?
            .into_iter()
            .map(|n| Ok((n.clone(), self.agent_serials(&n)?)))
            .collect()
    }

    /// The serials of the certificates `node`'s agent may log in with.
    pub fn agent_serials(&self, node: &str) -> Result<Vec<String>, DataDirError> {
        validate::dns_label("node", node)?;
        let marker = self.agents_dir().join(node);
        if !marker.exists() {
            return Ok(Vec::new());
        }
        read_serials(&marker)
    }

    /// Takes `node`'s agent off the bus: removes its user and asks the
    /// running nats-server to reload, which disconnects the agent. Returns
    /// whether a reload was signalled (see [`DataDir::admit_agent`]).
    pub fn remove_agent(&self, node: &str) -> Result<bool, DataDirError> {
        validate::dns_label("node", node)?;
        self.update_users(|agents| {
            let marker = agents.join(node);
            match fs::remove_file(&marker) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(&marker)(e)),
            }
        })?;
        self.reload_nats()
    }

    /// The nodes whose agents are admitted to the bus, sorted.
    pub fn admitted_agents(&self) -> Result<Vec<String>, DataDirError> {
        list_agents(&self.agents_dir())
    }
}

/// The admitted nodes (one file each in `dir`), sorted.
fn list_agents(dir: &Path) -> Result<Vec<String>, DataDirError> {
    let mut nodes = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(nodes),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        // Skips what is no node name (e.g. a temporary file).
        if let Some(name) = name.to_str()
            && validate::dns_label("node", name).is_ok()
        {
            nodes.push(name.to_string());
        }
    }
    nodes.sort();
    Ok(nodes)
}

/// Certificate serials are hex (they end up in users.conf).
fn check_serial(serial: &str) -> Result<(), DataDirError> {
    if serial.is_empty() || serial.len() > 64 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(InvalidField::new("serial", "must be a certificate serial in hex").into());
    }
    Ok(())
}

fn read_serials(marker: &Path) -> Result<Vec<String>, DataDirError> {
    Ok(fs::read_to_string(marker)
        .map_err(io_err(marker))?
        .split_whitespace()
        .filter(|s| check_serial(s).is_ok())
        .map(str::to_string)
        .collect())
}

fn write_serials(marker: &Path, serials: &[String]) -> Result<(), DataDirError> {
    let mut text = serials.join("\n");
    text.push('\n');
    pki::write_file(marker, text.as_bytes(), 0o600)?;
    Ok(())
}

impl DataDir {
    /// Under the bus lock: applies `change` to the agents directory, then
    /// regenerates users.conf from it (atomically: readers see the old file
    /// or the new one). Writes the bus configuration first if this data
    /// directory predates it.
    fn update_users(
        &self,
        change: impl FnOnce(&Path) -> Result<(), DataDirError>,
    ) -> Result<(), DataDirError> {
        self.ensure_bus()?;
        let lock_path = self.nats_dir().join("users.lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err(&lock_path)(errno.into()))?;
        change(&self.agents_dir())?;
        let users = render_users(&self.agents_with_serials()?);
        pki::write_file(&self.nats_users(), users.as_bytes(), 0o600)?;
        Ok(())
    }

    /// SIGHUP to the nats-server named by the pid file, if it runs and is
    /// a nats-server. Returns whether it was signalled.
    fn reload_nats(&self) -> Result<bool, DataDirError> {
        let pid_file = self.nats_pid_file();
        let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)
        else {
            tracing::debug!(pid_file = %pid_file.display(), "no nats-server pid; not signalled");
            return Ok(false);
        };
        // A pid file left behind may name an unrelated process by now.
        let is_nats = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|b| *b == 0)
                .next()
                .and_then(|argv0| std::str::from_utf8(argv0).ok())
                .is_some_and(|argv0| {
                    Path::new(argv0)
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("nats-server"))
                })
        });
        if !is_nats {
            tracing::info!(
                pid,
                "the pid file names no running nats-server; reload it yourself"
            );
            return Ok(false);
        }
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        ) {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::warn!(pid, error = %e, "could not signal nats-server to reload");
                Ok(false)
            }
        }
    }

    /// Issues a client bundle for `name` with `role` into `out`; returns
    /// its serial.
    pub fn issue_cert(
        &self,
        name: &str,
        role: Role,
        out: &Path,
        valid_for: Duration,
    ) -> Result<String, DataDirError> {
        validate::dns_label("--name", name)?;
        if !self.ca_dir().join(pki::CA_FILE).exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        let ca = ClusterCa::load(&self.ca_dir())?;
        let bundle = ca.issue_client(name, role, valid_for)?;
        bundle.write(out)?;
        Ok(bundle.serial()?)
    }

    /// The scheduler's bus client bundle.
    pub fn bus_bundle(&self) -> Result<Bundle, DataDirError> {
        if !self.bus_dir().join(pki::CERT_FILE).exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        Ok(Bundle::load(&self.bus_dir())?)
    }

    /// The server bundle.
    pub fn server_bundle(&self) -> Result<Bundle, DataDirError> {
        if !self.server_dir().join(pki::CERT_FILE).exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        Ok(Bundle::load(&self.server_dir())?)
    }
}

/// A string for nats-server's configuration (its quoting is JSON's).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// users.conf: the scheduler and each admitted agent, with their
/// permissions; nobody else.
fn render_users(agents: &[(String, Vec<String>)]) -> String {
    let mut out = String::from(
        "# Generated by devctl-scheduler from the files in agents/: do not edit.\n\
         # A client's user is its certificate's subject (verify_and_map).\n\
         authorization {\n  users = [\n",
    );
    let mut user = |name: String, p: bus::Permissions| {
        let list = |l: &[String]| l.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
        let _ = write!(
            out,
            "    {{\n      user: {}\n      permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n",
            quote(&name),
            list(&p.publish),
            list(&p.subscribe),
        );
        if p.allow_responses {
            out.push_str("        allow_responses: { max: 1 }\n");
        }
        out.push_str("      }\n    }\n");
    };
    user(
        pki::bus_user(pki::SCHEDULER_BUS_NAME, pki::SCHEDULER_BUS_OU),
        bus::scheduler_permissions(),
    );
    for (node, serials) in agents {
        for serial in serials {
            user(
                pki::agent_bus_user(node, serial),
                bus::agent_permissions(node),
            );
        }
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_private_keys_0600_and_refuses_to_run_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        dir.init(&["devctl.example".into()], false).unwrap();
        for key in [
            dir.ca_dir().join("ca-key.pem"),
            dir.server_dir().join("key.pem"),
            dir.client_dir("admin").join("key.pem"),
            dir.ssh_ca_file(),
        ] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let ssh_dir = dir.ssh_ca_file().parent().unwrap().to_path_buf();
        let mode = std::fs::metadata(&ssh_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let (ssh_ca, created) = dir.ssh_ca().unwrap();
        assert!(!created, "init made it");
        let err = dir.init(&[], false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        let before = std::fs::read(dir.ca_dir().join("ca.pem")).unwrap();
        dir.init(&[], true).unwrap();
        assert_ne!(before, std::fs::read(dir.ca_dir().join("ca.pem")).unwrap());
        // --force replaces the SSH CA with the cluster CA.
        let (replaced, _) = dir.ssh_ca().unwrap();
        assert_ne!(ssh_ca.public_key_line(), replaced.public_key_line());
        // A data directory from before SSH access gets its CA at `serve`.
        std::fs::remove_file(dir.ssh_ca_file()).unwrap();
        let (_, created) = dir.ssh_ca().unwrap();
        assert!(created);

        for f in [
            dir.nats_config(),
            dir.nats_users(),
            dir.bus_dir().join("key.pem"),
        ] {
            assert!(f.exists(), "{}", f.display());
        }

        let out = tmp.path().join("bob");
        dir.issue_cert("bob", Role::Developer, &out, Duration::from_secs(60))
            .unwrap();
        assert!(out.join("cert.pem").exists());
        assert!(
            dir.issue_cert("Bob!", Role::Developer, &out, Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn admitted_agents_become_bus_users_and_removed_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        dir.init(&[], false).unwrap();
        let conf = std::fs::read_to_string(dir.nats_config()).unwrap();
        assert!(conf.contains("verify_and_map: true"), "{conf}");
        let ca = dir.ca_dir().join("ca.pem").canonicalize().unwrap();
        assert!(conf.contains(&ca.display().to_string()), "{conf}");
        // No nats-server runs: nothing to signal.
        assert!(!dir.admit_agent("node-a", "4a01").unwrap());
        dir.admit_agent("node-b", "4b01").unwrap();
        dir.admit_agent("node-a", "4a02").unwrap();
        assert_eq!(dir.admitted_agents().unwrap(), ["node-a", "node-b"]);
        let users = std::fs::read_to_string(dir.nats_users()).unwrap();
        // Re-admitting replaced node-a's certificate.
        assert!(
            users.contains("\"CN=node-a,OU=agent,O=devctl,SERIALNUMBER=4a02\""),
            "{users}"
        );
        assert!(!users.contains("4a01"), "{users}");
        // A renewal keeps the one before it, and only that one.
        dir.renew_agent("node-a", "", "4a03").unwrap();
        dir.renew_agent("node-a", "", "4a04").unwrap();
        assert_eq!(dir.agent_serials("node-a").unwrap(), ["4a03", "4a04"]);
        // The certificate the agent still holds is kept, whatever came after.
        dir.renew_agent("node-a", "4a03", "4a05").unwrap();
        assert_eq!(dir.agent_serials("node-a").unwrap(), ["4a03", "4a05"]);
        dir.renew_agent("node-a", "4a05", "4a04").unwrap();
        assert!(
            dir.renew_agent("node-z", "", "4a05").is_err(),
            "not admitted"
        );
        assert!(dir.admit_agent("node-a", "not hex\"").is_err());
        // Revoking one certificate leaves the other.
        assert_eq!(
            dir.remove_agent_certificate("4a05").unwrap(),
            Some(("node-a".to_string(), false))
        );
        assert_eq!(dir.agent_serials("node-a").unwrap(), ["4a04"]);
        assert_eq!(dir.remove_agent_certificate("ffff").unwrap(), None);
        let users = std::fs::read_to_string(dir.nats_users()).unwrap();
        assert!(
            users.contains("\"devctl.node.node-b.heartbeat\""),
            "{users}"
        );
        assert!(
            users.contains("\"CN=devctl-scheduler,OU=scheduler,O=devctl\""),
            "{users}"
        );
        assert!(!dir.remove_agent("node-a").unwrap());
        assert!(!dir.remove_agent("node-a").unwrap());
        let users = std::fs::read_to_string(dir.nats_users()).unwrap();
        assert!(!users.contains("node-a"), "{users}");
        assert!(dir.admit_agent("../x", "4a06").is_err());
        // A new CA drops every agent.
        dir.init(&[], true).unwrap();
        assert!(dir.admitted_agents().unwrap().is_empty());
    }
}
