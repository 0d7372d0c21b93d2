//! dialog-events: the change-notification hub of a dialog platform. Every change to a dialog becomes
//! a Dialogporten CloudEvent, delivered to GUIs live, to webhook subscribers and to pollers.
//!
//! # Layout
//! - [`app`]: builds and runs a node (`App::build`), shared by `main` and the tests.
//! - [`config`]: typed settings, layered loading (defaults → file → env), validation.
//! - [`telemetry`]: tracing subscriber and the node's Prometheus metrics.
//! - [`http`]: actix-web routes, problem+json errors, extractors.
//! - [`realtime`]: GraphQL schema, WebSocket (both protocols, on sockets handed over at the
//!   upgrade) and SSE subscriptions; each HTTP worker's fan-out hub writes its connections' frames.
//! - [`webhooks`]: the dispatcher actor, signing, retry policy, endpoint guard.
//! - [`dialogs`]: per-dialog actors, the registry that starts them on demand, and the subscriber
//!   queues and doorbells through which they hand changes to the HTTP workers.
//! - [`auth`]: token verification (JWKS, dev issuer), dialog tokens, authorization policy.
//! - [`store`]: the store traits (dialogs, event log, registry, webhooks, cluster) and their
//!   backends: `embedded` (durable, redb; the single-node default), `memory` and `redis`.
//! - [`bus`]: the `Bus` trait (cross-node fan-out) and its in-memory backend.
//! - [`domain`]: pure types and rules: dialogs, events, changes, parties, the registry and its
//!   authorization policy, the seen rule.
//!
//! Imports flow downward only: `app` → `http`, `realtime` → `dialogs`, `webhooks` → `auth`, `store`, `bus` → `domain`, `config`.

pub mod app;
pub mod auth;
pub mod bus;
pub mod config;
pub mod dialogs;
pub mod domain;
pub mod http;
pub mod realtime;
pub mod store;
pub mod telemetry;
pub mod webhooks;

pub use app::App;
pub use config::Settings;
