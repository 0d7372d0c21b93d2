//! Operations endpoints: liveness, readiness (store and bus reachable), Prometheus metrics and the
//! public keys of dialog tokens.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::state::AppState;
use super::views::Readiness;

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

#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "The process answers", body = Object)))]
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, description = "Store and bus reachable", body = Readiness),
              (status = 503, description = "Not ready", body = Readiness)))]
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.ping().await;
    let bus = state.bus.ping().await;
    let body = super::views::Readiness {
        status: if store.is_ok() && bus.is_ok() {
            "ready"
        } else {
            "not ready"
        },
        store: store
            .as_ref()
            .map(|_| "ok".to_owned())
            .unwrap_or_else(|e| e.to_string()),
        bus: bus
            .as_ref()
            .map(|_| "ok".to_owned())
            .unwrap_or_else(|e| e.to_string()),
        node: &state.node_id,
    };
    if store.is_ok() && bus.is_ok() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

#[utoipa::path(get, path = "/api/v1/.well-known/jwks.json", tag = "operations",
    responses((status = 200, description = "The dialog-token keys (Ed25519 JWKs): primary, next, retired", body = Object)))]
async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(state.dialog_tokens.jwks())
}

#[utoipa::path(get, path = "/api/v1/.well-known/oauth-authorization-server", tag = "operations",
    responses((status = 200, description = "OAuth metadata of the dialog-token issuer", body = Object)))]
async fn authorization_server(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "issuer": state.dialog_tokens.issuer(),
        "jwks_uri": format!("{}/api/v1/.well-known/jwks.json", state.base_url),
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
    }))
}
