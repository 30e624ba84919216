//! Container records written before `Container` was split into spec and
//! status (devctl.v1 before it became stable), and their migration.
//!
//! Such a record decodes as a `Container` without `spec` and `status`: the
//! fields that held them (3 to 10, 14 to 26) are reserved in the proto now,
//! so prost skips them. [`LegacyContainer`] reads those same bytes with the
//! old numbers; [`upgrade`] moves them into the new parts. The store runs it
//! over every record once, at open, in one transaction.

use std::collections::HashMap;

use devctl_proto::pb;
use prost::Message;

/// The fields of a pre-split record that moved into `spec` and `status`.
#[derive(Clone, PartialEq, Message)]
struct LegacyContainer {
    #[prost(string, tag = "3")]
    image: String,
    #[prost(string, repeated, tag = "4")]
    command: Vec<String>,
    #[prost(enumeration = "pb::ContainerState", tag = "5")]
    state: i32,
    #[prost(enumeration = "pb::DesiredState", tag = "6")]
    desired_state: i32,
    #[prost(string, tag = "7")]
    node: String,
    #[prost(message, optional, tag = "8")]
    resources: Option<pb::Resources>,
    #[prost(map = "string, string", tag = "9")]
    env: HashMap<String, String>,
    #[prost(map = "string, string", tag = "10")]
    labels: HashMap<String, String>,
    #[prost(message, optional, tag = "14")]
    start_time: Option<prost_types::Timestamp>,
    #[prost(int32, optional, tag = "15")]
    exit_code: Option<i32>,
    #[prost(string, tag = "16")]
    last_error: String,
    #[prost(string, tag = "17")]
    runtime_id: String,
    #[prost(map = "string, string", tag = "18")]
    constraints: HashMap<String, String>,
    #[prost(enumeration = "pb::StopReason", tag = "19")]
    stop_reason: i32,
    #[prost(int64, optional, tag = "20")]
    ttl_seconds: Option<i64>,
    #[prost(message, optional, tag = "21")]
    lease_expire_time: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "22")]
    health_check: Option<pb::HealthCheck>,
    #[prost(enumeration = "pb::HealthStatus", tag = "23")]
    health: i32,
    #[prost(int32, tag = "24")]
    health_restarts: i32,
    #[prost(message, optional, tag = "25")]
    last_active_time: Option<prost_types::Timestamp>,
    #[prost(int64, tag = "26")]
    idle_timeout_seconds: i64,
}

/// `c` decoded from `bytes`, with its spec and status read from the old
/// fields when it has neither; `None` when it already had them (nothing to
/// migrate).
// Until ContainerStatus gains a field after the split, its
// `..Default::default()` (kept for those fields) fills nothing.
#[allow(clippy::needless_update)]
pub(super) fn upgrade(
    mut c: pb::Container,
    bytes: &[u8],
) -> Result<Option<pb::Container>, prost::DecodeError> {
    if c.spec.is_some() || c.status.is_some() {
        return Ok(None);
    }
    let old = LegacyContainer::decode(bytes)?;
    c.spec = Some(pb::ContainerSpec {
        image: old.image,
        command: old.command,
        // Before the split the record kept one node: where it was placed.
        // Whether the user had pinned it is not known; a pin is only read
        // at placement, which has happened.
        node: String::new(),
        resources: old.resources,
        env: old.env,
        labels: old.labels,
        constraints: old.constraints,
        ttl_seconds: old.ttl_seconds,
        health_check: old.health_check,
        desired_state: old.desired_state,
        // Fields added after the split keep their defaults.
        ..Default::default()
    });
    c.status = Some(pb::ContainerStatus {
        state: old.state,
        node: old.node,
        runtime_id: old.runtime_id,
        start_time: old.start_time,
        exit_code: old.exit_code,
        last_error: old.last_error,
        stop_reason: old.stop_reason,
        lease_expire_time: old.lease_expire_time,
        health: old.health,
        health_restarts: old.health_restarts,
        last_active_time: old.last_active_time,
        idle_timeout_seconds: old.idle_timeout_seconds,
        ..Default::default()
    });
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the scheduler wrote it before the split: the old field
    /// numbers, encoded by hand-made messages that have them.
    fn legacy_bytes() -> Vec<u8> {
        #[derive(Clone, PartialEq, Message)]
        struct Head {
            #[prost(string, tag = "1")]
            name: String,
            #[prost(string, tag = "2")]
            id: String,
            #[prost(string, tag = "11")]
            owner: String,
        }
        let mut bytes = Head {
            name: "web".into(),
            id: "id-1".into(),
            owner: "alice".into(),
        }
        .encode_to_vec();
        LegacyContainer {
            image: "devctl/busybox:latest".into(),
            command: vec!["sleep".into(), "1d".into()],
            state: pb::ContainerState::Stopped as i32,
            desired_state: pb::DesiredState::Stopped as i32,
            node: "n1".into(),
            resources: Some(pb::Resources {
                milli_cpus: 500,
                memory_bytes: 1 << 29,
            }),
            env: [("A".to_string(), "1".to_string())].into(),
            exit_code: Some(3),
            last_error: "boom".into(),
            runtime_id: "engine-1".into(),
            stop_reason: pb::StopReason::Manual as i32,
            ttl_seconds: Some(3600),
            health_restarts: 1,
            ..Default::default()
        }
        .encode(&mut bytes)
        .unwrap();
        bytes
    }

    #[test]
    fn a_record_from_before_the_split_keeps_every_field() {
        let bytes = legacy_bytes();
        let decoded = pb::Container::decode(bytes.as_slice()).unwrap();
        assert!(decoded.spec.is_none() && decoded.status.is_none());
        let c = upgrade(decoded, &bytes).unwrap().expect("migrated");
        assert_eq!(
            (c.name.as_str(), c.id.as_str(), c.owner.as_str()),
            ("web", "id-1", "alice")
        );
        let spec = c.spec.unwrap();
        assert_eq!(spec.image, "devctl/busybox:latest");
        assert_eq!(spec.command, ["sleep", "1d"]);
        assert_eq!(spec.resources.unwrap().milli_cpus, 500);
        assert_eq!(spec.env["A"], "1");
        assert_eq!(spec.ttl_seconds, Some(3600));
        assert_eq!(spec.desired_state(), pb::DesiredState::Stopped);
        let status = c.status.unwrap();
        assert_eq!(status.state(), pb::ContainerState::Stopped);
        assert_eq!(status.node, "n1");
        assert_eq!(status.runtime_id, "engine-1");
        assert_eq!(status.exit_code, Some(3));
        assert_eq!(status.last_error, "boom");
        assert_eq!(status.stop_reason(), pb::StopReason::Manual);
        assert_eq!(status.health_restarts, 1);
    }

    #[test]
    fn a_current_record_is_left_alone() {
        let c = pb::Container {
            name: "web".into(),
            spec: Some(pb::ContainerSpec::default()),
            status: Some(pb::ContainerStatus::default()),
            ..Default::default()
        };
        let bytes = c.encode_to_vec();
        assert_eq!(upgrade(c, &bytes).unwrap(), None);
    }

    #[test]
    fn the_store_moves_old_records_to_the_new_layout_when_it_opens() {
        use devctl_proto::container::ContainerExt;
        use redb::ReadableDatabase;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(super::super::CONTAINERS)
                .unwrap()
                .insert("web", legacy_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = super::super::Store::open(&path).unwrap();
        let c = store.container("web").unwrap().expect("kept");
        assert_eq!(c.spec().image, "devctl/busybox:latest");
        assert_eq!(c.status().node, "n1");
        assert_eq!(c.status().state(), pb::ContainerState::Stopped);
        drop(store);
        // Written back: the bytes on disk now have the parts themselves.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(super::super::CONTAINERS).unwrap();
        let raw = table.get("web").unwrap().unwrap();
        let on_disk = pb::Container::decode(raw.value()).unwrap();
        assert_eq!(on_disk.status.unwrap().node, "n1");
    }
}
