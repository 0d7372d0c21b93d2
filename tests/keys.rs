//! Signing keys an operator controls (SPEC 2 `auth.keys_file`, `dialog-events keys rotate`), with
//! the real binary: a rotation reaches running nodes within seconds, new dialog tokens are signed
//! with the former next key, and tokens signed before keep verifying until they expire; an
//! operator's keys file is used as it is, with nothing generated in data_dir or kept in Redis.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::process::{BIN, NodeProcess, spawn};
use common::realtime::{Incoming, WsClient};
use common::{ORG_A, RESOURCE, SO, Shared, dialog_body, org_urn};
use dialog_events::auth::{KeyStore, dev_token};
use dialog_events::domain::Party;
use serde_json::{Value, json};

fn write_config(dir: &Path, extra: &str) {
    let toml = format!(
        r#"data_dir = {data:?}
[http]
bind = "127.0.0.1:0"
[public]
base_url = "http://dialogs.keys.test"
[log]
level = "info"
[[resources]]
id = "{RESOURCE}"
owner = "{owner}"
{extra}
"#,
        data = dir.join("data").display().to_string(),
        owner = org_urn(ORG_A),
    );
    std::fs::write(dir.join("node.toml"), toml).expect("config");
}

fn redis_config(shared: &Shared) -> String {
    format!(
        "[redis]\nurl = {:?}\nprefix = {:?}",
        shared.redis.url, shared.prefix
    )
}

/// `dialog-events ARGS`, asserting success; its stdout.
fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("DIALOG_EVENTS__LOG__LEVEL")
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kid_of(jwt: &str) -> String {
    let header = jwt.split('.').next().expect("header");
    let v: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64")).expect("json");
    v["kid"].as_str().expect("kid").to_owned()
}

struct Api {
    client: awc::Client,
    base: String,
    owner: String,
}

impl Api {
    fn new(base: &str, keys: &KeyStore) -> Api {
        Api {
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
            base: base.to_owned(),
            owner: dev_token(
                &keys.dev_issuer,
                SO,
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

    async fn jwks_kids(&self) -> Vec<String> {
        let (status, jwks) = self
            .call("GET", "/api/v1/.well-known/jwks.json", None)
            .await;
        assert_eq!(status, 200);
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    async fn dialog_token(&self, dialog: &str) -> String {
        let (status, d) = self
            .call(
                "GET",
                &format!("/api/v1/serviceowner/dialogs/{dialog}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{d}");
        d["dialogToken"].as_str().expect("dialogToken").to_owned()
    }
}

/// Whether the node accepts `token` as a dialog token (`connection_init` on the WebSocket).
async fn accepted(base: &str, token: &str) -> bool {
    let mut ws = WsClient::connect_to(base, "graphql-transport-ws", None).await;
    ws.send(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    match ws.next().await {
        Incoming::Json(v) => v["type"] == "connection_ack",
        Incoming::Closed(code, _) => {
            assert_eq!(code, Some(4403), "a refused token closes with 4403");
            false
        }
    }
}

/// Rotates with the CLI and checks every node: the JWKS leads with the former next key and still
/// holds the former primary; a token signed before the rotation is accepted, and new ones are
/// signed with the new primary.
async fn rotate_and_check(dir: &Path, apis: &[Api], dialog: &str) {
    let before = apis[0].jwks_kids().await;
    assert_eq!(before.len(), 2, "primary and next: {before:?}");
    let old_token = apis[0].dialog_token(dialog).await;
    assert_eq!(kid_of(&old_token), before[0]);

    let out = cli(&[
        "keys",
        "rotate",
        "--config",
        dir.join("node.toml").to_str().expect("utf-8"),
    ]);
    assert!(out.contains(&before[1]), "{out}");

    for api in apis {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let kids = api.jwks_kids().await;
            if kids[0] == before[1] {
                assert!(
                    kids.contains(&before[0]),
                    "the old primary is still published"
                );
                assert_eq!(kids.len(), 3, "primary, next and the retired key: {kids:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} takes the rotated keys",
                api.base
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let new_token = api.dialog_token(dialog).await;
        assert_eq!(kid_of(&new_token), before[1], "signed with the new primary");
        assert!(accepted(&api.base, &new_token).await);
        assert!(
            accepted(&api.base, &old_token).await,
            "a token signed before the rotation verifies until it expires"
        );
        let forged = dev_token(
            &KeyStore::generate().dialog_primary,
            "x",
            None,
            Duration::from_secs(60),
        );
        assert!(
            !accepted(&api.base, &forged).await,
            "an unknown key does not"
        );
    }
}

#[actix_web::test]
async fn a_rotation_reaches_a_running_node_and_tokens_signed_before_it_keep_verifying() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "");
    let node = NodeProcess::start(dir.path());
    let keys = KeyStore::load(&dir.path().join("data/keys.json")).expect("the node's keys");
    let api = Api::new(&node.base, &keys);
    let (status, id) = api
        .call("POST", "/api/v1/serviceowner/dialogs", Some(dialog_body()))
        .await;
    assert_eq!(status, 201, "{id}");
    rotate_and_check(dir.path(), &[api], id.as_str().expect("id")).await;
    // The rotation is kept: a restarted node signs with the new primary.
    let rotated = KeyStore::load(&dir.path().join("data/keys.json")).expect("keys");
    assert_eq!(rotated.dialog_primary.kid, keys.dialog_next.kid);
}

#[actix_web::test]
async fn a_rotation_in_redis_mode_reaches_every_node_of_the_cluster() {
    let shared = Shared::new();
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        write_config(d.path(), &redis_config(&shared));
        nodes.push(NodeProcess::start(d.path()));
    }
    let keys = common::shared_keys(&shared).await;
    let apis: Vec<Api> = nodes.iter().map(|n| Api::new(&n.base, &keys)).collect();
    let (status, id) = apis[0]
        .call("POST", "/api/v1/serviceowner/dialogs", Some(dialog_body()))
        .await;
    assert_eq!(status, 201, "{id}");
    rotate_and_check(dirs[0].path(), &apis, id.as_str().expect("id")).await;
}

#[actix_web::test]
async fn an_operator_keys_file_is_used_as_it_is_and_no_key_is_generated_or_kept_in_redis() {
    let shared = Shared::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("operator-keys.json");
    let missing = dir.path().join("missing.json");

    // A keys file that does not exist stops start-up with what to do.
    write_config(
        dir.path(),
        &format!("[auth]\nkeys_file = {:?}", missing.display().to_string()),
    );
    let out = spawn(dir.path()).wait_with_output().expect("exits");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keys generate"), "{stderr}");

    cli(&["keys", "generate", "--to", file.to_str().expect("utf-8")]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
    }
    let keys = KeyStore::load(&file).expect("the generated file");
    write_config(
        dir.path(),
        &format!(
            "[auth]\nkeys_file = {:?}\n{}",
            file.display().to_string(),
            redis_config(&shared)
        ),
    );
    let node = NodeProcess::start(dir.path());
    let api = Api::new(&node.base, &keys);
    assert_eq!(
        api.jwks_kids().await,
        vec![
            keys.dialog_primary.kid.clone(),
            keys.dialog_next.kid.clone()
        ]
    );
    // The operator's dev-issuer key signs tokens the node accepts.
    let (status, body) = api.call("GET", "/api/v1/serviceowner/dialogs", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !dir.path().join("data/keys.json").exists(),
        "no key generated in data_dir"
    );
    let client = redis::Client::open(shared.redis.url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let kept: Option<String> = redis::cmd("GET")
        .arg(format!("{}:keys", shared.prefix))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(kept, None, "no key kept in Redis");
}
