//! GUIs following one dialog live: the GraphQL schema (juniper) and its transports —
//! `graphql-transport-ws` and legacy `graphql-ws` over WebSocket, and SSE. Subscriptions attach to
//! the dialog's actor through the registry; each transport only frames what the actor queues.

pub mod hub;
pub mod limits;
pub mod operation;
mod reaper;
pub mod schema;
pub mod socket;
pub mod sse;
pub mod ws;

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::{DialogTokens, TokenVerifier};
use crate::config::{GraphqlSettings, RealtimeSettings};
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
    pub graphql: GraphqlSettings,
    /// Realtime connections per authenticated party on this node.
    pub parties: Arc<limits::PartyConnections>,
    /// Largest accepted request body (`http.max_body`).
    pub max_body: usize,
    /// `http.cors_origins`: checked against the `Origin` of WebSocket upgrades.
    pub origins: crate::http::cors::Origins,
    /// Flips to true when the node starts draining: connections close with 1012, streams complete.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// WebSocket connections being served (each its own task once upgraded).
    pub sockets: Arc<OpenSockets>,
}

/// WebSocket connections this node serves, counted until their socket is closed. Once upgraded a
/// connection is a task of its own, beyond the HTTP server's count, so a draining node waits for
/// these (their close frames written) before it stops its workers.
#[derive(Default)]
pub struct OpenSockets {
    count: std::sync::atomic::AtomicUsize,
    none: tokio::sync::Notify,
}

/// One counted connection; uncounted on drop.
pub struct OpenSocket(Arc<OpenSockets>);

impl OpenSockets {
    pub fn enter(self: &Arc<Self>) -> OpenSocket {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        OpenSocket(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until no connection is open, at most `within`.
    pub async fn closed(&self, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                let none = self.none.notified();
                tokio::pin!(none);
                none.as_mut().enable();
                if self.count() == 0 {
                    return;
                }
                none.await;
            }
        })
        .await;
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.none.notify_waiters();
        }
    }
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
    bearer_in(req.headers())
}

/// The bearer token in `headers`, if any.
pub fn bearer_in(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    let value = headers
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
            .route(web::post().to(query))
            .route(web::get().to(query_get)),
    )
    .service(web::resource("/graphql/stream").route(web::post().to(sse::stream)));
}

/// `GET /graphql`: a query in the URL, or (with `Upgrade: websocket`, routed to `ws::upgrade`
/// before this) a subscription socket.
#[utoipa::path(get, path = "/graphql", operation_id = "graphqlGet", tag = "graphql",
    description = "A GraphQL query in the URL; with `Upgrade: websocket` a subscription socket instead (subprotocols `graphql-transport-ws` and `graphql-ws`; the dialog token goes in `connection_init`, or as bearer).",
    params(("query" = Option<String>, Query, description = "The query"),
           ("variables" = Option<String>, Query, description = "The variables, as JSON")),
    responses(
        (status = 200, description = "The GraphQL answer", body = Object),
        (status = 101, description = "WebSocket upgrade"),
        (status = 400, description = "Not a GraphQL request", body = Object),
        (status = 403, description = "A WebSocket from an `Origin` not in `http.cors_origins`", body = crate::http::views::Problem, content_type = "application/problem+json")),
    security((), ("bearer" = [])))]
async fn query_get(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<RealtimeState>,
) -> Result<HttpResponse, actix_web::Error> {
    query(req, payload, state).await
}

/// A batch's answer stops growing past this many bytes: the remaining operations are answered
/// with an error instead of being run, so one request's work stays bounded.
const MAX_BATCH_RESPONSE_BYTES: usize = 4 << 20;

fn graphql_error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"errors": [{"message": message}]}))
}

/// `POST /graphql` (a request, or a batch of at most `graphql.max_batch`) and `GET` with query
/// parameters: queries, with the caller from its bearer token.
#[utoipa::path(post, path = "/graphql", operation_id = "graphqlPost", tag = "graphql",
    description = "GraphQL queries (`dialogById`): a request `{query, variables?, operationName?}` or a batch (a JSON array of at most `graphql.max_batch`).",
    request_body(content = Object, content_type = "application/json", description = "A GraphQL request, or an array of them"),
    responses(
        (status = 200, description = "The GraphQL answer (`data`, `errors`), or an array of them", body = Object),
        (status = 400, description = "Not a GraphQL request, or a batch over `graphql.max_batch`", body = Object),
        (status = 413, description = "Body over `http.max_body`", body = Object)),
    security((), ("bearer" = [])))]
async fn query(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<RealtimeState>,
) -> Result<HttpResponse, actix_web::Error> {
    use actix_web::http::StatusCode;
    use futures::StreamExt;
    use juniper::http::{GraphQLBatchRequest, GraphQLRequest};

    let batch: GraphQLBatchRequest = if req.method() == actix_web::http::Method::GET {
        match web::Query::<GraphQLRequest>::from_query(req.query_string()) {
            Ok(q) => GraphQLBatchRequest::Single(q.into_inner()),
            Err(e) => return Ok(graphql_error(StatusCode::BAD_REQUEST, &e.to_string())),
        }
    } else {
        let content_type = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk?;
            if body.len() + chunk.len() > state.max_body {
                return Ok(graphql_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body is larger than {} bytes", state.max_body),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        match content_type.as_str() {
            "application/json" => match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => {
                    return Ok(graphql_error(
                        StatusCode::BAD_REQUEST,
                        &format!("malformed request: {e}"),
                    ));
                }
            },
            "application/graphql" => GraphQLBatchRequest::Single(GraphQLRequest::new(
                String::from_utf8_lossy(&body).into_owned(),
                None,
                None,
            )),
            _ => {
                return Ok(graphql_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "expected Content-Type application/json or application/graphql",
                ));
            }
        }
    };
    let mut ctx = state.context(None, None);
    if let Some(token) = bearer(&req) {
        ctx.principal = state.verifier.verify(token).await.ok();
        ctx.dialog_token = Some(token.to_owned());
    }
    let requests = match batch {
        GraphQLBatchRequest::Single(request) => {
            let response = request.execute(&state.schema, &ctx).await;
            let status = if response.is_ok() {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            return Ok(HttpResponse::build(status).json(response));
        }
        GraphQLBatchRequest::Batch(requests) => requests,
    };
    if requests.len() > state.graphql.max_batch {
        return Ok(graphql_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "a batch may hold at most {} operations (graphql.max_batch), got {}",
                state.graphql.max_batch,
                requests.len()
            ),
        ));
    }
    // One after another (not all at once), so a batch never holds more than one execution's state.
    let mut out = String::from("[");
    for request in &requests {
        if out.len() > 1 {
            out.push(',');
        }
        if out.len() > MAX_BATCH_RESPONSE_BYTES {
            out.push_str(r#"{"errors":[{"message":"not run: the batch's answer is too large"}]}"#);
        } else {
            let answer = request.execute(&state.schema, &ctx).await;
            out.push_str(&serde_json::to_string(&answer)?);
        }
    }
    out.push(']');
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn closed_waits_for_the_last_open_socket_and_no_longer_than_asked() {
        let sockets = Arc::new(OpenSockets::default());
        let (a, b) = (sockets.enter(), sockets.enter());
        assert_eq!(sockets.count(), 2);

        let t = Instant::now();
        sockets.closed(Duration::from_millis(50)).await;
        assert!(t.elapsed() >= Duration::from_millis(50), "gave up early");
        assert_eq!(sockets.count(), 2);

        drop(a);
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(b);
        });
        let t = Instant::now();
        sockets.closed(Duration::from_secs(10)).await;
        assert_eq!(sockets.count(), 0);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "woken when the last closed"
        );
        closer.await.expect("closer");
    }
}
