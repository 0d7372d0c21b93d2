//! Web pages on other origins and the pages the node serves itself: CORS preflight and headers on
//! every API surface (`http.cors_origins`), the `Origin` check of WebSocket upgrades, 405 for a
//! wrong method on the SSE route, the console and GraphiQL served from the binary with no asset
//! from elsewhere, and the development issuer's `POST /dev/token`.

mod common;

use common::realtime::{SseClient, dialog_token, wait_subscriptions};
use common::{RESOURCE, SO, dialog_body, start};
use serde_json::json;

const APP: &str = "https://app.example.test";
const EVIL: &str = "https://evil.example.test";

/// A CORS preflight for `method path` from `origin`, asking for `headers`.
async fn preflight(
    node: &common::TestNode,
    path: &str,
    method: &str,
    origin: &str,
    headers: &str,
) -> common::Reply {
    node.send(
        "OPTIONS",
        path,
        None,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", headers),
        ],
        None,
    )
    .await
}

fn lower_list(v: Option<String>) -> Vec<String> {
    v.unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

#[actix_web::test]
async fn preflight_and_allow_origin_on_graphql_sse_rest_and_poll_for_listed_origins() {
    let node = start(&format!("[http]\ncors_origins = [{APP:?}]")).await;
    let id = node.create_dialog(&dialog_body()).await;
    let cases = [
        ("/graphql", "POST"),
        ("/graphql/stream", "POST"),
        (&*format!("/api/v1/serviceowner/dialogs/{id}"), "PUT"),
        (&*format!("/api/v1/enduser/dialogs/{id}"), "GET"),
        ("/events/api/v1/events", "GET"),
        ("/events/api/v1/subscriptions", "POST"),
    ];
    for (path, method) in cases {
        let r = preflight(
            &node,
            path,
            method,
            APP,
            "authorization, content-type, if-match",
        )
        .await;
        assert_eq!(
            r.status.as_u16(),
            200,
            "preflight {method} {path}: {:?}",
            r.headers
        );
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some(APP),
            "{path}"
        );
        assert!(
            lower_list(r.header("access-control-allow-methods")).contains(&method.to_lowercase()),
            "{path}: {:?}",
            r.header("access-control-allow-methods")
        );
        let allowed = lower_list(r.header("access-control-allow-headers"));
        for h in ["authorization", "content-type", "if-match"] {
            assert!(
                allowed.contains(&h.to_owned()),
                "{path}: {h} in {allowed:?}"
            );
        }
        // Another origin gets no permission.
        let r = preflight(&node, path, method, EVIL, "authorization").await;
        assert!(!r.status.is_success(), "{path}: {EVIL} refused");
        assert_eq!(r.header("access-control-allow-origin"), None, "{path}");
    }

    // The real requests carry the origin and expose the headers a page needs to read.
    let r = node
        .send(
            "GET",
            &format!("/events/api/v1/events?resource={RESOURCE}&after=0"),
            Some(&node.tokens.owner_a),
            &[("Origin", APP)],
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some(APP)
    );
    let exposed = lower_list(r.header("access-control-expose-headers"));
    for h in ["etag", "next"] {
        assert!(exposed.contains(&h.to_owned()), "{h} exposed: {exposed:?}");
    }
    let r = node
        .send(
            "GET",
            &format!("/api/v1/serviceowner/dialogs/{id}"),
            Some(&node.tokens.owner_a),
            &[("Origin", EVIL)],
            None,
        )
        .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[actix_web::test]
async fn without_cors_origins_no_cross_origin_access_is_granted() {
    let node = start("").await;
    for path in ["/graphql", "/graphql/stream", "/events/api/v1/events"] {
        let r = preflight(&node, path, "POST", APP, "authorization").await;
        assert_eq!(r.header("access-control-allow-origin"), None, "{path}");
    }
}

#[actix_web::test]
async fn a_wildcard_lets_any_origin_in() {
    let node = start("[http]\ncors_origins = [\"*\"]").await;
    let r = preflight(
        &node,
        "/graphql/stream",
        "POST",
        EVIL,
        "authorization, content-type",
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
}

#[actix_web::test]
async fn an_sse_stream_with_an_authorization_header_is_readable_cross_origin() {
    let node = start(&format!("[http]\ncors_origins = [{APP:?}]")).await;
    let id = node.create_dialog(&dialog_body()).await;
    let token = dialog_token(&node, &id).await;
    let resp = node
        .client
        .post(node.url("/graphql/stream"))
        .insert_header(("Origin", APP))
        .insert_header(("Accept", "text/event-stream"))
        .insert_header(("Content-Type", "application/json"))
        .bearer_auth(&token)
        .send_body(
            json!({
                "query": "subscription($id: UUID!) { dialogEvents(dialogId: $id) { type sequence } }",
                "variables": {"id": id}
            })
            .to_string(),
        )
        .await
        .expect("sse");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(APP)
    );
    let mut sse = SseClient::from_response(resp);
    wait_subscriptions(&node, 1).await;
    common::post_activity(&node, &id).await;
    let ev = sse.event().await;
    assert!(ev["sequence"].as_u64().is_some_and(|s| s > 1), "{ev}");
}

async fn upgrade_status(node: &common::TestNode, origin: Option<&str>) -> u16 {
    let mut req = awc::Client::builder()
        .max_http_version(awc::http::Version::HTTP_11)
        .finish()
        .ws(node.url("/graphql"))
        .protocols(["graphql-transport-ws"]);
    if let Some(o) = origin {
        req = req.origin(o);
    }
    match req.connect().await {
        Ok((resp, _)) => resp.status().as_u16(),
        Err(awc::error::WsClientError::InvalidResponseStatus(s)) => s.as_u16(),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[actix_web::test]
async fn websocket_upgrades_check_origin_against_cors_origins_when_set() {
    let node = start(&format!("[http]\ncors_origins = [{APP:?}]")).await;
    assert_eq!(upgrade_status(&node, Some(EVIL)).await, 403);
    assert_eq!(upgrade_status(&node, Some(APP)).await, 101);
    // The node's own pages (the console) are on its own origin.
    let own = node.base.clone();
    assert_eq!(upgrade_status(&node, Some(&own)).await, 101);
    // Not a browser: nothing to check.
    assert_eq!(upgrade_status(&node, None).await, 101);

    let open = start("").await;
    assert_eq!(upgrade_status(&open, Some(EVIL)).await, 101);
}

#[actix_web::test]
async fn a_wrong_method_on_the_sse_route_is_405_problem_json() {
    let node = start("").await;
    for method in ["GET", "PUT", "DELETE"] {
        node.send(method, "/graphql/stream", None, &[], None)
            .await
            .assert_problem(405, None);
    }
}

/// The `src`/`href` values of a page.
fn references(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attr) {
            rest = &rest[at + attr.len()..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_owned());
            }
        }
    }
    out
}

#[actix_web::test]
async fn the_console_graphiql_and_the_api_reference_come_from_the_binary_with_every_asset_they_reference()
 {
    let node = start("").await;
    for page in ["/console", "/graphiql", "/api-docs"] {
        let r = node.send("GET", page, None, &[], None).await;
        assert_eq!(r.status.as_u16(), 200, "{page}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        let html = String::from_utf8(r.raw.clone()).expect("utf-8");
        let refs: Vec<String> = references(&html)
            .into_iter()
            .filter(|r| !r.starts_with('#') && !r.starts_with("data:"))
            .collect();
        assert!(!refs.is_empty(), "{page} loads scripts or styles");
        for r in &refs {
            assert!(
                r.starts_with('/'),
                "{page}: {r} is not served by the node (no CDN, nothing off the machine)"
            );
            let asset = node.send("GET", r, None, &[], None).await;
            assert_eq!(asset.status.as_u16(), 200, "{page}: {r}");
            let ct = asset.header("content-type").unwrap_or_default();
            if r.ends_with(".js") {
                assert!(ct.starts_with("text/javascript"), "{r}: {ct}");
            } else if r.ends_with(".css") {
                assert!(ct.starts_with("text/css"), "{r}: {ct}");
            }
        }
    }
}

#[actix_web::test]
async fn the_dev_issuer_mints_tokens_over_http_only_while_enabled() {
    let node = start("").await;
    let r = node
        .send(
            "POST",
            "/dev/token",
            None,
            &[("Content-Type", "application/json")],
            Some(
                json!({"scope": SO, "org": common::ORG_A, "ttl": 600})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["expiresIn"], 600);
    let token = r.body["token"].as_str().expect("token").to_owned();
    let id = node.create_dialog(&dialog_body()).await;
    let read = node
        .get(&format!("/api/v1/serviceowner/dialogs/{id}"), &token)
        .await;
    assert_eq!(read.status.as_u16(), 200, "the minted token is accepted");

    for (body, field) in [
        (json!({"scope": SO, "pid": "123"}), "pid"),
        (json!({"scope": SO, "org": "1"}), "org"),
        (json!({"scope": SO, "ttl": 0}), "ttl"),
        (json!({"scope": SO, "ttl": 86_401}), "ttl"),
        (json!({"pid": common::PERSON_1}), "scope"),
    ] {
        node.send(
            "POST",
            "/dev/token",
            None,
            &[("Content-Type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await
        .assert_problem(400, Some(field));
    }

    let off = start("[auth.dev_issuer]\nenabled = false").await;
    off.send(
        "POST",
        "/dev/token",
        None,
        &[("Content-Type", "application/json")],
        Some(json!({"scope": SO}).to_string().into_bytes()),
    )
    .await
    .assert_problem(404, None);
}
