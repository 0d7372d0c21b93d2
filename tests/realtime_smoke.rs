mod common;

use common::realtime::*;
use common::*;
use serde_json::json;

#[actix_web::test]
async fn transport_ws_subscriber_receives_an_update() {
    let node = start("").await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let mut ws = WsClient::connect(&node, "graphql-transport-ws", None).await;
    ws.init(Some(&token)).await;
    ws.subscribe("1", &id, None).await;
    wait_subscriptions(&node, 1).await;
    let r = node
        .post(
            &format!("/api/v1/serviceowner/dialogs/{id}/activities"),
            &node.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201);
    let ev = ws.event().await;
    assert_eq!(ev["type"], "DIALOG_UPDATED");
    assert_eq!(ev["sequence"], 3);
}
