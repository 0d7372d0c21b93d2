//! actix-web routes (thin handlers), problem+json errors, extractors and request metrics.

pub mod admin;
pub mod cors;
pub mod dialogs;
pub mod events;
pub mod extract;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod problem;
pub mod state;
pub mod subscriptions;
pub mod views;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, Next};
use actix_web::{HttpResponse, web};

pub use problem::ApiError;
pub use state::AppState;

/// Registers every route of the node.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(dialogs::routes)
        .configure(events::routes)
        .configure(ops::routes)
        .configure(admin::routes)
        .configure(subscriptions::routes)
        .configure(pages::routes)
        .configure(openapi::routes)
        .default_service(web::to(not_found));
}

async fn not_found() -> HttpResponse {
    problem::problem(StatusCode::NOT_FOUND, "Not Found", "no such path", None)
}

/// Gives 405 answers (which actix produces without a body) the problem+json shape of every error.
pub fn method_not_allowed<B: MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().handler(StatusCode::METHOD_NOT_ALLOWED, |res: ServiceResponse<B>| {
        let (req, _) = res.into_parts();
        let resp = problem::problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            &format!("{} is not allowed on this path", req.method()),
            None,
        );
        Ok(ErrorHandlerResponse::Response(
            ServiceResponse::new(req, resp).map_into_right_body(),
        ))
    })
}

/// Bounds the time to receive a whole request body (`http.body_timeout`) on every route: the
/// payload is read through a deadline, and a request whose body did not arrive in time is answered
/// 408 and its connection closed, so a slow or stalled sender cannot hold a connection slot.
///
/// A body the handler left unread (an early 401, 413 or 415) is read to its end here, within the
/// same deadline and at most `http.max_body` more bytes, before the answer goes out: the connection
/// then stays usable, and the server never needs to linger on a half-read connection (which is
/// what lets a WebSocket close at once, see `App::build`). A body beyond that is not waited for:
/// the answer says `Connection: close`. WebSocket upgrades are left alone: their "body" is the
/// socket's message stream.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::task::Poll;

    use actix_web::HttpMessage;
    use futures::{FutureExt, StreamExt};

    let headers = req.headers();
    let has_body = headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let upgrade = headers.contains_key(actix_web::http::header::UPGRADE);
    let limits = req
        .app_data::<web::Data<AppState>>()
        .map(|s| (s.settings.http.body_timeout, s.settings.http.max_body));
    let Some((timeout, max_body)) = limits.filter(|_| has_body && !upgrade) else {
        return next.call(req).await.map(|r| r.map_into_left_body());
    };
    let deadline = tokio::time::Instant::now() + timeout;
    // Shared by the handler's view of the payload and the drain below; one worker thread.
    let inner = Rc::new(RefCell::new(req.take_payload()));
    let finished = Rc::new(Cell::new(false));
    let expired = Rc::new(Cell::new(false));
    let (source, done, late) = (inner.clone(), finished.clone(), expired.clone());
    let mut sleep = Box::pin(tokio::time::sleep_until(deadline));
    let guarded = futures::stream::poll_fn(move |cx| {
        if done.get() || late.get() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = source.borrow_mut().poll_next_unpin(cx) {
            done.set(!matches!(item, Some(Ok(_))));
            return Poll::Ready(item);
        }
        if sleep.poll_unpin(cx).is_ready() {
            late.set(true);
            return Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body did not arrive within http.body_timeout",
                ),
            ))));
        }
        Poll::Pending
    });
    req.set_payload(actix_web::dev::Payload::Stream {
        payload: Box::pin(guarded),
    });
    let mut res = next.call(req).await?;
    if !finished.get() && !expired.get() {
        let drain = async {
            let mut discarded = 0usize;
            loop {
                let chunk = futures::future::poll_fn(|cx| inner.borrow_mut().poll_next_unpin(cx));
                match chunk.await {
                    None => return true,
                    Some(Ok(bytes)) => {
                        discarded += bytes.len();
                        if discarded > max_body {
                            return false;
                        }
                    }
                    Some(Err(_)) => return false,
                }
            }
        };
        let drained = tokio::time::timeout_at(deadline, drain)
            .await
            .unwrap_or(false);
        if !drained {
            res.response_mut()
                .head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
        }
    }
    if !expired.get() {
        return Ok(res.map_into_left_body());
    }
    let (req, _) = res.into_parts();
    let mut resp = problem::problem(
        StatusCode::REQUEST_TIMEOUT,
        "Request Timeout",
        &format!(
            "the request body did not arrive within {}",
            humantime::format_duration(timeout)
        ),
        None,
    );
    resp.head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    Ok(ServiceResponse::new(req, resp).map_into_right_body())
}

/// Counts requests by method, route pattern (not raw path: bounded label values) and status.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let method = req.method().to_string();
    let res = next.call(req).await?;
    if let Some(metrics) = metrics {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        metrics
            .http_requests
            .with_label_values(&[method.as_str(), route.as_str(), res.status().as_str()])
            .inc();
    }
    Ok(res)
}
