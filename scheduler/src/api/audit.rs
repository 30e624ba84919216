//! The audit log, and `devctl.v1.AuditService` that reads it.
//!
//! ```text
//! request ─► AuditLayer (around every service) ── inserts a Call slot ──┐
//!              │ method = URI path, source = TCP peer address            │
//!              ▼                                                         ▼
//!          authenticate ── audit::admit: identity into the slot, rate limit
//!              ▼
//!          handler ── audit::target(&req, name): the container or node
//!              ▼
//!          response: grpc-status in the headers (trailers-only) or in the
//!          trailers (the body is wrapped; a stream: when it ends; dropped
//!          before its end: CANCELLED)
//!              ▼ recorded if the method mutates (AUDITED_METHODS) or the
//!              │ call was refused (PERMISSION_DENIED, UNAUTHENTICATED,
//!              │ the rate limiter)
//!          bounded channel ─► writer task (owned by `serve`) ─► JetStream
//!                                                  DEVCTL_AUDIT (--audit-retention)
//! ```
//!
//! The caller's response never waits for the publish. When the channel is
//! full the call waits up to [`FULL_WAIT`] for room, then the entry is
//! dropped, counted and logged.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, SystemTime},
};

use devctl_proto::{
    identity::Identity,
    pb::{self, audit_service_server},
};
use futures::future::BoxFuture;
use http_body::{Body, Frame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, transport::server::TcpConnectInfo};

use super::{
    StreamApi,
    auth::{caller, must_be_admin},
    send_or_stop,
};
use crate::{bus::Bus, ratelimit::RateLimiter};

/// The methods recorded whatever their outcome: every call that changes
/// something. New services add theirs here. Any other method is recorded
/// only when the call is refused.
pub const AUDITED_METHODS: &[&str] = &[
    "/devctl.v1.ContainerService/CreateContainer",
    "/devctl.v1.ContainerService/StartContainer",
    "/devctl.v1.ContainerService/StopContainer",
    "/devctl.v1.ContainerService/RestartContainer",
    "/devctl.v1.ContainerService/DeleteContainer",
    "/devctl.v1.ContainerService/ExtendLease",
    "/devctl.v1.NodeService/CordonNode",
    "/devctl.v1.NodeService/UncordonNode",
    "/devctl.v1.NodeService/DrainNode",
    "/devctl.v1.ExecService/Exec",
    "/devctl.v1.TokenService/CreateToken",
    "/devctl.v1.TokenService/RevokeToken",
    "/devctl.v1.EnrollService/Join",
    "/devctl.v1.EnrollService/RenewCertificate",
];

/// The identity recorded for a call that carried no usable one.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// The response metadata key of a rate-limited call: milliseconds until
/// the caller may call again.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Entries waiting for the writer.
const QUEUE: usize = 4096;
/// How long a call waits for room in a full queue before its entry is
/// dropped.
pub const FULL_WAIT: Duration = Duration::from_millis(100);
/// How long the writer may take at shutdown to store what is queued.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

// ---- the per-call slot ----------------------------------------------------

/// What is known about one call, shared by the layer (which records it),
/// the interceptor (identity) and the handler (target). Lives in the
/// request's extensions.
#[derive(Debug, Clone)]
pub struct Call {
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
struct Anonymous {
    limiter: RateLimiter,
    // Calls it refused so far (logged now and then).
    refused: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct CallState {
    identity: Option<Identity>,
    target: String,
    rate_limited: bool,
    // Refused by the per-source limit: not recorded (a flood must not
    // grow the log).
    unrecorded: bool,
}

impl Call {
    fn new(
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

    fn state(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.inner.state.lock().expect("audit call lock")
    }

    /// Records what the call acts on (a container or node name).
    pub fn target(&self, name: &str) {
        // What a caller sent, not yet validated: only as much as a name
        // can be (a longer one is refused anyway).
        self.state().target = capped(name, MAX_TARGET_LEN);
    }
}

/// At most `max` bytes of `s` (cut at a character boundary).
fn capped(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The most of a call's target the audit log keeps (the longest name
/// any call takes: a DNS subdomain).
const MAX_TARGET_LEN: usize = 253;
/// The most of a method path kept (ours are under 64 bytes; a caller may
/// send any path to a service and be refused).
const MAX_METHOD_LEN: usize = 128;
/// The most of a status message kept (messages may quote what the caller
/// sent).
const MAX_MESSAGE_LEN: usize = 512;
/// The most of an identity's name and role kept (they come from a
/// certificate of the cluster CA or a stored token: already bounded).
const MAX_IDENTITY_LEN: usize = 253;
/// How often (in refused calls) the per-source limit logs a warning.
const ANONYMOUS_WARN_EVERY: u64 = 1000;

/// The call slot of `req`, if the audit layer is in place.
pub fn call<T>(req: &Request<T>) -> Option<Call> {
    req.extensions().get::<Call>().cloned()
}

/// Records what the call `req` acts on (a container or node name, …).
pub fn target<T>(req: &Request<T>, name: &str) {
    if let Some(c) = req.extensions().get::<Call>() {
        c.target(name);
    }
}

/// Called by authentication once the caller is known: records the identity
/// for the audit log and takes one call of its rate limit. Refused:
/// RESOURCE_EXHAUSTED with the time to wait in the message and in the
/// `retry-after-ms` metadata.
pub fn admit<T>(req: &Request<T>, id: &Identity) -> Result<(), Status> {
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
pub fn admit_anonymous<T>(req: &Request<T>) -> Result<(), Status> {
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

/// RESOURCE_EXHAUSTED: `what`, then the wait in the message and in the
/// `retry-after-ms` metadata.
fn limited(what: String, wait: Duration) -> Status {
    let ms = wait.as_millis().max(1);
    let mut status = Status::resource_exhausted(format!("{what}; retry in {ms} ms"));
    if let Ok(v) = ms.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_MS, v);
    }
    status
}

// ---- the sink and its writer ----------------------------------------------

/// Where finished calls go: a bounded queue to the writer task.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<pb::AuditEntry>,
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    fn dropped_one(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(dropped_total = n, "audit entry dropped: {why}");
    }

    /// Queues `entry` if there is room; gives it back if the queue is full.
    fn try_record(&self, entry: pb::AuditEntry) -> Option<pb::AuditEntry> {
        match self.tx.try_send(entry) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(e)) => Some(e),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped_one("the writer has stopped");
                None
            }
        }
    }

    /// Queues `entry`, waiting up to [`FULL_WAIT`] for room.
    async fn record(&self, entry: pb::AuditEntry) {
        if let Some(entry) = self.try_record(entry)
            && self.tx.send_timeout(entry, FULL_WAIT).await.is_err()
        {
            self.dropped_one("the queue stayed full");
        }
    }

    /// Queues `entry` without waiting (where no waiting is possible).
    fn record_now(&self, entry: pb::AuditEntry) {
        if self.try_record(entry).is_some() {
            self.dropped_one("the queue is full");
        }
    }

    /// Entries dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The task storing queued entries on the bus. Dropped without
/// [`AuditWriter::finish`], it still stores what is queued, then ends.
#[derive(Debug)]
pub struct AuditWriter {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl AuditWriter {
    /// Starts the writer; entries queued on the sink are published on
    /// `bus`, in order.
    pub fn spawn(bus: Bus) -> (AuditSink, AuditWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sink = AuditSink {
            tx,
            dropped: Arc::default(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_loop(bus, rx, stop.clone(), sink.dropped.clone()));
        (
            sink,
            AuditWriter {
                task: Some(task),
                stop,
            },
        )
    }

    /// Stores what is queued (up to a time limit), then ends. Call it once
    /// no call is in flight any more.
    pub async fn finish(mut self) {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(DRAIN_LIMIT, task).await.is_err() {
            tracing::warn!("audit entries still queued at shutdown were abandoned");
        }
    }
}

async fn write_loop(
    bus: Bus,
    mut rx: mpsc::Receiver<pb::AuditEntry>,
    stop: CancellationToken,
    dropped: Arc<AtomicU64>,
) {
    let store = |entry: pb::AuditEntry| {
        let (bus, dropped) = (bus.clone(), dropped.clone());
        async move {
            for attempt in 1..=3 {
                match bus.publish_audit(&entry).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "audit entry not stored yet");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                }
            }
            let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(dropped_total = n, method = %entry.method, identity = %entry.identity,
                "audit entry dropped: the bus did not store it");
        }
    };
    let mut last_check: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            entry = rx.recv() => match entry {
                Some(e) => {
                    store(e).await;
                    if last_check.is_none_or(|t| t.elapsed() >= USAGE_CHECK_EVERY) {
                        last_check = Some(tokio::time::Instant::now());
                        warn_if_full(&bus).await;
                    }
                }
                None => break,
            },
            _ = stop.cancelled() => {
                rx.close();
                while let Some(e) = rx.recv().await {
                    store(e).await;
                }
                break;
            }
        }
    }
}

/// How often, at most, the writer looks at the audit log's size.
const USAGE_CHECK_EVERY: Duration = Duration::from_secs(60);

/// Warns when the audit log is at its size cap: JetStream then drops the
/// oldest entries to store new ones (silently, so this says it).
async fn warn_if_full(bus: &Bus) {
    match bus.audit_usage().await {
        Ok((bytes, Some(cap))) if bytes.saturating_mul(10) >= cap.saturating_mul(9) => {
            tracing::warn!(
                bytes,
                cap,
                "the audit log is at its size cap (--audit-max-size): the oldest entries are being dropped"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "audit log size unknown"),
    }
}

// ---- the layer -------------------------------------------------------------

/// The tower layer around the whole router: sees every call, records the
/// audited ones. It also carries the rate limiter to [`admit`].
#[derive(Debug, Clone)]
pub struct AuditLayer {
    sink: AuditSink,
    limiter: Option<RateLimiter>,
    anonymous: Option<Anonymous>,
}

impl AuditLayer {
    /// Records into `sink`; `limiter`: the per-identity rate limit, if any.
    pub fn new(sink: AuditSink, limiter: Option<RateLimiter>) -> Self {
        Self {
            sink,
            limiter,
            anonymous: None,
        }
    }

    /// Also limits calls without usable credentials, per source address
    /// ([`admit_anonymous`]).
    pub fn with_anonymous_limit(mut self, limiter: Option<RateLimiter>) -> Self {
        self.anonymous = limiter.map(|limiter| Anonymous {
            limiter,
            refused: Arc::default(),
        });
        self
    }
}

impl<S> tower_layer::Layer<S> for AuditLayer {
    type Service = Audited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audited {
            inner,
            sink: self.sink.clone(),
            limiter: self.limiter.clone(),
            anonymous: self.anonymous.clone(),
        }
    }
}

/// The service [`AuditLayer`] makes.
#[derive(Debug, Clone)]
pub struct Audited<S> {
    inner: S,
    sink: AuditSink,
    limiter: Option<RateLimiter>,
    anonymous: Option<Anonymous>,
}

/// A call under way: what the entry needs besides the outcome.
#[derive(Debug)]
struct Pending {
    sink: AuditSink,
    call: Call,
    method: String,
    source: String,
}

impl Pending {
    /// The entry for this outcome, if the call is to be recorded.
    fn entry(&self, status: Option<Status>) -> Option<pb::AuditEntry> {
        let (code, message) = match status {
            Some(s) => (s.code(), s.message().to_string()),
            None => (
                Code::Unknown,
                "the response ended without a gRPC status".to_string(),
            ),
        };
        let state = self.call.state();
        let refused = matches!(code, Code::PermissionDenied | Code::Unauthenticated);
        if state.unrecorded
            || !(refused || state.rate_limited || AUDITED_METHODS.contains(&self.method.as_str()))
        {
            return None;
        }
        let (identity, role) = match &state.identity {
            Some(id) => (capped(&id.name, MAX_IDENTITY_LEN), id.role.to_string()),
            None => (UNAUTHENTICATED.to_string(), String::new()),
        };
        // Every field is bounded: the entry of any call is a few KiB at
        // most, whatever the caller sent.
        Some(pb::AuditEntry {
            time: Some(SystemTime::now().into()),
            identity,
            role,
            method: capped(self.method.trim_start_matches('/'), MAX_METHOD_LEN),
            target: state.target.clone(),
            code: code_name(code).to_string(),
            message: capped(&message, MAX_MESSAGE_LEN),
            source: capped(&self.source, MAX_IDENTITY_LEN),
        })
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Audited<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = http::Response<AuditBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let source = peer.map(|a| a.to_string()).unwrap_or_default();
        let call = Call::new(
            self.limiter.clone(),
            self.anonymous.clone(),
            peer.map(|a| a.ip()),
        );
        req.extensions_mut().insert(call.clone());
        let pending = Pending {
            sink: self.sink.clone(),
            call,
            method: req.uri().path().to_string(),
            source,
        };
        let response = inner.call(req);
        Box::pin(async move {
            let response = match response.await {
                Ok(r) => r,
                Err(e) => {
                    if let Some(entry) = pending.entry(Some(Status::unknown("the call failed"))) {
                        pending.sink.record(entry).await;
                    }
                    return Err(e);
                }
            };
            let (parts, body) = response.into_parts();
            // Trailers-only: the outcome is already known.
            let pending = match Status::from_header_map(&parts.headers) {
                Some(status) => {
                    if let Some(entry) = pending.entry(Some(status)) {
                        pending.sink.record(entry).await;
                    }
                    None
                }
                None => Some(pending),
            };
            Ok(http::Response::from_parts(
                parts,
                AuditBody {
                    inner: body,
                    pending,
                    sending: None,
                },
            ))
        })
    }
}

/// A response body that records its call when the trailers go by (or when
/// it is dropped before them: the client went away).
pub struct AuditBody<B: Body> {
    inner: B,
    pending: Option<Pending>,
    // Trailers held back while their entry waits for room in the queue.
    sending: Option<(BoxFuture<'static, ()>, Frame<B::Data>)>,
}

impl<B: Body> std::fmt::Debug for AuditBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditBody")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl<B: Body + Unpin> Body for AuditBody<B>
where
    B::Data: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Some((wait, _)) = &mut this.sending {
            ready!(wait.as_mut().poll(cx));
            let (_, trailers) = this.sending.take().expect("held trailers");
            return Poll::Ready(Some(Ok(trailers)));
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let Some(pending) = this.pending.take() else {
            return Poll::Ready(frame);
        };
        match frame {
            Some(Ok(frame)) if frame.is_trailers() => {
                let status = frame.trailers_ref().and_then(Status::from_header_map);
                let Some(entry) = pending.entry(status) else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                let Some(entry) = pending.sink.try_record(entry) else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                // The queue is full: hold the trailers back briefly.
                let sink = pending.sink.clone();
                let mut wait: BoxFuture<'static, ()> = Box::pin(async move {
                    if sink.tx.send_timeout(entry, FULL_WAIT).await.is_err() {
                        sink.dropped_one("the queue stayed full");
                    }
                });
                match wait.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Ok(frame))),
                    Poll::Pending => {
                        this.sending = Some((wait, frame));
                        Poll::Pending
                    }
                }
            }
            Some(Ok(frame)) => {
                this.pending = Some(pending);
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                if let Some(entry) =
                    pending.entry(Some(Status::unknown("the response failed midway")))
                {
                    pending.sink.record_now(entry);
                }
                Poll::Ready(Some(Err(e)))
            }
            None => {
                if let Some(entry) = pending.entry(None) {
                    pending.sink.record_now(entry);
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for AuditBody<B> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take()
            && let Some(entry) = pending.entry(Some(Status::cancelled(
                "the client went away before the call ended",
            )))
        {
            pending.sink.record_now(entry);
        }
    }
}

/// The name of a gRPC status code, as the gRPC specification spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// ---- the service -------------------------------------------------------------

/// `devctl.v1.AuditService` over the bus's audit stream.
#[derive(Debug, Clone)]
pub struct AuditApi {
    bus: Bus,
    streams: StreamApi,
}

impl AuditApi {
    /// The service reading `bus`'s audit log; its streams run (and end at
    /// shutdown) like those of `streams`.
    pub fn new(bus: Bus, streams: StreamApi) -> Self {
        Self { bus, streams }
    }
}

#[tonic::async_trait]
impl audit_service_server::AuditService for AuditApi {
    type ListAuditEntriesStream = ReceiverStream<Result<pb::AuditEntry, Status>>;

    async fn list_audit_entries(
        &self,
        req: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<Self::ListAuditEntriesStream>, Status> {
        let id = caller(&req)?;
        target(&req, &req.get_ref().identity);
        must_be_admin(&id, "ListAuditEntries", "reading the audit log")?;
        let r = req.into_inner();
        if !r.identity.is_empty() {
            devctl_proto::validate::dns_label("identity", &r.identity)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let since = r.since.map(|t| super::start_time("since", t)).transpose()?;
        let mut reader = self
            .bus
            .read_audit(since, u64::from(r.last))
            .await
            .map_err(|e| Status::unavailable(format!("reading the audit log: {e}")))?;
        let (tx, rx) = mpsc::channel(64);
        // Like every stream: it ends when its caller's credential is revoked
        // or expires, not only at shutdown.
        let session = self.streams.session(&id)?;
        let stop = session.stop().clone();
        self.streams.streams.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    next = reader.next() => next,
                };
                let item = match next {
                    None => break,
                    Some(Ok(e)) if !r.identity.is_empty() && e.identity != r.identity => continue,
                    // Read from the newest `last`: skip those before `since`.
                    Some(Ok(e))
                        if since.is_some_and(|s| {
                            e.time.and_then(|t| SystemTime::try_from(t).ok()) < Some(s)
                        }) =>
                    {
                        continue;
                    }
                    Some(Ok(e)) => Ok(e),
                    Some(Err(e)) => Err(Status::unavailable(e.to_string())),
                };
                let failed = item.is_err();
                if !send_or_stop(&tx, item, &stop).await || failed {
                    break;
                }
            }
            session.tell_if_revoked(&tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use devctl_proto::identity::Role;
    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;

    /// A response body of the given frames.
    #[derive(Debug, Default)]
    struct Frames(VecDeque<Frame<&'static [u8]>>);

    impl Body for Frames {
        type Data = &'static [u8];
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn trailers(code: Code, msg: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", (code as i32).to_string().parse().unwrap());
        h.insert("grpc-message", msg.parse().unwrap());
        h
    }

    /// A fake router: plays the interceptor and the handler on the call's
    /// slot, then answers `body`, or trailers-only with `headers`.
    #[derive(Clone)]
    struct Fake {
        identity: Option<Identity>,
        headers: http::HeaderMap,
        data: Vec<&'static [u8]>,
        // The trailers' status, if the body ends with trailers.
        end: Option<(Code, &'static str)>,
    }

    impl Service<http::Request<()>> for Fake {
        type Response = http::Response<Frames>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            let req = Request::from_http(req);
            if let Some(id) = &self.identity {
                admit(&req, id).unwrap();
            }
            target(&req, "box");
            let mut frames: VecDeque<_> = self.data.iter().map(|d| Frame::data(*d)).collect();
            if let Some((code, msg)) = self.end {
                frames.push_back(Frame::trailers(trailers(code, msg)));
            }
            let mut resp = http::Response::new(Frames(frames));
            *resp.headers_mut() = self.headers.clone();
            std::future::ready(Ok(resp))
        }
    }

    fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            role: Role::Developer,
            serial: "01".into(),
            issued_at: 0,
            expires_at: 0,
            own_only: false,
        }
    }

    fn sink(capacity: usize) -> (AuditSink, mpsc::Receiver<pb::AuditEntry>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = AuditSink {
            tx,
            dropped: Arc::default(),
        };
        (sink, rx)
    }

    async fn call(sink: &AuditSink, fake: Fake, method: &str) -> http::Response<AuditBody<Frames>> {
        let mut svc = AuditLayer::new(sink.clone(), None).layer(fake);
        let mut req = http::Request::builder().uri(method).body(()).unwrap();
        req.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some("127.0.0.1:5000".parse().unwrap()),
        });
        svc.call(req).await.unwrap()
    }

    async fn drain(body: &mut AuditBody<Frames>) -> usize {
        let mut n = 0;
        while futures::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .is_some()
        {
            n += 1;
        }
        n
    }

    const CREATE: &str = "/devctl.v1.ContainerService/CreateContainer";
    const GET: &str = "/devctl.v1.ContainerService/GetContainer";

    #[tokio::test]
    async fn a_mutating_call_is_recorded_when_its_trailers_pass() {
        let (sink, mut rx) = sink(8);
        let fake = Fake {
            identity: Some(alice()),
            headers: Default::default(),
            data: vec![b"reply"],
            end: Some((Code::Ok, "")),
        };
        let mut resp = call(&sink, fake, CREATE).await;
        assert!(rx.try_recv().is_err(), "recorded before the call ended");
        assert_eq!(drain(resp.body_mut()).await, 2);
        let e = rx.try_recv().unwrap();
        assert_eq!(
            (
                &*e.identity,
                &*e.role,
                &*e.method,
                &*e.target,
                &*e.code,
                &*e.source
            ),
            (
                "alice",
                "developer",
                "devctl.v1.ContainerService/CreateContainer",
                "box",
                "OK",
                "127.0.0.1:5000"
            )
        );
        drop(resp);
        assert!(rx.try_recv().is_err(), "recorded twice");
    }

    #[tokio::test]
    async fn refusals_of_any_method_are_recorded_successful_reads_are_not() {
        let (sink, mut rx) = sink(8);
        // A trailers-only refusal, without an identity.
        let fake = Fake {
            identity: None,
            headers: trailers(Code::Unauthenticated, "no certificate"),
            data: vec![],
            end: None,
        };
        let resp = call(&sink, fake, GET).await;
        let e = rx.try_recv().unwrap();
        assert_eq!(e.identity, UNAUTHENTICATED);
        assert_eq!(e.role, "");
        assert_eq!(e.code, "UNAUTHENTICATED");
        assert_eq!(e.message, "no certificate");
        drop(resp);
        // A read that succeeds.
        let fake = Fake {
            identity: Some(alice()),
            headers: Default::default(),
            data: vec![],
            end: Some((Code::Ok, "")),
        };
        let mut resp = call(&sink, fake.clone(), GET).await;
        drain(resp.body_mut()).await;
        drop(resp);
        assert!(rx.try_recv().is_err());
        // A read refused at its end (a stream).
        let fake = Fake {
            end: Some((Code::PermissionDenied, "no")),
            ..fake
        };
        let mut resp = call(&sink, fake, GET).await;
        drain(resp.body_mut()).await;
        assert_eq!(rx.try_recv().unwrap().code, "PERMISSION_DENIED");
    }

    #[tokio::test]
    async fn a_call_abandoned_midway_is_recorded_as_cancelled() {
        let (sink, mut rx) = sink(8);
        let fake = Fake {
            identity: Some(alice()),
            headers: Default::default(),
            data: vec![b"out"],
            end: None,
        };
        let resp = call(&sink, fake, "/devctl.v1.ExecService/Exec").await;
        drop(resp);
        let e = rx.try_recv().unwrap();
        assert_eq!(
            (&*e.method, &*e.code),
            ("devctl.v1.ExecService/Exec", "CANCELLED")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_holds_the_trailers_briefly_then_drops() {
        let (sink, mut rx) = sink(1);
        let fake = Fake {
            identity: Some(alice()),
            headers: Default::default(),
            data: vec![],
            end: Some((Code::Ok, "")),
        };
        // Room appears while the trailers wait: nothing is lost.
        let mut first = call(&sink, fake.clone(), CREATE).await;
        drain(first.body_mut()).await;
        let mut second = call(&sink, fake.clone(), CREATE).await;
        let reader = tokio::spawn(async move {
            tokio::time::sleep(FULL_WAIT / 2).await;
            let a = rx.recv().await.unwrap();
            (a, rx)
        });
        assert_eq!(drain(second.body_mut()).await, 1);
        let (_, mut rx) = reader.await.unwrap();
        assert_eq!(rx.recv().await.unwrap().code, "OK");
        assert_eq!(sink.dropped(), 0);
        // No room within FULL_WAIT: dropped and counted; the call still ends.
        let mut third = call(&sink, fake.clone(), CREATE).await;
        drain(third.body_mut()).await;
        let mut fourth = call(&sink, fake, CREATE).await;
        assert_eq!(drain(fourth.body_mut()).await, 1);
        assert_eq!(sink.dropped(), 1);
    }

    #[test]
    fn anonymous_calls_are_limited_per_source_and_not_recorded() {
        let limit = crate::ratelimit::Limit::new(0.001, 2).unwrap();
        let layer =
            AuditLayer::new(sink(1).0, None).with_anonymous_limit(Some(RateLimiter::new(limit)));
        let call_from = |ip: &str| {
            let mut req = Request::new(());
            req.extensions_mut().insert(Call::new(
                None,
                layer.anonymous.clone(),
                Some(ip.parse().unwrap()),
            ));
            req
        };
        for _ in 0..2 {
            admit_anonymous(&call_from("10.0.0.1")).unwrap();
        }
        let req = call_from("10.0.0.1");
        let refused = admit_anonymous(&req).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.metadata().get(RETRY_AFTER_MS).is_some());
        assert!(super::call(&req).unwrap().state().unrecorded);
        // Another address has its own allowance.
        admit_anonymous(&call_from("10.0.0.2")).unwrap();
    }

    #[test]
    fn capped_cuts_at_a_character_boundary() {
        assert_eq!(capped("héllo", 2), "h");
        assert_eq!(capped("abc", 10), "abc");
    }

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
        assert!(super::call(&req).unwrap().state().rate_limited);
    }
}
