//! gRPC health and reflection, and the separate admin listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio_stream::StreamExt;

use ruse_e2e::{TestController, pb};
use ruse_proto::transport::{self, DialOptions};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_and_reflection_answer_without_a_client_certificate() {
    let tc = TestController::start().await;
    let tls = ruse_pki::anonymous_client_config(&[tc.ca().cert_der().clone()]).unwrap();
    let channel = transport::connect(&tc.url(), tls, &DialOptions::default())
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "ruse.agent.v1.AgentService",
        "ruse.admin.v1.AdminService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "ruse.agent.v1.AgentService",
        "ruse.admin.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
}

#[tokio::test]
async fn a_separate_admin_listener_requires_a_certificate_at_the_handshake() {
    let tc =
        TestController::start_with(|c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    assert_ne!(tc.url(), tc.admin_url());

    // Admin works on the admin port.
    tc.assert_serving().await;

    // Anonymous clients do not get past the handshake on the admin port.
    let anonymous = ruse_pki::anonymous_client_config(&[tc.ca().cert_der().clone()]).unwrap();
    let refused = transport::connect(&tc.admin_url(), anonymous, &DialOptions::default()).await;
    assert!(
        refused.is_err(),
        "anonymous handshake accepted on the admin port"
    );

    // The admin API is not served on the agent port.
    let root = tc.client_tls(&ruse_proto::types::Identity::Admin("root".parse().unwrap()));
    let channel = transport::connect(&tc.url(), root, &DialOptions::default())
        .await
        .unwrap();
    let status = ruse_proto::admin::v1::admin_service_client::AdminServiceClient::new(channel)
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    // Agents still enroll on the agent port.
    let token = tc.token("", 1, Duration::from_secs(60)).await;
    let mut agent = tc.spawn_agent(tc.agent_config("a", &token, ""));
    agent.connected().await;
    agent.stop().await.unwrap();
}
