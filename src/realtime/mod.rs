//! GUIs following one dialog live: the GraphQL schema (juniper) and its transports —
//! `graphql-transport-ws` and legacy `graphql-ws` over WebSocket, and SSE. Subscriptions attach to
//! the dialog's actor through the registry; each transport only frames what the actor queues.

pub mod operation;
pub mod schema;
pub mod sse;
pub mod ws;

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::{DialogTokens, TokenVerifier};
use crate::config::RealtimeSettings;
use crate::dialogs::{ConnectionBudget, DialogRegistry};
use crate::store::Store;
use crate::telemetry::Metrics;
pub use schema::{GqlContext, Schema};

/// What the realtime handlers of a node share.
pub struct RealtimeState {
    pub schema: Arc<Schema>,
    pub registry: Arc<DialogRegistry>,
    pub store: Arc<dyn Store>,
    pub dialog_tokens: Arc<DialogTokens>,
    pub verifier: Arc<TokenVerifier>,
    pub metrics: Metrics,
    pub settings: RealtimeSettings,
    /// Flips to true when the node starts draining: connections close with 1012, streams complete.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl RealtimeState {
    pub fn context(
        &self,
        dialog_token: Option<String>,
        budget: Option<Arc<ConnectionBudget>>,
    ) -> GqlContext {
        GqlContext {
            registry: self.registry.clone(),
            store: self.store.clone(),
            dialog_tokens: self.dialog_tokens.clone(),
            principal: None,
            dialog_token,
            budget,
            fanout_latency: Some(self.metrics.fanout_latency.clone()),
            fast: None,
        }
    }
}

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/graphql")
            .route(
                web::get()
                    .guard(actix_web::guard::Header("upgrade", "websocket"))
                    .to(ws::upgrade),
            )
            .route(web::post().to(query))
            .route(web::get().to(query)),
    )
    .route("/graphql/stream", web::post().to(sse::stream))
    .route("/graphiql", web::get().to(graphiql));
}

/// `POST /graphql` (and `GET` with query parameters): queries, with the caller from its bearer token.
async fn query(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<RealtimeState>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut ctx = state.context(None, None);
    if let Some(token) = bearer(&req) {
        ctx.principal = state.verifier.verify(token).await.ok();
        ctx.dialog_token = Some(token.to_owned());
    }
    juniper_actix::graphql_handler(&state.schema, &ctx, req, payload).await
}

async fn graphiql() -> Result<HttpResponse, actix_web::Error> {
    juniper_actix::graphiql_handler("/graphql", Some("/graphql")).await
}
