//! actix-web routes (thin handlers), problem+json errors, extractors and request metrics.

pub mod admin;
pub mod dialogs;
pub mod events;
pub mod extract;
pub mod ops;
pub mod problem;
pub mod state;
pub mod subscriptions;

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
