//! API tokens: bearer credentials for scripts and generated clients.
//!
//! A token reads `dvt_<id>_<secret>`. The store keeps its record and the
//! SHA-256 of the secret, never the secret; this registry keeps the same in
//! memory (by id) so checking a call costs one hash and one map lookup.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use devctl_proto::{
    enroll::random_bytes,
    identity::{Identity, Role},
    pb,
};
use thiserror::Error;

use crate::store::{Store, StoreError, StoredToken};

/// Why a bearer token is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not of the form `dvt_<id>_<secret>`, or unknown, or a wrong secret.
    #[error(
        "the API token is not valid; check it was copied whole (dvt_...), or create one with `devctl tokens create`"
    )]
    Invalid,
    /// Revoked.
    #[error("the API token {0:?} was revoked")]
    Revoked(String),
    /// Expired.
    #[error("the API token {0:?} has expired; create a new one with `devctl tokens create`")]
    Expired(String),
}

/// A new token's secret and its stored form.
#[derive(Debug)]
pub struct NewToken {
    /// `dvt_<id>_<secret>`: shown once.
    pub secret: String,
    /// What is stored.
    pub stored: StoredToken,
}

fn digest(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

fn split(bearer: &str) -> Option<(&str, &str)> {
    let rest = bearer.strip_prefix("dvt_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Makes a token (not yet stored) for `record` (whose `id` is set here).
pub fn mint(mut record: pb::ApiToken) -> NewToken {
    let id = devctl_proto::pki::hex(&random_bytes::<6>());
    let secret = B64.encode(random_bytes::<32>());
    record.id = id.clone();
    NewToken {
        stored: StoredToken {
            token: Some(record),
            hash: digest(&secret),
        },
        secret: format!("dvt_{id}_{secret}"),
    }
}

/// Whether `t` reads only its identity's containers: marked so at
/// creation, and any viewer token acting as its own creator (records made
/// before the mark existed: a developer could only make those).
pub fn own_containers_only(t: &pb::ApiToken) -> bool {
    t.own_containers_only || (t.role == Role::Viewer.as_str() && t.identity == t.created_by)
}

/// Seconds since the Unix epoch (0: unset).
fn unix(t: &Option<prost_types::Timestamp>) -> i64 {
    system_time(t)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}

fn system_time(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.as_ref().and_then(|t| SystemTime::try_from(*t).ok())
}

/// The tokens of a running scheduler; clones share them.
#[derive(Debug, Clone)]
pub struct ApiTokens {
    // id -> token. std lock: held for a lookup or an insert only.
    by_id: Arc<RwLock<HashMap<String, StoredToken>>>,
}

impl ApiTokens {
    /// Loads every token from `store`.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let by_id = store
            .api_tokens()?
            .into_iter()
            .filter_map(|t| Some((t.token.as_ref()?.id.clone(), t)))
            .collect();
        Ok(Self {
            by_id: Arc::new(RwLock::new(by_id)),
        })
    }

    /// Remembers a token (after the store recorded it).
    pub fn put(&self, t: StoredToken) {
        if let Some(id) = t.token.as_ref().map(|r| r.id.clone()) {
            self.by_id.write().expect("tokens lock").insert(id, t);
        }
    }

    /// Every token record, in name order.
    pub fn list(&self) -> Vec<StoredToken> {
        let mut all: Vec<StoredToken> = self
            .by_id
            .read()
            .expect("tokens lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| {
            let name = |t: &StoredToken| t.token.as_ref().map(|t| t.name.clone());
            name(a).cmp(&name(b))
        });
        all
    }

    /// Whether the token with id `id` has been revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.by_id
            .read()
            .expect("tokens lock")
            .get(id)
            .and_then(|t| t.token.as_ref())
            .is_some_and(|t| t.revoke_time.is_some())
    }

    /// Whether some token acts as `identity`.
    pub fn acting_as(&self, identity: &str) -> bool {
        self.by_id
            .read()
            .expect("tokens lock")
            .values()
            .filter_map(|t| t.token.as_ref())
            .any(|t| t.identity == identity)
    }

    /// The token named `name`.
    pub fn by_name(&self, name: &str) -> Option<StoredToken> {
        self.by_id
            .read()
            .expect("tokens lock")
            .values()
            .find(|t| t.token.as_ref().is_some_and(|r| r.name == name))
            .cloned()
    }

    /// The identity a bearer token stands for, if it is valid at `now`.
    pub fn check(&self, bearer: &str, now: SystemTime) -> Result<Identity, TokenError> {
        let (id, secret) = split(bearer).ok_or(TokenError::Invalid)?;
        let map = self.by_id.read().expect("tokens lock");
        let stored = map.get(id).ok_or(TokenError::Invalid)?;
        // Both sides are SHA-256 digests: comparing them leaks nothing of
        // the secret, but compare in constant time all the same.
        let given = digest(secret);
        if given.len() != stored.hash.len()
            || given
                .iter()
                .zip(&stored.hash)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return Err(TokenError::Invalid);
        }
        let record = stored.token.as_ref().ok_or(TokenError::Invalid)?;
        if record.revoke_time.is_some() {
            return Err(TokenError::Revoked(record.name.clone()));
        }
        if system_time(&record.expire_time).is_some_and(|exp| exp <= now) {
            return Err(TokenError::Expired(record.name.clone()));
        }
        let role: Role = record.role.parse().map_err(|_| TokenError::Invalid)?;
        Ok(Identity {
            name: record.identity.clone(),
            role,
            serial: format!("token:{}", record.id),
            issued_at: unix(&record.create_time),
            expires_at: unix(&record.expire_time),
            own_only: own_containers_only(record),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expire_in: Option<Duration>) -> pb::ApiToken {
        let now = SystemTime::now();
        pb::ApiToken {
            name: "ci".into(),
            identity: "alice".into(),
            role: "developer".into(),
            created_by: "alice".into(),
            create_time: Some(now.into()),
            expire_time: expire_in.map(|d| (now + d).into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_minted_token_authenticates_as_its_identity_and_nothing_else_does() {
        let tokens = ApiTokens {
            by_id: Default::default(),
        };
        let t = mint(record(Some(Duration::from_secs(60))));
        assert!(!t.stored.hash.is_empty());
        assert!(!format!("{:?}", t.stored).contains(t.secret.splitn(3, '_').nth(2).unwrap()));
        let secret = t.secret.clone();
        tokens.put(t.stored);
        let id = tokens.check(&secret, SystemTime::now()).unwrap();
        assert_eq!((id.name.as_str(), id.role), ("alice", Role::Developer));
        assert!(id.serial.starts_with("token:"));

        let wrong = format!("{}x", secret);
        assert_eq!(
            tokens.check(&wrong, SystemTime::now()),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            tokens.check("Bearer nonsense", SystemTime::now()),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            tokens.check(&secret, SystemTime::now() + Duration::from_secs(120)),
            Err(TokenError::Expired("ci".into()))
        );
        let mut revoked = tokens.by_name("ci").unwrap();
        revoked.token.as_mut().unwrap().revoke_time = Some(SystemTime::now().into());
        tokens.put(revoked);
        assert_eq!(
            tokens.check(&secret, SystemTime::now()),
            Err(TokenError::Revoked("ci".into()))
        );
    }
}
