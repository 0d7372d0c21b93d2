//! Operations endpoints: liveness, readiness (store and bus reachable), Prometheus metrics and the
//! public keys of dialog tokens.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .route("/api/v1/.well-known/jwks.json", web::get().to(jwks))
        .route(
            "/api/v1/.well-known/oauth-authorization-server",
            web::get().to(authorization_server),
        );
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.ping().await;
    let bus = state.bus.ping().await;
    let body = json!({
        "status": if store.is_ok() && bus.is_ok() { "ready" } else { "not ready" },
        "store": store.as_ref().map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
        "bus": bus.as_ref().map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
        "node": state.node_id,
    });
    if store.is_ok() && bus.is_ok() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(state.dialog_tokens.jwks())
}

async fn authorization_server(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "issuer": state.dialog_tokens.issuer(),
        "jwks_uri": format!("{}/api/v1/.well-known/jwks.json", state.base_url),
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
    }))
}
