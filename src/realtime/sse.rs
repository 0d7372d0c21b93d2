//! GraphQL over Server-Sent Events as Dialogporten serves it: `POST /graphql/stream` with
//! `Accept: text/event-stream`; events named `next` carry `{"data":{"dialogEvents":{…}}}`, a final
//! `complete` ends the stream, comments keep idle connections alive.

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use juniper::http::GraphQLRequest;
use serde_json::json;
use tokio::sync::mpsc;

use super::RealtimeState;
use super::operation::{self, OpEvent};
use super::schema::FastSubscription;
use crate::dialogs::ConnectionBudget;

/// Chunks buffered between the stream task and the HTTP response body.
const BODY_CHANNEL: usize = 8;

fn sse_event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn graphql_error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"errors": [{"message": message}]}))
}

#[utoipa::path(post, path = "/graphql/stream", tag = "graphql",
    description = "A `dialogEvents` subscription over Server-Sent Events: events named `next` carry `{\"data\":{\"dialogEvents\":…}}`, then `complete`; comments keep the stream alive. Authorized by the dialog token as bearer; a missing or wrong token is answered in the stream, as a `next` event with an `UNAUTHORIZED` error.",
    request_body(content = Object, content_type = "application/json", description = "A GraphQL request with one `dialogEvents` subscription"),
    responses(
        (status = 200, description = "The event stream", body = String, content_type = "text/event-stream"),
        (status = 400, description = "Not a subscription request", body = Object),
        (status = 406, description = "`Accept` does not allow `text/event-stream`", body = Object),
        (status = 429, description = "The party holds `realtime.max_connections_per_party` connections", body = Object)),
    security(("bearer" = [])))]
pub async fn stream(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<RealtimeState>,
) -> HttpResponse {
    let accepts = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !accepts {
        return graphql_error(
            actix_web::http::StatusCode::NOT_ACCEPTABLE,
            "Accept: text/event-stream is required",
        );
    }
    let request: GraphQLRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return graphql_error(
                actix_web::http::StatusCode::BAD_REQUEST,
                &format!("malformed request: {e}"),
            );
        }
    };
    let token = super::bearer(&req).map(str::to_owned);
    let state = state.into_inner();
    // A stream with a valid dialog token holds its party's connection slot until it ends; an
    // invalid token gets its UNAUTHORIZED error from the operation.
    let claims = token.as_deref().and_then(|t| state.dialog_tokens.verify(t));
    let slot = match claims {
        Some(c) => match state.parties.acquire(&c.c).await {
            Some(slot) => Some(slot),
            None => {
                return graphql_error(
                    actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                    "too many connections for this party (realtime.max_connections_per_party)",
                );
            }
        },
        None => None,
    };
    let budget = ConnectionBudget::new(
        state.settings.client_queue_bytes,
        Some(state.metrics.buffered_bytes.clone()),
    );
    let ctx = state.context(token, Some(budget.clone()));
    let (body_tx, mut body_rx) = mpsc::channel::<Bytes>(BODY_CHANNEL);
    let (op_tx, mut op_rx) = mpsc::channel(BODY_CHANNEL);
    let op = operation::spawn(state.schema.clone(), ctx, request, String::new(), op_tx);
    let gauge = state.metrics.connections.with_label_values(&["sse"]);
    gauge.inc();
    actix_web::rt::spawn(async move {
        let mut ping = tokio::time::interval(state.settings.ping_interval);
        ping.reset();
        let mut shutdown = state.shutdown.clone();
        // The attached subscription, once resolved: drained here whenever the budget wakes.
        let mut fast: Option<FastSubscription> = None;
        let latency = state.metrics.fanout_latency.clone();
        loop {
            let chunk = tokio::select! {
                result = op_rx.recv(), if fast.is_none() => match result.map(|r| *r) {
                    Some((_, OpEvent::Next(p))) => sse_event("next", &p),
                    Some((_, OpEvent::Error(errors))) => {
                        let _ = body_tx.send(sse_event("next", &format!(r#"{{"errors":{errors}}}"#))).await;
                        break;
                    }
                    Some((_, OpEvent::Fast(f))) => {
                        fast = Some(f);
                        // Whatever was queued before the hand-over.
                        budget.ready.notify_one();
                        continue;
                    }
                    Some((_, OpEvent::Complete)) | None => break,
                },
                _ = budget.ready.notified(), if fast.is_some() => {
                    let mut chunk = Vec::new();
                    let mut ended = false;
                    if let Some(f) = &fast {
                        ended = operation::drain(f, Some(&latency), |payload| {
                            if let Some(p) = payload {
                                chunk.extend_from_slice(&sse_event("next", p));
                            }
                        });
                    }
                    if !chunk.is_empty() && body_tx.send(Bytes::from(chunk)).await.is_err() {
                        break; // the client went away
                    }
                    if ended {
                        break;
                    }
                    continue;
                },
                _ = ping.tick() => Bytes::from_static(b": keep-alive\n\n"),
                _ = shutdown.changed() => break,
                // The HTTP layer drops the body when the client goes away.
                _ = body_tx.closed() => break,
                _ = budget.slow.notified() => {
                    state.metrics.slow_consumer_closes.inc();
                    break;
                }
            };
            if body_tx.send(chunk).await.is_err() {
                break; // the client went away
            }
        }
        op.abort();
        drop(fast);
        let _ = body_tx.send(sse_event("complete", "")).await;
        gauge.dec();
        drop(slot);
    });
    let body = futures::stream::poll_fn(move |cx| {
        body_rx
            .poll_recv(cx)
            .map(|c| c.map(Ok::<_, actix_web::Error>))
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}
