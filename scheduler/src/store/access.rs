//! Records of access: join tokens that have been used, and API tokens
//! (with the hash of their secret, never the secret).
//!
//! Tables:
//! - `join_tokens_used`: join token id → name it was used for
//! - `api_tokens`: token name → [`StoredToken`]

use devctl_proto::pb;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Store, StoreError, decode};

pub(super) const JOIN_TOKENS_USED: TableDefinition<'_, &str, &str> =
    TableDefinition::new("join_tokens_used");
pub(super) const API_TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("api_tokens");

/// An API token as stored: its public record and the SHA-256 of its secret.
#[derive(Clone, PartialEq, Message)]
pub struct StoredToken {
    /// What the API shows.
    #[prost(message, optional, tag = "1")]
    pub token: Option<pb::ApiToken>,
    /// SHA-256 of the secret part.
    #[prost(bytes = "vec", tag = "2")]
    pub hash: Vec<u8>,
}

impl Store {
    /// Records a new API token. Fails with [`StoreError::NameTaken`] if a
    /// token of that name exists (revoked ones too: names are not reused).
    pub async fn insert_api_token(&self, t: StoredToken) -> Result<(), StoreError> {
        let name = t.token.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        self.write(move |db, _| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(API_TOKENS)?;
                if table.get(name.as_str())?.is_some() {
                    return Err(StoreError::NameTaken(name));
                }
                table.insert(name.as_str(), t.encode_to_vec().as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Replaces an API token's record.
    pub async fn update_api_token(&self, t: StoredToken) -> Result<(), StoreError> {
        let name = t.token.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        self.write(move |db, _| {
            let txn = db.begin_write()?;
            txn.open_table(API_TOKENS)?
                .insert(name.as_str(), t.encode_to_vec().as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Every API token, in name order.
    pub fn api_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(API_TOKENS)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}
