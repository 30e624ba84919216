//! Registry credentials, encrypted at rest.
//!
//! Table `registries`: host → [`StoredRegistry`]: the public record and the
//! password sealed with ChaCha20-Poly1305 (ring) under the cluster's
//! registry key, a fresh random nonce per record, the host as associated
//! data (a sealed password cannot be moved to another host's record).
//!
//! The key: 32 random bytes in `registry.key` beside the database file
//! (the scheduler's data dir), mode 0600, created at the first use (never
//! before a password is stored). The database alone (a copied backup, say)
//! does not reveal a password; the data dir as a whole does, as it holds
//! the CA key too. There is no rotation: a lost or replaced key makes the
//! stored passwords unreadable (the pull then fails with a message saying
//! to add the registry again); to rotate, remove every registry, delete
//! the key file, and add them again.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use devctl_proto::pb;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use ring::{
    aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};

use super::{Store, StoreError, decode};

pub(super) const REGISTRIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("registries");

/// The key file's name, in the directory of the database.
pub(super) const KEY_FILE: &str = "registry.key";

/// A registry host's credentials as stored.
#[derive(Clone, PartialEq, Message)]
pub struct StoredRegistry {
    /// What the API shows.
    #[prost(message, optional, tag = "1")]
    pub registry: Option<pb::Registry>,
    /// The nonce the password was sealed with.
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
    /// The sealed password (ciphertext and tag).
    #[prost(bytes = "vec", tag = "3")]
    pub sealed: Vec<u8>,
}

/// Why credentials could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key file could not be made or read.
    #[error("registry key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A stored password does not open with the key (the key file was
    /// replaced or the record damaged).
    #[error(
        "the stored password of registry {0} cannot be decrypted with this scheduler's registry key (was {KEY_FILE} replaced?); store it again with `devctl registries add {0} --username USER --password-stdin`"
    )]
    Unreadable(String),
}

/// The registry key, loaded (or made) at the first use.
#[derive(Debug)]
pub(super) struct KeySlot {
    path: PathBuf,
    // std lock: held only while the small key file is read or made.
    key: Mutex<Option<[u8; 32]>>,
}

impl KeySlot {
    /// The key of the database at `db_path` (not read yet).
    pub(super) fn beside(db_path: &Path) -> Self {
        Self {
            path: db_path.with_file_name(KEY_FILE),
            key: Mutex::new(None),
        }
    }

    /// The key; `create`: make it if the file does not exist.
    fn get(&self, create: bool) -> Result<Option<LessSafeKey>, VaultError> {
        let mut slot = self.key.lock().expect("registry key lock poisoned");
        if slot.is_none() {
            *slot = self.load(create)?;
        }
        Ok(slot.map(|k| {
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("a 32-byte key"))
        }))
    }

    fn load(&self, create: bool) -> Result<Option<[u8; 32]>, VaultError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let err = |message: String| VaultError::Key {
            path: self.path.clone(),
            message,
        };
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let meta = std::fs::metadata(&self.path).map_err(|e| err(e.to_string()))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(err(format!(
                        "readable by others (mode {:o}); chmod 600 it",
                        meta.permissions().mode() & 0o777
                    )));
                }
                let key: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| err("not 32 bytes: damaged".into()))?;
                Ok(Some(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| err("no randomness".into()))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&self.path)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(&key).map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
                tracing::info!(path = %self.path.display(), "registry key created");
                Ok(Some(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e.to_string())),
        }
    }
}

fn seal(key: &LessSafeKey, host: &str, password: &str) -> Result<(Vec<u8>, Vec<u8>), VaultError> {
    let mut nonce = [0u8; aead::NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| VaultError::Unreadable(host.to_string()))?;
    let mut sealed = password.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(host.as_bytes()),
        &mut sealed,
    )
    .map_err(|_| VaultError::Unreadable(host.to_string()))?;
    Ok((nonce.to_vec(), sealed))
}

fn open(key: &LessSafeKey, host: &str, stored: &StoredRegistry) -> Result<String, VaultError> {
    let unreadable = || VaultError::Unreadable(host.to_string());
    let nonce: [u8; aead::NONCE_LEN] = stored
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| unreadable())?;
    let mut buf = stored.sealed.clone();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(host.as_bytes()),
            &mut buf,
        )
        .map_err(|_| unreadable())?;
    String::from_utf8(plain.to_vec()).map_err(|_| unreadable())
}

impl Store {
    /// Stores `registry`'s credentials with `password` sealed, replacing
    /// any the host had (keeping their first `create_time`). The record as
    /// stored.
    pub async fn put_registry(
        &self,
        mut registry: pb::Registry,
        password: String,
    ) -> Result<pb::Registry, VaultError> {
        let key = self
            .inner
            .registry_key
            .get(true)?
            .expect("created when missing");
        let (nonce, sealed) = seal(&key, &registry.host, &password)?;
        drop(password);
        let out = self
            .write(move |db, _| {
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(REGISTRIES)?;
                    let earlier = table
                        .get(registry.host.as_str())?
                        .map(|v| decode::<StoredRegistry>(&registry.host, v.value()))
                        .transpose()?;
                    if let Some(first) =
                        earlier.and_then(|e| e.registry).and_then(|r| r.create_time)
                    {
                        registry.create_time = Some(first);
                    }
                    let stored = StoredRegistry {
                        registry: Some(registry.clone()),
                        nonce,
                        sealed,
                    };
                    table.insert(registry.host.as_str(), stored.encode_to_vec().as_slice())?;
                }
                txn.commit()?;
                Ok(registry)
            })
            .await?;
        Ok(out)
    }

    /// Every registry host with credentials, in host order (no password).
    pub fn registries(&self) -> Result<Vec<pb::Registry>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(REGISTRIES)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (k, v) = entry?;
            let stored: StoredRegistry = decode(k.value(), v.value())?;
            out.extend(stored.registry);
        }
        Ok(out)
    }

    /// Forgets `host`'s credentials: the record removed, `None` if it had
    /// none.
    pub async fn remove_registry(&self, host: &str) -> Result<Option<pb::Registry>, StoreError> {
        let host = host.to_string();
        self.write(move |db, _| {
            let txn = db.begin_write()?;
            let removed = {
                let mut table = txn.open_table(REGISTRIES)?;
                table
                    .remove(host.as_str())?
                    .map(|v| decode::<StoredRegistry>(&host, v.value()))
                    .transpose()?
            };
            txn.commit()?;
            Ok(removed.and_then(|r| r.registry))
        })
        .await
    }

    /// The credentials to pull from `host` with, decrypted; `None` when
    /// none are stored. For the agent's pull only: never log or return
    /// them.
    pub fn registry_auth(&self, host: &str) -> Result<Option<pb::RegistryAuth>, VaultError> {
        let stored: Option<StoredRegistry> = {
            let txn = self.db().begin_read().map_err(StoreError::from)?;
            let table = txn.open_table(REGISTRIES).map_err(StoreError::from)?;
            table
                .get(host)
                .map_err(StoreError::from)?
                .map(|v| decode(host, v.value()))
                .transpose()?
        };
        let Some(stored) = stored else {
            return Ok(None);
        };
        let Some(key) = self.inner.registry_key.get(false)? else {
            return Err(VaultError::Unreadable(host.to_string()));
        };
        let password = open(&key, host, &stored)?;
        Ok(Some(pb::RegistryAuth {
            host: host.to_string(),
            username: stored.registry.map(|r| r.username).unwrap_or_default(),
            password,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(host: &str) -> pb::Registry {
        pb::Registry {
            host: host.into(),
            username: "bot".into(),
            create_time: Some(std::time::SystemTime::UNIX_EPOCH.into()),
            update_time: Some(std::time::SystemTime::now().into()),
            created_by: "admin".into(),
        }
    }

    #[tokio::test]
    async fn passwords_are_sealed_at_rest_and_open_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        assert!(store.registry_auth("r.example.com").unwrap().is_none());
        assert!(
            !dir.path().join(KEY_FILE).exists(),
            "no key before a password"
        );
        store
            .put_registry(registry("r.example.com"), "pw-Zq81".into())
            .await
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let auth = store.registry_auth("r.example.com").unwrap().unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("bot", "pw-Zq81")
        );
        // Replacing keeps the first create time.
        let mut again = registry("r.example.com");
        again.create_time = Some(std::time::SystemTime::now().into());
        let stored = store.put_registry(again, "pw-2".into()).await.unwrap();
        assert_eq!(stored.create_time, registry("x").create_time);
        drop(store);
        let raw = std::fs::read(&path).unwrap();
        assert!(
            !raw.windows(4).any(|w| w == b"pw-2"),
            "the password is in the database file in clear"
        );
        // Another key: unreadable, with the fix in the message.
        std::fs::write(dir.path().join(KEY_FILE), [7u8; 32]).unwrap();
        let store = Store::open(&path).unwrap();
        let e = store
            .registry_auth("r.example.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("devctl registries add r.example.com"), "{e}");
        assert_eq!(store.registries().unwrap().len(), 1);
        assert!(
            store
                .remove_registry("r.example.com")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .remove_registry("r.example.com")
                .await
                .unwrap()
                .is_none()
        );
    }
}
