//! The tower layer around the whole router: it puts a call slot into each
//! request and records the call when its outcome is known, from the
//! response headers (trailers-only) or the trailers of the wrapped body.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::SystemTime,
};

use devctl_proto::pb;
use futures::future::BoxFuture;
use http_body::{Body, Frame};
use tonic::{Code, Status, transport::server::TcpConnectInfo};

use super::{
    AUDITED_METHODS, FULL_WAIT, UNAUTHENTICATED, capped,
    slot::{Anonymous, Call},
    writer::AuditSink,
};
use crate::ratelimit::RateLimiter;

/// The most of a method path kept (ours are under 64 bytes; a caller may
/// send any path to a service and be refused).
const MAX_METHOD_LEN: usize = 128;
/// The most of a status message kept (messages may quote what the caller
/// sent).
const MAX_MESSAGE_LEN: usize = 512;
/// The most of an identity's name and role kept (they come from a
/// certificate of the cluster CA or a stored token: already bounded).
const MAX_IDENTITY_LEN: usize = 253;

/// The tower layer around the whole router: sees every call, records the
/// audited ones. It also carries the rate limiter to [`admit`].
#[derive(Debug, Clone)]
pub(crate) struct AuditLayer {
    sink: AuditSink,
    limiter: Option<RateLimiter>,
    anonymous: Option<Anonymous>,
}

impl AuditLayer {
    /// Records into `sink`; `limiter`: the per-identity rate limit, if any.
    pub(crate) fn new(sink: AuditSink, limiter: Option<RateLimiter>) -> Self {
        Self {
            sink,
            limiter,
            anonymous: None,
        }
    }

    /// Also limits calls without usable credentials, per source address
    /// ([`admit_anonymous`]).
    pub(crate) fn with_anonymous_limit(mut self, limiter: Option<RateLimiter>) -> Self {
        self.anonymous = limiter.map(Anonymous::new);
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
pub(crate) struct Audited<S> {
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
pub(crate) struct AuditBody<B: Body> {
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
fn code_name(code: Code) -> &'static str {
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

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Arc};

    use devctl_proto::identity::Identity;
    use tokio::sync::mpsc;
    use tonic::Request;
    use tower_layer::Layer;
    use tower_service::Service;

    use super::{
        super::{
            fixtures::alice,
            slot::{RETRY_AFTER_MS, admit, admit_anonymous, target},
        },
        *,
    };

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
        assert!(crate::audit::call(&req).unwrap().state().unrecorded);
        // Another address has its own allowance.
        admit_anonymous(&call_from("10.0.0.2")).unwrap();
    }
}
