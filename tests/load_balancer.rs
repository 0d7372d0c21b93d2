//! Three real nodes on one Redis behind nginx with the shipped routing rules (`deploy/nginx`):
//! every request, WebSocket and SSE stream goes through the load balancer, which spreads them
//! over the nodes. Realtime: subscribers over both transports get every change once, in order,
//! whichever node committed it, and a node killed with SIGKILL behind nginx costs its clients one
//! reconnect with `afterSequence`, nothing else. Webhooks: every event reaches the receiver, in
//! dialog order, across the kill.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nginx::Nginx;
use common::process::{NodeProcess, free_port};
use common::realtime::{Incoming, SUBSCRIPTION, SseClient, WsClient};
use common::receiver::Receiver;
use common::redis::RedisServer;
use common::{ORG_A, RESOURCE, SO, SUB, Shared, dialog_body, org_urn, shared_keys};
use dialog_events::auth::dev_token;
use dialog_events::domain::Party;
use serde_json::{Value, json};

struct Cluster {
    nodes: Vec<NodeProcess>,
    nginx: Nginx,
    client: awc::Client,
    owner: String,
    _dirs: Vec<tempfile::TempDir>,
    _redis: Arc<RedisServer>,
}

impl Cluster {
    async fn start() -> Cluster {
        let shared = Shared::new();
        let lb_port = free_port();
        let base_url = format!("http://127.0.0.1:{lb_port}");
        let mut dirs = Vec::new();
        let mut nodes = Vec::new();
        for n in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            write_config(dir.path(), &shared, &base_url, n);
            nodes.push(NodeProcess::start(dir.path()));
            dirs.push(dir);
        }
        let upstreams: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
        let nginx = Nginx::start_on(lb_port, &upstreams);
        let keys = shared_keys(&shared).await;
        let owner = dev_token(
            &keys.dev_issuer,
            &format!("{SO} {SUB}"),
            Some(&Party::organization(ORG_A).expect("org")),
            Duration::from_secs(3600),
        );
        Cluster {
            nodes,
            nginx,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
            owner,
            _dirs: dirs,
            _redis: shared.redis,
        }
    }

    /// A request through the load balancer.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let req = self
            .client
            .request(method, format!("{}{path}", self.nginx.base))
            .bearer_auth(&self.owner);
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .expect("request through nginx");
        let bytes = resp.body().limit(16 << 20).await.expect("body");
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

    /// Adds an activity through the load balancer (any node may take it).
    async fn change(&self, dialog: &str) {
        let (status, body) = self
            .call(
                "POST",
                &format!("/api/v1/serviceowner/dialogs/{dialog}/activities"),
                Some(json!({"type": "Information"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    async fn sequence(&self, dialog: &str) -> u64 {
        let (status, d) = self
            .call(
                "GET",
                &format!("/api/v1/serviceowner/dialogs/{dialog}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{d}");
        d["sequence"].as_u64().expect("sequence")
    }

    async fn dialog_token(&self, dialog: &str) -> String {
        let (_, d) = self
            .call(
                "GET",
                &format!("/api/v1/serviceowner/dialogs/{dialog}"),
                None,
            )
            .await;
        d["dialogToken"].as_str().expect("dialogToken").to_owned()
    }

    /// Which nodes answer requests through the load balancer (by `X-Node-Id`-free means: each
    /// node's own `/health/ready` names it).
    async fn nodes_reached(&self) -> HashSet<String> {
        let mut seen = HashSet::new();
        for _ in 0..12 {
            let (status, body) = self.call("GET", "/health/ready", None).await;
            assert_eq!(status, 200, "{body}");
            if let Some(n) = body["node"].as_str() {
                seen.insert(n.to_owned());
            }
        }
        seen
    }
}

fn write_config(dir: &Path, shared: &Shared, base_url: &str, n: usize) {
    let toml = format!(
        r#"data_dir = {data:?}
[http]
bind = "127.0.0.1:0"
[public]
base_url = {base_url:?}
[node]
id = "node-{n}"
[redis]
url = {url:?}
prefix = {prefix:?}
[log]
level = "info"
[realtime]
max_connections_per_party = 1000
[webhooks]
allow_http = true
allow_private_networks = true
poll_interval = "20ms"
[[resources]]
id = "{RESOURCE}"
owner = "{owner}"
"#,
        data = dir.join("data").display().to_string(),
        url = shared.redis.url,
        prefix = shared.prefix,
        owner = org_urn(ORG_A),
    );
    std::fs::write(dir.join("node.toml"), toml).expect("config");
}

/// A realtime subscriber through the load balancer that reconnects (with `afterSequence`) when
/// its node goes away, and records the sequences it got.
struct Subscriber {
    sse: bool,
    ws: Option<WsClient>,
    stream: Option<SseClient>,
    got: Vec<u64>,
    reconnects: usize,
}

impl Subscriber {
    async fn open(base: &str, client: &awc::Client, token: &str, dialog: &str, sse: bool) -> Self {
        let mut s = Subscriber {
            sse,
            ws: None,
            stream: None,
            got: Vec::new(),
            reconnects: 0,
        };
        s.connect(base, client, token, dialog, None).await;
        s
    }

    async fn connect(
        &mut self,
        base: &str,
        client: &awc::Client,
        token: &str,
        dialog: &str,
        after: Option<u64>,
    ) {
        if self.sse {
            let resp = client
                .post(format!("{base}/graphql/stream"))
                .insert_header(("Accept", "text/event-stream"))
                .insert_header(("Content-Type", "application/json"))
                .bearer_auth(token)
                .timeout(Duration::from_secs(600))
                .send_body(
                    json!({"query": SUBSCRIPTION, "variables": {"id": dialog, "after": after}})
                        .to_string(),
                )
                .await
                .expect("sse through nginx");
            assert_eq!(resp.status().as_u16(), 200);
            self.stream = Some(SseClient::from_response(resp));
        } else {
            let mut ws = WsClient::connect_to(base, "graphql-transport-ws", None).await;
            ws.init(Some(token)).await;
            ws.subscribe("1", dialog, after).await;
            self.ws = Some(ws);
        }
    }

    /// Reads until `last` was seen, reconnecting through `base` when the stream ends.
    async fn read_until(
        &mut self,
        last: u64,
        base: &str,
        client: &awc::Client,
        token: &str,
        dialog: &str,
    ) {
        while self.got.last().copied().unwrap_or(0) < last {
            let next = if self.sse {
                let stream = self.stream.as_mut().expect("stream");
                match stream.next().await {
                    Some(ev) if ev.event == "next" => {
                        let v: Value = serde_json::from_str(&ev.data).expect("json");
                        Some(v["data"]["dialogEvents"].clone())
                    }
                    Some(ev) => panic!("unexpected {ev:?}"),
                    None => None,
                }
            } else {
                match self.ws.as_mut().expect("ws").next().await {
                    Incoming::Json(v) if v["type"] == "next" => {
                        Some(v["payload"]["data"]["dialogEvents"].clone())
                    }
                    Incoming::Json(v) => panic!("unexpected {v}"),
                    Incoming::Closed(..) => None,
                }
            };
            match next {
                Some(p) => {
                    assert_ne!(p["resync"], true, "no resync: the history reaches back");
                    self.got.push(p["sequence"].as_u64().expect("sequence"));
                }
                None => {
                    // Its node is gone: resume elsewhere from the last change seen.
                    self.reconnects += 1;
                    assert!(self.reconnects <= 3, "reconnects");
                    let after = self.got.last().copied();
                    self.connect(base, client, token, dialog, after).await;
                }
            }
        }
    }
}

/// Sequences in increasing order, each once.
fn assert_once_in_order(got: &[u64], what: &str) {
    assert!(!got.is_empty(), "{what}: got nothing");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "{what}: once each, in order: {got:?}"
    );
}

#[actix_web::test]
async fn realtime_through_nginx_gets_every_change_once_in_order_across_a_node_killed_behind_it() {
    let mut cluster = Cluster::start().await;
    assert_eq!(
        cluster.nodes_reached().await.len(),
        3,
        "nginx spreads requests over the three nodes"
    );
    let dialog = cluster.create_dialog().await;
    let token = cluster.dialog_token(&dialog).await;
    let base = cluster.nginx.base.clone();
    let mut subs = Vec::new();
    for i in 0..6 {
        subs.push(Subscriber::open(&base, &cluster.client, &token, &dialog, i % 2 == 1).await);
    }
    // Let every subscription attach before the first change.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for _ in 0..10 {
        cluster.change(&dialog).await;
    }
    let before = cluster.sequence(&dialog).await;
    for s in &mut subs {
        s.read_until(before, &base, &cluster.client, &token, &dialog)
            .await;
    }

    // One node dies behind nginx; writes keep succeeding through the others.
    cluster.nodes[1].kill();
    for _ in 0..10 {
        cluster.change(&dialog).await;
    }
    let last = cluster.sequence(&dialog).await;
    assert_eq!(last, before + 20, "every write through nginx succeeded");
    for s in &mut subs {
        s.read_until(last, &base, &cluster.client, &token, &dialog)
            .await;
    }
    for (i, s) in subs.iter().enumerate() {
        assert_once_in_order(&s.got, &format!("subscriber {i}"));
        assert_eq!(s.got.last(), Some(&last));
        // Ten changes of two events each: every second sequence.
        let expected: Vec<u64> = (1..=20).map(|k| 1 + 2 * k).collect();
        assert_eq!(s.got, expected, "subscriber {i}: every change");
    }
    assert!(
        subs.iter().any(|s| s.reconnects > 0),
        "some subscribers were on the killed node (round robin over three)"
    );
}

#[actix_web::test]
async fn webhooks_through_nginx_deliver_every_event_in_dialog_order_across_a_node_killed_behind_it()
{
    let mut cluster = Cluster::start().await;
    let rx = Receiver::start().await;
    let (status, sub) = cluster
        .call(
            "POST",
            "/events/api/v1/subscriptions",
            Some(json!({"endPoint": rx.url, "resourceFilter": RESOURCE})),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let sub_path = format!(
        "/events/api/v1/subscriptions/{}",
        sub["id"].as_str().expect("id")
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.call("GET", &sub_path, None).await.1["validated"] != true {
        assert!(Instant::now() < deadline, "validated in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut dialogs = Vec::new();
    for _ in 0..5 {
        dialogs.push(cluster.create_dialog().await);
    }
    for round in 0..8 {
        if round == 4 {
            cluster.nodes[0].kill();
        }
        for d in &dialogs {
            cluster.change(d).await;
        }
    }

    // Every event of the resource (the poll API, through nginx) reaches the receiver.
    let (status, events) = cluster
        .call(
            "GET",
            &format!("/events/api/v1/events?resource={RESOURCE}&after=0&size=1000"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{events}");
    let want: HashSet<String> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(want.len(), 5 * (1 + 8 * 2), "every event committed");
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let got: Vec<Value> = rx.events().iter().map(|r| r.json()).collect();
        let ids: HashSet<String> = got
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        if want.is_subset(&ids) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events delivered",
            want.intersection(&ids).count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Per dialog, first deliveries in sequence order (a retry of an attempt in flight at the
    // kill may repeat one).
    let mut firsts = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for e in &delivered {
        if !firsts.insert(e["id"].as_str().expect("id").to_owned()) {
            continue;
        }
        let d = e["resourceinstance"].as_str().expect("dialog").to_owned();
        let seq = e["dialogsequence"].as_u64().expect("sequence");
        let prev = last.insert(d.clone(), seq).unwrap_or(0);
        assert!(seq > prev, "dialog {d}: {seq} after {prev}");
    }
}
