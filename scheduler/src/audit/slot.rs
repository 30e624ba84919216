//! The per-call slot: what is known about one call, shared by the layer
//! (which records it), authentication (identity, rate limits) and the
//! handler (target). Lives in the request's extensions.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use devctl_proto::identity::Identity;
use tonic::{Request, Status};

use super::capped;
use crate::{
    cluster::{Error, ErrorKind},
    ratelimit::RateLimiter,
};

/// The response metadata key of a rate-limited call: milliseconds until
/// the caller may call again.
pub(super) const RETRY_AFTER_MS: &str = "retry-after-ms";

/// What is known about one call, shared by the layer (which records it),
/// the interceptor (identity) and the handler (target). Lives in the
/// request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    inner: Arc<CallInner>,
}

#[derive(Debug)]
struct CallInner {
    // std Mutex: a few field writes, never held across an await.
    state: Mutex<CallState>,
    limiter: Option<RateLimiter>,
    anonymous: Option<Anonymous>,
    source_ip: Option<std::net::IpAddr>,
}

/// The limit per source address on calls without usable credentials.
#[derive(Debug, Clone)]
pub(super) struct Anonymous {
    limiter: RateLimiter,
    // Calls it refused so far (logged now and then).
    refused: Arc<AtomicU64>,
}

impl Anonymous {
    /// Limits with `limiter`; nothing refused yet.
    pub(super) fn new(limiter: RateLimiter) -> Self {
        Self {
            limiter,
            refused: Arc::default(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct CallState {
    pub(super) identity: Option<Identity>,
    pub(super) target: String,
    pub(super) rate_limited: bool,
    // Refused by the per-source limit: not recorded (a flood must not
    // grow the log).
    pub(super) unrecorded: bool,
}

impl Call {
    pub(super) fn new(
        limiter: Option<RateLimiter>,
        anonymous: Option<Anonymous>,
        source_ip: Option<std::net::IpAddr>,
    ) -> Self {
        Self {
            inner: Arc::new(CallInner {
                state: Mutex::new(CallState::default()),
                limiter,
                anonymous,
                source_ip,
            }),
        }
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.inner.state.lock().expect("audit call lock")
    }

    /// Records what the call acts on (a container or node name).
    pub(crate) fn target(&self, name: &str) {
        // What a caller sent, not yet validated: only as much as a name
        // can be (a longer one is refused anyway).
        self.state().target = capped(name, MAX_TARGET_LEN);
    }
}

/// The most of a call's target the audit log keeps (the longest name
/// any call takes: a DNS subdomain).
const MAX_TARGET_LEN: usize = 253;
/// How often (in refused calls) the per-source limit logs a warning.
const ANONYMOUS_WARN_EVERY: u64 = 1000;

/// The call slot of `req`, if the audit layer is in place.
pub(crate) fn call<T>(req: &Request<T>) -> Option<Call> {
    req.extensions().get::<Call>().cloned()
}

/// Records what the call `req` acts on (a container or node name, …).
pub(crate) fn target<T>(req: &Request<T>, name: &str) {
    if let Some(c) = req.extensions().get::<Call>() {
        c.target(name);
    }
}

/// Called by authentication once the caller is known: records the identity
/// for the audit log and takes one call of its rate limit. Refused:
/// RESOURCE_EXHAUSTED with the time to wait in the message, in the
/// `retry-after-ms` metadata and in the details (`RetryInfo`, reason
/// `RATE_LIMITED`).
pub(crate) fn admit<T>(req: &Request<T>, id: &Identity) -> Result<(), Status> {
    let Some(call) = req.extensions().get::<Call>() else {
        return Ok(());
    };
    call.state().identity = Some(id.clone());
    let Some(limiter) = &call.inner.limiter else {
        return Ok(());
    };
    let Err(wait) = limiter.check(&id.name) else {
        return Ok(());
    };
    call.state().rate_limited = true;
    Err(limited(
        format!("rate limit exceeded for {id}: {}", limiter.limit()),
        wait,
    ))
}

/// Called for a call without usable credentials (a Join, or one about to
/// be refused as UNAUTHENTICATED): takes one call of its source address's
/// rate limit. Refused: RESOURCE_EXHAUSTED with the time to wait, and the
/// call is not recorded in the audit log.
pub(crate) fn admit_anonymous<T>(req: &Request<T>) -> Result<(), Status> {
    let Some(call) = req.extensions().get::<Call>() else {
        return Ok(());
    };
    let (Some(anon), Some(ip)) = (&call.inner.anonymous, call.inner.source_ip) else {
        return Ok(());
    };
    let Err(wait) = anon.limiter.check(&ip.to_string()) else {
        return Ok(());
    };
    call.state().unrecorded = true;
    let n = anon.refused.fetch_add(1, Ordering::Relaxed) + 1;
    if n == 1 || n % ANONYMOUS_WARN_EVERY == 0 {
        tracing::warn!(source = %ip, refused_total = n, limit = %anon.limiter.limit(),
            "calls without credentials rate-limited (not recorded in the audit log)");
    }
    Err(limited(
        format!(
            "rate limit exceeded for calls without credentials from {ip}: {}",
            anon.limiter.limit()
        ),
        wait,
    ))
}

/// RESOURCE_EXHAUSTED: `what`, then the wait in the message, in the
/// `retry-after-ms` metadata and in the details.
fn limited(what: String, wait: Duration) -> Status {
    let ms = wait.as_millis().max(1);
    let retry_after = Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX));
    let mut status = Status::from(Error::new(
        ErrorKind::RateLimited { retry_after },
        format!("{what}; retry in {ms} ms"),
    ));
    if let Ok(v) = ms.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_MS, v);
    }
    status
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::{super::fixtures::alice, *};

    #[test]
    fn admit_refuses_over_the_limit_with_a_retry_hint() {
        let limiter = RateLimiter::new(crate::ratelimit::Limit::new(0.5, 1).unwrap());
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(Call::new(Some(limiter), None, None));
        admit(&req, &alice()).unwrap();
        let refused = admit(&req, &alice()).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(
            refused.message().contains("alice (developer)")
                && refused.message().contains("0.5 calls/s, burst 1; retry in"),
            "{}",
            refused.message()
        );
        let ms: u64 = refused
            .metadata()
            .get(RETRY_AFTER_MS)
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1900..=2000).contains(&ms), "{ms}");
        let details = tonic_types::StatusExt::get_error_details(&refused);
        assert_eq!(details.error_info().unwrap().reason, "RATE_LIMITED");
        let delay = details.retry_info().unwrap().retry_delay.unwrap();
        assert_eq!(delay.as_millis(), u128::from(ms));
        assert!(super::call(&req).unwrap().state().rate_limited);
    }
}
