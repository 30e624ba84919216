//! The gRPC surface as a generated client sees it: health, reflection,
//! pagination and status codes (not the CLI's rendering of them).

use devctl_proto::container::ContainerExt;
use devctl_proto::pb::{
    self, container_service_client::ContainerServiceClient, node_service_client::NodeServiceClient,
};
use devctl_tests::{IMAGE, TestCluster};
use tonic::{Code, transport::Channel};

async fn channel(c: &TestCluster) -> Channel {
    c.grpc_channel(&c.admin_tls()).await
}

fn spec(name: &str) -> pb::CreateContainerRequest {
    pb::CreateContainerRequest {
        container: Some(pb::Container {
            name: name.into(),
            spec: Some(pb::ContainerSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn health_reflection_pagination_and_status_codes() {
    // Processes are started from the test's own thread: they are tied to
    // it (PDEATHSIG), so not from a runtime's pool thread.
    let c = TestCluster::start(&["a"]);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(exercise(&c));
}

async fn exercise(c: &TestCluster) {
    let ch = channel(c).await;

    // grpc.health.v1: the server and each service report SERVING.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "devctl.v1.ContainerService", "devctl.v1.NodeService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(r.get_ref().status, 1, "{service:?} SERVING");
    }

    // Server reflection lists the public services.
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut refl = ServerReflectionClient::new(ch.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = refl
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected reflection reply {resp:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for s in [
            "devctl.v1.ContainerService",
            "devctl.v1.NodeService",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == s), "{s} in {names:?}");
        }
    }

    // Pagination walks every container once, in name order.
    let mut containers = ContainerServiceClient::new(ch.clone());
    for name in ["p-e", "p-a", "p-d", "p-c", "p-b"] {
        containers.create_container(spec(name)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = containers
            .list_containers(pb::ListContainersRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.containers.len() <= 2);
        seen.extend(page.containers.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["p-a", "p-b", "p-c", "p-d", "p-e"]);
    assert_eq!(pages, 3);

    // Status codes, as a generated client sees them.
    let code = |r: Result<tonic::Response<pb::Container>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(containers.create_container(spec("Bad")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(containers.create_container(spec("p-a")).await),
        Code::AlreadyExists
    );
    let mut missing_image = spec("img");
    missing_image.container.as_mut().unwrap().spec_mut().image = "devctl/none:0".into();
    // Not pulled (Docker Hub is out of reach here): the node lacks it.
    missing_image
        .container
        .as_mut()
        .unwrap()
        .spec_mut()
        .set_pull_policy(pb::PullPolicy::Never);
    assert_eq!(
        code(containers.create_container(missing_image).await),
        Code::FailedPrecondition
    );
    let mut unknown_node = spec("nodeless");
    unknown_node.container.as_mut().unwrap().spec_mut().node = "nowhere".into();
    assert_eq!(
        code(containers.create_container(unknown_node).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            containers
                .get_container(pb::GetContainerRequest { name: "zzz".into() })
                .await
        ),
        Code::NotFound
    );
    let err = containers
        .create_container(pb::CreateContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = containers
        .list_containers(pb::ListContainersRequest {
            page_token: "not a token!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"), "{}", err.message());

    let mut nodes = NodeServiceClient::new(ch);
    let list = nodes
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.nodes.len(), 1);
    assert_eq!(list.nodes[0].state(), pb::NodeState::Ready);
    assert_eq!(list.nodes[0].container_count, 5);
    let err = nodes
        .get_node(pb::GetNodeRequest {
            name: "nowhere".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A create retried with its request id returns the same container.
    let mut with_id = spec("idem");
    with_id.request_id = "req-7f3a".into();
    let first = containers
        .create_container(with_id.clone())
        .await
        .unwrap()
        .into_inner();
    let again = containers
        .create_container(with_id.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, first.id);
    let mut other = with_id.clone();
    other.request_id = "req-other".into();
    assert_eq!(
        code(containers.create_container(other).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(containers.create_container(spec("idem")).await),
        Code::AlreadyExists
    );
    let on_engine = c
        .engine_containers()
        .into_iter()
        .filter(|e| e["Config"]["Labels"]["io.devctl.name"] == "idem")
        .count();
    assert_eq!(on_engine, 1);
    let mut bad = spec("idem2");
    bad.request_id = "has spaces".into();
    assert_eq!(
        code(containers.create_container(bad).await),
        Code::InvalidArgument
    );
}
