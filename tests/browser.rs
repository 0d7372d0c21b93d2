//! The console and cross-origin pages in a real browser: headless Debian Chromium driven over
//! the DevTools protocol, against the real binary on a fixed loopback port.
//! - The console shows a change within 1 s of the write.
//! - After the node is killed and restarted, it resumes with `afterSequence`: the changes made
//!   while it was away arrive once each, in order; when they no longer fit the history it shows
//!   the `resync` banner.
//! - A page on another origin subscribes over SSE with an `Authorization` header, through CORS;
//!   on a node that does not list its origin, the browser refuses the preflight.
//! - GraphiQL renders from the node's own files and runs `dialogEvents` over graphql-transport-ws
//!   with the dialog token of its toolbar in `connectionParams`.
//! - The console lists a subscriber's subscriptions, failed attempts and dead letters, and its
//!   redrive button delivers the event again; with no token at all, its Mint button gets one from
//!   the development issuer, and that token opens a dialog.
//!
//! `DIALOG_EVENTS_SCREENSHOTS=DIR` also saves screenshots of the console there.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::browser::{Browser, Page};
use common::process::{NodeProcess, free_port};
use common::{ORG_A, RESOURCE, SO, SUB, dialog_body, org_urn};
use dialog_events::auth::{KeyStore, dev_token};
use dialog_events::domain::Party;
use serde_json::{Value, json};

/// Changes kept per dialog for resume in these tests.
const HISTORY: u64 = 5;

fn write_config(dir: &Path, port: u16, extra: &str) {
    let toml = format!(
        r#"data_dir = {data:?}
[http]
bind = "127.0.0.1:{port}"
{extra}
[log]
level = "info"
[realtime]
history_size = {HISTORY}
[[resources]]
id = "{RESOURCE}"
owner = "{owner}"
"#,
        data = dir.join("data").display().to_string(),
        owner = org_urn(ORG_A),
    );
    std::fs::write(dir.join("node.toml"), toml).expect("config");
}

struct Api {
    client: awc::Client,
    base: String,
    owner: String,
}

impl Api {
    fn new(dir: &Path, base: &str) -> Api {
        let keys = KeyStore::load_or_create(&dir.join("data")).expect("the node's keys");
        Api {
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
            base: base.to_owned(),
            owner: dev_token(
                &keys.dev_issuer,
                &format!("{SO} {SUB}"),
                Some(&Party::organization(ORG_A).expect("org")),
                Duration::from_secs(3600),
            ),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.owner);
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .expect("request");
        let bytes = resp.body().await.expect("body");
        (
            resp.status().as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn create_dialog(&self) -> String {
        let (status, id) = self
            .call("POST", "/api/v1/serviceowner/dialogs", Some(dialog_body()))
            .await;
        assert_eq!(status, 201, "{id}");
        id.as_str().expect("id").to_owned()
    }

    /// Adds an activity; returns the dialog's sequence after it.
    async fn change(&self, id: &str) -> u64 {
        let path = format!("/api/v1/serviceowner/dialogs/{id}");
        let (status, body) = self
            .call(
                "POST",
                &format!("{path}/activities"),
                Some(json!({"type": "Information"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (_, dialog) = self.call("GET", &path, None).await;
        dialog["sequence"].as_u64().expect("sequence")
    }
}

/// The sequences the console has shown, in arrival order.
async fn shown(browser: &mut Browser, page: &Page) -> Vec<u64> {
    let v = browser
        .eval(
            page,
            "Array.from(document.querySelectorAll('#events .event')).map(e => Number(e.dataset.sequence)).reverse()",
        )
        .await;
    v.as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

async fn save_screenshot(browser: &mut Browser, page: &Page, name: &str) {
    if let Some(dir) = std::env::var_os("DIALOG_EVENTS_SCREENSHOTS") {
        let png = browser.screenshot(page).await;
        std::fs::write(Path::new(&dir).join(name), png).expect("screenshot");
    }
}

/// Kills the node, waits until the console has given up on it for `away`, restarts the node on
/// the same port and makes `changes` changes before the console's next attempt; returns the
/// restarted node and the sequences of the changes.
async fn restart_with_changes_while_away(
    dir: &Path,
    node: &mut NodeProcess,
    browser: &mut Browser,
    page: &Page,
    dialog: &str,
    changes: usize,
) -> (NodeProcess, Vec<u64>) {
    node.kill();
    browser
        .wait_for(
            page,
            "consoleState.status !== 'live'",
            Duration::from_secs(10),
            "the console notices the node is gone",
        )
        .await;
    // The console retries after 0.5, 1, 2 and 4 s: restart after its third failure, so that the
    // changes below are made a good while before its next attempt.
    tokio::time::sleep(Duration::from_millis(3800)).await;
    let restarted = NodeProcess::start(dir);
    let api = Api::new(dir, &restarted.base);
    let mut made = Vec::new();
    for _ in 0..changes {
        made.push(api.change(dialog).await);
    }
    let status = browser.eval(page, "consoleState.status").await;
    assert_ne!(
        status, "live",
        "the changes were made while the console was away (else this tests no resume)"
    );
    (restarted, made)
}

#[actix_web::test]
async fn the_console_shows_changes_live_and_resumes_after_the_node_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    write_config(dir.path(), port, "");
    let mut node = NodeProcess::start(dir.path());
    let api = Api::new(dir.path(), &node.base);
    let dialog = api.create_dialog().await;
    let mut browser = Browser::launch().await;
    let page = browser
        .open(&format!(
            "{}/console?dialog={dialog}&bearer={}",
            node.base, api.owner
        ))
        .await;
    browser
        .wait_for(
            &page,
            "consoleState.status === 'live'",
            Duration::from_secs(15),
            "the console subscribes",
        )
        .await;

    // A change appears within a second of the write.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let sequence = api.change(&dialog).await;
        let (_, _) = browser
            .wait_for(
                &page,
                &format!(
                    "!!document.querySelector('#events .event[data-sequence=\"{sequence}\"]')"
                ),
                Duration::from_secs(5),
                "the change on the page",
            )
            .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "change {sequence} shown after {took:?}"
        );
        seen.push(sequence);
    }
    assert_eq!(shown(&mut browser, &page).await, seen);
    save_screenshot(&mut browser, &page, "console-live.png").await;

    // Killed and restarted: the changes made meanwhile arrive once each, in order.
    let (mut node2, missed) =
        restart_with_changes_while_away(dir.path(), &mut node, &mut browser, &page, &dialog, 2)
            .await;
    let last = *missed.last().expect("changes");
    browser
        .wait_for(
            &page,
            &format!("consoleState.status === 'live' && consoleState.lastSequence === {last}"),
            Duration::from_secs(15),
            "the console resumes",
        )
        .await;
    seen.extend(&missed);
    assert_eq!(
        shown(&mut browser, &page).await,
        seen,
        "every change once, in order"
    );
    let banner_hidden = browser
        .eval(&page, "document.getElementById('resync-banner').hidden")
        .await;
    assert_eq!(
        banner_hidden, true,
        "no resync when the history reaches back"
    );

    // Away for more changes than the history keeps: the console says so and reloads.
    let (_node3, _) = restart_with_changes_while_away(
        dir.path(),
        &mut node2,
        &mut browser,
        &page,
        &dialog,
        HISTORY as usize + 2,
    )
    .await;
    browser
        .wait_for(
            &page,
            "!document.getElementById('resync-banner').hidden",
            Duration::from_secs(15),
            "the resync banner",
        )
        .await;
    save_screenshot(&mut browser, &page, "console-resync.png").await;
}

/// A page on its own origin (a second loopback port) that subscribes over SSE with `fetch`,
/// sending the dialog token in `Authorization`, and records what it reads.
fn cross_origin_page(node: &str, dialog: &str, token: &str) -> String {
    let body = json!({
        "query": "subscription($id: UUID!) { dialogEvents(dialogId: $id) { type sequence } }",
        "variables": {"id": dialog}
    });
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>elsewhere</title><script>
window.received = []; window.failure = null; window.opened = false;
(async () => {{
  try {{
    const r = await fetch({url:?}, {{
      method: "POST",
      headers: {{"Authorization": "Bearer " + {token:?}, "Content-Type": "application/json",
                 "Accept": "text/event-stream"}},
      body: JSON.stringify({body}),
    }});
    window.opened = r.status;
    const reader = r.body.getReader(); const text = new TextDecoder(); let buf = "";
    for (;;) {{
      const {{done, value}} = await reader.read(); if (done) break;
      buf += text.decode(value, {{stream: true}});
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {{
        const block = buf.slice(0, end); buf = buf.slice(end + 2);
        const data = block.split("\n").filter(l => l.startsWith("data:")).map(l => l.slice(5)).join("");
        if (block.includes("event: next") || block.includes("event:next")) window.received.push(JSON.parse(data));
      }}
    }}
  }} catch (e) {{ window.failure = String(e); }}
}})();
</script>"#,
        url = format!("{node}/graphql/stream"),
    )
}

/// Serves `html` at `/` on a loopback port of its own; returns its origin.
fn serve_page(html: String) -> (String, actix_web::dev::ServerHandle) {
    serve_page_on(html, 0)
}

#[actix_web::test]
async fn a_page_on_another_origin_subscribes_over_sse_with_authorization_through_cors() {
    // The page's origin must be known before the node starts: reserve its port first.
    let page_port = free_port();
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        free_port(),
        &format!("cors_origins = [{page_origin:?}]"),
    );
    let node = NodeProcess::start(dir.path());
    let api = Api::new(dir.path(), &node.base);
    let dialog = api.create_dialog().await;
    let (_, read) = api
        .call(
            "GET",
            &format!("/api/v1/serviceowner/dialogs/{dialog}"),
            None,
        )
        .await;
    let token = read["dialogToken"]
        .as_str()
        .expect("dialogToken")
        .to_owned();

    let html = cross_origin_page(&node.base, &dialog, &token);
    let (origin, server) = serve_page_on(html, page_port);
    assert_eq!(origin, page_origin);
    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("{origin}/")).await;
    browser
        .wait_for(
            &page,
            "window.opened === 200",
            Duration::from_secs(10),
            "the stream opens",
        )
        .await;
    // Let the subscription settle, then change the dialog.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sequence = api.change(&dialog).await;
    let (got, _) = browser
        .wait_for(
            &page,
            "window.received.length > 0 && window.received",
            Duration::from_secs(5),
            "an event read across origins",
        )
        .await;
    assert_eq!(
        got[0]["data"]["dialogEvents"]["sequence"], sequence,
        "{got}"
    );
    server.stop(false).await;

    // A node that does not list the page's origin: the browser refuses the preflight.
    let other_dir = tempfile::tempdir().expect("tempdir");
    write_config(other_dir.path(), free_port(), "");
    let other = NodeProcess::start(other_dir.path());
    let other_api = Api::new(other_dir.path(), &other.base);
    let other_dialog = other_api.create_dialog().await;
    let (_, read) = other_api
        .call(
            "GET",
            &format!("/api/v1/serviceowner/dialogs/{other_dialog}"),
            None,
        )
        .await;
    let token = read["dialogToken"]
        .as_str()
        .expect("dialogToken")
        .to_owned();
    let (origin, server) = serve_page(cross_origin_page(&other.base, &other_dialog, &token));
    let page = browser.open(&format!("{origin}/")).await;
    let (failure, _) = browser
        .wait_for(
            &page,
            "window.failure",
            Duration::from_secs(10),
            "the browser refuses the cross-origin request",
        )
        .await;
    assert!(
        failure
            .as_str()
            .is_some_and(|f| f.contains("Failed to fetch")),
        "{failure}"
    );
    assert_eq!(browser.eval(&page, "window.opened").await, false);
    server.stop(false).await;
}

/// Serves `html` at `/` on `port` (0: any free one); returns its origin.
fn serve_page_on(html: String, port: u16) -> (String, actix_web::dev::ServerHandle) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the page port");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let server = actix_web::HttpServer::new(move || {
        let html = html.clone();
        actix_web::App::new().route(
            "/",
            actix_web::web::get().to(move || {
                let html = html.clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("text/html; charset=utf-8")
                        .body(html)
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (origin, handle)
}

#[actix_web::test]
async fn graphiql_loads_offline_and_subscribes_with_the_dialog_token_from_its_toolbar() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), free_port(), "");
    let node = NodeProcess::start(dir.path());
    let api = Api::new(dir.path(), &node.base);
    let dialog = api.create_dialog().await;
    let (_, read) = api
        .call(
            "GET",
            &format!("/api/v1/serviceowner/dialogs/{dialog}"),
            None,
        )
        .await;
    let token = read["dialogToken"]
        .as_str()
        .expect("dialogToken")
        .to_owned();
    let mut browser = Browser::launch().await;
    // The browser resolves nothing but loopback: GraphiQL renders only from the node's own files.
    let page = browser
        .open(&format!(
            "{}/graphiql?dialog={dialog}&token={token}",
            node.base
        ))
        .await;
    browser
        .wait_for(
            &page,
            "!!document.querySelector('.graphiql-execute-button')",
            Duration::from_secs(15),
            "GraphiQL renders",
        )
        .await;
    browser
        .eval(
            &page,
            "document.querySelector('.graphiql-execute-button').click(), true",
        )
        .await;
    browser
        .wait_for(
            &page,
            "document.getElementById('ws-state').textContent.includes('connected')",
            Duration::from_secs(10),
            "the WebSocket is accepted with the dialog token from connectionParams",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sequence = api.change(&dialog).await;
    browser
        .wait_for(
            &page,
            &format!(
                "document.querySelector('.graphiql-container').innerText.includes('\"sequence\": {sequence}')"
            ),
            Duration::from_secs(5),
            "the change in GraphiQL's result pane",
        )
        .await;
    save_screenshot(&mut browser, &page, "graphiql-subscription.png").await;
}

#[actix_web::test]
async fn the_console_shows_a_subscribers_subscriptions_deliveries_and_dead_letters() {
    use common::receiver::Receiver;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), free_port(), "");
    // Deliveries fail fast into dead letters: one attempt after the first.
    let mut toml = std::fs::read_to_string(dir.path().join("node.toml")).expect("config");
    toml.push_str(
        "[webhooks]\nallow_http = true\nallow_private_networks = true\npoll_interval = \"20ms\"\nretry_schedule = [\"50ms\"]\n",
    );
    std::fs::write(dir.path().join("node.toml"), toml).expect("config");
    let node = NodeProcess::start(dir.path());
    let api = Api::new(dir.path(), &node.base);
    let (status, sub) = api
        .call(
            "POST",
            "/events/api/v1/subscriptions",
            Some(json!({"endPoint": rx.url, "resourceFilter": RESOURCE})),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let sub_id = sub["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while api
        .call(
            "GET",
            &format!("/events/api/v1/subscriptions/{sub_id}"),
            None,
        )
        .await
        .1["validated"]
        != true
    {
        assert!(Instant::now() < deadline, "validated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rx.answer(500);
    let dialog = api.create_dialog().await;

    // The dead-letter list is for admins: the console reads it with an admin-capable token.
    let keys = KeyStore::load(&dir.path().join("data/keys.json")).expect("keys");
    let bearer = dev_token(
        &keys.dev_issuer,
        &format!("{SO} {SUB} dialog-events:admin"),
        Some(&Party::organization(ORG_A).expect("org")),
        Duration::from_secs(3600),
    );
    let admin = Api {
        client: api.client.clone(),
        base: node.base.clone(),
        owner: bearer.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, dead) = admin.call("GET", "/admin/v1/dead-letters", None).await;
        if dead["count"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut browser = Browser::launch().await;
    let page = browser
        .open(&format!("{}/console?bearer={bearer}", node.base))
        .await;
    browser
        .wait_for(
            &page,
            &format!("document.getElementById('subs').innerText.includes('{sub_id}')"),
            Duration::from_secs(10),
            "the subscription listed",
        )
        .await;
    // Selecting it shows its delivery attempts and dead letters.
    browser
        .eval(
            &page,
            &format!(
                "document.querySelector('#subs li[data-id=\"{sub_id}\"] button').click(), true"
            ),
        )
        .await;
    browser
        .wait_for(
            &page,
            "document.getElementById('deliveries').innerText.includes('500')",
            Duration::from_secs(10),
            "the failed attempts",
        )
        .await;
    browser
        .wait_for(
            &page,
            "!!document.querySelector('#dead-letters button')",
            Duration::from_secs(10),
            "a dead letter with its redrive button",
        )
        .await;
    browser
        .eval(
            &page,
            "window.scrollTo(0, document.body.scrollHeight), true",
        )
        .await;
    save_screenshot(&mut browser, &page, "console-webhooks.png").await;
    // Redrive from the console: the receiver answers again, and the event arrives.
    rx.answer(200);
    let before = rx.events().len();
    browser
        .eval(
            &page,
            "document.querySelector('#dead-letters button').click(), true",
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rx.events()[before..]
        .iter()
        .any(|r| r.json()["resourceinstance"] == dialog.as_str())
    {
        assert!(Instant::now() < deadline, "the redriven event arrives");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn the_consoles_mint_button_gets_a_development_token_that_opens_a_dialog() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), free_port(), "");
    let node = NodeProcess::start(dir.path());
    let api = Api::new(dir.path(), &node.base);
    let dialog = api.create_dialog().await;
    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("{}/console", node.base)).await;
    // The script has run (its state exists, so its buttons have their handlers).
    browser
        .wait_for(
            &page,
            "typeof window.consoleState === 'object'",
            Duration::from_secs(10),
            "the console's script",
        )
        .await;
    // A service-owner token for the dialog's owner, minted by the page itself.
    browser
        .eval(
            &page,
            &format!(
                "document.getElementById('mint-scope').value = '{SO} {SUB}'; \
                 document.getElementById('mint-party').value = '{ORG_A}'; \
                 document.getElementById('mint').click(), true"
            ),
        )
        .await;
    let (token, _) = browser
        .wait_for(
            &page,
            "document.getElementById('bearer').value.split('.').length === 3 && document.getElementById('bearer').value",
            Duration::from_secs(10),
            "a minted bearer token in the field",
        )
        .await;
    let token = token.as_str().expect("token").to_owned();
    let keys = KeyStore::load(&dir.path().join("data/keys.json")).expect("keys");
    let claims = keys
        .dev_issuer
        .verify_jwt(&token)
        .expect("signed by the dev issuer");
    assert_eq!(claims["scope"], format!("{SO} {SUB}"));
    browser
        .eval(
            &page,
            &format!(
                "document.getElementById('dialog-id').value = '{dialog}'; \
                 document.getElementById('open').click(), true"
            ),
        )
        .await;
    browser
        .wait_for(
            &page,
            "consoleState.status === 'live'",
            Duration::from_secs(10),
            "the dialog opened with the minted token",
        )
        .await;
}
