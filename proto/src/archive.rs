//! Image archives as `devctl images push` moves them: their SHA-256 (the
//! client, the scheduler and the agent compute it the same way, lower-case
//! hex), and the partial files a cut transfer leaves.

use std::{io::Read, path::Path};

/// A SHA-256 computed piece by piece.
#[derive(Clone)]
pub struct Sha256(ring::digest::Context);

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256 {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything added, as 64 lower-case hex digits.
    pub fn hex(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of the file at `path` (blocking: call it off the runtime's
/// threads for a large file).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.hex())
}

/// Deletes the files in `dir` last written over `max_age` ago (transfers
/// abandoned long ago); the number deleted. A missing `dir` has none.
pub fn remove_stale(dir: &Path, max_age: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), "deleted a partial image archive abandoned long ago");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            Sha256::default().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Sha256::default();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(sha256_file(&f).unwrap(), h_abc());
    }

    #[test]
    fn only_stale_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("new.part"), b"x").unwrap();
        assert_eq!(
            remove_stale(dir.path(), std::time::Duration::from_secs(60)),
            0
        );
        assert_eq!(remove_stale(dir.path(), std::time::Duration::ZERO), 1);
        assert!(!dir.path().join("new.part").exists());
        assert_eq!(
            remove_stale(&dir.path().join("missing"), std::time::Duration::ZERO),
            0
        );
    }

    fn h_abc() -> String {
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()
    }
}
