//! Builds and runs one node: the one way to start dialog-events, for `main` and tests alike.
//! Binding happens in `build`, so port 0 works and the real address is known before `run`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix::Arbiter;
use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web};
use anyhow::Context;
use tokio::task::JoinHandle;

use crate::auth::{DialogTokens, KeySource, KeyStore, TokenVerifier};
use crate::bus::{Bus, BusEvent, MemoryBus, RedisBus};
use crate::config::Settings;
use crate::config::StoreKind;
use crate::dialogs::{DialogDeps, DialogRegistry};
use crate::domain::NodeInfo;
use crate::domain::Party;
use crate::http::AppState;
use crate::realtime::OpenSockets;
use crate::realtime::limits::PartyConnections;
use crate::store::prelude::*;
use crate::store::{EmbeddedStore, MemoryStore, RedisStore, StoreTimings};
use crate::telemetry::Metrics;

/// How often held-back events are checked for release.
const RELEASE_INTERVAL: Duration = Duration::from_millis(250);
/// How often the global log is pruned to `events.retention`: every minute, or four times per
/// retention when that is shorter, so entries outlive their retention by at most a quarter of it.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest pruning interval, whatever the retention.
const PRUNE_INTERVAL_MIN: Duration = Duration::from_millis(100);

pub struct App {
    server: Server,
    /// Set to true to drain: realtime connections close with 1012, SSE streams complete.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Open WebSocket connections, waited for when draining.
    sockets: Arc<OpenSockets>,
    /// How long a drain waits (`shutdown.timeout`).
    drain: Duration,
    addr: SocketAddr,
    state: web::Data<AppState>,
    keys: KeyStore,
    /// One arbiter (thread) per core for dialog actors; stopped when the server has stopped.
    arbiters: Vec<Arbiter>,
    /// Background loops (envelope routing, log maintenance); aborted when the server has stopped.
    tasks: Vec<JoinHandle<()>>,
    /// The exclusive lock on `data_dir` (embedded and memory modes), held while the node lives.
    _data_lock: Option<std::fs::File>,
}

/// File in `data_dir` whose exclusive lock says a node uses the directory; the OS releases it
/// when the process ends, however it ends.
const LOCK_FILE: &str = "LOCK";

/// Takes the exclusive lock of `data_dir`, or says which directory another process holds.
pub fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("failed to create data_dir {}", data_dir.display()))?;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "data_dir {} is in use by another dialog-events process (it holds {}); \
             stop that node or give this one another data_dir",
            data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("failed to lock {}", path.display()))
        }
    }
}

impl App {
    /// Binds the listener and wires every part of a node. Must run inside an actix system.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        settings.validate()?;
        install_tls_provider();
        let listener = TcpListener::bind(settings.http.bind)
            .with_context(|| format!("failed to bind http.bind {}", settings.http.bind))?;
        let addr = listener
            .local_addr()
            .context("failed to read the bound address")?;
        let base_url = if settings.public.base_url.is_empty() {
            format!("http://{addr}")
        } else {
            settings.public.base_url.trim_end_matches('/').to_owned()
        };
        let node_id = if settings.node.id.is_empty() {
            format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            settings.node.id.clone()
        };
        let metrics = Metrics::new(&node_id);
        let (sink, mut envelopes) = tokio::sync::mpsc::unbounded_channel();
        let mut data_lock = None;
        let mut embedded = None;
        let mut shared_redis = None;
        let mut memory_bus = None;
        let (store, bus, key_source): (Arc<dyn Store>, Arc<dyn Bus>, KeySource) =
            match &settings.redis.url {
                None => {
                    data_lock = Some(lock_data_dir(&settings.data_dir)?);
                    let store: Arc<dyn Store> = match settings.store.kind {
                        StoreKind::Embedded => {
                            let opened = Arc::new(EmbeddedStore::open(
                                &settings.data_dir,
                                settings.store.sync,
                                settings.store.interval(),
                                &settings.resources,
                                &settings.delegations,
                            )?);
                            embedded = Some(opened.clone());
                            opened
                        }
                        StoreKind::Memory => Arc::new(MemoryStore::new(crate::auth::Policy::new(
                            settings.resources.clone(),
                            settings.delegations.clone(),
                        ))),
                    };
                    let keys = KeySource::new(&settings, None);
                    let bus = Arc::new(MemoryBus::new());
                    memory_bus = Some(bus.clone());
                    (store, bus, keys)
                }
                Some(url) => {
                    let redis = Arc::new(
                        RedisStore::new(&settings.redis, settings.events.retention)?
                            .with_partitions(settings.webhooks.partitions),
                    );
                    redis
                        .ping()
                        .await
                        .with_context(|| format!("failed to reach Redis at redis.url {url}"))?;
                    redis
                        .seed_policy(&settings.resources, &settings.delegations)
                        .await?;
                    let bus = RedisBus::start(
                        &settings.redis,
                        settings.webhooks.partitions,
                        redis.shared(),
                        sink,
                    )?;
                    let keys = KeySource::new(&settings, Some(redis.clone()));
                    shared_redis = Some(redis.clone());
                    (redis, Arc::new(bus), keys)
                }
            };
        // The embedded store's disk timings; in the other modes they are exported too, at zero,
        // so one dashboard fits every node.
        let timings = embedded
            .as_ref()
            .map(|e: &Arc<EmbeddedStore>| e.timings().clone())
            .unwrap_or_else(StoreTimings::new);
        metrics.register(Box::new(timings.checkpoint));
        metrics.register(Box::new(timings.log_sync));
        // Every node of a cluster signs and verifies with the same keys.
        let keys = key_source.load().await?;
        let dev_jwks = settings
            .auth
            .dev_issuer
            .enabled
            .then(|| serde_json::json!({"keys": [keys.dev_issuer.public_jwk()]}));
        let verifier = Arc::new(TokenVerifier::new(&settings.auth, dev_jwks)?);
        let dialog_tokens = Arc::new(DialogTokens::from_keys(
            &keys,
            &base_url,
            settings.auth.dialog_token_ttl,
        ));
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let arbiters: Vec<Arbiter> = (0..cores).map(|_| Arbiter::new()).collect();
        let deps = Arc::new(DialogDeps {
            store: store.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            base_url: base_url.clone(),
            node_id: node_id.clone(),
            idle_timeout: settings.dialogs.idle_timeout,
            history_size: settings.realtime.history_size,
            history_ttl: settings.realtime.history_ttl,
        });
        let registry = DialogRegistry::new(deps, arbiters.iter().map(|a| a.handle()).collect());

        crate::webhooks::dispatcher::start_position(store.as_ref(), settings.webhooks.partitions)
            .await
            .context("failed to prepare the webhook partitions")?;
        let owned_partitions = crate::webhooks::dispatcher::OwnedPartitions::default();
        // The dispatcher has a thread of its own: its HTTP client must not share the dialog actors'.
        let dispatcher_arbiter = Arbiter::new();
        let dispatcher = {
            let (store, hooks, base, m, node, owned) = (
                store.clone(),
                settings.webhooks.clone(),
                base_url.clone(),
                metrics.clone(),
                node_id.clone(),
                owned_partitions.clone(),
            );
            // With Redis the polls that feed notices ask for are spaced wider.
            let spacing = settings
                .redis
                .url
                .is_some()
                .then_some(crate::webhooks::dispatcher::SHARED_WAKE_SPACING);
            crate::webhooks::dispatcher::DispatchWaker::start(
                &dispatcher_arbiter.handle(),
                move || {
                    let dispatcher =
                        crate::webhooks::Dispatcher::new(store, hooks, base, m, node, owned);
                    match spacing {
                        Some(spacing) => dispatcher.spaced(spacing),
                        None => dispatcher,
                    }
                },
            )
        };
        let (dispatcher, wake) = dispatcher;
        // One node: an appended event (from the appending thread) has the dispatcher look for
        // webhook events at once. With Redis, the bus's feed notices do (below).
        if let Some(bus) = memory_bus {
            let wake = wake.clone();
            bus.on_feed_changed(move || wake.wake());
        }
        let mut tasks = Vec::new();
        let router = registry.clone();
        let owned = owned_partitions.clone();
        tasks.push(actix_web::rt::spawn(async move {
            while let Some(first) = envelopes.recv().await {
                // Whatever else has arrived meanwhile, before one wake-up for all of it.
                let mut due = false;
                let mut event = Some(first);
                while let Some(e) = event {
                    due |= match e {
                        BusEvent::FeedChanged(parts) => owned
                            .lock()
                            .is_ok_and(|mine| parts.iter().any(|p| mine.contains(p))),
                        // Notices may have been lost while the bus was down.
                        BusEvent::Reconnected => {
                            router.on_bus(BusEvent::Reconnected);
                            true
                        }
                        envelope => {
                            router.on_bus(envelope);
                            false
                        }
                    };
                    event = envelopes.try_recv().ok();
                }
                // Events for webhooks this node delivers: look now, not at the next poll.
                if due {
                    wake.wake();
                }
            }
        }));
        tasks.push(actix_web::rt::spawn(maintain_log(
            store.clone(),
            settings.events.retention,
        )));
        tasks.push(actix_web::rt::spawn(heartbeat(
            store.clone(),
            metrics.clone(),
            node_id.clone(),
            format!("http://{addr}"),
            owned_partitions,
        )));
        tasks.push(actix_web::rt::spawn(reload_keys(
            key_source,
            dialog_tokens.clone(),
        )));
        tasks.push(actix_web::rt::spawn(watch_access(
            store.clone(),
            registry.clone(),
            metrics.clone(),
        )));

        let mut arbiters = arbiters;
        arbiters.push(dispatcher_arbiter);
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let sockets = Arc::new(OpenSockets::default());
        let limit = settings.realtime.max_connections_per_party;
        let parties = match shared_redis {
            Some(redis) => PartyConnections::shared(limit, redis, node_id.clone()),
            None => PartyConnections::new(limit),
        };
        tasks.push(actix_web::rt::spawn(crate::realtime::limits::refresh_loop(
            parties.clone(),
        )));
        let realtime = web::Data::new(crate::realtime::RealtimeState {
            schema: Arc::new(if settings.introspection() {
                crate::realtime::schema::schema()
            } else {
                crate::realtime::schema::schema().disable_introspection()
            }),
            registry: registry.clone(),
            store: store.clone(),
            dialog_tokens: dialog_tokens.clone(),
            verifier: verifier.clone(),
            metrics: metrics.clone(),
            settings: settings.realtime.clone(),
            graphql: settings.graphql.clone(),
            parties: parties.clone(),
            max_body: settings.http.max_body,
            origins: crate::http::cors::Origins::new(&settings.http.cors_origins),
            shutdown: shutdown_rx,
            sockets: sockets.clone(),
        });
        let workers = if settings.http.workers == 0 {
            cores
        } else {
            settings.http.workers
        };
        let shutdown = settings.shutdown.timeout.as_secs();
        let origins = crate::http::cors::Origins::new(&settings.http.cors_origins);
        let dev_issuer = settings
            .auth
            .dev_issuer
            .enabled
            .then(|| keys.dev_issuer.clone());
        let state = web::Data::new(AppState {
            settings,
            base_url,
            node_id,
            store,
            bus,
            registry,
            verifier,
            dialog_tokens,
            metrics,
            dispatcher,
            dev_issuer,
            embedded,
        });
        let data = state.clone();
        let upgrades = realtime.clone().into_inner();
        let make_app = move || {
            actix_web::App::new()
                .app_data(data.clone())
                .app_data(realtime.clone())
                .configure(crate::realtime::routes)
                .wrap(crate::http::method_not_allowed())
                .wrap(middleware::from_fn(crate::http::count_requests))
                .wrap(middleware::from_fn(crate::http::body_deadline))
                // Outermost: a preflight is answered before anything else looks at it.
                .wrap(middleware::Condition::new(
                    origins.enabled(),
                    origins.middleware(),
                ))
                .configure(crate::http::configure)
        };
        let server = Server::build()
            .workers(workers)
            .shutdown_timeout(shutdown)
            // Signals are handled in `run`, which first tells realtime connections to close (1012).
            .disable_signals()
            .listen("http", listener, move || {
                use actix_service::ServiceFactoryExt;
                let upgrades = upgrades.clone();
                let app = actix_service::IntoServiceFactory::into_factory(make_app())
                    .map_err(|e: actix_web::Error| e.error_response());
                actix_http::HttpService::build()
                    // No lingering on a connection whose request body was not read to its end:
                    // ordinary requests never need it (`body_deadline` reads what a handler left
                    // unread before answering).
                    .client_disconnect_timeout(Duration::ZERO)
                    .local_addr(addr)
                    // A WebSocket upgrade leaves the HTTP dispatcher with its connection: the
                    // realtime connection serves the socket itself, without the dispatcher's
                    // buffers and task (memory per idle subscriber, one wake-up per frame).
                    .upgrade(actix_service::fn_service(move |upgrade| {
                        Box::pin(crate::realtime::ws::accept(upgrade, upgrades.clone()))
                    }))
                    .finish(actix_service::map_config(app, |_| {
                        actix_web::dev::AppConfig::default()
                    }))
                    .tcp()
            })
            .context("failed to start the HTTP server")?
            .run();
        Ok(App {
            shutdown: shutdown_tx,
            sockets,
            drain: Duration::from_secs(shutdown),
            server,
            addr,
            state,
            keys,
            arbiters,
            tasks,
            _data_lock: data_lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    pub fn node_id(&self) -> &str {
        &self.state.node_id
    }

    /// A token of the development issuer (None when it is disabled).
    pub fn dev_token(&self, scope: &str, party: Option<&Party>, ttl: Duration) -> Option<String> {
        self.state
            .settings
            .auth
            .dev_issuer
            .enabled
            .then(|| crate::auth::dev_token(&self.keys.dev_issuer, scope, party, ttl))
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Drains the node as a signal would: realtime connections close with 1012, then the server stops.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shutdown: self.shutdown.clone(),
            handle: self.server.handle(),
            sockets: self.sockets.clone(),
            dispatcher: self.state.dispatcher.clone(),
            drain: self.drain,
        }
    }

    /// Serves until SIGTERM/SIGINT or `handle().stop()`, then stops the actors. On a signal the
    /// node stops accepting, closes realtime connections with 1012 and drains within
    /// `shutdown.timeout`.
    pub async fn run(self) -> anyhow::Result<()> {
        tracing::info!(node = %self.state.node_id, "listening on http://{}", self.addr);
        let handle = self.server.handle();
        let shutdown = self.shutdown.clone();
        let node = self.state.node_id.clone();
        let (sockets, within) = (self.sockets.clone(), self.drain);
        let dispatcher = self.state.dispatcher.clone();
        let signals = actix_web::rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!(%node, "shutting down");
            drain(&shutdown, &sockets, &dispatcher, within).await;
            handle.stop(true).await;
        });
        // Stops the actors and background loops when serving ends, and also when this future is
        // dropped unfinished (an embedding runtime going away).
        let _cleanup = Cleanup {
            tasks: self.tasks,
            arbiters: self.arbiters,
        };
        let result = self.server.await;
        signals.abort();
        let _ = self.shutdown.send(true);
        tracing::info!(node = %self.state.node_id, "stopped");
        result.context("HTTP server failed")
    }
}

/// Owns a node's background loops and actor threads; dropping it stops them.
struct Cleanup {
    tasks: Vec<JoinHandle<()>>,
    arbiters: Vec<Arbiter>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Reads the keys again every `RELOAD_EVERY` and takes rotated dialog-token keys (from
/// `dialog-events keys rotate`, on this machine or any node of the cluster).
async fn reload_keys(source: KeySource, tokens: Arc<DialogTokens>) {
    let mut tick = tokio::time::interval(crate::auth::source::RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match source.load().await {
            Ok(keys) => {
                let kids: Vec<String> = keys.dialog_kids().into_iter().map(str::to_owned).collect();
                if kids != tokens.kids() {
                    tokens.set_keys(&keys);
                    tracing::info!(primary = %kids[0], "dialog-token keys changed: signing with the new primary");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), source = %source.describe(), "could not read the keys again")
            }
        }
    }
}

/// How often a node with live subscriptions reads the policy again, so that a revoked delegation
/// (made on any node) ends the streams it granted within this interval and one dialog actor hop.
const ACCESS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Ends live streams whose reader lost access: whenever the policy differs from the one last
/// seen, every dialog actor checks its subscribers' grants against it.
async fn watch_access(store: Arc<dyn Store>, registry: Arc<DialogRegistry>, metrics: Metrics) {
    let mut tick = tokio::time::interval(ACCESS_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Arc<crate::domain::Policy>> = None;
    loop {
        tick.tick().await;
        if metrics.subscriptions.get() == 0 {
            // Nothing to end; the next check compares with an older policy, which only costs one
            // extra pass over the actors.
            continue;
        }
        match store.policy().await {
            Ok(policy) => {
                if seen.as_ref() != Some(&policy) {
                    registry.check_access(policy.clone());
                    seen = Some(policy);
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the policy for live streams failed"),
        }
    }
}

/// How often a node announces itself, and how long an announcement lasts: a node that stops
/// heartbeating disappears from `/admin/v1/nodes` within three intervals.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const HEARTBEAT_TTL: Duration = Duration::from_secs(3);

async fn heartbeat(
    store: Arc<dyn Store>,
    metrics: Metrics,
    id: String,
    address: String,
    partitions: crate::webhooks::dispatcher::OwnedPartitions,
) {
    let started = chrono::Utc::now();
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tick.tick().await;
        let connections = ["graphql-transport-ws", "graphql-ws", "sse"]
            .iter()
            .map(|t| metrics.connections.with_label_values(&[t]).get())
            .sum();
        let node = NodeInfo {
            id: id.clone(),
            address: address.clone(),
            connections,
            started,
            seen: chrono::Utc::now(),
            partitions: partitions.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        if let Err(e) = store.heartbeat(&node, HEARTBEAT_TTL).await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
    }
}

/// Releases held-back events when their `visibleFrom` arrives and prunes the log to the retention.
async fn maintain_log(store: Arc<dyn Store>, retention: Duration) {
    let mut release = tokio::time::interval(RELEASE_INTERVAL);
    let mut prune =
        tokio::time::interval((retention / 4).clamp(PRUNE_INTERVAL_MIN, PRUNE_INTERVAL));
    loop {
        tokio::select! {
            _ = release.tick() => {
                if let Err(e) = store.release_due(chrono::Utc::now()).await {
                    tracing::warn!(error = %e, "releasing held-back events failed");
                }
            }
            _ = prune.tick() => {
                let before = chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
                match store.prune_log(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "event log pruned to retention"),
                    Err(e) => tracing::warn!(error = %e, "pruning the event log failed"),
                }
            }
        }
    }
}

/// Makes ring the process's TLS crypto provider (outgoing HTTPS: webhooks, JWKS URLs). Idempotent.
pub fn install_tls_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Stops a running node from outside (tests, embedding programs).
#[derive(Clone)]
pub struct Stopper {
    shutdown: tokio::sync::watch::Sender<bool>,
    handle: ServerHandle,
    sockets: Arc<OpenSockets>,
    dispatcher: actix::Addr<crate::webhooks::Dispatcher>,
    drain: Duration,
}

impl Stopper {
    pub async fn stop(&self) {
        drain(&self.shutdown, &self.sockets, &self.dispatcher, self.drain).await;
        self.handle.stop(true).await;
    }
}

/// Tells realtime connections to close (1012) and waits (at most `within`) for their sockets to
/// be closed: a WebSocket is a task of its own, which the HTTP server's drain does not wait for.
async fn drain(
    shutdown: &tokio::sync::watch::Sender<bool>,
    sockets: &OpenSockets,
    dispatcher: &actix::Addr<crate::webhooks::Dispatcher>,
    within: Duration,
) {
    let _ = shutdown.send(true);
    // Meanwhile the webhook partitions are handed over: attempts in flight end and are recorded,
    // then the leases go, so the nodes that stay resume at once rather than after the leases lapse.
    let handover = async {
        if let Ok(done) = dispatcher.send(crate::webhooks::dispatcher::Handover).await {
            let _ = done.await;
        }
    };
    let handed = async {
        if tokio::time::timeout(within, handover).await.is_err() {
            tracing::warn!(
                "webhook partitions not handed over in time; they pass on when their leases lapse"
            );
        }
    };
    futures::join!(sockets.closed(within), handed);
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => futures::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn the_tls_provider_lets_https_clients_be_built_and_fail_cleanly_on_a_bad_peer() {
        install_tls_provider();
        install_tls_provider();
        // A plain TCP listener that closes at once: the TLS handshake must fail as an error, not a panic.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                drop(stream);
            }
        });
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(5))
            .finish();
        let result = client
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await;
        assert!(result.is_err());
    }
}
