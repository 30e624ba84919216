//! `devctl.v1.WatchService`: the change feed ([`crate::feed`]) for clients.
//!
//! One task per watch reads the feed at the client's pace: it sends a
//! snapshot (unless resuming), then every change after it, waiting while the
//! client is slow (the channel is small) rather than buffering. A client so
//! slow that the feed drops the changes it still needs is told OUT_OF_RANGE
//! and starts again from a snapshot.

use devctl_proto::container::ContainerExt;
use std::sync::Arc;

use devctl_proto::{
    identity::Identity,
    pb::{self, watch_changes_response::Object, watch_service_server::WatchService},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    StreamApi,
    auth::{Scope, caller, redacted},
    send_or_stop,
};
use crate::{
    feed::{Change, Entry, FeedError},
    store::Store,
};

/// Responses buffered per watch before the reader waits for the client.
const WATCH_BUFFER: usize = 64;

/// Changes read from the feed at a time.
const BATCH: usize = 256;

/// The watch service over the store's feed.
#[derive(Debug, Clone)]
pub struct WatchApi {
    store: Store,
    streams: StreamApi,
}

impl WatchApi {
    /// The service over `store`'s feed, its streams run and ended by
    /// `streams` (which also holds the cluster the records are completed
    /// from).
    pub fn new(store: Store, streams: StreamApi) -> Self {
        Self { store, streams }
    }
}

/// What one caller's watch shows.
#[derive(Debug)]
struct View {
    id: Identity,
    scope: Scope,
    containers: bool,
    nodes: bool,
    workspaces: bool,
    /// The cluster's idle window, set on every container sent.
    idle_timeout_seconds: i64,
}

impl View {
    fn new(id: Identity, kinds: &[i32], idle_timeout_seconds: i64) -> Result<Self, Status> {
        let mut view = View {
            scope: Scope::of(&id),
            idle_timeout_seconds,
            id,
            containers: kinds.is_empty(),
            nodes: kinds.is_empty(),
            // Only when asked for: clients written before workspaces
            // existed keep getting what they did.
            workspaces: false,
        };
        for &k in kinds {
            match pb::ResourceKind::try_from(k) {
                Ok(pb::ResourceKind::Container) => view.containers = true,
                Ok(pb::ResourceKind::Node) => view.nodes = true,
                Ok(pb::ResourceKind::Workspace) => view.workspaces = true,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "kinds: {k} is not a resource kind; use RESOURCE_KIND_CONTAINER, RESOURCE_KIND_NODE or RESOURCE_KIND_WORKSPACE, or none for containers and nodes"
                    )));
                }
            }
        }
        Ok(view)
    }

    /// The container as the caller may see it, if they may.
    fn container(&self, c: &pb::Container) -> Option<Object> {
        (self.containers && self.scope.allows(&c.owner)).then(|| {
            let mut c = redacted(&self.id, c.clone());
            c.status_mut().idle_timeout_seconds = self.idle_timeout_seconds;
            Object::Container(c)
        })
    }

    fn node(&self, n: &pb::Node) -> Option<Object> {
        self.nodes.then(|| Object::Node(n.clone()))
    }

    /// The workspace, if the caller may see it.
    fn workspace(&self, w: &pb::Workspace) -> Option<Object> {
        (self.workspaces && self.scope.allows(&w.owner)).then(|| Object::Workspace(w.clone()))
    }

    /// The response for a feed entry, if the caller sees it.
    fn change(&self, e: &Entry) -> Option<pb::WatchChangesResponse> {
        let (ty, object) = match &e.change {
            Change::Container(d) => {
                let record = d.after.as_ref().or(d.before.as_ref())?;
                (
                    change_type(d.before.is_some(), d.after.is_some()),
                    self.container(record)?,
                )
            }
            Change::Node(d) => {
                let record = d.after.as_ref().or(d.before.as_ref())?;
                (
                    change_type(d.before.is_some(), d.after.is_some()),
                    self.node(record)?,
                )
            }
            Change::Workspace(d) => {
                let record = d.after.as_ref().or(d.before.as_ref())?;
                (
                    change_type(d.before.is_some(), d.after.is_some()),
                    self.workspace(record)?,
                )
            }
        };
        Some(response(ty, e.revision, Some(object)))
    }
}

fn change_type(before: bool, after: bool) -> pb::ChangeType {
    match (before, after) {
        (false, _) => pb::ChangeType::Added,
        (true, true) => pb::ChangeType::Modified,
        (true, false) => pb::ChangeType::Deleted,
    }
}

fn response(ty: pb::ChangeType, revision: u64, object: Option<Object>) -> pb::WatchChangesResponse {
    pb::WatchChangesResponse {
        r#type: ty as i32,
        revision,
        object,
    }
}

/// A revision the feed cannot serve: OUT_OF_RANGE, reason
/// `REVISION_COMPACTED` (watch again from 0) or `REVISION_AHEAD`.
fn out_of_range(e: FeedError) -> Status {
    let msg = format!("after_revision: {e}");
    match e {
        FeedError::Compacted { revision, oldest } => super::status::refusal(
            tonic::Code::OutOfRange,
            msg,
            "REVISION_COMPACTED",
            &[
                ("revision", revision.to_string()),
                ("oldest", oldest.to_string()),
            ],
        ),
        FeedError::Future { revision, latest } => super::status::refusal(
            tonic::Code::OutOfRange,
            msg,
            "REVISION_AHEAD",
            &[
                ("revision", revision.to_string()),
                ("latest", latest.to_string()),
            ],
        ),
    }
}

#[tonic::async_trait]
impl WatchService for WatchApi {
    type WatchChangesStream = ReceiverStream<Result<pb::WatchChangesResponse, Status>>;

    async fn watch_changes(
        &self,
        req: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let id = caller(&req)?;
        let r = req.into_inner();
        // Containers are sent as Get shows them, but for the last use.
        let idle = self.streams.cluster.idle_timeout_seconds();
        let view = View::new(id.clone(), &r.kinds, idle)?;
        let feed_store = self.store.clone();
        let (snapshot, mut revision) = if r.after_revision == 0 {
            let s = self
                .store
                .snapshot()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            let rev = s.revision;
            (Some(s), rev)
        } else {
            // Refused before the stream starts: the client learns at once.
            feed_store
                .feed()
                .read_after(r.after_revision, 0)
                .map_err(out_of_range)?;
            (None, r.after_revision)
        };
        let session = self.streams.session(&id)?;
        let stop = session.stop().clone();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        self.streams.streams.spawn(async move {
            let feed = feed_store.feed();
            let mut latest = feed.subscribe();
            if let Some(s) = snapshot {
                let records = s
                    .containers
                    .iter()
                    .filter_map(|c| view.container(c))
                    .chain(s.nodes.iter().filter_map(|n| view.node(n)))
                    .chain(s.workspaces.iter().filter_map(|w| view.workspace(w)))
                    .map(|o| response(pb::ChangeType::Snapshot, s.revision, Some(o)))
                    .chain([response(pb::ChangeType::SnapshotEnd, s.revision, None)]);
                for item in records {
                    if !send_or_stop(&tx, Ok(item), &stop).await {
                        return;
                    }
                }
            }
            'follow: loop {
                // Marks the latest revision seen before reading, so a change
                // published after the read wakes the wait below.
                latest.borrow_and_update();
                let batch: Vec<Arc<Entry>> = match feed.read_after(revision, BATCH) {
                    Ok(b) => b,
                    Err(e) => {
                        send_or_stop(&tx, Err(out_of_range(e)), &stop).await;
                        break;
                    }
                };
                if batch.is_empty() {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tx.closed() => break,
                        changed = latest.changed() => if changed.is_err() { break },
                    }
                    continue;
                }
                for entry in batch {
                    revision = entry.revision;
                    if let Some(item) = view.change(&entry)
                        && !send_or_stop(&tx, Ok(item), &stop).await
                    {
                        break 'follow;
                    }
                }
            }
            session.tell_if_revoked(&tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::auth::test_identity as identity;
    use super::*;
    use crate::feed::Diff;
    use devctl_proto::identity::Role;

    fn container(owner: &str) -> pb::Container {
        pb::Container {
            name: format!("{owner}-box"),
            owner: owner.into(),
            spec: Some(pb::ContainerSpec {
                env: [("TOKEN".to_string(), "s3cret".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn entry(change: Change) -> Entry {
        Entry {
            revision: 7,
            time: std::time::SystemTime::UNIX_EPOCH,
            change,
        }
    }

    #[test]
    fn a_developer_sees_only_their_own_containers_and_every_node() {
        let view = View::new(identity("alice", Role::Developer), &[], 0).unwrap();
        let mine = entry(Change::Container(Diff {
            before: None,
            after: Some(container("alice")),
        }));
        let theirs = entry(Change::Container(Diff {
            before: Some(container("bob")),
            after: None,
        }));
        let node = entry(Change::Node(Diff {
            before: None,
            after: Some(pb::Node::default()),
        }));
        let r = view.change(&mine).unwrap();
        assert_eq!(r.r#type(), pb::ChangeType::Added);
        assert_eq!(r.revision, 7);
        assert!(view.change(&theirs).is_none());
        assert!(view.change(&node).is_some());
    }

    #[test]
    fn a_viewer_gets_env_keys_without_values_and_kinds_filter() {
        let view = View::new(
            identity("val", Role::Viewer),
            &[pb::ResourceKind::Container as i32],
            0,
        )
        .unwrap();
        let gone = entry(Change::Container(Diff {
            before: Some(container("bob")),
            after: None,
        }));
        let r = view.change(&gone).unwrap();
        assert_eq!(r.r#type(), pb::ChangeType::Deleted);
        let Some(Object::Container(c)) = r.object else {
            panic!("no container: {r:?}")
        };
        assert_eq!(c.spec().env["TOKEN"], "");
        assert!(c.env_redacted);
        let node = entry(Change::Node(Diff {
            before: Some(pb::Node::default()),
            after: Some(pb::Node::default()),
        }));
        assert!(view.change(&node).is_none());
    }

    #[test]
    fn revisions_out_of_range_say_which_with_a_reason() {
        use tonic_types::StatusExt;
        let s = out_of_range(FeedError::Compacted {
            revision: 3,
            oldest: 9,
        });
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        let info = s.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "REVISION_COMPACTED");
        assert_eq!(info.metadata["oldest"], "9");
        let s = out_of_range(FeedError::Future {
            revision: 12,
            latest: 10,
        });
        let info = s.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "REVISION_AHEAD");
        assert_eq!(info.metadata["latest"], "10");
    }

    #[test]
    fn unknown_kinds_are_refused_by_name() {
        let err = View::new(identity("a", Role::Admin), &[0], 0).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("kinds:"), "{}", err.message());
    }
}
