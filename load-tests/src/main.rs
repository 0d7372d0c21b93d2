//! Load generator for dialog-events. Drives a running node or cluster over real sockets and writes
//! its figures as JSON under `load-tests/results/`. Benchmarks, not tests: no pass/fail.
//!
//! Tokens come from the node's development issuer (its `data_dir` keys, or the cluster's keys in
//! Redis via `--keys-file`), so point `--data-dir` at the node's data directory.

mod chart;
mod raw;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use awc::ws;
use clap::{Parser, Subcommand};
use dialog_events::auth::{KeyStore, dev_token};
use dialog_events::domain::Party;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

const RESOURCE: &str = "urn:altinn:resource:load-test";
const ORG: &str = "991825827";
const PERSON: &str = "08895699684";

#[derive(Parser)]
#[command(
    name = "dialog-events-load",
    about = "Load generator for dialog-events"
)]
struct Cli {
    /// Node to write to (and to subscribe on, unless --subscribe-target is given).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Data directory of the node (its development-issuer key mints the tokens).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// A keys JSON (as stored under `{prefix}:keys` in Redis) instead of the data directory.
    #[arg(long)]
    keys_file: Option<PathBuf>,
    /// PID of the node, to report its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the result JSON to this file (the bench script reads it).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Dialog writes (activity posts) from concurrent writers: writes/s and latency.
    Writes {
        #[arg(long, default_value_t = 32)]
        writers: usize,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        dialogs: usize,
    },
    /// S subscribers over D dialogs, changes at rate R for T seconds: delivered frames/s,
    /// commit → receive latency, lost and out-of-order counts.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 10)]
        dialogs: usize,
        /// Changes per second (all dialogs together).
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Subscribe on this node instead (cross-node through Redis).
        #[arg(long)]
        subscribe_target: Option<String>,
        /// Also open this many subscribers, and drop all of them at once half-way through the
        /// run (their TCP connections closed): the latency of the others is reported for the
        /// second after it as well.
        #[arg(long, default_value_t = 0)]
        disconnect: usize,
    },
    /// Webhooks: K subscriptions to a built-in loopback receiver, E published events; deliveries/s,
    /// publish → delivery latency, and retries when the receiver fails a share of requests.
    /// The node must run with `webhooks.allow_http` and `webhooks.allow_private_networks`.
    Webhooks {
        #[arg(long, default_value_t = 10)]
        subscriptions: usize,
        #[arg(long, default_value_t = 5000)]
        events: usize,
        /// Share of requests the receiver answers with 500 (0.0 to 0.9).
        #[arg(long, default_value_t = 0.0)]
        failure_rate: f64,
        /// Give up waiting for deliveries after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// The receiver answers each request after this many milliseconds.
        #[arg(long, default_value_t = 0)]
        receiver_delay_ms: u64,
        /// Events spread over this many dialogs (`resourceinstance`); 0: each event its own lane.
        #[arg(long, default_value_t = 0)]
        dialogs: usize,
        /// PIDs of further nodes of the cluster, comma-separated, whose CPU is added.
        #[arg(long, value_delimiter = ',')]
        also_pids: Vec<u32>,
        /// The nodes' first retry delay (`webhooks.retry_schedule`, with `jitter = 0`): a retry
        /// after a failed attempt is timed against it, and its lateness reported.
        #[arg(long)]
        retry_delay_ms: Option<u64>,
    },
    /// N idle subscriptions over D dialogs: connect rate and server memory per connection.
    Connections {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        dialogs: usize,
        /// Seconds to hold the connections open before measuring.
        #[arg(long, default_value_t = 2)]
        hold: u64,
        /// Client processes to spread the sockets over (each from its own 127.0.0.x address);
        /// one process holds at most ~19,900 sockets here.
        #[arg(long, default_value_t = 1)]
        processes: usize,
        /// Nodes to spread the subscriptions over (a Redis cluster), comma-separated; default
        /// `--target`.
        #[arg(long, value_delimiter = ',')]
        targets: Vec<String>,
        /// PIDs of those nodes, comma-separated, to sum their memory.
        #[arg(long, value_delimiter = ',')]
        server_pids: Vec<u32>,
    },
    /// N subscribers over D dialogs close their sockets, at once or one at a time (`--rate`): how
    /// long the server takes to answer each close frame, and to close the TCP connection after it.
    Closes {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 10)]
        dialogs: usize,
        /// Closes per second, one connection at a time; without it every connection closes at
        /// once (a burst).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// One client process of `connections --processes N` (started by it).
    #[command(hide = true)]
    ConnectionsWorker {
        #[arg(long)]
        plan: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        source: std::net::IpAddr,
        #[arg(long)]
        offset: usize,
    },
}

struct Tokens {
    owner: String,
    admin: String,
}

fn tokens(cli: &Cli) -> anyhow::Result<Tokens> {
    let keys = match &cli.keys_file {
        Some(f) => {
            KeyStore::from_json(&std::fs::read_to_string(f).context("failed to read --keys-file")?)?
        }
        None => KeyStore::load_or_create(&cli.data_dir)?,
    };
    let ttl = Duration::from_secs(24 * 3600);
    let org = Party::organization(ORG)?;
    Ok(Tokens {
        owner: dev_token(
            &keys.dev_issuer,
            "digdir:dialogporten.serviceprovider altinn:events.subscribe altinn:events.publish",
            Some(&org),
            ttl,
        ),
        admin: dev_token(&keys.dev_issuer, "dialog-events:admin", None, ttl),
    })
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(0))
        .finish()
}

async fn request(
    c: &awc::Client,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let m = awc::http::Method::from_bytes(method.as_bytes())?;
    let req = c
        .request(m, url)
        .insert_header(("Authorization", format!("Bearer {token}")));
    let mut resp = match body {
        Some(b) => {
            req.insert_header(("Content-Type", "application/json"))
                .send_body(b.to_string())
                .await
        }
        None => req.send().await,
    }
    .map_err(|e| anyhow::anyhow!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.body().limit(64 << 20).await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Registers the load-test resource and creates `n` dialogs; returns their ids.
async fn setup(c: &awc::Client, target: &str, t: &Tokens, n: usize) -> anyhow::Result<Vec<String>> {
    let (s, b) = request(
        c,
        "PUT",
        &format!("{target}/admin/v1/resources/{RESOURCE}"),
        &t.admin,
        Some(json!({"owner": format!("urn:altinn:organization:identifier-no:{ORG}")})),
    )
    .await?;
    if s != 200 {
        bail!("registering the resource failed: {s} {b}");
    }
    // 32 at a time: a durable node answers each create after its fsync, so one at a time would
    // spend minutes creating 100,000 dialogs.
    let mut ids = Vec::with_capacity(n);
    let create = || async {
        let body = json!({
            "serviceResource": RESOURCE,
            "party": format!("urn:altinn:person:identifier-no:{PERSON}"),
            "status": "InProgress",
            "content": {"title": [{"value": "load", "languageCode": "nb"}]}
        });
        let (s, b) = request(
            c,
            "POST",
            &format!("{target}/api/v1/serviceowner/dialogs"),
            &t.owner,
            Some(body),
        )
        .await?;
        if s != 201 {
            bail!("creating a dialog failed: {s} {b}");
        }
        Ok(b.as_str().unwrap_or_default().to_owned())
    };
    while ids.len() < n {
        let batch = (n - ids.len()).min(32);
        for id in futures::future::join_all((0..batch).map(|_| create())).await {
            ids.push(id?);
        }
    }
    Ok(ids)
}

async fn add_activity(c: &awc::Client, target: &str, t: &Tokens, id: &str) -> anyhow::Result<u16> {
    let url = format!("{target}/api/v1/serviceowner/dialogs/{id}/activities");
    Ok(request(
        c,
        "POST",
        &url,
        &t.owner,
        Some(json!({"type": "Information"})),
    )
    .await?
    .0)
}

fn percentiles(mut samples: Vec<f64>) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    json!({
        "count": samples.len(),
        "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "p999_ms": at(0.999),
        "max_ms": samples[samples.len() - 1],
    })
}

/// CPU seconds (user + system) of a process from /proc.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn machine() -> Value {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory": mem,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// Writes the run's JSON and, given `samples` ((seconds since start, latency in ms)), an SVG
/// chart of throughput and latency percentiles over time beside it.
fn save(
    scenario: &str,
    params: Value,
    figures: Value,
    samples: &[(f64, f64)],
    unit: &str,
) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    let stem = format!("{scenario}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    if !samples.is_empty() {
        // Targets (URLs) make the title too long; the JSON beside the chart has them.
        let shown: Vec<String> = params
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !k.contains("target"))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        let title = format!("{scenario}: {}", shown.join(", "));
        chart::write(&dir.join(format!("{stem}.svg")), &title, unit, samples)?;
    }
    let path = dir.join(format!("{stem}.json"));
    let doc = json!({"scenario": scenario, "machine": machine(), "parameters": params, "figures": figures});
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    if let Some(out) = OUT.get() {
        std::fs::write(out, serde_json::to_string_pretty(&doc)?)?;
    }
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(path)
}

type Socket = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// Opens `count` subscriptions spread over `ids` (subscriber i on dialog i mod n), `batch` at a time.
async fn open_subscribers(
    c: &awc::Client,
    target: &str,
    ids: &[String],
    dialog_tokens: &[String],
    count: usize,
    batch: usize,
) -> anyhow::Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(batch) {
        let opened = futures::future::join_all(chunk.iter().map(|i| {
            let d = i % ids.len();
            subscribe(c, target, &ids[d], &dialog_tokens[d])
        }))
        .await;
        for s in opened {
            sockets.push(s?);
        }
    }
    Ok(sockets)
}

/// `--out`, set once in `main`.
static OUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

async fn closes(
    cli: &Cli,
    t: &Tokens,
    count: usize,
    dialogs: usize,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let c = client();
    let ids = setup(&c, &cli.target, t, dialogs).await?;
    let mut dialog_tokens = Vec::new();
    for id in &ids {
        dialog_tokens.push(dialog_token(&c, &cli.target, t, id).await?);
    }
    let sockets = open_subscribers(&c, &cli.target, &ids, &dialog_tokens, count, 100).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = cli.server_pid.map(|p| p.to_string());
    let server_cpu0 = pid.as_deref().and_then(cpu_seconds);
    let started = Instant::now();
    // Every socket sends its close frame (all at once, or one after another at `rate`), then
    // times the server's close frame and the end of the TCP stream (each bounded by 10 s).
    let timings = futures::future::join_all(sockets.into_iter().enumerate().map(
        |(i, mut socket)| async move {
            if let Some(rate) = rate {
                tokio::time::sleep_until(
                    (started + Duration::from_secs_f64(i as f64 / rate)).into(),
                )
                .await;
            }
            let sent = Instant::now();
            socket
                .send(ws::Message::Close(Some(ws::CloseCode::Normal.into())))
                .await
                .ok()?;
            let mut close_frame = None;
            let deadline = sent + Duration::from_secs(10);
            loop {
                match tokio::time::timeout_at(deadline.into(), socket.next()).await {
                    Ok(Some(Ok(ws::Frame::Close(_)))) => {
                        close_frame = Some(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_))) | Ok(None) => {
                        return Some((close_frame, sent.elapsed().as_secs_f64() * 1000.0));
                    }
                    Err(_) => return Some((close_frame, f64::INFINITY)),
                }
            }
        },
    ))
    .await;
    let secs = started.elapsed().as_secs_f64();
    let (mut frame_ms, mut eof_ms, mut failed) = (Vec::new(), Vec::new(), 0usize);
    for t in &timings {
        match t {
            Some((Some(f), e)) if e.is_finite() => {
                frame_ms.push(*f);
                eof_ms.push(*e);
            }
            _ => failed += 1,
        }
    }
    let figures = json!({
        "closed": frame_ms.len(),
        "failed": failed,
        "close_frame_ms": percentiles(frame_ms),
        "tcp_close_ms": percentiles(eof_ms),
        "seconds": secs,
        "server_cpu_seconds": pid.as_deref().and_then(cpu_seconds).zip(server_cpu0).map(|(a, b)| a - b),
    });
    save(
        "closes",
        json!({"target": cli.target, "count": count, "dialogs": dialogs, "rate": rate}),
        figures,
        &[],
        "ms",
    )?;
    Ok(())
}

/// Opens a graphql-transport-ws subscription to `dialog`, authorized by a fresh dialog token.
async fn subscribe(
    c: &awc::Client,
    target: &str,
    dialog: &str,
    token: &str,
) -> anyhow::Result<Socket> {
    let ws_url = format!("{}/graphql", target.replacen("http", "ws", 1));
    let (_, mut socket) = c
        .ws(ws_url)
        .protocols(["graphql-transport-ws"])
        .max_frame_size(1 << 20)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("websocket: {e}"))?;
    let init =
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}});
    socket
        .send(ws::Message::Text(init.to_string().into()))
        .await?;
    loop {
        match socket.next().await {
            Some(Ok(ws::Frame::Text(t))) if t.windows(14).any(|w| w == b"connection_ack") => break,
            Some(Ok(_)) => continue,
            other => bail!("no connection_ack: {other:?}"),
        }
    }
    let sub = json!({"id": "1", "type": "subscribe", "payload": {
        "query": "subscription ($id: UUID!) { dialogEvents(dialogId: $id) { sequence } }",
        "variables": {"id": dialog}}});
    socket
        .send(ws::Message::Text(sub.to_string().into()))
        .await?;
    Ok(socket)
}

async fn dialog_token(
    c: &awc::Client,
    target: &str,
    t: &Tokens,
    id: &str,
) -> anyhow::Result<String> {
    let (_, b) = request(
        c,
        "GET",
        &format!("{target}/api/v1/serviceowner/dialogs/{id}"),
        &t.owner,
        None,
    )
    .await?;
    Ok(b["dialogToken"].as_str().unwrap_or_default().to_owned())
}

async fn writes(
    cli: &Cli,
    t: &Tokens,
    writers: usize,
    count: usize,
    dialogs: usize,
) -> anyhow::Result<()> {
    let c = client();
    let ids = setup(&c, &cli.target, t, dialogs).await?;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let pid = cli.server_pid.map(|p| p.to_string());
    let server_cpu0 = pid.as_deref().and_then(cpu_seconds);
    let self_cpu0 = cpu_seconds("self");
    let started = Instant::now();
    // Each writer keeps one connection of the lean client (see `raw`), so that the generator
    // takes little of the CPU it shares with the node.
    let connections = (0..writers)
        .map(|_| raw::Connection::new(&cli.target))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tasks = connections.into_iter().map(|mut conn| {
        let (ids, next, errors) = (ids.clone(), next.clone(), errors.clone());
        async move {
            let mut lat = Vec::new();
            let mut path = String::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= count {
                    return lat;
                }
                path.clear();
                path.push_str("/api/v1/serviceowner/dialogs/");
                path.push_str(&ids[n % ids.len()]);
                path.push_str("/activities");
                let t0 = Instant::now();
                match conn
                    .post_json(&path, &t.owner, r#"{"type":"Information"}"#)
                    .await
                {
                    Ok(201) => lat.push((
                        started.elapsed().as_secs_f64(),
                        t0.elapsed().as_secs_f64() * 1000.0,
                    )),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    let samples: Vec<(f64, f64)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let secs = started.elapsed().as_secs_f64();
    let figures = json!({
        "writes_per_second": samples.len() as f64 / secs,
        "errors": errors.load(Ordering::Relaxed),
        "latency": percentiles(samples.iter().map(|s| s.1).collect()),
        "seconds": secs,
        "client_cpu_seconds": cpu_seconds("self").zip(self_cpu0).map(|(a, b)| a - b),
        "server_cpu_seconds": pid.as_deref().and_then(cpu_seconds).zip(server_cpu0).map(|(a, b)| a - b),
    });
    save(
        "writes",
        json!({"target": cli.target, "writers": writers, "count": count, "dialogs": dialogs}),
        figures,
        &samples,
        "writes",
    )?;
    Ok(())
}

/// Subscribers held open on a thread (and runtime) of their own until `drop_all`.
struct Leaving {
    go: std::sync::mpsc::Sender<()>,
}

impl Leaving {
    fn open(
        count: usize,
        target: &str,
        ids: &[String],
        tokens: &[String],
    ) -> anyhow::Result<Leaving> {
        let (target, ids, tokens) = (target.to_owned(), ids.to_vec(), tokens.to_vec());
        let (opened_tx, opened_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let sockets =
                    match open_subscribers(&client(), &target, &ids, &tokens, count, 100).await {
                        Ok(sockets) => sockets,
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return;
                        }
                    };
                let _ = opened_tx.send(Ok(()));
                // Nothing here needs polling meanwhile: the sockets are never read.
                let _ = go_rx.recv();
                // These clients would be on other machines: closing 5,000 sockets takes this
                // thread about 100 ms of a core here (the kernel's teardown of both ends), which
                // at normal priority would take turns with the readers being measured. Lowest
                // priority gives the readers and the node the cores first.
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
                drop(sockets);
            });
        });
        opened_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the leaving subscribers' thread ended"))??;
        Ok(Leaving { go })
    }

    fn drop_all(self) {
        let _ = self.go.send(());
    }
}

/// The `fanout` scenario's shape.
struct FanoutLoad {
    subscribers: usize,
    dialogs: usize,
    rate: u64,
    seconds: u64,
    sub_target: Option<String>,
    disconnect: usize,
}

async fn fanout(cli: &Cli, t: &Tokens, load: FanoutLoad) -> anyhow::Result<()> {
    let FanoutLoad {
        subscribers,
        dialogs,
        rate,
        seconds,
        sub_target,
        disconnect,
    } = load;
    let c = client();
    let ids = setup(&c, &cli.target, t, dialogs).await?;
    let sub_target = sub_target.unwrap_or_else(|| cli.target.clone());
    let mut dialog_tokens = Vec::new();
    for id in &ids {
        dialog_tokens.push(dialog_token(&c, &cli.target, t, id).await?);
    }
    let connect_started = Instant::now();
    // Subscriber i watches dialog i mod n.
    let sockets: Vec<(usize, Socket)> =
        open_subscribers(&c, &sub_target, &ids, &dialog_tokens, subscribers, 100)
            .await?
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i % ids.len(), s))
            .collect();
    // The subscribers that leave together half-way through, held by a thread of their own (as
    // clients elsewhere would be): dropping thousands of sockets takes this thread a while, which
    // must not delay the readers measured here.
    let leaving = (disconnect > 0)
        .then(|| Leaving::open(disconnect, &sub_target, &ids, &dialog_tokens))
        .transpose()?;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = (rate * seconds) as usize;
    let per_dialog_expected: Vec<usize> = (0..ids.len())
        .map(|d| (total + ids.len() - 1 - d) / ids.len())
        .collect();
    // Readers: record (sequence, wall-clock receive time) per subscriber.
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    let readers = sockets.into_iter().map(|(d, mut socket)| {
        let expected = per_dialog_expected[d];
        async move {
            let mut got: Vec<(i64, chrono::DateTime<chrono::Utc>)> = Vec::with_capacity(expected);
            while got.len() < expected && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                    Ok(Some(Ok(ws::Frame::Text(t)))) => {
                        let now = chrono::Utc::now();
                        if let Ok(v) = serde_json::from_slice::<Value>(&t)
                            && v["type"] == "next"
                        {
                            got.push((
                                v["payload"]["data"]["dialogEvents"]["sequence"]
                                    .as_i64()
                                    .unwrap_or(0),
                                now,
                            ));
                        } else if t.windows(6).any(|w| w == b"\"ping\"") {
                            let _ = socket
                                .send(ws::Message::Text(r#"{"type":"pong"}"#.into()))
                                .await;
                        }
                    }
                    Ok(Some(Ok(ws::Frame::Ping(p)))) => {
                        let _ = socket.send(ws::Message::Pong(p)).await;
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            (d, got)
        }
    });
    let pid = cli.server_pid.map(|p| p.to_string());
    let server_cpu0 = pid.as_deref().and_then(cpu_seconds);
    let self_cpu0 = cpu_seconds("self");
    let started = Instant::now();
    let wall0 = chrono::Utc::now();
    let writer = {
        let (c, ids, target) = (c.clone(), ids.clone(), cli.target.clone());
        async move {
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut next = Instant::now();
            let mut inflight = futures::stream::FuturesUnordered::new();
            for n in 0..total {
                next += interval;
                let (c, id, target) = (c.clone(), ids[n % ids.len()].clone(), target.clone());
                inflight.push(async move { add_activity(&c, &target, t, &id).await });
                // Collect finished writes until the next one is due; idle time is slept, so the
                // rate holds whether or not writes are in flight.
                loop {
                    match tokio::time::timeout_at(next.into(), inflight.next()).await {
                        Ok(Some(_)) => continue,
                        Ok(None) => {
                            tokio::time::sleep_until(next.into()).await;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            while inflight.next().await.is_some() {}
        }
    };
    // Half-way through, every leaving subscriber's socket is dropped at once (its reads were
    // never polled: what it was sent stays unread, as with a client that vanished).
    let leaving_count = if leaving.is_some() { disconnect } else { 0 };
    let leaver = async move {
        let leaving = leaving?;
        tokio::time::sleep(Duration::from_secs_f64(seconds as f64 / 2.0)).await;
        let at = chrono::Utc::now();
        leaving.drop_all();
        Some(at)
    };
    let (results, (), left_at) =
        futures::future::join3(futures::future::join_all(readers), writer, leaver).await;
    let secs = started.elapsed().as_secs_f64();
    // Commit times from the poll API (server wall clock, same machine), on a fresh client: the
    // run's pool may hold connections the node closed meanwhile. A page is asked again on a
    // transport error.
    let c = client();
    let mut commit: HashMap<(String, i64), chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut after = "0".to_owned();
    loop {
        let url = format!(
            "{}/events/api/v1/events?resource={RESOURCE}&after={after}&size=1000",
            cli.target
        );
        let mut attempt = 0;
        let page = loop {
            match request(&c, "GET", &url, &t.owner, None).await {
                Ok((_, page)) => break page,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    eprintln!("reading commit times: {e}; asking again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let Some(events) = page.as_array().filter(|a| !a.is_empty()) else {
            break;
        };
        for e in events {
            if let (Some(d), Some(seq), Some(time)) = (
                e["resourceinstance"].as_str(),
                e["dialogsequence"].as_i64(),
                e["time"].as_str(),
            ) && let Ok(t) = chrono::DateTime::parse_from_rfc3339(time)
            {
                commit.insert((d.to_owned(), seq), t.with_timezone(&chrono::Utc));
            }
        }
        after = events
            .last()
            .and_then(|e| e["id"].as_str())
            .unwrap_or("0")
            .to_owned();
    }
    let (mut lat, mut frames, mut lost, mut out_of_order) = (Vec::new(), 0usize, 0usize, 0usize);
    // Changes committed in the second after the mass disconnect.
    let mut lat_after_disconnect = Vec::new();
    let mut samples = Vec::new();
    for (d, got) in &results {
        frames += got.len();
        lost += per_dialog_expected[*d].saturating_sub(got.len());
        out_of_order += got.windows(2).filter(|w| w[1].0 <= w[0].0).count();
        for (seq, at) in got {
            if let Some(c) = commit.get(&(ids[*d].clone(), *seq)) {
                let ms = ((*at - *c).num_microseconds().unwrap_or(0).max(0)) as f64 / 1000.0;
                lat.push(ms);
                if let Some(left) = left_at
                    && *c >= left
                    && *c < left + chrono::Duration::seconds(1)
                {
                    lat_after_disconnect.push(ms);
                }
                samples.push((
                    ((*at - wall0).num_microseconds().unwrap_or(0)) as f64 / 1e6,
                    ms,
                ));
            }
        }
    }
    let figures = json!({
        "delivered_frames": frames,
        "delivered_frames_per_second": frames as f64 / secs,
        "lost": lost,
        "out_of_order": out_of_order,
        "latency_commit_to_receive": percentiles(lat),
        "disconnected": leaving_count,
        "latency_in_the_second_after_the_disconnect": percentiles(lat_after_disconnect),
        "connect_seconds": connect_secs,
        "seconds": secs,
        "client_cpu_seconds": cpu_seconds("self").zip(self_cpu0).map(|(a, b)| a - b),
        "server_cpu_seconds": pid.as_deref().and_then(cpu_seconds).zip(server_cpu0).map(|(a, b)| a - b),
    });
    let scenario = if sub_target == cli.target {
        "fanout"
    } else {
        "cross-node"
    };
    save(
        scenario,
        json!({"target": cli.target, "subscribe_target": sub_target, "subscribers": subscribers, "dialogs": dialogs, "rate": rate, "seconds": seconds, "disconnect": disconnect}),
        figures,
        &samples,
        "frames",
    )?;
    Ok(())
}

async fn connections(
    cli: &Cli,
    t: &Tokens,
    count: usize,
    dialogs: usize,
    hold: u64,
) -> anyhow::Result<()> {
    let c = client();
    let ids = setup(&c, &cli.target, t, dialogs).await?;
    let mut dialog_tokens = Vec::new();
    for id in &ids {
        dialog_tokens.push(dialog_token(&c, &cli.target, t, id).await?);
    }
    let rss0 = cli.server_pid.and_then(rss_kib);
    let started = Instant::now();
    let sockets = open_subscribers(&c, &cli.target, &ids, &dialog_tokens, count, 200).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let rss1 = cli.server_pid.and_then(rss_kib);
    let per_conn = rss0
        .zip(rss1)
        .map(|(a, b)| (b.saturating_sub(a) as f64 * 1024.0) / count as f64);
    let figures = json!({
        "connections": sockets.len(),
        "connect_per_second": sockets.len() as f64 / connect_secs,
        "server_rss_kib_before": rss0,
        "server_rss_kib_after": rss1,
        "server_bytes_per_connection": per_conn,
        "server_gib_for_1m_connections": per_conn.map(|b| b * 1e6 / (1u64 << 30) as f64),
    });
    save(
        "connections",
        json!({"target": cli.target, "count": count, "dialogs": dialogs, "hold": hold}),
        figures,
        &[],
        "connections",
    )?;
    drop(sockets);
    Ok(())
}

/// `connections` over several client processes (and source addresses) and several nodes.
#[allow(clippy::too_many_arguments)]
async fn connections_spread(
    cli: &Cli,
    t: &Tokens,
    count: usize,
    dialogs: usize,
    hold: u64,
    processes: usize,
    targets: &[String],
    server_pids: &[u32],
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let targets: Vec<String> = if targets.is_empty() {
        vec![cli.target.clone()]
    } else {
        targets.to_vec()
    };
    let c = client();
    let ids = setup(&c, &targets[0], t, dialogs).await?;
    let mut pairs = Vec::new();
    for id in &ids {
        pairs.push(json!([id, dialog_token(&c, &targets[0], t, id).await?]));
    }
    let plan_path = std::env::temp_dir().join(format!(
        "dialog-events-load-plan-{}.json",
        std::process::id()
    ));
    std::fs::write(
        &plan_path,
        json!({"targets": targets, "dialogs": pairs}).to_string(),
    )?;
    let rss0: Vec<Option<u64>> = server_pids.iter().map(|p| rss_kib(*p)).collect();
    let started = Instant::now();
    let per = count.div_ceil(processes);
    let mut children = Vec::new();
    for i in 0..processes {
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["--target", &targets[0]]);
        match &cli.keys_file {
            Some(f) => cmd.arg("--keys-file").arg(f),
            None => cmd.arg("--data-dir").arg(&cli.data_dir),
        };
        cmd.arg("connections-worker")
            .arg("--plan")
            .arg(&plan_path)
            .args([
                "--count",
                &per.min(count - (i * per).min(count)).to_string(),
            ])
            .args(["--source", &format!("127.0.0.{}", i + 2)])
            .args(["--offset", &(i * per).to_string()])
            .stdout(std::process::Stdio::piped());
        children.push(cmd.spawn()?);
    }
    // Each worker prints "opened N" once its sockets are subscribed.
    let mut opened = 0usize;
    for child in &mut children {
        let out = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        opened += line
            .trim()
            .strip_prefix("opened ")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let rss1: Vec<Option<u64>> = server_pids.iter().map(|p| rss_kib(*p)).collect();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_file(&plan_path);
    let grown: Option<u64> = rss0
        .iter()
        .zip(&rss1)
        .map(|(a, b)| Some(b.as_ref()?.saturating_sub(*a.as_ref()?)))
        .sum();
    let per_conn = grown.map(|g| g as f64 * 1024.0 / opened.max(1) as f64);
    let figures = json!({
        "connections": opened,
        "connect_per_second": opened as f64 / connect_secs,
        "server_rss_kib_before": rss0,
        "server_rss_kib_after": rss1,
        "server_bytes_per_connection": per_conn,
        "server_gib_for_1m_connections": per_conn.map(|b| b * 1e6 / (1u64 << 30) as f64),
    });
    save(
        "connections",
        json!({"targets": targets, "count": count, "dialogs": dialogs, "hold": hold, "processes": processes}),
        figures,
        &[],
        "connections",
    )?;
    Ok(())
}

/// A client process of `connections_spread`: opens its share from `source`, says how many, holds.
async fn connections_worker(
    plan: &std::path::Path,
    count: usize,
    source: std::net::IpAddr,
    offset: usize,
) -> anyhow::Result<()> {
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(plan)?)?;
    let targets: Vec<String> = plan["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    let dialogs: Vec<(String, String)> = plan["dialogs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
        .collect();
    if targets.is_empty() || dialogs.is_empty() {
        bail!("empty plan");
    }
    let c = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(0).local_address(source))
        .finish();
    let mut sockets = Vec::with_capacity(count);
    for batch in (offset..offset + count).collect::<Vec<_>>().chunks(200) {
        let opened = futures::future::join_all(batch.iter().map(|i| {
            let (id, token) = &dialogs[i % dialogs.len()];
            subscribe(&c, &targets[i % targets.len()], id, token)
        }))
        .await;
        for s in opened {
            sockets.push(s?);
        }
    }
    println!("opened {}", sockets.len());
    // Held until the parent has measured and kills this process (bounded regardless).
    tokio::time::sleep(Duration::from_secs(600)).await;
    Ok(())
}

/// What the built-in receiver saw: (subscription index, webhook-id) → first 2xx time, and counts.
#[derive(Default)]
struct Received {
    delivered: HashMap<(usize, String), chrono::DateTime<chrono::Utc>>,
    requests: u64,
    failed: u64,
    /// Requests being answered now, and the most answered at once (what the nodes' in-flight
    /// limits allow).
    in_flight: u64,
    max_in_flight: u64,
    /// When each failed attempt was answered, until its retry arrives.
    failed_at: HashMap<(usize, String), chrono::DateTime<chrono::Utc>>,
    /// Each retry's arrival minus (its failed attempt's answer + the retry delay), in ms.
    retry_lateness_ms: Vec<f64>,
}

/// The shape of a webhooks run.
struct WebhookLoad {
    subscriptions: usize,
    events: usize,
    failure_rate: f64,
    timeout: u64,
    /// How long the receiver takes to answer.
    delay: Duration,
    /// Dialogs the events spread over (0: none, each event its own lane).
    dialogs: usize,
    /// Further nodes whose CPU counts.
    also_pids: Vec<u32>,
    /// The nodes' retry delay, when retries are timed.
    retry_delay: Option<Duration>,
}

async fn webhooks(cli: &Cli, t: &Tokens, load: WebhookLoad) -> anyhow::Result<()> {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    let WebhookLoad {
        subscriptions,
        events,
        failure_rate,
        timeout,
        delay,
        dialogs,
        also_pids,
        retry_delay,
    } = load;
    let c = client();
    setup(&c, &cli.target, t, 0).await?;
    let seen: Arc<std::sync::Mutex<Received>> = Arc::default();
    // Fail every n-th request: a deterministic share of `failure_rate`.
    let fail_every = if failure_rate > 0.0 {
        (1.0 / failure_rate.clamp(0.01, 0.9)).round() as u64
    } else {
        0
    };
    let s2 = seen.clone();
    let server = HttpServer::new(move || {
        let seen = s2.clone();
        App::new().route(
            "/hook/{k}",
            web::post().to(
                move |req: HttpRequest, path: web::Path<usize>, _body: web::Bytes| {
                    let seen = seen.clone();
                    async move {
                        let arrived = chrono::Utc::now();
                        let key = (
                            *path,
                            req.headers()
                                .get("webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned(),
                        );
                        {
                            let mut r = seen.lock().expect("receiver state");
                            r.in_flight += 1;
                            r.max_in_flight = r.max_in_flight.max(r.in_flight);
                            if let (Some(delay), Some(failed)) =
                                (retry_delay, r.failed_at.remove(&key))
                            {
                                let due =
                                    failed + chrono::Duration::from_std(delay).unwrap_or_default();
                                let late =
                                    (arrived - due).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                                r.retry_lateness_ms.push(late);
                            }
                        }
                        if !delay.is_zero() {
                            actix_web::rt::time::sleep(delay).await;
                        }
                        let id = key.1.clone();
                        let mut r = seen.lock().expect("receiver state");
                        r.in_flight -= 1;
                        r.requests += 1;
                        if fail_every > 0
                            && r.requests.is_multiple_of(fail_every)
                            && id.starts_with("load-")
                        {
                            r.failed += 1;
                            r.failed_at.insert(key, chrono::Utc::now());
                            return HttpResponse::InternalServerError().finish();
                        }
                        r.delivered
                            .entry((key.0, id))
                            .or_insert_with(chrono::Utc::now);
                        HttpResponse::Ok().finish()
                    }
                },
            ),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))?;
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    for k in 0..subscriptions {
        let body = json!({"endPoint": format!("http://127.0.0.1:{port}/hook/{k}"), "resourceFilter": RESOURCE,
                          "typeFilter": "load.*"});
        let url = format!("{}/events/api/v1/subscriptions", cli.target);
        let (s, b) = request(&c, "POST", &url, &t.owner, Some(body)).await?;
        if s != 201 && s != 200 {
            bail!("subscribing failed: {s} {b}");
        }
    }
    // Validation requests carry no event of ours; wait until every subscription saw one.
    let validating = Instant::now();
    let validations = || {
        seen.lock()
            .expect("state")
            .delivered
            .keys()
            .filter(|(_, id)| !id.starts_with("load-"))
            .count()
    };
    while validations() < subscriptions {
        if validating.elapsed() > Duration::from_secs(30) {
            bail!("subscriptions were not validated");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let mut r = seen.lock().expect("state");
        r.max_in_flight = r.in_flight;
    }
    // Every node of the cluster counts.
    let pids: Vec<String> = cli
        .server_pid
        .into_iter()
        .chain(also_pids.iter().copied())
        .map(|p| p.to_string())
        .collect();
    let nodes_cpu = || -> Option<f64> { pids.iter().map(|p| cpu_seconds(p)).sum() };
    let server_cpu0 = nodes_cpu();
    let self_cpu0 = cpu_seconds("self");
    let published: Arc<std::sync::Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>> =
        Arc::default();
    let started = Instant::now();
    let wall0 = chrono::Utc::now();
    let next = Arc::new(AtomicU64::new(0));
    let publishers = (0..32).map(|_| {
        let (c, next, published, target) = (
            c.clone(),
            next.clone(),
            published.clone(),
            cli.target.clone(),
        );
        async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= events {
                    return Ok::<_, anyhow::Error>(());
                }
                let id = format!("load-{n}-{}", uuid::Uuid::now_v7());
                let mut ev = json!({"specversion": "1.0", "id": id, "source": "https://load.example/x",
                                "type": "load.event", "resource": RESOURCE,
                                "subject": format!("urn:altinn:person:identifier-no:{PERSON}")});
                if dialogs > 0 {
                    ev["resourceinstance"] = json!(format!("dialog-{}", n % dialogs));
                }
                let at = chrono::Utc::now();
                let mut resp = c
                    .post(format!("{target}/events/api/v1/events"))
                    .insert_header(("Authorization", format!("Bearer {}", t.owner)))
                    .insert_header(("Content-Type", "application/cloudevents+json"))
                    .send_body(ev.to_string())
                    .await
                    .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
                let _ = resp.body().await;
                if resp.status().is_success() {
                    published.lock().expect("published").insert(id, at);
                }
            }
        }
    });
    for r in futures::future::join_all(publishers).await {
        r?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let expected = events * subscriptions;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let count = || {
        seen.lock()
            .expect("state")
            .delivered
            .keys()
            .filter(|(_, id)| id.starts_with("load-"))
            .count()
    };
    while count() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut lat, mut last, mut samples) = (Vec::new(), None, Vec::new());
    let (requests, failed, max_in_flight, lateness) = {
        let received = seen.lock().expect("state");
        let published = published.lock().expect("published");
        for ((_, id), at) in received
            .delivered
            .iter()
            .filter(|((_, id), _)| id.starts_with("load-"))
        {
            if let Some(p) = published.get(id) {
                let ms = ((*at - *p).num_microseconds().unwrap_or(0).max(0)) as f64 / 1000.0;
                lat.push(ms);
                samples.push((
                    ((*at - wall0).num_microseconds().unwrap_or(0)) as f64 / 1e6,
                    ms,
                ));
            }
            last = last.max(Some(*at));
        }
        (
            received.requests,
            received.failed,
            received.max_in_flight,
            received.retry_lateness_ms.clone(),
        )
    };
    // Throughput up to the last delivery (not the waiting loop's end).
    let first =
        chrono::Utc::now() - chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
    let secs = last.map_or(0.0, |l| {
        (l - first).num_microseconds().unwrap_or(0) as f64 / 1e6
    });
    let delivered = lat.len();
    let figures = json!({
        "published": events,
        "publish_seconds": publish_secs,
        "deliveries": delivered,
        "expected_deliveries": expected,
        "missing": expected.saturating_sub(delivered),
        "deliveries_per_second": if secs > 0.0 { delivered as f64 / secs } else { 0.0 },
        "receiver_requests": requests,
        "receiver_failures": failed,
        "receiver_max_in_flight": max_in_flight,
        // Negative: early. Bound: ±10% of the delay plus 50 ms.
        "retry_lateness": percentiles(lateness.clone()),
        "retry_earliest_ms": lateness.iter().copied().reduce(f64::min),
        "retries_outside_bound": retry_delay.map(|d| {
            let bound = d.as_secs_f64() * 1000.0 * 0.1 + 50.0;
            lateness.iter().filter(|l| l.abs() > bound).count()
        }),
        "latency_publish_to_delivery": percentiles(lat),
        "seconds": secs,
        "client_cpu_seconds": cpu_seconds("self").zip(self_cpu0).map(|(a, b)| a - b),
        "server_cpu_seconds": nodes_cpu().zip(server_cpu0).map(|(a, b)| a - b),
        "server_cpu_us_per_delivery": nodes_cpu().zip(server_cpu0).filter(|_| delivered > 0)
            .map(|(a, b)| (a - b) * 1e6 / delivered as f64),
        "nodes": pids.len(),
    });
    handle.stop(false).await;
    let params = json!({"target": cli.target, "subscriptions": subscriptions, "events": events,
                        "failure_rate": failure_rate, "receiver_delay_ms": delay.as_millis() as u64,
                        "dialogs": dialogs, "nodes": pids.len()});
    save("webhooks", params, figures, &samples, "deliveries")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(out) = &cli.out {
        let _ = OUT.set(out.clone());
    }
    let t = tokens(&cli)?;
    actix_web::rt::System::new().block_on(async {
        match &cli.scenario {
            Scenario::Writes {
                writers,
                count,
                dialogs,
            } => writes(&cli, &t, *writers, *count, *dialogs).await,
            Scenario::Fanout {
                subscribers,
                dialogs,
                rate,
                seconds,
                subscribe_target,
                disconnect,
            } => {
                fanout(
                    &cli,
                    &t,
                    FanoutLoad {
                        subscribers: *subscribers,
                        dialogs: *dialogs,
                        rate: *rate,
                        seconds: *seconds,
                        sub_target: subscribe_target.clone(),
                        disconnect: *disconnect,
                    },
                )
                .await
            }
            Scenario::Connections {
                count,
                dialogs,
                hold,
                processes,
                targets,
                server_pids,
            } if *processes > 1 || targets.len() > 1 => {
                connections_spread(
                    &cli,
                    &t,
                    *count,
                    *dialogs,
                    *hold,
                    *processes,
                    targets,
                    server_pids,
                )
                .await
            }
            Scenario::Connections {
                count,
                dialogs,
                hold,
                ..
            } => connections(&cli, &t, *count, *dialogs, *hold).await,
            Scenario::Closes {
                count,
                dialogs,
                rate,
            } => closes(&cli, &t, *count, *dialogs, *rate).await,
            Scenario::ConnectionsWorker {
                plan,
                count,
                source,
                offset,
            } => connections_worker(plan, *count, *source, *offset).await,
            Scenario::Webhooks {
                subscriptions,
                events,
                failure_rate,
                timeout,
                receiver_delay_ms,
                dialogs,
                also_pids,
                retry_delay_ms,
            } => {
                let shape = WebhookLoad {
                    subscriptions: *subscriptions,
                    events: *events,
                    failure_rate: *failure_rate,
                    timeout: *timeout,
                    delay: Duration::from_millis(*receiver_delay_ms),
                    dialogs: *dialogs,
                    also_pids: also_pids.clone(),
                    retry_delay: retry_delay_ms.map(Duration::from_millis),
                };
                webhooks(&cli, &t, shape).await
            }
        }
    })
}
