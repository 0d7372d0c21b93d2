mod common;

use std::time::Duration;

use common::receiver::*;
use common::*;
use serde_json::json;

#[actix_web::test]
async fn a_validated_subscription_receives_signed_events() {
    let node = start(
        "[webhooks]\nallow_http = true\nallow_private_networks = true\npoll_interval = \"20ms\"",
    )
    .await;
    let rx = Receiver::start().await;
    let r = node
        .post(
            "/events/api/v1/subscriptions",
            &node.tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let sub = r.body["id"].as_str().expect("id").to_owned();
    rx.wait_for("validation", Duration::from_secs(5), |r| !r.is_empty())
        .await;
    eventually(Duration::from_secs(5), "validated", || async {
        node.get(
            &format!("/events/api/v1/subscriptions/{sub}"),
            &node.tokens.owner_a,
        )
        .await
        .body["validated"]
            == true
    })
    .await;
    let id = node.create_dialog(&dialog_body()).await;
    rx.wait_for("event", Duration::from_secs(5), |r| r.len() >= 2)
        .await;
    let ev = &rx.events()[0];
    assert_eq!(ev.json()["resourceinstance"], id.as_str());
    assert!(ev.header("webhook-signature").starts_with("v1,"));
}
