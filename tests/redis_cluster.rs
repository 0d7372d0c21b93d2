//! Nodes on a real Redis Cluster (three masters, one replica each, `redis.cluster = true`):
//! one gap-free order across nodes, keys and sharded channels spread over the masters, the poll
//! log read across partitions in one order, masters failing over one after another lose no
//! acknowledged write, and slots moved to another master under writes (a resharding) keep every
//! change flowing.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::realtime::*;
use common::redis::{RedisCluster, cli};
use common::*;
use serde_json::{Value, json};

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
        out.push(ev["sequence"].as_i64().expect("sequence"));
    }
    out
}

fn prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// Creates `n` dialogs through `nodes` in turn, 16 at a time.
async fn create_dialogs(nodes: &[TestNode], n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let body = dialog_body();
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let made = chunk
            .iter()
            .map(|i| nodes[i % nodes.len()].create_dialog(&body));
        ids.extend(futures::future::join_all(made).await);
    }
    ids
}

#[actix_web::test]
async fn two_nodes_on_a_cluster_keep_one_order_and_spread_keys_and_channels_over_the_masters() {
    let cluster = Arc::new(RedisCluster::start());
    let prefix = prefix();
    let nodes = vec![
        start_on_cluster(&cluster, &prefix, "").await,
        start_on_cluster(&cluster, &prefix, "").await,
    ];
    let (a, b) = (&nodes[0], &nodes[1]);

    // Keys spread: every master holds a share of 1,000 dialogs' keys.
    let ids = create_dialogs(&nodes, 1000).await;
    assert_eq!(ids.len(), 1000);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let sizes: Vec<u64> = masters
        .iter()
        .map(|p| {
            cli(*p, &["DBSIZE"])
                .and_then(|s| s.parse().ok())
                .expect("DBSIZE")
        })
        .collect();
    let total: u64 = sizes.iter().sum();
    assert!(total > 3000, "a dialog has several keys: {sizes:?}");
    for s in &sizes {
        assert!(
            *s * 10 > total,
            "each master holds a share of the keys: {sizes:?}"
        );
    }

    // Sharded pub/sub: the node's subscriptions are spread over the shards, each channel on
    // exactly one shard (not broadcast to all).
    // All at once, so the node subscribes many channels of many slots in one batch.
    let watched: Vec<&String> = ids.iter().take(30).collect();
    let opened = watched.iter().map(|id| async move {
        let token = dialog_token(a, id).await;
        let mut client = WsClient::connect(b, "graphql-transport-ws", None).await;
        client.init(Some(&token)).await;
        client.subscribe("s", id, None).await;
        client
    });
    let mut clients = futures::future::join_all(opened).await;
    wait_subscriptions(b, 30).await;
    eventually(Duration::from_secs(5), "30 shard channels", || async {
        masters
            .iter()
            .map(|p| {
                cli(
                    *p,
                    &["PUBSUB", "SHARDCHANNELS", &format!("{prefix}:*:dialog:*")],
                )
                .map(|s| s.lines().filter(|l| !l.is_empty()).count())
                .unwrap_or(0)
            })
            .sum::<usize>()
            == 30
    })
    .await;
    let per_master: Vec<usize> = masters
        .iter()
        .map(|p| {
            cli(
                *p,
                &["PUBSUB", "SHARDCHANNELS", &format!("{prefix}:*:dialog:*")],
            )
            .map(|s| s.lines().filter(|l| !l.is_empty()).count())
            .unwrap_or(0)
        })
        .collect();
    assert_eq!(per_master.iter().sum::<usize>(), 30, "{per_master:?}");
    assert!(per_master.iter().all(|n| *n > 0), "{per_master:?}");
    // No feed notices on a cluster: no node subscribes a feed channel.
    let feeds: usize = masters
        .iter()
        .filter_map(|p| {
            cli(
                *p,
                &["PUBSUB", "SHARDCHANNELS", &format!("{prefix}:*feed*")],
            )
        })
        .map(|s| s.lines().filter(|l| !l.is_empty()).count())
        .sum();
    assert_eq!(feeds, 0, "feed channels subscribed on a cluster");
    let plain =
        cli(masters[0], &["PUBSUB", "CHANNELS", &format!("{prefix}:*")]).unwrap_or_default();
    assert!(
        plain.is_empty(),
        "no plain pub/sub channel on a cluster: {plain}"
    );
    // A change to each watched dialog, written on the other node, reaches its subscriber as it
    // happens, not by a later repair.
    for id in &watched {
        assert_eq!(add_activity(a, id).await, 201);
    }
    for client in clients.iter_mut() {
        let ev = client.event().await;
        assert_eq!(ev["sequence"], 3, "{ev}");
    }
    drop(clients);
    wait_subscriptions(b, 0).await;

    // One gap-free order across nodes: writers on both, subscribers on both (a dialog not
    // changed above).
    let id = &ids[ids.len() - 1];
    let token = dialog_token(a, id).await;
    let mut subs = Vec::new();
    for node in &nodes {
        subs.push(WsClient::subscribed(node, &token, "s", id, None, 1).await);
    }
    let per_node = 100;
    let writers = nodes.iter().map(|n| async move {
        for _ in 0..per_node {
            assert_eq!(add_activity(n, id).await, 201);
        }
    });
    let readers = subs.iter_mut().map(|c| sequences(c, 2 * per_node));
    let (_, received) = futures::future::join(
        futures::future::join_all(writers),
        futures::future::join_all(readers),
    )
    .await;
    let expected: Vec<i64> = (0..2 * per_node as i64).map(|i| 3 + 2 * i).collect();
    for (i, seqs) in received.iter().enumerate() {
        assert_eq!(seqs, &expected, "subscriber on node {i}");
    }
    let logged: Vec<u64> = b
        .dialog_events(id)
        .await
        .iter()
        .map(|e| e["dialogsequence"].as_u64().expect("seq"))
        .collect();
    assert_eq!(logged, (1..=1 + 4 * per_node as u64).collect::<Vec<_>>());
}

#[actix_web::test]
async fn the_poll_api_on_a_cluster_reads_every_partition_in_one_order_that_only_moves_forward() {
    let cluster = Arc::new(RedisCluster::start());
    let prefix = prefix();
    let hooks =
        "[webhooks]\nallow_http = true\nallow_private_networks = true\npoll_interval = \"20ms\"";
    let nodes = vec![
        start_on_cluster(&cluster, &prefix, hooks).await,
        start_on_cluster(&cluster, &prefix, hooks).await,
    ];
    // A webhook subscriber gets the events of every partition, whichever node owns it.
    let rx = common::receiver::Receiver::start().await;
    let r = nodes[0]
        .post(
            "/events/api/v1/subscriptions",
            &nodes[0].tokens.owner_a,
            &json!({"endPoint": rx.url, "resourceFilter": RESOURCE}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let sub = r.body["id"].as_str().expect("id").to_owned();
    eventually(
        Duration::from_secs(20),
        "the subscription to be validated",
        || async {
            nodes[0]
                .get(
                    &format!("/events/api/v1/subscriptions/{sub}"),
                    &nodes[0].tokens.owner_a,
                )
                .await
                .body["validated"]
                == true
        },
    )
    .await;
    let ids = create_dialogs(&nodes, 40).await;
    for (i, id) in ids.iter().enumerate() {
        for _ in 0..i % 3 {
            assert_eq!(add_activity(&nodes[i % 2], id).await, 201);
        }
    }
    let token = nodes[0].tokens.owner_a.clone();
    let all = nodes[0].poll_all(&token, "").await;
    // Every dialog's events, each once, in its own order: 1 ..= 1 + 2 × its activities.
    let mut per_dialog: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &all {
        per_dialog
            .entry(e["resourceinstance"].as_str().expect("dialog").to_owned())
            .or_default()
            .push(e["dialogsequence"].as_u64().expect("seq"));
    }
    assert_eq!(per_dialog.len(), 40);
    for (i, id) in ids.iter().enumerate() {
        let last = 1 + 2 * (i % 3) as u64;
        assert_eq!(per_dialog[id], (1..=last).collect::<Vec<_>>(), "dialog {i}");
    }
    let polled: std::collections::HashSet<String> = all
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    eventually(
        Duration::from_secs(20),
        "every polled event pushed",
        || async {
            let pushed: std::collections::HashSet<String> = rx
                .events()
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap_or_default().to_owned())
                .collect();
            pushed == polled
        },
    )
    .await;
    assert_eq!(rx.events().len(), polled.len(), "each pushed once");
    // Small pages give the same order, page by page on alternating nodes.
    let mut paged: Vec<Value> = Vec::new();
    let mut path = format!("/events/api/v1/events?resource={RESOURCE}&after=0&size=7");
    for turn in 0.. {
        let r = nodes[turn % 2].get(&path, &token).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        let page = r.body.as_array().expect("page").clone();
        path = path_of(&r.header("next").expect("next"));
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    let ids_of = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(ids_of(&paged), ids_of(&all));
    // Later events come after the last page, never behind it.
    for id in ids.iter().take(10) {
        assert_eq!(add_activity(&nodes[1], id).await, 201);
    }
    let mut later = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while later.len() < 20 && std::time::Instant::now() < deadline {
        let r = nodes[0].get(&path, &token).await;
        let page = r.body.as_array().expect("page").clone();
        path = path_of(&r.header("next").expect("next"));
        later.extend(page);
    }
    assert_eq!(later.len(), 20, "the ten new changes' events");
    let seen: std::collections::HashSet<String> = ids_of(&all).into_iter().collect();
    assert!(ids_of(&later).iter().all(|id| !seen.contains(id)));
}

#[actix_web::test]
async fn masters_killed_one_after_another_during_writes_with_wait_replicas_lose_no_acknowledged_write()
 {
    let cluster = Arc::new(RedisCluster::start());
    let prefix = prefix();
    let extra = "[redis]\nwait_replicas = 1";
    let nodes = vec![
        start_on_cluster(&cluster, &prefix, extra).await,
        start_on_cluster(&cluster, &prefix, extra).await,
    ];
    let (a, b) = (&nodes[0], &nodes[1]);
    let ids = create_dialogs(&nodes, 12).await;
    let watched = &ids[0];
    let token = dialog_token(a, watched).await;
    let mut sub = WsClient::subscribed(b, &token, "s", watched, None, 1).await;

    // Twelve writers (one per dialog) run while three masters die one after another, each
    // after its replica took over from the one before and the killed one came back.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = std::time::Instant::now();
    let writers = ids.iter().enumerate().map(|(i, id)| {
        let node = &nodes[i % 2];
        let done = done.clone();
        async move {
            let mut acked = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(90)
            {
                match add_activity(node, id).await {
                    201 => acked += 1,
                    // Not acknowledged (the master is failing over): try again.
                    503 => tokio::time::sleep(Duration::from_millis(50)).await,
                    other => panic!("unexpected status {other}"),
                }
            }
            acked
        }
    });
    let killer = async {
        let mut killed = Vec::new();
        for round in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The cluster helpers block: off the thread the nodes' tasks share.
            let c = cluster.clone();
            let victim = actix_web::rt::task::spawn_blocking(move || {
                let victim = c.masters()[round % 3];
                c.kill(victim);
                c.wait_for_failover();
                // The old master comes back as the new one's replica.
                c.restart(victim);
                victim
            })
            .await
            .expect("failover");
            killed.push(victim);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        killed
    };
    let (acked, killed) = futures::future::join(futures::future::join_all(writers), killer).await;
    let distinct: std::collections::HashSet<u16> = killed.iter().copied().collect();
    assert!(
        distinct.len() >= 2,
        "different masters were killed: {killed:?}"
    );
    // Writes are acknowledged again, and the next change of the watched dialog is announced
    // (one that committed on a new master while it had no replica was not, as it might not
    // have survived).
    let mut finished = false;
    for _ in 0..100 {
        if add_activity(a, watched).await == 201 {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        finished,
        "writes are acknowledged once the replicas are back"
    );
    assert!(
        acked.iter().all(|n| *n > 0),
        "every writer got writes through: {acked:?}"
    );
    // Every acknowledged activity is there after the replica took over.
    for (id, n) in ids.iter().zip(&acked) {
        let r = a
            .get(
                &format!("/api/v1/serviceowner/dialogs/{id}"),
                &a.tokens.owner_a,
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        let activities = r.body["activities"].as_array().map_or(0, Vec::len) as u64;
        assert!(
            activities >= *n,
            "dialog {id}: {n} acknowledged, {activities} stored"
        );
    }
    // The subscriber got every change of its dialog once, in order (repaired where the bus
    // lost messages during the failover): the log's sequences after `created`, each once.
    let logged: Vec<i64> = a
        .dialog_events(watched)
        .await
        .iter()
        .map(|e| e["dialogsequence"].as_i64().expect("seq"))
        .collect();
    let last = *logged.last().expect("a log");
    assert!(
        last > 2 * (acked[0] as i64 + 1),
        "{last} holds {} acknowledged changes",
        acked[0] + 1
    );
    let expected: Vec<i64> = logged
        .into_iter()
        .filter(|s| *s > 1 && s % 2 == 1)
        .collect();
    let mut got = Vec::new();
    while got.last().copied().unwrap_or(0) < last {
        let ev = sub.event().await;
        got.push(ev["sequence"].as_i64().expect("sequence"));
    }
    assert_eq!(got, expected);
}

#[actix_web::test]
async fn on_a_cluster_a_seen_race_emits_one_seen_and_a_client_resumes_on_another_node() {
    let cluster = Arc::new(RedisCluster::start());
    let prefix = prefix();
    let nodes = [
        start_on_cluster(&cluster, &prefix, "").await,
        start_on_cluster(&cluster, &prefix, "").await,
    ];
    let (a, b) = (&nodes[0], &nodes[1]);

    // Twenty concurrent end-user reads on both nodes: one seen event, one updated.
    let id = a.create_dialog(&dialog_body()).await;
    let path = format!("/api/v1/enduser/dialogs/{id}");
    let reads = (0..20).map(|i| nodes[i % 2].get(&path, &nodes[i % 2].tokens.person_1));
    for r in futures::future::join_all(reads).await {
        assert_eq!(r.status.as_u16(), 200);
    }
    let t = types(&b.dialog_events(&id).await);
    let count = |ty: &str| t.iter().filter(|x| *x == ty).count();
    assert_eq!(count("dialogporten.dialog.seen.v1"), 1, "{t:?}");
    assert_eq!(count("dialogporten.dialog.updated.v1"), 1, "{t:?}");

    // A client leaves node A and resumes on node B from its last sequence.
    let other = a.create_dialog(&dialog_body()).await;
    let token = dialog_token(a, &other).await;
    let mut client = WsClient::subscribed(a, &token, "s", &other, None, 1).await;
    assert_eq!(add_activity(a, &other).await, 201);
    let last = client.event().await["sequence"].as_i64().expect("sequence");
    drop(client);
    wait_subscriptions(a, 0).await;
    for _ in 0..5 {
        assert_eq!(add_activity(a, &other).await, 201);
    }
    let mut resumed = WsClient::connect(b, "graphql-transport-ws", None).await;
    resumed.init(Some(&token)).await;
    resumed.subscribe("r", &other, Some(last as u64)).await;
    let replayed = sequences(&mut resumed, 5).await;
    assert_eq!(replayed, (1..=5).map(|i| last + 2 * i).collect::<Vec<_>>());
    wait_subscriptions(b, 1).await;
    assert_eq!(add_activity(a, &other).await, 201);
    assert_eq!(sequences(&mut resumed, 1).await, vec![last + 12]);

    // The node list shows both nodes (a sorted set on a cluster, not SCAN).
    let listed = a.get("/admin/v1/nodes", &a.tokens.admin).await;
    assert_eq!(listed.status.as_u16(), 200, "{}", listed.body);
    let text = listed.body.to_string();
    assert!(
        text.contains(&a.node_id) && text.contains(&b.node_id),
        "{text}"
    );
}

/// The dialog channels of `prefix` that the master on `port` carries subscribers for.
fn shard_channels(port: u16, prefix: &str) -> Vec<String> {
    cli(
        port,
        &["PUBSUB", "SHARDCHANNELS", &format!("{prefix}:*:dialog:*")],
    )
    .map(|s| {
        s.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

#[actix_web::test]
async fn slots_moved_to_another_master_during_writes_keep_every_change_flowing_to_subscribers() {
    let cluster = Arc::new(RedisCluster::start());
    let prefix = prefix();
    let nodes = vec![
        start_on_cluster(&cluster, &prefix, "").await,
        start_on_cluster(&cluster, &prefix, "").await,
    ];
    let (a, b) = (&nodes[0], &nodes[1]);
    let ids = create_dialogs(&nodes, 24).await;
    // A subscriber per dialog on node B; the changes are written through node A.
    let opened = ids.iter().map(|id| async move {
        let token = dialog_token(a, id).await;
        let mut client = WsClient::connect(b, "graphql-transport-ws", None).await;
        client.init(Some(&token)).await;
        client.subscribe("s", id, None).await;
        client
    });
    let mut subs = futures::future::join_all(opened).await;
    wait_subscriptions(b, 24).await;
    let masters = cluster.masters();
    eventually(Duration::from_secs(5), "24 shard channels", || async {
        masters
            .iter()
            .map(|p| shard_channels(*p, &prefix).len())
            .sum::<usize>()
            == 24
    })
    .await;
    // The master carrying the most watched channels gives their slots to the next master.
    let held: Vec<Vec<String>> = masters
        .iter()
        .map(|p| shard_channels(*p, &prefix))
        .collect();
    let from_i = (0..3).max_by_key(|i| held[*i].len()).expect("a master");
    let (from, to) = (masters[from_i], masters[(from_i + 1) % 3]);
    let slots: std::collections::BTreeSet<u16> = held[from_i]
        .iter()
        .map(|c| {
            cli(from, &["CLUSTER", "KEYSLOT", c])
                .and_then(|s| s.parse().ok())
                .expect("slot")
        })
        .collect();
    assert!(!slots.is_empty(), "{held:?}");

    // A writer per dialog runs until the slots have moved, and a second after.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = ids.iter().map(|id| {
        let done = done.clone();
        async move {
            let mut acked = 0u64;
            let started = std::time::Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(60)
            {
                match add_activity(a, id).await {
                    201 => acked += 1,
                    // Not acknowledged while its slot was between masters: try again.
                    503 => tokio::time::sleep(Duration::from_millis(20)).await,
                    other => panic!("unexpected status {other}"),
                }
            }
            acked
        }
    });
    let mover = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c = cluster.clone();
        let moving = slots.clone();
        actix_web::rt::task::spawn_blocking(move || {
            for slot in moving {
                c.move_slot(slot, from, to);
            }
        })
        .await
        .expect("slots moved");
        tokio::time::sleep(Duration::from_secs(1)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (acked, ()) = futures::future::join(futures::future::join_all(writers), mover).await;
    assert!(
        acked.iter().all(|n| *n > 0),
        "every writer got writes through: {acked:?}"
    );

    // The moved channels are carried by their new master now, none left behind.
    let moved: Vec<&String> = held[from_i].iter().collect();
    eventually(
        Duration::from_secs(10),
        "the moved channels on the new master",
        || async {
            let there = shard_channels(to, &prefix);
            moved.iter().all(|c| there.contains(c))
        },
    )
    .await;
    let left = shard_channels(from, &prefix);
    assert!(
        moved.iter().all(|c| !left.contains(c)),
        "left behind: {left:?}"
    );

    // Every acknowledged write is there, and every subscriber got every change of its dialog
    // once, in order.
    for ((id, n), sub) in ids.iter().zip(&acked).zip(subs.iter_mut()) {
        let logged: Vec<i64> = a
            .dialog_events(id)
            .await
            .iter()
            .map(|e| e["dialogsequence"].as_i64().expect("seq"))
            .collect();
        let last = *logged.last().expect("a log");
        assert!(
            last > 2 * *n as i64,
            "dialog {id}: {n} acknowledged, log ends at {last}"
        );
        let expected: Vec<i64> = logged
            .into_iter()
            .filter(|s| *s > 1 && s % 2 == 1)
            .collect();
        let mut got = Vec::new();
        while got.last().copied().unwrap_or(0) < last {
            let ev = sub.event().await;
            got.push(ev["sequence"].as_i64().expect("sequence"));
        }
        assert_eq!(got, expected, "dialog {id}");
    }
}
