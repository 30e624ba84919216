//! The API's messages as canonical proto JSON (the protobuf JSON mapping:
//! lowerCamelCase field names, enum values by name, 64-bit integers as
//! strings, timestamps in RFC 3339, fields at their default left out), the
//! same JSON any protobuf library prints for them. `devctl -o json|yaml`
//! prints this, so scripts read the API's own objects and no second,
//! hand-kept shape can drift from the proto.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::pb;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("the devctl.v1 descriptor set built with this crate decodes")
});

/// `message` as canonical proto JSON.
pub fn to_value<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    let desc = POOL
        .get_message_by_name(&M::full_name())
        .expect("every devctl.v1 message is in the descriptor set");
    let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .expect("a message re-decodes as its own type");
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .expect("a dynamic message serializes to a JSON value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_print_as_the_protobuf_json_mapping() {
        let c = pb::Container {
            name: "web".into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            spec: Some(pb::ContainerSpec {
                image: "devctl/busybox:latest".into(),
                ttl_seconds: Some(3600),
                ..Default::default()
            }),
            status: Some(pb::ContainerStatus {
                state: pb::ContainerState::Running as i32,
                exit_code: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = to_value(&c);
        assert_eq!(v["name"], "web");
        assert_eq!(v["createTime"], "2023-11-14T22:13:20Z");
        assert_eq!(v["spec"]["image"], "devctl/busybox:latest");
        // int64 as a string; an explicitly set optional field is printed
        // even at its default.
        assert_eq!(v["spec"]["ttlSeconds"], "3600");
        assert_eq!(v["status"]["exitCode"], 0);
        assert_eq!(v["status"]["state"], "CONTAINER_STATE_RUNNING");
        // Defaults are left out.
        assert!(v.get("id").is_none() && v["status"].get("lastError").is_none());
    }
}
