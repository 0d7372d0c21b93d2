//! Webhook delivery across nodes on one Redis: the nodes share the webhook partitions, a
//! subscription made on one node sees events written through another, and killing or draining a
//! node mid-burst loses no event and keeps every lane in order. With
//! `DIALOG_EVENTS_TEST_REDIS=cluster` the same tests run on a Redis Cluster (three masters, one
//! replica each).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::redis::RedisCluster;
use common::*;
use dialog_events::auth::dev_token;
use dialog_events::domain::Party;
use serde_json::json;

/// The Redis the nodes share: one `redis-server`, or with `DIALOG_EVENTS_TEST_REDIS=cluster` a
/// Redis Cluster.
struct SharedRedis {
    single: Option<Shared>,
    cluster: Option<Arc<RedisCluster>>,
    url: String,
    prefix: String,
}

impl SharedRedis {
    fn new() -> SharedRedis {
        if on_cluster() {
            let cluster = Arc::new(RedisCluster::start());
            SharedRedis {
                url: cluster.url(),
                cluster: Some(cluster),
                single: None,
                prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            }
        } else {
            let s = Shared::new();
            SharedRedis {
                url: s.redis.url.clone(),
                prefix: s.prefix.clone(),
                single: Some(s),
                cluster: None,
            }
        }
    }

    /// The keys the nodes stored.
    async fn keys(&self) -> dialog_events::auth::KeyStore {
        match &self.single {
            Some(s) => shared_keys(s).await,
            None => cluster_keys_of(&self.url, &self.prefix).await,
        }
    }

    /// Which node holds the lease of each webhook partition (of 64).
    async fn lease_owners(&self) -> Vec<Option<String>> {
        let keys: Vec<String> = (0..64)
            .map(|n| match self.cluster {
                Some(_) => format!("{}:{{leases}}:lease:wp:{n}", self.prefix),
                None => format!("{}:lease:wp:{n}", self.prefix),
            })
            .collect();
        let owners = self.get(&keys).await;
        assert_eq!(owners.len(), 64);
        owners
    }

    /// The saved feed position of webhook partition `p`.
    async fn cursor(&self, p: u16) -> Option<String> {
        let key = format!("{}:cursor:wf:{p}", self.prefix);
        self.get(&[key]).await.pop().flatten()
    }

    /// Changes the permissions of the user the nodes connect as (`ACL SETUSER default …`) on
    /// every server: a store that refuses one kind of write, as a real outage can.
    fn acl(&self, rule: &str) {
        let ports = match (&self.single, &self.cluster) {
            (Some(s), _) => vec![s.redis.port],
            (None, Some(c)) => c.ports.clone(),
            (None, None) => unreachable!("one or the other"),
        };
        for port in ports {
            let answer = common::redis::cli(port, &["ACL", "SETUSER", "default", rule]);
            assert_eq!(answer.as_deref(), Some("OK"), "ACL SETUSER default {rule}");
        }
    }

    /// The values of `keys` (`MGET`, slot by slot on a cluster).
    async fn get(&self, keys: &[String]) -> Vec<Option<String>> {
        let mut cmd = ::redis::cmd("MGET");
        cmd.arg(keys);
        if self.cluster.is_some() {
            let client =
                ::redis::cluster::ClusterClient::new(self.url.split(',').collect::<Vec<_>>())
                    .expect("seeds");
            let mut conn = client.get_async_connection().await.expect("cluster");
            cmd.query_async(&mut conn).await.expect("mget")
        } else {
            let client = ::redis::Client::open(self.url.as_str()).expect("url");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            cmd.query_async(&mut conn).await.expect("mget")
        }
    }
}

/// A node as a child process (so it can be killed with SIGKILL), killed on drop.
struct NodeProcess {
    child: Child,
    base: String,
}

impl NodeProcess {
    fn start(
        shared: &SharedRedis,
        id: &str,
        config: &std::path::Path,
        data: &std::path::Path,
    ) -> NodeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dialog-events"))
            .args(["serve", "--config"])
            .arg(config)
            .env("DIALOG_EVENTS__DATA_DIR", data)
            .env("DIALOG_EVENTS__REDIS__URL", &shared.url)
            .env("DIALOG_EVENTS__REDIS__PREFIX", &shared.prefix)
            .env(
                "DIALOG_EVENTS__REDIS__CLUSTER",
                shared.cluster.is_some().to_string(),
            )
            .env("DIALOG_EVENTS__NODE__ID", id)
            .env("DIALOG_EVENTS__LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node process");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            assert!(Instant::now() < deadline, "node {id} did not start");
            let line = lines.next().expect("node output").expect("line");
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on ".len()..];
                break rest.split(['"', ' ']).next().expect("address").to_owned();
            }
        };
        // Keep draining the pipe so the node never blocks on logging; the lines go to
        // `<data>.log`, which a failing test prints (`NodeLogs`).
        let mut log = std::fs::File::create(data.with_extension("log")).expect("node log");
        std::thread::spawn(move || {
            use std::io::Write;
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
            }
        });
        NodeProcess { child, base }
    }

    fn kill9(&mut self) {
        let status = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// SIGTERM, then waits for the node to exit (its drain hands its partitions over).
    fn term(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exited = self.child.wait().expect("wait");
        assert!(exited.success(), "drained node exited with {exited}");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The logs of the nodes a test starts in `dir` (`<data>.log` each). When the test fails, their
/// warnings and partition moves are printed, so a failure in CI shows what the nodes saw.
struct NodeLogs<'a>(&'a std::path::Path);

impl NodeLogs<'_> {
    /// The lines of every node's log that satisfy `keep`, prefixed with the log's name.
    fn lines(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut logs: Vec<_> = std::fs::read_dir(self.0)
            .expect("test dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for path in logs {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter(|l| keep(l))
                    .map(|l| format!("{name}: {l}")),
            );
        }
        out
    }

    /// Lease rounds that failed to keep a node's partitions: a node paused delivery, or found a
    /// partition it held taken by another.
    fn lease_lapses(&self) -> Vec<String> {
        self.lines(|l| l.contains("could not be renewed") || l.contains("webhook partition lost"))
    }

    /// A burst that saw no failure delivers nothing twice. Only when a node failed to renew its
    /// leases in time (after the first `lapsed_before` such lines), as on an overloaded machine,
    /// may the attempts in flight when it paused, and deliveries whose record had not reached
    /// the store yet, be sent again: a bound as for a kill (10 subscriptions × 8 in flight × 2).
    fn no_duplicates_unless_a_lease_lapsed(
        &self,
        what: &str,
        duplicates: usize,
        lapsed_before: usize,
    ) {
        let lapses = self.lease_lapses().split_off(lapsed_before);
        if lapses.is_empty() {
            assert_eq!(duplicates, 0, "{what}: duplicates without any failure");
        } else {
            eprintln!("{what}: {duplicates} duplicates after lease lapses: {lapses:#?}");
            assert!(duplicates <= 10 * 8 * 2, "{what}: {duplicates} duplicates");
        }
    }
}

impl Drop for NodeLogs<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let notable = self.lines(|l| {
            l.contains("\"WARN\"") || l.contains("\"ERROR\"") || l.contains("webhook partition")
        });
        eprintln!(
            "--- the nodes' warnings and partition moves ({} lines)",
            notable.len()
        );
        for line in notable {
            eprintln!("{line}");
        }
    }
}

/// Which node holds the lease of each webhook partition (of 64), from Redis.
async fn owners(shared: &SharedRedis) -> Vec<Option<String>> {
    shared.lease_owners().await
}

/// Waits until every partition is held and each of `nodes` holds some.
async fn wait_for_spread(shared: &SharedRedis, nodes: &[&str], within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let held = owners(shared).await;
        let all_held = held.iter().all(Option::is_some);
        if all_held
            && nodes
                .iter()
                .all(|n| held.iter().any(|o| o.as_deref() == Some(*n)))
        {
            return held.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "partitions not spread over {nodes:?} within {within:?}: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config_with(
    dir: &std::path::Path,
    retry_schedule: &str,
    poll_interval: &str,
) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    let toml = format!(
        "{}\n[webhooks]\nallow_http = true\nallow_private_networks = true\npoll_interval = {poll_interval:?}\n\
         retry_schedule = {retry_schedule}\nvalidation_schedule = [\"100ms\"]\ncircuit_failures = 1000\n\
         lease_ttl = \"{lease_ttl}\"\n",
        base_config().replace("[log]\nlevel = \"warn\"", "[log]\nlevel = \"info\""),
        // On a cluster (six redis-server beside the nodes on this machine) a lease round can
        // take longer than a 2 s lease allows; there the nodes keep the default.
        lease_ttl = if on_cluster() { "5s" } else { "2s" },
    );
    std::fs::write(&path, toml).expect("config");
    path
}

async fn post(
    client: &awc::Client,
    url: String,
    token: &str,
    content_type: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut resp = client
        .post(url)
        .insert_header(("Authorization", format!("Bearer {token}")))
        .insert_header(("Content-Type", content_type))
        .send_body(body.to_string())
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp
        .json::<serde_json::Value>()
        .limit(1 << 20)
        .await
        .unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Two node processes on one Redis, a token of ORG_A, a receiver with a validated subscription
/// made through node A, and which node holds the dispatcher lease.
struct TwoNodes {
    /// Keeps the Redis server alive as long as the nodes.
    _shared: SharedRedis,
    _dir: tempfile::TempDir,
    a: NodeProcess,
    b: NodeProcess,
    owner: String,
    client: awc::Client,
    rx: Receiver,
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        // Prints the nodes' logs when the test failed.
        drop(NodeLogs(self._dir.path()));
    }
}

impl TwoNodes {
    async fn start(retry_schedule: &str) -> TwoNodes {
        Self::polling_every(retry_schedule, "20ms").await
    }

    /// As `start`, the dispatchers polling every `poll_interval` unless woken.
    async fn polling_every(retry_schedule: &str, poll_interval: &str) -> TwoNodes {
        let shared = SharedRedis::new();
        let dir = tempfile::tempdir().expect("dir");
        let config = config_with(dir.path(), retry_schedule, poll_interval);
        let a = NodeProcess::start(&shared, "node-a", &config, &dir.path().join("a"));
        let b = NodeProcess::start(&shared, "node-b", &config, &dir.path().join("b"));
        let keys = shared.keys().await;
        let owner = dev_token(
            &keys.dev_issuer,
            &format!("{SO} {SUB} {PUB}"),
            Some(&Party::organization(ORG_A).expect("org")),
            Duration::from_secs(3600),
        );
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let rx = Receiver::start().await;
        let (status, sub) = post(
            &client,
            format!("{}/events/api/v1/subscriptions", a.base),
            &owner,
            "application/json",
            json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await;
        assert_eq!(status, 201, "{sub}");
        rx.wait_for("validation", Duration::from_secs(10), |r| !r.is_empty())
            .await;
        wait_for_spread(&shared, &["node-a", "node-b"], Duration::from_secs(20)).await;
        TwoNodes {
            _shared: shared,
            _dir: dir,
            a,
            b,
            owner,
            client,
            rx,
        }
    }

    /// The other node (to write through, never interrupted by the kill) and the node holding the
    /// partition of `stream`'s lanes (to kill).
    async fn split(&mut self, stream: &str) -> (String, &mut NodeProcess) {
        let p = dialog_events::domain::partition_of(stream, 64) as usize;
        let holder = owners(&self._shared).await[p].clone();
        if holder.as_deref() == Some("node-a") {
            (self.b.base.clone(), &mut self.a)
        } else {
            (self.a.base.clone(), &mut self.b)
        }
    }
}

#[actix_web::test]
async fn killing_the_dispatching_node_mid_burst_loses_no_event_and_a_subscription_made_on_one_node_sees_writes_on_another()
 {
    let mut t = TwoNodes::start(r#"["100ms", "200ms", "400ms"]"#).await;
    let (owner, client, rx) = (t.owner.clone(), t.client.clone(), t.rx.clone());
    // Writes go through the node that stays, so the kill never interrupts them; the events (of
    // no dialog: each its own lane) spread over both nodes' partitions.
    let (writer, victim) = t.split("burst-0").await;
    let holder = "the node holding burst-0's partition";

    // A first event written through the other node arrives within a second.
    let wrote = Instant::now();
    let publish = |n: usize| {
        json!({"specversion": "1.0", "id": format!("burst-{n}"), "source": "https://app.example/x",
               "type": "app.burst", "resource": RESOURCE, "subject": person_urn(PERSON_1)})
    };
    let (status, body) = post(
        &client,
        format!("{writer}/events/api/v1/events"),
        &owner,
        "application/cloudevents+json",
        publish(0),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    rx.wait_for("the first event", Duration::from_secs(5), |r| {
        r.iter().any(|x| x.header("webhook-id") == "burst-0")
    })
    .await;
    assert!(
        wrote.elapsed() < Duration::from_secs(1),
        "took {:?}",
        wrote.elapsed()
    );

    // The burst: 2,000 events, 20 at a time; the dispatching node dies part-way.
    const TOTAL: usize = 2000;
    let mut killed = false;
    for chunk in (1..TOTAL).collect::<Vec<_>>().chunks(20) {
        let sends = chunk.iter().map(|n| {
            post(
                &client,
                format!("{writer}/events/api/v1/events"),
                &owner,
                "application/cloudevents+json",
                publish(*n),
            )
        });
        for (status, body) in futures::future::join_all(sends).await {
            assert_eq!(status, 200, "{body}");
        }
        if !killed && rx.events().len() >= 500 {
            victim.kill9();
            killed = true;
        }
    }
    assert!(
        killed,
        "the burst ended before the dispatching node was killed"
    );
    rx.wait_for("every event at least once", Duration::from_secs(60), |r| {
        let ids: std::collections::HashSet<&str> =
            r.iter().map(|x| x.header("webhook-id")).collect();
        (0..TOTAL).all(|n| ids.contains(format!("burst-{n}").as_str()))
    })
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in rx.events() {
        *counts.entry(r.header("webhook-id").to_owned()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!("{TOTAL} events delivered with {duplicates} duplicates after SIGKILL of {holder}");
    assert!(
        duplicates <= 16,
        "{duplicates} duplicates (2 to 6 measured in development)"
    );
}

#[actix_web::test]
async fn a_delivery_waiting_for_its_retry_survives_the_death_of_the_dispatching_node() {
    // Long enough that the retry is still pending when the node dies.
    let mut t = TwoNodes::start(r#"["3s", "3s", "3s"]"#).await;
    let (owner, client, rx) = (t.owner.clone(), t.client.clone(), t.rx.clone());
    // The node that runs the stuck dialog's lane dies.
    let (writer, victim) = t.split("stuck").await;
    // Events of the "stuck" instance fail; the others flow.
    rx.answer_for_dialog("stuck", Some(500));
    let event = |n: usize, instance: &str| {
        json!({"specversion": "1.0", "id": format!("e-{n}"), "source": "https://app.example/x", "type": "app.t",
               "resource": RESOURCE, "subject": person_urn(PERSON_1), "resourceinstance": instance})
    };
    for n in 0..50 {
        let instance = if n < 3 {
            "stuck".to_owned()
        } else {
            format!("flowing-{n}")
        };
        let (status, body) = post(
            &client,
            format!("{writer}/events/api/v1/events"),
            &owner,
            "application/cloudevents+json",
            event(n, &instance),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    rx.wait_for(
        "the flowing events and the first failed attempt",
        Duration::from_secs(10),
        |r| {
            (3..50).all(|n| r.iter().any(|x| x.header("webhook-id") == format!("e-{n}")))
                && r.iter().any(|x| x.header("webhook-id") == "e-0")
        },
    )
    .await;
    // The first stuck event now waits 3 s for its retry; its dialog's later events wait behind it.
    victim.kill9();
    rx.answer_for_dialog("stuck", None);
    rx.wait_for(
        "the stuck events after the takeover",
        Duration::from_secs(20),
        |r| {
            let count = |id: &str| r.iter().filter(|x| x.header("webhook-id") == id).count();
            count("e-0") >= 2 && count("e-1") >= 1 && count("e-2") >= 1
        },
    )
    .await;
    let requests = rx.events();
    let order: Vec<&str> = requests
        .iter()
        .map(|r| r.header("webhook-id"))
        .filter(|id| ["e-0", "e-1", "e-2"].contains(id))
        .collect();
    let first_of_1 = order.iter().position(|id| *id == "e-1").expect("e-1");
    assert_eq!(
        order[..first_of_1]
            .iter()
            .filter(|id| **id == "e-0")
            .count(),
        2,
        "e-0 first, twice: {order:?}"
    );
    // The flowing events were delivered before the kill; the new dispatcher must not resend them
    // (beyond what was in flight, at most the per-endpoint limit).
    let resent = (3..50)
        .filter(|n| {
            requests
                .iter()
                .filter(|x| x.header("webhook-id") == format!("e-{n}"))
                .count()
                > 1
        })
        .count();
    assert!(resent <= 8, "{resent} delivered events were sent again");
}

#[actix_web::test]
async fn events_appended_through_either_node_are_delivered_at_once_not_at_the_next_poll() {
    // Both dispatchers poll every 60 s: only the appending node's feed notice can start these
    // deliveries within the wait below, whichever node delivers the event's partition. On a
    // Redis Cluster no notices are sent: there the periodic poll (200 ms, the default) does.
    let poll = if on_cluster() { "200ms" } else { "60s" };
    let t = TwoNodes::polling_every(r#"["100ms"]"#, poll).await;
    let (owner, client, rx) = (t.owner.clone(), t.client.clone(), t.rx.clone());
    let started = Instant::now();
    let mut wanted = Vec::new();
    for (n, base) in [&t.a.base, &t.b.base]
        .into_iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        let id = format!("e-{n}");
        let event = json!({"specversion": "1.0", "id": id, "source": "https://app.example/x",
            "type": "app.t", "resource": RESOURCE, "subject": person_urn(PERSON_1),
            "resourceinstance": format!("instance-{n}")});
        let url = format!("{base}/events/api/v1/events");
        let (status, body) =
            post(&client, url, &owner, "application/cloudevents+json", event).await;
        assert_eq!(status, 200, "{body}");
        wanted.push(id);
    }
    // Dialog commits, through each node.
    let mut dialogs = Vec::new();
    for base in [&t.a.base, &t.b.base] {
        let url = format!("{base}/api/v1/serviceowner/dialogs");
        let (status, body) = post(&client, url, &owner, "application/json", dialog_body()).await;
        assert_eq!(status, 201, "{body}");
        dialogs.push(body.as_str().expect("dialog id").to_owned());
    }
    assert_eq!((wanted.len(), dialogs.len()), (8, 2));
    rx.wait_for(
        "every published event and both dialogs' creation",
        Duration::from_secs(10),
        |r| {
            wanted
                .iter()
                .all(|id| r.iter().any(|x| x.header("webhook-id") == id))
                && dialogs.iter().all(|d| {
                    r.iter().any(|x| {
                        x.json()["type"] == "dialogporten.dialog.created.v1"
                            && x.json()["resourceinstance"] == d.as_str()
                    })
                })
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[actix_web::test]
async fn deliveries_whose_save_failed_are_stored_again_before_their_position_is_saved_past_them() {
    // No retry within the test: a retry's record would store the delivery another way.
    let mut t = TwoNodes::start(r#"["600s"]"#).await;
    let (owner, client, rx) = (t.owner.clone(), t.client.clone(), t.rx.clone());
    let dir = t._dir.path().to_owned();
    let p = dialog_events::domain::partition_of("stuck", 64);
    // A dialog whose events share the partition of the "stuck" one.
    let later = (0..)
        .map(|n| format!("later-{n}"))
        .find(|d| dialog_events::domain::partition_of(d, 64) == p)
        .expect("a dialog of the same partition");
    let before = t._shared.cursor(p).await;
    assert!(before.is_some(), "partition {p} has a saved position");
    let (writer, _) = t.split("stuck").await;
    let publish = |id: &'static str, instance: String| {
        let (client, writer, owner) = (client.clone(), writer.clone(), owner.clone());
        async move {
            let event = json!({"specversion": "1.0", "id": id, "source": "https://app.example/x",
                "type": "app.t", "resource": RESOURCE, "subject": person_urn(PERSON_1),
                "resourceinstance": instance});
            let url = format!("{writer}/events/api/v1/events");
            let (status, body) =
                post(&client, url, &owner, "application/cloudevents+json", event).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    rx.answer_for_dialog("stuck", Some(500));
    // The store refuses pending records (HMSET, that write alone) while e-0 is read and tried.
    t._shared.acl("-hmset");
    publish("e-0", "stuck".into()).await;
    rx.wait_for("the first attempt of e-0", Duration::from_secs(10), |r| {
        r.iter().any(|x| x.header("webhook-id") == "e-0")
    })
    .await;
    let refused = Instant::now() + Duration::from_secs(10);
    while NodeLogs(&dir)
        .lines(|l| l.contains("saving the dispatcher's pending deliveries failed"))
        .is_empty()
    {
        assert!(Instant::now() < refused, "no save of e-0's record failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        t._shared.cursor(p).await,
        before,
        "the position moved while e-0's record could not be stored"
    );
    // The store takes writes again; a later event of the same partition moves its position on.
    t._shared.acl("+hmset");
    publish("e-1", later).await;
    rx.wait_for("e-1", Duration::from_secs(10), |r| {
        r.iter().any(|x| x.header("webhook-id") == "e-1")
    })
    .await;
    let moved = Instant::now() + Duration::from_secs(10);
    while t._shared.cursor(p).await == before {
        assert!(
            Instant::now() < moved,
            "the position of partition {p} never moved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // e-0 waits for its retry (600 s) on the node that read it; that node dies. The next owner
    // must find e-0 among the pending deliveries: the position was saved past it.
    let (_, victim) = t.split("stuck").await;
    victim.kill9();
    rx.answer_for_dialog("stuck", None);
    rx.wait_for("e-0 from the next owner", Duration::from_secs(20), |r| {
        r.iter().filter(|x| x.header("webhook-id") == "e-0").count() >= 2
    })
    .await;
}

/// Publishes `ids` (event id, dialog) through `base`, 25 at a time. A request that could not
/// connect (so was never sent), or that was answered 503 (nothing written: a store timed out on a
/// busy machine), is tried again, as a publisher would; a publish of the same id is idempotent.
async fn publish_all(client: &awc::Client, base: &str, token: &str, ids: &[(String, String)]) {
    for chunk in ids.chunks(25) {
        let sends = chunk.iter().map(|(id, dialog)| async move {
            let body = json!({"specversion": "1.0", "id": id, "source": "https://app.example/x",
                              "type": "app.t", "resource": RESOURCE, "subject": person_urn(PERSON_1),
                              "resourceinstance": dialog});
            let mut tries = 0;
            loop {
                let sent = client
                    .post(format!("{base}/events/api/v1/events"))
                    .insert_header(("Authorization", format!("Bearer {token}")))
                    .insert_header(("Content-Type", "application/cloudevents+json"))
                    .send_body(body.to_string())
                    .await;
                match sent {
                    Ok(mut resp) => {
                        let text = resp.body().await.unwrap_or_default();
                        let status = resp.status().as_u16();
                        if status == 503 && tries < 5 {
                            tries += 1;
                            eprintln!("publishing {id}: 503; trying again");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        return (status, String::from_utf8_lossy(&text).into_owned());
                    }
                    Err(awc::error::SendRequestError::Connect(e)) if tries < 5 => {
                        tries += 1;
                        eprintln!("publishing {id}: {e}; trying again");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("publishing {id}: {e}"),
                }
            }
        });
        for (status, body) in futures::future::join_all(sends).await {
            assert_eq!(status, 200, "{body}");
        }
    }
}

/// Waits (up to a minute) until every receiver got every one of `ids`, checks each with
/// `check_delivered`, and returns the duplicates over all of them.
async fn delivered_to_all(receivers: &[Receiver], what: &str, ids: &[(String, String)]) -> usize {
    let want: std::collections::HashSet<&str> = ids.iter().map(|(i, _)| i.as_str()).collect();
    let mut duplicates = 0;
    for rx in receivers {
        rx.wait_for(what, Duration::from_secs(180), |r| {
            let got: std::collections::HashSet<&str> =
                r.iter().map(|x| x.header("webhook-id")).collect();
            want.iter().all(|i| got.contains(i))
        })
        .await;
        duplicates += check_delivered(rx, ids);
    }
    duplicates
}

/// Checks that `rx` got every one of `ids` and that each dialog's events arrived first in the
/// order they were published; returns how many were delivered more than once.
fn check_delivered(rx: &Receiver, ids: &[(String, String)]) -> usize {
    assert!(!ids.is_empty());
    let got = rx.events();
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (i, r) in got.iter().enumerate() {
        let id = r.header("webhook-id");
        first.entry(id).or_insert(i);
        *counts.entry(id).or_default() += 1;
    }
    let mut last_of: HashMap<&str, (usize, &str)> = HashMap::new();
    for (id, dialog) in ids {
        let at = *first
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} not delivered to {}", rx.url));
        if let Some((before, prev)) = last_of.get(dialog.as_str()) {
            assert!(
                at > *before,
                "{id} arrived before {prev} on the lane of {dialog} at {}",
                rx.url
            );
        }
        last_of.insert(dialog, (at, id));
    }
    ids.iter()
        .map(|(id, _)| counts[id.as_str()].saturating_sub(1))
        .sum()
}

/// The events of `dialogs` dialogs, `per` each, interleaved as the dialogs' writers would.
fn burst(tag: &str, dialogs: usize, per: usize) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    for n in 0..per {
        for d in 0..dialogs {
            ids.push((format!("{tag}-{d}-{n}"), format!("dlg-{d}")));
        }
    }
    ids
}

#[actix_web::test]
async fn three_nodes_share_the_partitions_and_keep_every_lane_whole_and_in_order_across_a_kill_a_drain_and_a_join()
 {
    let shared = SharedRedis::new();
    let dir = tempfile::tempdir().expect("dir");
    let logs = NodeLogs(dir.path());
    let config = config_with(dir.path(), r#"["100ms", "200ms", "400ms"]"#, "20ms");
    let mut a = NodeProcess::start(&shared, "node-a", &config, &dir.path().join("a"));
    let mut b = NodeProcess::start(&shared, "node-b", &config, &dir.path().join("b"));
    let mut c = NodeProcess::start(&shared, "node-c", &config, &dir.path().join("c"));
    // The first node holds every partition until the others join and take their shares, a
    // lease round at a time: the three settle at a third each (16 to 24 of 64).
    let started = Instant::now();
    loop {
        let held = wait_for_spread(
            &shared,
            &["node-a", "node-b", "node-c"],
            Duration::from_secs(20),
        )
        .await;
        let counts: Vec<usize> = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|node| held.iter().filter(|o| o == node).count())
            .collect();
        if counts.iter().all(|n| (16..=24).contains(n)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the three nodes hold {counts:?} of 64, not a third each: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = shared.keys().await;
    let owner = dev_token(
        &keys.dev_issuer,
        &format!("{SO} {SUB} {PUB}"),
        Some(&Party::organization(ORG_A).expect("org")),
        Duration::from_secs(3600),
    );
    let admin = dev_token(&keys.dev_issuer, ADMIN, None, Duration::from_secs(3600));
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    // Every node shows its partitions (heartbeats come each second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut resp = client
            .get(format!("{}/admin/v1/nodes", a.base))
            .insert_header(("Authorization", format!("Bearer {admin}")))
            .send()
            .await
            .expect("nodes");
        assert_eq!(resp.status().as_u16(), 200);
        let nodes: serde_json::Value = resp.json().await.expect("json");
        let mut shown: Vec<u64> = nodes["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .flat_map(|n| n["partitions"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p.as_u64())
            .collect();
        shown.sort_unstable();
        if shown == (0..64).collect::<Vec<u64>>() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes do not show the 64 partitions once each: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ten subscriptions, each with its own receiver.
    let mut receivers = Vec::new();
    for _ in 0..10 {
        let rx = Receiver::start().await;
        let (status, sub) = post(
            &client,
            format!("{}/events/api/v1/subscriptions", a.base),
            &owner,
            "application/json",
            json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await;
        assert_eq!(status, 201, "{sub}");
        receivers.push(rx);
    }
    for rx in &receivers {
        rx.wait_for("validation", Duration::from_secs(10), |r| !r.is_empty())
            .await;
    }
    // 1. 200 dialogs × 20 events through all three nodes: every event once per subscription.
    // Each dialog is written through one node, so its events have one order.
    let first = burst("one", 200, 20);
    let through = |k: usize| -> Vec<(String, String)> {
        first
            .iter()
            .filter(|(_, d)| d[4..].parse::<usize>().expect("dialog") % 3 == k)
            .cloned()
            .collect()
    };
    let (ta, tb, tc) = (through(0), through(1), through(2));
    futures::future::join3(
        publish_all(&client, &a.base, &owner, &ta),
        publish_all(&client, &b.base, &owner, &tb),
        publish_all(&client, &c.base, &owner, &tc),
    )
    .await;
    // No duplicate unless a node failed to renew its leases in time (an overloaded machine):
    // then only the attempts in flight when it paused, and deliveries it made whose record had
    // not reached the store, may be sent again (as for the kill below).
    let duplicates = delivered_to_all(&receivers, "the first burst", &first).await;
    logs.no_duplicates_unless_a_lease_lapsed("the first burst", duplicates, 0);

    // 2. Another burst through node A; node C is killed a third of the way, node B drained at
    // two thirds. Duplicates only for attempts in flight at the kill (at most the endpoints'
    // in-flight limits).
    let second = burst("two", 200, 10);
    let parts: Vec<&[(String, String)]> = second.chunks(second.len() / 3 + 1).collect();
    publish_all(&client, &a.base, &owner, parts[0]).await;
    c.kill9();
    publish_all(&client, &a.base, &owner, parts[1]).await;
    let drained = std::thread::spawn(move || {
        b.term();
        b
    });
    publish_all(&client, &a.base, &owner, parts[2]).await;
    let _b = drained.join().expect("drain");
    let duplicates = delivered_to_all(&receivers, "the second burst", &second).await;
    eprintln!("second burst: {duplicates} duplicates over 10 subscriptions");
    // Attempts in flight on the killed node (8 per endpoint) and deliveries it had made but not
    // yet recorded as made.
    assert!(duplicates <= 10 * 8 * 2, "{duplicates} duplicates");
    wait_for_spread(&shared, &["node-a"], Duration::from_secs(10)).await;

    // 3. A node joins: it takes partitions within two lease times, and lanes stay in order.
    let joined = Instant::now();
    let _d = NodeProcess::start(&shared, "node-d", &config, &dir.path().join("d"));
    wait_for_spread(
        &shared,
        &["node-a", "node-d"],
        Duration::from_secs(4) + Duration::from_secs(2),
    )
    .await;
    eprintln!(
        "node-d held partitions {:?} after starting",
        joined.elapsed()
    );
    let third = burst("three", 100, 5);
    let lapsed_before = logs.lease_lapses().len();
    publish_all(&client, &a.base, &owner, &third).await;
    let duplicates = delivered_to_all(&receivers, "the third burst", &third).await;
    logs.no_duplicates_unless_a_lease_lapsed("the third burst", duplicates, lapsed_before);
    drop(a.child.kill());
}
