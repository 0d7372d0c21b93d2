//! Logs (`tracing`, pretty or JSON) and the node's Prometheus metrics registry. Each node owns its
//! own `Metrics`, so several nodes in one process (tests) report separately.

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global tracing subscriber; a second call (tests start several nodes) is a no-op.
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
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
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events.clone()),
            Box::new(dialog_actors.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            http_requests,
            events,
            dialog_actors,
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
