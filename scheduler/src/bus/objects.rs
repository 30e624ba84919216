//! Image archives pushed without a registry (`devctl images push`), kept in
//! a JetStream object store: chunked, each object's SHA-256 checked when it
//! is read back. Objects are named by the archive's hex SHA-256, so a push
//! of the same archive finds it stored and uploads nothing.
//!
//! The bucket has a size cap (`--image-store-size`): before an archive is
//! stored, the oldest archives are deleted until it fits. A store that
//! failed halfway leaves chunks no object names; [`ImageArchives::sweep`]
//! deletes them (at start, and after any failed store).

use std::{collections::HashSet, path::Path};

use async_nats::jetstream::object_store::{self, ObjectStore};
use base64::Engine;
use tokio::io::AsyncReadExt;

use super::{Bus, BusError};

/// The object store's bucket (its stream is `OBJ_devctl-images`).
pub use devctl_proto::bus::IMAGE_BUCKET;

/// The size of one chunk of a stored archive (well under NATS' default
/// 1 MB message limit).
const CHUNK: usize = 512 << 10;

fn nats(e: impl std::fmt::Display) -> BusError {
    BusError::Nats(format!("JetStream object store: {e}"))
}

/// One stored archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredArchive {
    /// Hex SHA-256 of the archive (the object's name).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was stored (seconds since the epoch; 0 if unknown).
    pub stored_at: i64,
}

/// The image archive store; clones share it.
#[derive(Clone)]
pub struct ImageArchives {
    store: ObjectStore,
    jetstream: async_nats::jetstream::Context,
    max_bytes: u64,
}

impl std::fmt::Debug for ImageArchives {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageArchives")
            .field("bucket", &IMAGE_BUCKET)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl Bus {
    /// The image archive store, its bucket made (file storage, at most
    /// `max_bytes`) or its cap updated, and chunks of failed stores swept.
    pub async fn image_archives(&self, max_bytes: u64) -> Result<ImageArchives, BusError> {
        let cap = i64::try_from(max_bytes).unwrap_or(i64::MAX).max(1);
        let store = match self.jetstream.get_object_store(IMAGE_BUCKET).await {
            Ok(store) => {
                let mut stream = self
                    .jetstream
                    .get_stream(format!("OBJ_{IMAGE_BUCKET}"))
                    .await
                    .map_err(nats)?;
                let mut config = stream.info().await.map_err(nats)?.config.clone();
                if config.max_bytes != cap {
                    config.max_bytes = cap;
                    self.jetstream.update_stream(config).await.map_err(nats)?;
                }
                store
            }
            Err(_) => self
                .jetstream
                .create_object_store(object_store::Config {
                    bucket: IMAGE_BUCKET.into(),
                    description: Some("devctl: image archives of `devctl images push`".into()),
                    max_bytes: cap,
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(nats)?,
        };
        let archives = ImageArchives {
            store,
            jetstream: self.jetstream.clone(),
            max_bytes,
        };
        archives.sweep().await?;
        Ok(archives)
    }
}

impl ImageArchives {
    /// The largest archive the store takes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The stored archive `sha256`, if there is one (complete: an object
    /// exists only once all its chunks are stored).
    pub async fn get_info(&self, sha256: &str) -> Result<Option<StoredArchive>, BusError> {
        match self.store.info(sha256).await {
            Ok(info) if !info.deleted => Ok(Some(stored(&info))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(nats(e)),
        }
    }

    /// Every stored archive, oldest first.
    pub async fn list(&self) -> Result<Vec<StoredArchive>, BusError> {
        let mut out = Vec::new();
        for name in self.object_names().await? {
            if let Some(a) = self.get_info(&name).await? {
                out.push(a);
            }
        }
        out.sort_by_key(|a| a.stored_at);
        Ok(out)
    }

    /// Stores the archive in `file` as `sha256`, deleting the oldest stored
    /// archives until it fits under the cap. The store computes its own
    /// SHA-256 as it reads; a mismatch deletes the object again.
    pub async fn put_file(&self, sha256: &str, file: &Path) -> Result<StoredArchive, BusError> {
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|e| BusError::Nats(format!("{}: {e}", file.display())))?
            .len();
        self.make_room(size).await?;
        let mut reader = tokio::fs::File::open(file)
            .await
            .map_err(|e| BusError::Nats(format!("{}: {e}", file.display())))?;
        let meta = object_store::ObjectMetadata {
            name: sha256.to_string(),
            description: None,
            chunk_size: Some(CHUNK),
            ..Default::default()
        };
        let info = match self.store.put(meta, &mut reader).await {
            Ok(info) => info,
            Err(e) => {
                let _ = self.sweep().await;
                return Err(nats(e));
            }
        };
        let want = format!(
            "SHA-256={}",
            base64::engine::general_purpose::URL_SAFE.encode(hex_bytes(sha256))
        );
        if info.digest.as_deref() != Some(want.as_str()) {
            let _ = self.store.delete(sha256).await;
            return Err(BusError::Nats(format!(
                "the stored archive's digest {:?} is not its name's {want:?}",
                info.digest
            )));
        }
        Ok(stored(&info))
    }

    /// Reads archive `sha256` from byte `offset` on: a reader that fails
    /// at its end if the stored chunks do not hash to the archive's
    /// digest.
    pub async fn open(
        &self,
        sha256: &str,
        offset: u64,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, BusError> {
        let mut object = self.store.get(sha256).await.map_err(nats)?;
        // The object has no seek: read past what the reader holds (on the
        // scheduler's own bus, much faster than the agent's link).
        let skipped = tokio::io::copy(&mut (&mut object).take(offset), &mut tokio::io::sink())
            .await
            .map_err(nats)?;
        if skipped < offset {
            return Err(BusError::Nats(format!(
                "archive {sha256} has {skipped} bytes, fewer than the offset {offset}"
            )));
        }
        Ok(Box::new(object))
    }

    /// Deletes archive `sha256` (nothing if it is not stored).
    pub async fn delete(&self, sha256: &str) -> Result<(), BusError> {
        match self.store.delete(sha256).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(nats(e)),
        }
    }

    /// Deletes the oldest archives until `size` more bytes fit under the
    /// cap.
    async fn make_room(&self, size: u64) -> Result<(), BusError> {
        let stored = self.list().await?;
        let mut used: u64 = stored.iter().map(|a| a.size).sum();
        for old in stored {
            if used + size <= self.max_bytes {
                break;
            }
            tracing::info!(sha256 = %old.sha256, bytes = old.size, "image archive store full: deleting the oldest archive");
            self.delete(&old.sha256).await?;
            used = used.saturating_sub(old.size);
        }
        Ok(())
    }

    /// The names of the bucket's objects, from its stream's meta subjects
    /// (`$O.<bucket>.M.<base64 name>`).
    async fn object_names(&self) -> Result<Vec<String>, BusError> {
        let prefix = format!("$O.{IMAGE_BUCKET}.M.");
        let subjects = self.subjects(&format!("{prefix}>")).await?;
        Ok(subjects
            .iter()
            .filter_map(|s| s.strip_prefix(&prefix))
            .filter_map(|b| base64::engine::general_purpose::URL_SAFE.decode(b).ok())
            .filter_map(|b| String::from_utf8(b).ok())
            .collect())
    }

    /// The subjects of the bucket's stream that match `filter`.
    async fn subjects(&self, filter: &str) -> Result<Vec<String>, BusError> {
        use futures::TryStreamExt;
        let stream = self
            .jetstream
            .get_stream(format!("OBJ_{IMAGE_BUCKET}"))
            .await
            .map_err(nats)?;
        let found: Vec<(String, usize)> = stream
            .info_with_subjects(filter)
            .await
            .map_err(nats)?
            .try_collect()
            .await
            .map_err(nats)?;
        Ok(found.into_iter().map(|(s, _)| s).collect())
    }

    /// Deletes chunks no stored object names (a store that failed halfway,
    /// or the scheduler's loss during one).
    pub async fn sweep(&self) -> Result<(), BusError> {
        let mut live = HashSet::new();
        for name in self.object_names().await? {
            match self.store.info(&name).await {
                Ok(info) if !info.deleted => {
                    live.insert(info.nuid);
                }
                _ => {}
            }
        }
        let prefix = format!("$O.{IMAGE_BUCKET}.C.");
        let stream = self
            .jetstream
            .get_stream(format!("OBJ_{IMAGE_BUCKET}"))
            .await
            .map_err(nats)?;
        for subject in self.subjects(&format!("{prefix}>")).await? {
            let nuid = subject.strip_prefix(&prefix).unwrap_or_default();
            if !live.contains(nuid) {
                tracing::info!(%subject, "deleting the chunks of an image archive that was never completed");
                stream.purge().filter(&subject).await.map_err(nats)?;
            }
        }
        Ok(())
    }
}

fn stored(info: &object_store::ObjectInfo) -> StoredArchive {
    StoredArchive {
        sha256: info.name.clone(),
        size: info.size as u64,
        stored_at: info.modified.map(|t| t.unix_timestamp()).unwrap_or(0),
    }
}

/// The bytes of a hex string (its valid pairs; callers check the format).
fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}
