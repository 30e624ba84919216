//! Image archives pushed without a registry (`ImportImageCommand`): the
//! archive arrives from the scheduler on the `down` pipe into a file named
//! by its SHA-256, is checked, then loaded into the engine (`docker load`);
//! progress and the outcome go back on `up`.
//!
//! ```text
//!  scheduler ==down: archive[offset..]==> agent --> DIR/<sha256>.part
//!            <==up: progress, outcome====       --> engine: POST /images/load
//! ```
//!
//! The file outlives a cut transfer (the agent's restart, the scheduler's
//! loss): the next command for the same archive is answered with the bytes
//! the file holds, and the scheduler sends only the rest. The file is
//! deleted once loaded, when its checksum or its load fails (it is bad),
//! and when it is a day old (an abandoned push).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use devctl_proto::{
    pb,
    pipe::{PipeReceiver, PipeSender},
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::{build::send, bus, dispatch::Dispatcher, runtime::ContainerRuntime};

/// The largest archive an agent takes.
pub const MAX_ARCHIVE: u64 = 64 << 30;

/// Where archives are received, and which are being received now.
#[derive(Debug, Clone)]
pub struct Imports {
    dir: PathBuf,
    busy: Arc<Mutex<HashSet<String>>>,
}

impl Default for Imports {
    /// Under the system's temporary directory (an agent without a data
    /// directory).
    fn default() -> Self {
        Self::new(std::env::temp_dir().join("devctl-agent-imports"))
    }
}

impl Imports {
    /// Archives received in `dir` (made 0700 when the first one arrives).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            busy: Arc::default(),
        }
    }

    /// Deletes archives abandoned over a day ago (at start).
    pub fn sweep(&self) {
        devctl_proto::archive::remove_stale(&self.dir, std::time::Duration::from_secs(24 * 3600));
    }

    /// Checks `command` and claims its archive: the transfer to serve once
    /// its pipes are open, with the bytes already held (the reply's
    /// offset). `Err`: the error code and why it is refused.
    pub fn accept(
        &self,
        command: pb::ImportImageCommand,
    ) -> Result<OpenedImport, (pb::AgentErrorCode, String)> {
        let invalid = |m: String| (pb::AgentErrorCode::Invalid, m);
        let (Some(up), Some(down)) = (command.up.clone(), command.down.clone()) else {
            return Err(invalid("import image: no stream setup".into()));
        };
        let hex = &command.sha256;
        if hex.len() != 64
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
            || hex.to_lowercase() != *hex
        {
            return Err(invalid(format!(
                "import image: {hex:?} is not a lower-case hex SHA-256"
            )));
        }
        if command.size_bytes == 0 || command.size_bytes > MAX_ARCHIVE {
            return Err(invalid(format!(
                "import image: an archive of {} bytes (the agent takes 1 to {MAX_ARCHIVE})",
                command.size_bytes
            )));
        }
        if !self.busy.lock().expect("imports lock").insert(hex.clone()) {
            return Err((
                pb::AgentErrorCode::Conflict,
                format!("archive {hex} is being received by another transfer now"),
            ));
        }
        let claim = Claim {
            busy: Arc::clone(&self.busy),
            sha256: hex.clone(),
        };
        devctl_proto::pki::create_private_dir(&self.dir).map_err(|e| {
            (
                pb::AgentErrorCode::Engine,
                format!("{}: {e}", self.dir.display()),
            )
        })?;
        let path = self.dir.join(format!("{hex}.part"));
        let offset = match std::fs::metadata(&path) {
            Ok(m) if m.len() <= command.size_bytes => m.len(),
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
                0
            }
            Err(_) => 0,
        };
        Ok(OpenedImport {
            command,
            up,
            down,
            path,
            offset,
            _claim: claim,
        })
    }
}

/// Releases an archive's claim when the transfer ends.
#[derive(Debug)]
struct Claim {
    busy: Arc<Mutex<HashSet<String>>>,
    sha256: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.busy.lock().expect("imports lock").remove(&self.sha256);
    }
}

/// A transfer the dispatcher accepted: its pipes are still to be opened
/// (before the command is answered).
#[derive(Debug)]
pub struct OpenedImport {
    /// What to receive.
    pub command: pb::ImportImageCommand,
    /// Agent -> scheduler: progress and outcome.
    pub up: pb::StreamSetup,
    /// Scheduler -> agent: the archive.
    pub down: pb::StreamSetup,
    /// The file it is received in.
    path: PathBuf,
    /// Bytes the file held when the command came.
    pub offset: u64,
    _claim: Claim,
}

/// What becomes of the file after a transfer.
enum Keep {
    /// Keep it: a later transfer continues it.
    Yes,
    /// Delete it: loaded, or bad.
    No,
}

/// Serves one transfer until the image is loaded, a pipe fails or `stop`
/// is cancelled (the agent is stopping). Counted in `count` while it
/// runs.
pub async fn serve<R: ContainerRuntime>(
    import: OpenedImport,
    pipes: bus::TunnelPipes,
    dispatcher: Arc<Dispatcher<R>>,
    stop: CancellationToken,
    count: bus::StreamCount,
) {
    let _counted = count.counted();
    let bus::TunnelPipes { mut up, mut down } = pipes;
    let started = std::time::Instant::now();
    let (sha, image) = (&import.command.sha256, &import.command.image_id);
    let (outcome, keep) = tokio::select! {
        _ = stop.cancelled() => (Err(devctl_proto::bus::AGENT_STOPPING.to_string()), Keep::Yes),
        done = run(&import, &mut up, &mut down, dispatcher.runtime()) => done,
    };
    match &outcome {
        Ok(()) => {
            tracing::info!(sha256 = %sha, image = %image, offset = import.offset, took = ?started.elapsed(), "image loaded")
        }
        Err(e) => {
            tracing::info!(sha256 = %sha, image = %image, error = %e, "image transfer failed")
        }
    }
    if let Keep::No = keep {
        let _ = tokio::fs::remove_file(&import.path).await;
    }
    down.cancel().await;
    up.finish(outcome.err().as_deref()).await;
}

async fn run<R: ContainerRuntime>(
    import: &OpenedImport,
    up: &mut PipeSender,
    down: &mut PipeReceiver,
    runtime: &R,
) -> (Result<(), String>, Keep) {
    let size = import.command.size_bytes;
    if let Err(e) = receive(&import.path, import.offset, size, down).await {
        return (Err(e), Keep::Yes);
    }
    let _ = send(up, b"received; checking the archive\n").await;
    let path = import.path.clone();
    let digest = match tokio::task::spawn_blocking(move || {
        devctl_proto::archive::sha256_file(&path)
    })
    .await
    {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return (Err(format!("reading the archive: {e}")), Keep::No),
        Err(e) => return (Err(e.to_string()), Keep::Yes),
    };
    if digest != import.command.sha256 {
        return (
            Err(format!(
                "the archive received hashes to {digest}, not {}: it was damaged on the way (the next push sends it whole)",
                import.command.sha256
            )),
            Keep::No,
        );
    }
    let _ = send(up, b"loading into the engine\n").await;
    let mut output = runtime.load_image(import.path.clone());
    while let Some(item) = output.next().await {
        match item {
            Ok(text) => {
                if let Err(e) = send(up, &text).await {
                    return (Err(e), Keep::Yes);
                }
            }
            Err(e) => {
                return (
                    Err(format!("the engine did not load the archive: {e}")),
                    Keep::No,
                );
            }
        }
    }
    (Ok(()), Keep::No)
}

/// Appends the archive's bytes from `down` to `path` (which holds
/// `offset` of them) until the scheduler ends the stream, then checks
/// that all `size` arrived and makes them durable.
async fn receive(
    path: &Path,
    offset: u64,
    size: u64,
    down: &mut PipeReceiver,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(io)?;
    // Bytes beyond `offset` (written after the reply was made) are not
    // what the scheduler sends next.
    file.set_len(offset).await.map_err(io)?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut total = offset;
    loop {
        let next = tokio::time::timeout(devctl_proto::bus::STREAM_IDLE_LIMIT, down.recv()).await;
        let Ok(next) = next else {
            let _ = file.flush().await;
            return Err("the scheduler stopped sending the archive".into());
        };
        match next {
            Some(Ok(piece)) => {
                total += piece.len() as u64;
                if total > size {
                    let _ = file.flush().await;
                    return Err(format!(
                        "more of the archive arrived than the {size} bytes announced"
                    ));
                }
                file.write_all(&piece).await.map_err(io)?;
            }
            Some(Err(e)) => {
                let _ = file.flush().await;
                return Err(format!("receiving the archive: {e}"));
            }
            None => break,
        }
    }
    file.flush().await.map_err(io)?;
    if total != size {
        return Err(format!(
            "the archive ended after {total} of its {size} bytes"
        ));
    }
    file.get_ref().sync_data().await.map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(sha: &str, size: u64) -> pb::ImportImageCommand {
        pb::ImportImageCommand {
            sha256: sha.into(),
            size_bytes: size,
            image_id: String::new(),
            up: Some(pb::StreamSetup::default()),
            down: Some(pb::StreamSetup::default()),
            session: "s".into(),
        }
    }

    #[test]
    fn accept_answers_with_what_the_file_holds_and_claims_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let imports = Imports::new(dir.path().join("imports"));
        let sha = "a".repeat(64);

        let first = imports.accept(command(&sha, 100)).unwrap();
        assert_eq!(first.offset, 0);
        // The same archive again while the first holds it: refused.
        let (code, _) = imports.accept(command(&sha, 100)).unwrap_err();
        assert_eq!(code, pb::AgentErrorCode::Conflict);
        std::fs::write(&first.path, [0u8; 40]).unwrap();
        drop(first);

        // Released: the next transfer continues after the 40 bytes held.
        let again = imports.accept(command(&sha, 100)).unwrap();
        assert_eq!(again.offset, 40);
        drop(again);
        // A file longer than the archive is not part of it: start over.
        let again = imports.accept(command(&sha, 10)).unwrap();
        assert_eq!(again.offset, 0);
        assert!(!again.path.exists());
    }

    #[test]
    fn bad_commands_are_invalid() {
        let imports = Imports::new(tempfile::tempdir().unwrap().path().join("i"));
        for (sha, size) in [
            ("A".repeat(64), 1),
            ("a".repeat(63), 1),
            ("../".repeat(21) + "a", 1),
            ("a".repeat(64), 0),
            ("a".repeat(64), MAX_ARCHIVE + 1),
        ] {
            let (code, _) = imports.accept(command(&sha, size)).unwrap_err();
            assert_eq!(code, pb::AgentErrorCode::Invalid, "{sha} {size}");
        }
        let mut c = command(&"a".repeat(64), 1);
        c.down = None;
        assert_eq!(
            imports.accept(c).unwrap_err().0,
            pb::AgentErrorCode::Invalid
        );
    }
}
