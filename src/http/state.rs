//! What every request handler of a node shares.

use std::sync::Arc;

use crate::auth::{DialogTokens, TokenVerifier};
use crate::bus::Bus;
use crate::config::Settings;
use crate::dialogs::DialogRegistry;
use crate::store::Store;
use crate::telemetry::Metrics;

pub struct AppState {
    pub settings: Settings,
    /// `public.base_url`, or `http://{bound address}` when unset.
    pub base_url: String,
    pub node_id: String,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub registry: Arc<DialogRegistry>,
    pub verifier: Arc<TokenVerifier>,
    pub dialog_tokens: Arc<DialogTokens>,
    pub metrics: Metrics,
    /// The node's webhook dispatcher (validation handshakes, replays, redrives).
    pub dispatcher: actix::Addr<crate::webhooks::Dispatcher>,
    /// The development issuer's key, when it is enabled (`POST /dev/token`).
    pub dev_issuer: Option<crate::auth::SigningKey>,
    /// The embedded store itself, when the node runs on it (hot backups).
    pub embedded: Option<Arc<crate::store::EmbeddedStore>>,
}
