//! Test harness: starts a real node (`App::build`, port 0) and talks to it over real HTTP.
#![allow(dead_code)]

pub mod browser;
pub mod nginx;
pub mod process;
pub mod realtime;
pub mod receiver;
pub mod redis;

use std::sync::Arc;

use std::time::Duration;

use awc::http::StatusCode;
use awc::http::header::HeaderMap;
use dialog_events::auth::{KeyStore, dev_token};
use dialog_events::domain::Party;
use dialog_events::{App, Settings};
use serde_json::{Value, json};

pub const RESOURCE: &str = "urn:altinn:resource:test-service";
pub const OTHER_RESOURCE: &str = "urn:altinn:resource:other-service";
/// Owner of RESOURCE.
pub const ORG_A: &str = "991825827";
/// Owner of OTHER_RESOURCE.
pub const ORG_B: &str = "912345678";
/// Listed as an extra subscriber of RESOURCE.
pub const ORG_C: &str = "923456789";
/// Party of the test dialogs.
pub const PERSON_1: &str = "08895699684";
/// Holds a delegation from PERSON_1 for RESOURCE.
pub const PERSON_2: &str = "12345678901";
/// Has no relation to anything.
pub const STRANGER: &str = "11111111111";

pub const SO: &str = "digdir:dialogporten.serviceprovider";
pub const EU: &str = "digdir:dialogporten";
pub const SUB: &str = "altinn:events.subscribe";
pub const PUB: &str = "altinn:events.publish";
pub const ADMIN: &str = "dialog-events:admin";

pub fn person_urn(pid: &str) -> String {
    format!("urn:altinn:person:identifier-no:{pid}")
}

pub fn org_urn(org: &str) -> String {
    format!("urn:altinn:organization:identifier-no:{org}")
}

/// The registry every test node starts with.
pub fn base_config() -> String {
    format!(
        r#"
[http]
bind = "127.0.0.1:0"
workers = 2

[log]
level = "warn"

[[resources]]
id = "{RESOURCE}"
owner = "{a}"
subscribers = ["{c}"]

[[resources]]
id = "{OTHER_RESOURCE}"
owner = "{b}"

[[delegations]]
from = "{p1}"
to = "{p2}"
resources = ["{RESOURCE}"]
"#,
        a = org_urn(ORG_A),
        b = org_urn(ORG_B),
        c = org_urn(ORG_C),
        p1 = person_urn(PERSON_1),
        p2 = person_urn(PERSON_2),
    )
}

/// A running node with its tokens.
pub struct TestNode {
    pub base: String,
    pub node_id: String,
    handle: dialog_events::app::Stopper,
    pub tokens: Tokens,
    keys: KeyStore,
    pub client: awc::Client,
    /// The Redis this node runs on, if any (kept alive as long as the node).
    pub shared: Option<Shared>,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
pub struct Tokens {
    /// ORG_A: service owner of RESOURCE, with subscribe and publish scopes.
    pub owner_a: String,
    /// ORG_B: service owner of OTHER_RESOURCE only.
    pub owner_b: String,
    /// ORG_C: listed subscriber of RESOURCE.
    pub org_c: String,
    /// PERSON_1: end user, the party of the test dialogs.
    pub person_1: String,
    /// PERSON_2: end user with a delegation from PERSON_1 for RESOURCE.
    pub person_2: String,
    /// STRANGER: end user with no relation.
    pub stranger: String,
    pub admin: String,
}

/// Which backend the suite runs against: `DIALOG_EVENTS_TEST_BACKEND=redis` runs every node on a
/// `redis-server` of its test, `memory` on the in-memory store; anything else (the default) runs
/// the embedded durable store in the node's own data_dir.
pub fn redis_backend() -> bool {
    std::env::var("DIALOG_EVENTS_TEST_BACKEND").is_ok_and(|v| v == "redis")
}

fn memory_backend() -> bool {
    std::env::var("DIALOG_EVENTS_TEST_BACKEND").is_ok_and(|v| v == "memory")
}

/// Whether the multi-node suites run on a Redis Cluster (`DIALOG_EVENTS_TEST_REDIS=cluster`)
/// instead of one Redis.
pub fn on_cluster() -> bool {
    std::env::var("DIALOG_EVENTS_TEST_REDIS").is_ok_and(|v| v == "cluster")
}

/// A Redis server and key prefix shared by the nodes of one test.
#[derive(Clone)]
pub struct Shared {
    pub redis: Arc<redis::RedisServer>,
    pub prefix: String,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            redis: Arc::new(redis::RedisServer::start()),
            prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

/// Starts a node with the base registry, then `extra` TOML layered over it (any key, any table),
/// on the backend the suite runs against.
pub async fn start(extra: &str) -> TestNode {
    let shared = redis_backend().then(Shared::new);
    start_on(extra, shared).await
}

/// The public base URL of test clusters: behind a load balancer every node has the same one, so
/// dialog tokens and `next` links from any node are valid on all of them.
pub const CLUSTER_BASE_URL: &str = "http://dialogs.cluster.test";

/// Starts `n` nodes sharing one Redis (always Redis: a cluster needs it).
pub async fn start_cluster(n: usize, extra: &str) -> (Vec<TestNode>, Shared) {
    let shared = Shared::new();
    let mut nodes = Vec::new();
    let public = format!("[public]\nbase_url = {CLUSTER_BASE_URL:?}\n{extra}");
    for _ in 0..n {
        nodes.push(start_on(&public, Some(shared.clone())).await);
    }
    (nodes, shared)
}

/// Path and query of an absolute URL (a `next` link), to send to any node.
pub fn path_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme
        .find('/')
        .map_or("/".to_owned(), |i| after_scheme[i..].to_owned())
}

/// Starts a node, on Redis when `shared` is given.
pub async fn start_on(extra: &str, shared: Option<Shared>) -> TestNode {
    let redis = match &shared {
        Some(s) => format!("[redis]\nurl = {:?}\nprefix = {:?}", s.redis.url, s.prefix),
        None if memory_backend() => "[store]\nkind = \"memory\"".to_owned(),
        None => String::new(),
    };
    start_with(extra, &redis, shared).await
}

/// Starts a node on a Redis Cluster (`redis.cluster = true`), its keys under `prefix`.
pub async fn start_on_cluster(
    cluster: &redis::RedisCluster,
    prefix: &str,
    extra: &str,
) -> TestNode {
    let redis = format!(
        "[redis]\nurl = {:?}\nprefix = {prefix:?}\ncluster = true",
        cluster.url()
    );
    let public = format!("[public]\nbase_url = {CLUSTER_BASE_URL:?}\n{extra}");
    start_with(&public, &redis, None).await
}

async fn start_with(extra: &str, redis: &str, shared: Option<Shared>) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = format!("data_dir = {:?}", dir.path().display().to_string());
    let settings = Settings::from_toml_layers(&[&data_dir, &base_config(), redis, extra])
        .expect("test settings are valid");
    let on_cluster = settings.redis.cluster;
    let cluster_keys = on_cluster.then(|| {
        (
            settings.redis.url.clone().unwrap_or_default(),
            settings.redis.prefix.clone(),
        )
    });
    dialog_events::telemetry::init(&settings.log);
    let app = App::build(settings).await.expect("node builds");
    let base = format!("http://{}", app.local_addr());
    let node_id = app.node_id().to_owned();
    let handle = app.stopper();
    let keys = match (&shared, cluster_keys) {
        (Some(s), _) => shared_keys(s).await,
        (None, Some((url, prefix))) => cluster_keys_of(&url, &prefix).await,
        (None, None) => KeyStore::load_or_create(dir.path()).expect("keys"),
    };
    actix_web::rt::spawn(async move {
        let _ = app.run().await;
    });
    let mint = |scope: &str, party: Option<Party>| {
        dev_token(
            &keys.dev_issuer,
            scope,
            party.as_ref(),
            Duration::from_secs(3600),
        )
    };
    let org = |n: &str| Some(Party::organization(n).expect("org"));
    let person = |n: &str| Some(Party::person(n).expect("pid"));
    let all = format!("{SO} {SUB} {PUB}");
    let tokens = Tokens {
        owner_a: mint(&all, org(ORG_A)),
        owner_b: mint(&all, org(ORG_B)),
        org_c: mint(&all, org(ORG_C)),
        person_1: mint(&format!("{EU} {SUB}"), person(PERSON_1)),
        person_2: mint(&format!("{EU} {SUB}"), person(PERSON_2)),
        stranger: mint(&format!("{EU} {SUB}"), person(STRANGER)),
        admin: mint(ADMIN, None),
    };
    // Pooled connections are let go well before the node's keep-alive (5 s) closes them, so a
    // request never goes out on a connection the node is closing.
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .connector(awc::Connector::new().conn_keep_alive(Duration::from_secs(2)))
        .finish();
    TestNode {
        base,
        node_id,
        handle,
        tokens,
        keys,
        client,
        shared,
        _dir: dir,
    }
}

/// The cluster's keys as the nodes stored them in Redis.
pub async fn shared_keys(s: &Shared) -> KeyStore {
    let client = ::redis::Client::open(s.redis.url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let json: String = ::redis::cmd("GET")
        .arg(format!("{}:keys", s.prefix))
        .query_async(&mut conn)
        .await
        .expect("keys in redis");
    KeyStore::from_json(&json).expect("valid keys")
}

/// The keys the nodes of a Redis Cluster stored.
pub async fn cluster_keys_of(seeds: &str, prefix: &str) -> KeyStore {
    let client = ::redis::cluster::ClusterClient::new(seeds.split(',').collect::<Vec<_>>())
        .expect("cluster seeds");
    let mut conn = client
        .get_async_connection()
        .await
        .expect("cluster connection");
    let json: String = ::redis::cmd("GET")
        .arg(format!("{prefix}:keys"))
        .query_async(&mut conn)
        .await
        .expect("keys in the cluster");
    KeyStore::from_json(&json).expect("valid keys")
}

/// What a request returned.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Asserts a problem+json error with `status`, and (for 400) that the detail names `field`.
    pub fn assert_problem(&self, status: u16, field: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "problem+json for {status}"
        );
        assert_eq!(self.body["status"], status);
        assert!(
            self.body["title"].is_string()
                && self.body["type"].is_string()
                && self.body["detail"].is_string()
        );
        if let Some(field) = field {
            let detail = self.body["detail"].as_str().unwrap_or("");
            assert!(
                detail.starts_with(field),
                "detail {detail:?} should name {field:?}"
            );
            assert!(
                self.body["errors"][field].is_array(),
                "errors should name {field:?}: {}",
                self.body
            );
        }
    }
}

impl TestNode {
    /// Drains the node as SIGTERM would (realtime connections get 1012).
    pub async fn stop(&self) {
        self.handle.stop().await;
    }

    /// The node's data_dir (its embedded store and keys).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A dev-issuer token with any scope, party and lifetime.
    pub fn mint(&self, scope: &str, party: Option<Party>, ttl: Duration) -> String {
        dev_token(&self.keys.dev_issuer, scope, party.as_ref(), ttl)
    }

    /// Sends a request; `body` as JSON with `content_type` (default application/json).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.insert_header(("Authorization", format!("Bearer {t}")));
        }
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut resp = match body {
            Some(b) => req.send_body(b).await,
            None => req.send().await,
        }
        .expect("request reaches the node");
        let raw = resp.body().limit(64 << 20).await.expect("body").to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply {
            status: resp.status(),
            headers: resp.headers().clone(),
            body,
            raw,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send("GET", path, Some(token), &[], None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.json("POST", path, token, body).await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.json("PUT", path, token, body).await
    }

    pub async fn json(&self, method: &str, path: &str, token: &str, body: &Value) -> Reply {
        self.send(
            method,
            path,
            Some(token),
            &[("Content-Type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// Creates a dialog as ORG_A and returns its id.
    pub async fn create_dialog(&self, body: &Value) -> String {
        let r = self
            .post("/api/v1/serviceowner/dialogs", &self.tokens.owner_a, body)
            .await;
        assert_eq!(r.status.as_u16(), 201, "create failed: {}", r.body);
        r.body.as_str().expect("id string").to_owned()
    }

    /// Every event of RESOURCE the caller may see, following `next` pages.
    pub async fn poll_all(&self, token: &str, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut path =
            format!("/events/api/v1/events?resource={RESOURCE}&after=0&size=1000{query}");
        // A 503 says "try again": on a loaded machine a store call can time out once.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut r = self.get(&path, token).await;
            while r.status.as_u16() == 503 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                r = self.get(&path, token).await;
            }
            assert_eq!(r.status.as_u16(), 200, "poll failed: {}", r.body);
            let page = r.body.as_array().expect("array").clone();
            if page.is_empty() {
                return out;
            }
            out.extend(page);
            let next = r.header("next").expect("next header");
            path = path_of(&next);
        }
    }

    /// Events of one dialog from the poll API, as ORG_A sees them.
    pub async fn dialog_events(&self, id: &str) -> Vec<Value> {
        self.poll_all(&self.tokens.owner_a, "")
            .await
            .into_iter()
            .filter(|e| e["resourceinstance"] == id)
            .collect()
    }

    pub async fn metrics(&self) -> String {
        let r = self.send("GET", "/metrics", None, &[], None).await;
        String::from_utf8(r.raw).expect("utf8")
    }
}

/// Adds an `Information` activity to dialog `id` as ORG_A (one change, two events).
pub async fn post_activity(node: &TestNode, id: &str) {
    let r = node
        .post(
            &format!("/api/v1/serviceowner/dialogs/{id}/activities"),
            &node.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "activity: {}", r.body);
}

/// Event types of a list of events.
pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A minimal valid create body for RESOURCE and PERSON_1.
pub fn dialog_body() -> Value {
    json!({
        "serviceResource": RESOURCE,
        "party": person_urn(PERSON_1),
        "status": "InProgress",
        "content": {"title": [{"value": "Søknad om barnehageplass", "languageCode": "nb"}]}
    })
}

/// Waits for `cond` to hold, polling every 20 ms, failing after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
