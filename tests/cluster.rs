//! Several nodes on one Redis: any node serves any client, changes reach every node's subscribers
//! once and in order, the log stays gap-free, and a Redis outage loses nothing acknowledged.

mod common;

use std::time::Duration;

use common::realtime::*;
use common::*;
use serde_json::json;

/// What the nodes of a test share: one Redis, or with `DIALOG_EVENTS_TEST_REDIS=cluster` a
/// three-master Redis Cluster.
#[allow(dead_code)] // held only to keep the servers running
enum Backing {
    Single(Shared),
    Cluster(std::sync::Arc<common::redis::RedisCluster>),
}

/// Starts `n` nodes on the Redis the suite runs against (see `Backing`).
async fn nodes_on_redis(n: usize, extra: &str) -> (Vec<TestNode>, Backing) {
    if !on_cluster() {
        let (nodes, shared) = start_cluster(n, extra).await;
        return (nodes, Backing::Single(shared));
    }
    let cluster = std::sync::Arc::new(common::redis::RedisCluster::start());
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(start_on_cluster(&cluster, &prefix, extra).await);
    }
    (nodes, Backing::Cluster(cluster))
}

/// The settings of a store on the one Redis at `url`.
fn single_redis(url: &str, prefix: &str) -> dialog_events::config::RedisSettings {
    dialog_events::config::RedisSettings {
        url: Some(url.to_owned()),
        prefix: prefix.to_owned(),
        cluster: false,
        wait_replicas: 0,
    }
}

async fn add_activity(node: &TestNode, id: &str) -> u16 {
    node.post(
        &format!("/api/v1/serviceowner/dialogs/{id}/activities"),
        &node.tokens.owner_a,
        &json!({"type": "Information"}),
    )
    .await
    .status
    .as_u16()
}

/// Reads `n` payloads and returns their sequences.
async fn sequences(client: &mut WsClient, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ev = client.event().await;
        assert_eq!(ev["resync"], false);
        out.push(ev["sequence"].as_i64().expect("sequence"));
    }
    out
}

#[actix_web::test]
async fn concurrent_writers_on_two_nodes_reach_subscribers_on_every_node_once_in_one_order() {
    let (nodes, _redis) = nodes_on_redis(3, "").await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let id = a.create_dialog(&dialog_body()).await;
    let token = dialog_token(b, &id).await;
    let mut clients = Vec::new();
    for node in &nodes {
        let mut client = WsClient::connect(node, "graphql-transport-ws", None).await;
        client.init(Some(&token)).await;
        client.subscribe("s", &id, None).await;
        wait_subscriptions(node, 1).await;
        clients.push(client);
    }
    // 3 × 200 changes: 200 through each node, all at once.
    let per_node = 200;
    let writers = nodes.iter().map(|n| {
        let id = id.clone();
        async move {
            for _ in 0..per_node {
                assert_eq!(add_activity(n, &id).await, 201);
            }
        }
    });
    let readers = clients.iter_mut().map(|cl| sequences(cl, 3 * per_node));
    let (_, received) = futures::future::join(
        futures::future::join_all(writers),
        futures::future::join_all(readers),
    )
    .await;
    // Each change is `updated` + the activity event: sequences 3, 5, 7, ... after `created` (1).
    let expected: Vec<i64> = (0..3 * per_node as i64).map(|i| 3 + 2 * i).collect();
    for (i, seqs) in received.iter().enumerate() {
        assert_eq!(seqs, &expected, "subscriber on node {i}");
    }
    let events = a.dialog_events(&id).await;
    let logged: Vec<u64> = events
        .iter()
        .map(|e| e["dialogsequence"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        logged,
        (1..=1 + 2 * 3 * per_node as u64).collect::<Vec<_>>(),
        "gap-free log"
    );
    let _ = (b, c);
}

#[actix_web::test]
async fn revoking_a_delegation_ends_the_delegates_streams_on_every_node_within_2_s() {
    let (nodes, _redis) = nodes_on_redis(2, "").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let id = a.create_dialog(&dialog_body()).await;
    // PERSON_2 reads PERSON_1's dialog through the delegation; PERSON_1 reads its own.
    let delegate = end_user_dialog_token(a, &a.tokens.person_2, &id).await;
    let party = end_user_dialog_token(a, &a.tokens.person_1, &id).await;
    let mut tws_a = WsClient::subscribed(a, &delegate, "d", &id, None, 1).await;
    let mut legacy_b = WsClient::connect(b, "graphql-ws", None).await;
    legacy_b.init(Some(&delegate)).await;
    legacy_b.subscribe("d", &id, None).await;
    wait_subscriptions(b, 1).await;
    let (status, mut sse_b) =
        SseClient::open(b, Some(&delegate), SUBSCRIPTION, json!({"id": id})).await;
    assert_eq!(status, 200);
    wait_subscriptions(b, 2).await;
    let mut own_a = WsClient::subscribed(a, &party, "p", &id, None, 2).await;

    let delegation = json!({
        "from": person_urn(PERSON_1),
        "to": person_urn(PERSON_2),
        "resources": [RESOURCE],
    });
    let r = b
        .json(
            "DELETE",
            "/admin/v1/delegations",
            &b.tokens.admin,
            &delegation,
        )
        .await;
    assert!(r.status.is_success(), "revoke: {} {}", r.status, r.body);
    let revoked = std::time::Instant::now();
    tws_a.ended_unauthorized("d").await;
    legacy_b.ended_unauthorized("d").await;
    sse_b.ended_unauthorized().await;
    let took = revoked.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "streams ended after {took:?}"
    );
    wait_subscriptions(a, 1).await;
    wait_subscriptions(b, 0).await;

    // The dialog's own party keeps its stream, and the old token opens no new one.
    assert_eq!(add_activity(a, &id).await, 201);
    let ev = own_a.event().await;
    assert_eq!(ev["type"], "DIALOG_UPDATED", "{ev}");
    let mut again = WsClient::connect(b, "graphql-transport-ws", None).await;
    again.init(Some(&delegate)).await;
    again.subscribe("d", &id, None).await;
    let msg = again.next_json().await;
    assert_eq!(msg["type"], "error", "{msg}");
    assert_eq!(
        msg["payload"][0]["extensions"]["code"], "UNAUTHORIZED",
        "{msg}"
    );
}

/// Opens a graphql-transport-ws connection with `token`: `Ok` once acknowledged, `Err(code)` when
/// the node closes it instead.
async fn open(node: &TestNode, token: &str) -> Result<WsClient, Option<u16>> {
    let mut ws = WsClient::connect(node, "graphql-transport-ws", None).await;
    ws.send(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    match ws.next().await {
        Incoming::Json(v) if v["type"] == "connection_ack" => Ok(ws),
        Incoming::Json(v) => panic!("unexpected {v}"),
        Incoming::Closed(code, _) => Err(code),
    }
}

#[actix_web::test]
async fn the_connection_limit_per_party_holds_across_nodes() {
    let (nodes, _redis) = nodes_on_redis(2, "[realtime]\nmax_connections_per_party = 2").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let id = a.create_dialog(&dialog_body()).await;
    let token = end_user_dialog_token(a, &a.tokens.person_1, &id).await;
    let first = open(a, &token).await.expect("first connection, on node a");
    let _second = open(b, &token).await.expect("second connection, on node b");
    // Each node holds one: a third is refused on either node, over WebSocket and SSE.
    assert_eq!(open(a, &token).await.err(), Some(Some(4429)));
    assert_eq!(open(b, &token).await.err(), Some(Some(4429)));
    let (status, _) = SseClient::open(b, Some(&token), SUBSCRIPTION, json!({"id": id})).await;
    assert_eq!(status, 429);
    // Another party is not affected.
    let other = end_user_dialog_token(a, &a.tokens.person_2, &id).await;
    let _other = open(b, &other).await.expect("another party's connection");

    // A connection closed on node a frees its slot for node b.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match open(b, &token).await {
            Ok(_) => break,
            Err(code) => {
                assert_eq!(code, Some(4429));
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[actix_web::test]
async fn the_connection_limit_per_party_admits_a_burst_up_to_the_limit_across_nodes() {
    // 40 allowed; each node takes its slots from Redis in blocks of 2.
    let (nodes, _redis) = nodes_on_redis(2, "[realtime]\nmax_connections_per_party = 40").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let id = a.create_dialog(&dialog_body()).await;
    let token = end_user_dialog_token(a, &a.tokens.person_1, &id).await;
    // 20 connections of the party open on each node at the same moment: every one of them is
    // admitted (concurrent connections share a node's blocks, none takes a block of its own).
    let burst = (0..40).map(|i| open(&nodes[i % 2], &token));
    let opened = futures::future::join_all(burst).await;
    let refused = opened.iter().filter(|o| o.is_err()).count();
    assert_eq!(refused, 0, "{} of 40 admitted", 40 - refused);
    // And the limit still holds: a 41st is refused on either node.
    assert_eq!(open(a, &token).await.err(), Some(Some(4429)));
    assert_eq!(open(b, &token).await.err(), Some(Some(4429)));
}

#[actix_web::test]
async fn a_nodes_connection_counts_stop_counting_when_it_stops_refreshing_them() {
    let redis = common::redis::RedisServer::start();
    let store = dialog_events::store::RedisStore::new(
        &single_redis(&redis.url, "limits"),
        Duration::from_secs(60),
    )
    .expect("store");
    let ttl = Duration::from_millis(500);
    // Node "dead" takes both slots and then never refreshes nor releases them (killed).
    assert_eq!(take(&store, "dead", 1, ttl).await, 1);
    // A block asks for more than is left: it gets what is left.
    assert_eq!(take(&store, "dead", 8, ttl).await, 1);
    assert_eq!(take(&store, "live", 1, ttl).await, 0);
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(take(&store, "live", 1, ttl).await, 1);
    // A refreshed count keeps counting past its first expiry.
    store
        .refresh_connections("live", &[(PARTY.to_owned(), 2)], Duration::from_secs(30))
        .await
        .expect("refresh");
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(take(&store, "other", 1, ttl).await, 0);
    store
        .release_connections(PARTY, "live", 1)
        .await
        .expect("release");
    assert_eq!(take(&store, "other", 1, ttl).await, 1);
}

const PARTY: &str = "urn:altinn:person:identifier-no:08895699684";

#[actix_web::test]
async fn writes_share_one_redis_connection_and_read_the_registry_only_when_it_changed() {
    let (nodes, shared) = start_cluster(1, "").await;
    let node = &nodes[0];
    let id = node.create_dialog(&dialog_body()).await;
    let calls = |stats: &str, command: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let stats = || async {
        let mut c = ::redis::Client::open(shared.redis.url.as_str())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        ::redis::cmd("INFO")
            .arg("commandstats")
            .query_async::<String>(&mut c)
            .await
            .expect("info")
    };
    let (mut monitor, lines) = monitor(&shared);
    let before = stats().await;
    let writes = 50;
    for _ in 0..writes {
        assert_eq!(add_activity(node, &id).await, 201);
    }
    let after = stats().await;
    // Then the registry changes: the next write reads it again.
    mark(&shared, "registry-changes").await;
    set_owner(node, &org_urn(ORG_A)).await;
    assert_eq!(add_activity(node, &id).await, 201);
    // The resources' hash (`…:res`) is read with the delegations.
    let registry_read = |l: &String| l.contains("\"HVALS\"") && l.contains(":res\"");
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !seen
        .iter()
        .skip_while(|l| !l.contains("registry-changes"))
        .any(registry_read)
        && std::time::Instant::now() < deadline
    {
        seen.extend(lines.recv_timeout(Duration::from_millis(100)));
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    let (during, changed) = seen.split_at(
        seen.iter()
            .position(|l| l.contains("registry-changes"))
            .expect("the monitor saw the marker"),
    );
    assert!(
        changed.iter().any(registry_read),
        "the changed registry was read again"
    );
    let evals = calls(&after, "evalsha") - calls(&before, "evalsha");
    assert!(
        evals >= writes,
        "every write ran the commit script: {evals}"
    );
    // A pooled connection is checked with UNWATCH and PING on every checkout (three checkouts
    // per write); a shared one is not checked at all.
    let checks = calls(&after, "unwatch") - calls(&before, "unwatch");
    assert!(checks < 5, "{checks} connection checks for {writes} writes");
    // The registry and delegations are read again only when their version moves.
    let reads = during.iter().filter(|l| registry_read(l)).count();
    assert!(
        reads < 5,
        "the registry was read {reads} times for {writes} writes"
    );
}

/// Writes `text` into the stream of a `monitor` of the shared Redis (an `ECHO`), to mark where
/// a step begins.
async fn mark(shared: &Shared, text: &str) {
    let mut raw = ::redis::Client::open(shared.redis.url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let echoed: String = ::redis::cmd("ECHO")
        .arg(text)
        .query_async(&mut raw)
        .await
        .expect("echo");
    assert_eq!(echoed, text);
}

/// `redis-cli monitor` on the shared Redis, and the lines it prints: every command Redis runs,
/// with who ran it (a client address, or `lua` for a script).
fn monitor(shared: &Shared) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &shared.redis.port.to_string(), "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli monitor (installed with redis-server)");
    let out = monitor.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    assert_eq!(
        lines_rx.recv_timeout(WAIT).expect("monitor answers"),
        "OK",
        "MONITOR started"
    );
    (monitor, lines_rx)
}

#[actix_web::test]
async fn a_change_is_published_by_its_commit_script_not_by_a_second_command() {
    let (nodes, shared) = start_cluster(2, "").await;
    let id = nodes[0].create_dialog(&dialog_body()).await;
    let (mut monitor, lines_rx) = monitor(&shared);
    // A subscriber on the other node receives what the first node commits.
    let token = dialog_token(&nodes[1], &id).await;
    let mut ws = WsClient::connect(&nodes[1], "graphql-transport-ws", None).await;
    ws.init(Some(&token)).await;
    ws.subscribe("1", &id, None).await;
    wait_subscriptions(&nodes[1], 1).await;
    // Marks in the monitor's stream where the writes begin.
    mark(&shared, "writes-begin").await;
    let writes = 20;
    for _ in 0..writes {
        assert_eq!(add_activity(&nodes[0], &id).await, 201);
    }
    let mut received = Vec::new();
    for _ in 0..writes {
        received.push(ws.event().await["sequence"].as_u64().expect("sequence"));
    }
    assert_eq!(
        received.len(),
        writes,
        "every change crossed to the other node"
    );
    assert!(received.windows(2).all(|w| w[0] < w[1]), "{received:?}");
    // The monitor's lines arrive after the writes' answers: read until the commit scripts of
    // every write have been seen (bounded), then what follows them closely.
    let script_publish = |l: &String| l.contains(" lua] \"PUBLISH\"");
    let mut lines: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while lines.iter().filter(|l| script_publish(l)).count() < writes
        && std::time::Instant::now() < deadline
    {
        if let Ok(l) = lines_rx.recv_timeout(Duration::from_millis(100))
            && (!lines.is_empty() || l.contains("writes-begin"))
        {
            lines.push(l);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    lines.extend(lines_rx.try_iter());
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert!(!lines.is_empty(), "the monitor saw the writes");
    // A write is one round trip: its commit script checks the registry version it was
    // authorized under, so the node does not read that version first. (Other reads of it, such
    // as the access watcher's once a second on each node, may fall in the window.)
    let version_reads: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("] \"GET\"") && l.contains("policy:ver") && !l.contains(" lua] "))
        .collect();
    assert!(
        version_reads.len() < writes / 4,
        "{} reads of the registry version for {writes} writes: {version_reads:?}",
        version_reads.len()
    );
    let checked = lines
        .iter()
        .filter(|l| l.contains(" lua] \"GET\"") && l.contains("policy:ver"))
        .count();
    assert!(
        checked >= writes,
        "{checked} checks of the registry version by the commit script for {writes} writes"
    );
    // Each line cut to who ran it and the command; the feed notices (which webhook partitions
    // got events, at most one per 5 ms from each node) are messages of their own.
    let publishes: Vec<String> = lines
        .into_iter()
        // The command itself (the commit script also takes the word as an argument).
        .filter(|l| l.contains("] \"PUBLISH\"") && !l.contains(":feed:appended\""))
        .map(|l| l.chars().take(60).collect())
        .collect();
    let from_scripts = publishes.iter().filter(|l| l.contains(" lua] ")).count();
    assert!(
        from_scripts >= writes,
        "{from_scripts} PUBLISH from the commit script for {writes} writes: {publishes:?}"
    );
    assert_eq!(
        publishes.len(),
        from_scripts,
        "no PUBLISH sent as a command of its own: {publishes:?}"
    );
}

/// Makes `owner` the owner of RESOURCE, through `node`.
async fn set_owner(node: &TestNode, owner: &str) {
    let r = node
        .put(
            &format!("/admin/v1/resources/{RESOURCE}"),
            &node.tokens.admin,
            &json!({"owner": owner, "subscribers": [org_urn(ORG_C)]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
}

#[actix_web::test]
async fn a_write_on_one_node_is_authorized_by_a_registry_change_just_made_on_another() {
    let (nodes, _backing) = nodes_on_redis(2, "").await;
    let id = nodes[1].create_dialog(&dialog_body()).await;
    // The second node has authorized the owner's writes (and may hold that policy).
    assert_eq!(add_activity(&nodes[1], &id).await, 201);
    // The resource passes to another owner on the first node: the second refuses the old owner
    // at once, and writes nothing.
    set_owner(&nodes[0], &org_urn(ORG_B)).await;
    assert_eq!(add_activity(&nodes[1], &id).await, 403);
    // And back: the second node accepts the owner at once again.
    set_owner(&nodes[0], &org_urn(ORG_A)).await;
    assert_eq!(add_activity(&nodes[1], &id).await, 201);
    let r = nodes[0]
        .get(
            &format!("/api/v1/serviceowner/dialogs/{id}"),
            &nodes[0].tokens.owner_a,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(
        r.body["activities"].as_array().map(Vec::len),
        Some(2),
        "only the two accepted writes were made: {}",
        r.body
    );
}

#[actix_web::test]
async fn a_dialogs_logs_keep_their_newest_thousand_entries() {
    use ::redis::AsyncCommands;
    let (nodes, shared) = start_cluster(1, "").await;
    let node = &nodes[0];
    let id = node.create_dialog(&dialog_body()).await;
    // 1,000 activities: 2,001 events (created, then an activity and an update each) and 1,001
    // changes, past the cap of 1,000 each.
    for _ in 0..1000 {
        post_activity(node, &id).await;
    }
    let mut raw = ::redis::Client::open(shared.redis.url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let key = |k: &str| format!("{}:{k}:{id}", shared.prefix);
    let events: Vec<String> = raw.lrange(key("dlog"), 0, -1).await.expect("dlog");
    let changes: usize = raw.llen(key("dch")).await.expect("dch");
    assert_eq!((events.len(), changes), (1000, 1000));
    let seq = |raw: &str| {
        serde_json::from_str::<serde_json::Value>(raw).expect("event")["dialogsequence"]
            .as_u64()
            .expect("sequence")
    };
    assert_eq!(
        (seq(&events[0]), seq(&events[999])),
        (1002, 2001),
        "the newest are kept, in order"
    );
}

#[actix_web::test]
async fn event_positions_are_kept_in_a_hash_per_minute_and_each_event_is_a_poll_cursor() {
    use ::redis::AsyncCommands;
    let (nodes, shared) = start_cluster(1, "").await;
    let node = &nodes[0];
    let id = node.create_dialog(&dialog_body()).await;
    for _ in 0..5 {
        post_activity(node, &id).await;
    }
    // created, then an activity and an update per post.
    let events = node.dialog_events(&id).await;
    assert_eq!(events.len(), 11);
    let mut raw = ::redis::Client::open(shared.redis.url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys = |pattern: String| ::redis::cmd("KEYS").arg(pattern).to_owned();
    let own: Vec<String> = keys(format!("{}:ev:*", shared.prefix))
        .query_async(&mut raw)
        .await
        .expect("KEYS");
    assert!(own.is_empty(), "no key per event: {own:?}");
    let buckets: Vec<String> = keys(format!("{}:evp:*", shared.prefix))
        .query_async(&mut raw)
        .await
        .expect("KEYS");
    assert!(!buckets.is_empty() && buckets.len() <= 2, "{buckets:?}");
    let mut positions = 0;
    for b in &buckets {
        positions += raw.hlen::<_, usize>(b).await.expect("HLEN");
        // Kept for the retention (90 days by default) after its minute.
        let ttl: i64 = raw.pttl(b).await.expect("PTTL");
        assert!(ttl > 90 * 86_400_000, "{b} expires in {ttl} ms");
    }
    assert_eq!(positions, 11, "one position per event");
    // Each event is a cursor: after it come exactly the events after it.
    for (i, e) in events.iter().enumerate() {
        let cursor = e["id"].as_str().expect("id");
        let r = node
            .get(
                &format!("/events/api/v1/events?resource={RESOURCE}&after={cursor}&size=100"),
                &node.tokens.owner_a,
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        let after: Vec<&serde_json::Value> = r.body.as_array().expect("array").iter().collect();
        let expected: Vec<&serde_json::Value> = events[i + 1..].iter().map(|e| &e["id"]).collect();
        let got: Vec<&serde_json::Value> = after.iter().map(|e| &e["id"]).collect();
        assert_eq!(got, expected, "after event {i}");
    }
}

/// A dialog's state as the actor hands it to the store: changed from `before`.
fn commit_of(
    next: Option<&dialog_events::domain::Dialog>,
    before: &dialog_events::domain::Dialog,
    children_before: (usize, usize),
) -> dialog_events::store::Commit {
    dialog_events::store::Commit {
        dialog_id: before.id,
        expected_sequence: before.sequence,
        create: false,
        state: next.map(|d| std::sync::Arc::new(d.clone())),
        children_before,
        events: Vec::new(),
        publish: false,
        hold_until: None,
        announce: None,
        policy_version: None,
    }
}

#[actix_web::test]
async fn a_change_appends_only_its_children_and_a_dialog_stored_whole_is_rewritten_once() {
    use ::redis::AsyncCommands;
    use dialog_events::domain::{ActivityInput, Dialog, DialogInput};
    use dialog_events::store::DialogStore;
    let redis = common::redis::RedisServer::start();
    let store = dialog_events::store::RedisStore::new(
        &single_redis(&redis.url, "split"),
        Duration::from_secs(60),
    )
    .expect("store");
    let mut raw = ::redis::Client::open(redis.url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let input: DialogInput = serde_json::from_value(json!({
        "serviceResource": "urn:altinn:resource:test",
        "party": PARTY,
        "status": "InProgress",
        "content": {"title": [{"value": "Hei", "languageCode": "nb"}]},
        "activities": [{"type": "Information"}, {"type": "FormSubmitted"}],
        "transmissions": [{"type": "Information", "sender": {"actorType": "ServiceOwner"},
            "content": {"title": [{"value": "T", "languageCode": "nb"}]}}]
    }))
    .expect("input");
    let added = |d: &Dialog| {
        let a: ActivityInput = serde_json::from_value(json!({"type": "Information"})).expect("a");
        d.add_activity(a, chrono::Utc::now(), false).expect("add").0
    };
    let d0 = Dialog::create(input, chrono::Utc::now()).expect("create").0;
    let d1 = added(&d0);
    let d2 = added(&d1);
    let key = |k: &str| format!("split:{k}:{}", d0.id);
    // As an older version stored it: the whole dialog in `state`, no lists.
    let _: () = raw
        .hset_multiple(
            key("d"),
            &[
                ("state", serde_json::to_string(&d0).expect("json")),
                ("seq", "0".to_owned()),
            ],
        )
        .await
        .expect("hset");
    assert_eq!(
        store.load_dialog(d0.id).await.expect("load"),
        Some(d0.clone())
    );

    // Its first change writes the lists whole.
    store
        .commit(commit_of(Some(&d1), &d0, (2, 1)))
        .await
        .expect("commit");
    assert_eq!(
        store.load_dialog(d0.id).await.expect("load"),
        Some(d1.clone())
    );
    let lens: (usize, usize) = (
        raw.llen(key("da")).await.expect("llen"),
        raw.llen(key("dt")).await.expect("llen"),
    );
    assert_eq!(lens, (3, 1));
    let state: String = raw.hget(key("d"), "state").await.expect("state");
    let stored: serde_json::Value = serde_json::from_str(&state).expect("json");
    assert_eq!(
        stored["activities"],
        json!([]),
        "the state no longer holds the lists"
    );

    // The next one pushes only the activity it adds.
    let mut d1_stored = d1.clone();
    d1_stored.sequence = 0;
    store
        .commit(commit_of(Some(&d2), &d1_stored, (3, 1)))
        .await
        .expect("commit");
    let da: Vec<String> = raw.lrange(key("da"), 0, -1).await.expect("lrange");
    assert_eq!(da.len(), 4);
    assert_eq!(
        store.load_dialog(d0.id).await.expect("load"),
        Some(d2.clone())
    );
    // Counts that do not match what is stored are a conflict, with nothing written.
    assert!(matches!(
        store.commit(commit_of(Some(&d2), &d1_stored, (2, 1))).await,
        Err(dialog_events::store::StoreError::Conflict)
    ));
    let listed = store
        .list_dialogs(&dialog_events::store::DialogQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(
        listed.is_empty(),
        "only indexed (created) dialogs are listed: {listed:?}"
    );

    // A purge removes the lists with the state.
    store
        .commit(commit_of(None, &d1_stored, (4, 1)))
        .await
        .expect("purge");
    assert_eq!(store.load_dialog(d0.id).await.expect("load"), None);
    let exists: bool = raw.exists(key("da")).await.expect("exists");
    assert!(!exists);
}

/// Up to `want` of PARTY's 2 cluster-wide slots for `node`.
async fn take(
    store: &dialog_events::store::RedisStore,
    node: &str,
    want: usize,
    ttl: Duration,
) -> usize {
    store
        .acquire_connections(PARTY, node, 2, want, ttl)
        .await
        .expect("acquire")
}

#[actix_web::test]
async fn a_seen_race_across_two_nodes_emits_exactly_one_seen() {
    let (nodes, _redis) = nodes_on_redis(2, "").await;
    let id = nodes[0].create_dialog(&dialog_body()).await;
    let path = format!("/api/v1/enduser/dialogs/{id}");
    let reads = (0..20).map(|i| nodes[i % 2].get(&path, &nodes[i % 2].tokens.person_1));
    for r in futures::future::join_all(reads).await {
        assert_eq!(r.status.as_u16(), 200);
    }
    let events = nodes[1].dialog_events(&id).await;
    let t = types(&events);
    assert_eq!(
        t.iter()
            .filter(|t| *t == "dialogporten.dialog.seen.v1")
            .count(),
        1,
        "{t:?}"
    );
    assert_eq!(
        t.iter()
            .filter(|t| *t == "dialogporten.dialog.updated.v1")
            .count(),
        1,
        "{t:?}"
    );
}

#[actix_web::test]
async fn resume_works_on_a_different_node_than_the_one_the_client_left() {
    let (nodes, _redis) = nodes_on_redis(2, "").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let id = a.create_dialog(&dialog_body()).await;
    let token = dialog_token(a, &id).await;
    let mut client = WsClient::subscribed(a, &token, "s", &id, None, 1).await;
    assert_eq!(add_activity(a, &id).await, 201);
    let last = client.event().await["sequence"].as_i64().expect("seq");
    drop(client);
    wait_subscriptions(a, 0).await;
    for _ in 0..5 {
        assert_eq!(add_activity(a, &id).await, 201);
    }
    let mut resumed = WsClient::connect(b, "graphql-transport-ws", None).await;
    resumed.init(Some(&token)).await;
    resumed.subscribe("r", &id, Some(last as u64)).await;
    let replayed = sequences(&mut resumed, 5).await;
    assert_eq!(replayed, (1..=5).map(|i| last + 2 * i).collect::<Vec<_>>());
    wait_subscriptions(b, 1).await;
    assert_eq!(add_activity(a, &id).await, 201);
    assert_eq!(sequences(&mut resumed, 1).await, vec![last + 12]);
}

#[actix_web::test]
async fn a_redis_outage_refuses_writes_with_503_keeps_streams_open_and_loses_no_committed_change() {
    let (nodes, shared) = start_cluster(2, "").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let id = a.create_dialog(&dialog_body()).await;
    let token = dialog_token(a, &id).await;
    let mut client = WsClient::subscribed(b, &token, "s", &id, None, 1).await;
    assert_eq!(add_activity(a, &id).await, 201);
    assert_eq!(sequences(&mut client, 1).await, vec![3]);

    shared.redis.kill();
    let r = a
        .post(
            &format!("/api/v1/serviceowner/dialogs/{id}/activities"),
            &a.tokens.owner_a,
            &json!({"type": "Information"}),
        )
        .await;
    r.assert_problem(503, None);
    let r = a
        .post(
            "/api/v1/serviceowner/dialogs",
            &a.tokens.owner_a,
            &dialog_body(),
        )
        .await;
    r.assert_problem(503, None);
    eventually(
        Duration::from_secs(10),
        "readiness reports Redis down",
        || async {
            a.send("GET", "/health/ready", None, &[], None)
                .await
                .status
                .as_u16()
                == 503
        },
    )
    .await;
    assert_eq!(
        a.send("GET", "/health/live", None, &[], None)
            .await
            .status
            .as_u16(),
        200
    );

    shared.redis.restart();
    eventually(Duration::from_secs(15), "nodes ready again", || async {
        a.send("GET", "/health/ready", None, &[], None)
            .await
            .status
            .as_u16()
            == 200
            && b.send("GET", "/health/ready", None, &[], None)
                .await
                .status
                .as_u16()
                == 200
    })
    .await;
    // The stream survived: changes after recovery arrive, exactly once and in order, with nothing
    // committed before the outage lost (the first post-outage change is sequence 5).
    for _ in 0..3 {
        assert_eq!(add_activity(a, &id).await, 201);
    }
    assert_eq!(sequences(&mut client, 3).await, vec![5, 7, 9]);
    let logged: Vec<u64> = a
        .dialog_events(&id)
        .await
        .iter()
        .map(|e| e["dialogsequence"].as_u64().expect("seq"))
        .collect();
    assert_eq!(logged, (1..=9).collect::<Vec<_>>());
}

#[actix_web::test]
async fn changes_committed_while_the_bus_was_down_are_repaired_from_the_log() {
    let (nodes, shared) = start_cluster(2, "").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let id = a.create_dialog(&dialog_body()).await;
    let token = dialog_token(a, &id).await;
    let mut client = WsClient::subscribed(b, &token, "s", &id, None, 1).await;
    // A restart drops every pub/sub subscription: changes committed before node B has
    // resubscribed are never published to it, and must come from the log.
    shared.redis.restart();
    let mut committed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while committed < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never recovered"
        );
        if add_activity(a, &id).await == 201 {
            committed += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(sequences(&mut client, 3).await, vec![3, 5, 7]);
}

async fn listed(n: &TestNode) -> serde_json::Value {
    n.get("/admin/v1/nodes", &n.tokens.admin).await.body
}

#[actix_web::test]
async fn nodes_are_listed_and_a_node_killed_abruptly_disappears() {
    let (nodes, shared) = start_cluster(1, "").await;
    let a = &nodes[0];
    // A second node as a real process, so it can be killed with SIGKILL.
    let dir = tempfile::tempdir().expect("dir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dialog-events"))
        .arg("serve")
        .env("DIALOG_EVENTS__HTTP__BIND", "127.0.0.1:0")
        .env("DIALOG_EVENTS__DATA_DIR", dir.path())
        .env("DIALOG_EVENTS__REDIS__URL", &shared.redis.url)
        .env("DIALOG_EVENTS__REDIS__PREFIX", &shared.prefix)
        .env("DIALOG_EVENTS__NODE__ID", "doomed-node")
        .env("DIALOG_EVENTS__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node process");
    let guard = scopeguard(&mut child);
    eventually(Duration::from_secs(15), "both nodes listed", || async {
        listed(a).await["count"] == 2
    })
    .await;
    let body = listed(a).await;
    let nodes_json = body["nodes"].as_array().expect("nodes");
    let ids: Vec<&str> = nodes_json
        .iter()
        .map(|n| n["id"].as_str().expect("id"))
        .collect();
    assert!(
        ids.contains(&a.node_id.as_str()) && ids.contains(&"doomed-node"),
        "{ids:?}"
    );
    for n in nodes_json {
        assert!(
            n["address"]
                .as_str()
                .expect("address")
                .starts_with("http://127.0.0.1:")
        );
        assert!(n["connections"].is_number() && n["started"].is_string());
    }
    guard.kill9();
    eventually(Duration::from_secs(8), "killed node gone", || async {
        listed(a).await["count"] == 1
    })
    .await;
    assert_eq!(listed(a).await["nodes"][0]["id"], a.node_id.as_str());
}

/// Kills the child on drop so a failing test leaves no process behind.
struct ChildGuard<'a>(&'a mut std::process::Child);

fn scopeguard(child: &mut std::process::Child) -> ChildGuard<'_> {
    ChildGuard(child)
}

impl ChildGuard<'_> {
    fn kill9(&self) {
        let status = std::process::Command::new("kill")
            .args(["-9", &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
