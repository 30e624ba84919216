//! Templates (TemplateService), stored as the API's `Template` message.
//!
//! Table:
//! - `templates`: template name → `Template`

use devctl_proto::pb;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Store, StoreError, decode};

const TEMPLATES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("templates");

impl Store {
    /// Stores `t` under its name (replacing any template of that name);
    /// the one it replaced, if any.
    pub async fn put_template(&self, t: pb::Template) -> Result<Option<pb::Template>, StoreError> {
        self.write(move |db, _| {
            let txn = db.begin_write()?;
            let before = {
                let mut table = txn.open_table(TEMPLATES)?;
                let before = match table.get(t.name.as_str())? {
                    Some(v) => Some(decode::<pb::Template>(&t.name, v.value())?),
                    None => None,
                };
                table.insert(t.name.as_str(), t.encode_to_vec().as_slice())?;
                before
            };
            txn.commit()?;
            Ok(before)
        })
        .await
    }

    /// Deletes template `name`; whether there was one.
    pub async fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |db, _| {
            let txn = db.begin_write()?;
            let existed = txn.open_table(TEMPLATES)?.remove(name.as_str())?.is_some();
            txn.commit()?;
            Ok(existed)
        })
        .await
    }

    /// Template `name`, if stored.
    pub fn template(&self, name: &str) -> Result<Option<pb::Template>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = match txn.open_table(TEMPLATES) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(name)? {
            Some(v) => Ok(Some(decode(name, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every template, in name order.
    pub fn templates(&self) -> Result<Vec<pb::Template>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = match txn.open_table(TEMPLATES) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}
