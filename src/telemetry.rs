//! Logs (`tracing`, pretty or JSON) and the node's Prometheus metrics registry. Each node owns its
//! own `Metrics`, so several nodes in one process (tests) report separately.

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global tracing subscriber; a second call (tests start several nodes) is a no-op.
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    // Colours only on a terminal: piped or redirected logs stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The node's metrics; cheap to clone (every handle shares the registry).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub events: IntCounterVec,
    pub dialog_actors: IntGauge,
    pub subscriptions: IntGauge,
    pub connections: prometheus::IntGaugeVec,
    pub buffered_bytes: IntGauge,
    pub slow_consumer_closes: prometheus::IntCounter,
    pub hub_wakeups: prometheus::IntCounter,
    pub fanout_latency: prometheus::Histogram,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_attempt_latency: prometheus::Histogram,
    pub webhook_retry_backlog: IntGauge,
    pub webhook_dead_letters: prometheus::IntCounter,
    pub webhook_polls: prometheus::IntCounter,
    pub webhook_wakeups: prometheus::IntCounter,
    pub webhook_open_circuits: IntGauge,
}

impl Metrics {
    pub fn new(node_id: &str) -> Self {
        let registry = Registry::new_custom(
            Some("dialog_events".into()),
            Some(std::iter::once(("node".to_owned(), node_id.to_owned())).collect()),
        )
        .unwrap_or_default();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by method, route pattern and status",
            ),
            &["method", "route", "status"],
        )
        .expect("static metric definition is valid");
        let events = IntCounterVec::new(
            Opts::new("events_total", "Events committed, by CloudEvent type"),
            &["type"],
        )
        .expect("static metric definition is valid");
        let dialog_actors = IntGauge::new("dialog_actors", "Dialog actors alive on this node")
            .expect("static metric definition is valid");
        let subscriptions = IntGauge::new(
            "realtime_subscriptions",
            "Active dialogEvents subscriptions on this node",
        )
        .expect("static metric definition is valid");
        let connections = prometheus::IntGaugeVec::new(
            Opts::new(
                "realtime_connections",
                "Open realtime connections by transport",
            ),
            &["transport"],
        )
        .expect("static metric definition is valid");
        let buffered_bytes = IntGauge::new(
            "realtime_buffered_bytes",
            "Bytes charged to realtime client queues (bounded by realtime.client_queue_bytes per connection)",
        )
        .expect("static metric definition is valid");
        let slow_consumer_closes = prometheus::IntCounter::new(
            "realtime_slow_consumer_closes_total",
            "Connections closed (4008) because they could not keep up",
        )
        .expect("static metric definition is valid");
        let hub_wakeups = prometheus::IntCounter::new(
            "realtime_hub_wakeups_total",
            "Times a worker's fan-out hub woke to write frames: once per batch of changes, not per connection",
        )
        .expect("static metric definition is valid");
        let fanout_latency = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "realtime_fanout_latency_seconds",
                "Time from commit to the subscription frame being written",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )
        .expect("static metric definition is valid");
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "webhook_attempts_total",
                "Webhook delivery attempts by outcome",
            ),
            &["outcome"],
        )
        .expect("static metric definition is valid");
        let webhook_attempt_latency = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "webhook_attempt_seconds",
                "Duration of webhook delivery attempts",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("static metric definition is valid");
        let webhook_retry_backlog = IntGauge::new(
            "webhook_retry_backlog",
            "Deliveries waiting for their next attempt",
        )
        .expect("static metric definition is valid");
        let webhook_dead_letters = prometheus::IntCounter::new(
            "webhook_dead_letters_total",
            "Deliveries that exhausted their attempts",
        )
        .expect("static metric definition is valid");
        let webhook_polls = prometheus::IntCounter::new(
            "webhook_polls_total",
            "Reads of the event feed by the webhook dispatcher (commits ask for one, at most one per 5 ms, besides webhooks.poll_interval)",
        )
        .expect("static metric definition is valid");
        let webhook_wakeups = prometheus::IntCounter::new(
            "webhook_wakeups_total",
            "Times commits woke the webhook dispatcher to poll: at most one per poll, however many commits there were",
        )
        .expect("static metric definition is valid");
        let webhook_open_circuits = IntGauge::new(
            "webhook_open_circuits",
            "Endpoints whose circuit breaker is open",
        )
        .expect("static metric definition is valid");
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(webhook_deliveries.clone()),
            Box::new(webhook_attempt_latency.clone()),
            Box::new(webhook_retry_backlog.clone()),
            Box::new(webhook_dead_letters.clone()),
            Box::new(webhook_polls.clone()),
            Box::new(webhook_wakeups.clone()),
            Box::new(webhook_open_circuits.clone()),
            Box::new(http_requests.clone()),
            Box::new(events.clone()),
            Box::new(dialog_actors.clone()),
            Box::new(subscriptions.clone()),
            Box::new(connections.clone()),
            Box::new(buffered_bytes.clone()),
            Box::new(slow_consumer_closes.clone()),
            Box::new(hub_wakeups.clone()),
            Box::new(fanout_latency.clone()),
        ];
        for c in collectors {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            http_requests,
            events,
            dialog_actors,
            subscriptions,
            connections,
            buffered_bytes,
            slow_consumer_closes,
            hub_wakeups,
            fanout_latency,
            webhook_deliveries,
            webhook_attempt_latency,
            webhook_retry_backlog,
            webhook_dead_letters,
            webhook_polls,
            webhook_wakeups,
            webhook_open_circuits,
        }
    }

    /// Adds a metric kept elsewhere (the embedded store's timings) to this node's registry.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::warn!(error = %e, "a metric could not be registered");
        }
    }

    /// Prometheus text exposition of every metric of this node.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
