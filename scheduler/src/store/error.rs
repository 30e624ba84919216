//! The store's error type.

use thiserror::Error;

/// A store failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// A record could not be decoded (a corrupt or foreign file).
    #[error("store: corrupt record {key:?}: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoding error.
        source: prost::DecodeError,
    },
    /// A container of that name exists.
    #[error("a container named {0:?} already exists")]
    NameTaken(String),
    /// A blocking task failed.
    #[error("store task: {0}")]
    Task(String),
}

impl StoreError {
    /// Whether another process (a running scheduler) holds the database.
    pub fn is_held_elsewhere(&self) -> bool {
        matches!(self, StoreError::Db(redb::Error::DatabaseAlreadyOpen))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
