//! Pages the node serves itself, with every asset embedded in the binary (nothing from a CDN):
//! the live console (`/console`), GraphiQL (`/graphiql`), the API reference (`/api-docs`), and
//! the development issuer's token minting for them (`POST /dev/token`, only while that issuer is
//! enabled).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::AppState;
use super::extract::json_body;
use super::problem::{ApiError, problem};
use super::views::{MintedToken, Problem};
use crate::domain::Party;

/// An embedded file: its path under the site root, media type and bytes.
struct Asset {
    path: &'static str,
    media_type: &'static str,
    bytes: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($path:literal, $file:literal, $media:expr) => {
        Asset {
            path: $path,
            media_type: $media,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $file)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("/console", "console/index.html", HTML),
    asset!("/console/console.js", "console/console.js", JS),
    asset!("/console/console.css", "console/console.css", CSS),
    asset!("/graphiql", "graphiql/index.html", HTML),
    asset!(
        "/graphiql/vendor/graphiql.min.js",
        "graphiql/vendor/graphiql.min.js",
        JS
    ),
    asset!(
        "/graphiql/vendor/graphiql.min.css",
        "graphiql/vendor/graphiql.min.css",
        CSS
    ),
    asset!(
        "/graphiql/vendor/react.production.min.js",
        "graphiql/vendor/react.production.min.js",
        JS
    ),
    asset!(
        "/graphiql/vendor/react-dom.production.min.js",
        "graphiql/vendor/react-dom.production.min.js",
        JS
    ),
    asset!(
        "/graphiql/vendor/graphql-ws.min.js",
        "graphiql/vendor/graphql-ws.min.js",
        JS
    ),
    asset!("/api-docs", "api-docs/index.html", HTML),
    asset!(
        "/api-docs/vendor/swagger-ui-bundle.js",
        "api-docs/vendor/swagger-ui-bundle.js",
        JS
    ),
    asset!(
        "/api-docs/vendor/swagger-ui.css",
        "api-docs/vendor/swagger-ui.css",
        CSS
    ),
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/console").route(web::get().to(console)))
        .service(web::resource("/console/{file}").route(web::get().to(console_file)))
        .service(web::resource("/graphiql").route(web::get().to(graphiql)))
        .service(web::resource("/graphiql/vendor/{file}").route(web::get().to(graphiql_file)))
        .service(web::resource("/api-docs").route(web::get().to(api_docs)))
        .service(web::resource("/api-docs/vendor/{file}").route(web::get().to(api_docs_file)))
        .service(web::resource("/dev/token").route(web::post().to(mint)));
}

/// The embedded file at `path` (404 when there is none).
fn serve(path: &str) -> HttpResponse {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => file(asset),
        None => problem(StatusCode::NOT_FOUND, "Not Found", "no such file", None),
    }
}

#[utoipa::path(get, path = "/console", tag = "pages",
    responses((status = 200, description = "The live console", body = String, content_type = "text/html")))]
async fn console() -> HttpResponse {
    serve("/console")
}

#[utoipa::path(get, path = "/console/{file}", tag = "pages",
    params(("file" = String, Path, description = "console.js or console.css")),
    responses((status = 200, description = "A file of the console", body = String),
              (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json")))]
async fn console_file(file: web::Path<String>) -> HttpResponse {
    serve(&format!("/console/{file}"))
}

#[utoipa::path(get, path = "/graphiql", tag = "pages",
    responses((status = 200, description = "GraphiQL, served offline", body = String, content_type = "text/html")))]
async fn graphiql() -> HttpResponse {
    serve("/graphiql")
}

#[utoipa::path(get, path = "/graphiql/vendor/{file}", tag = "pages",
    params(("file" = String, Path, description = "A vendored file of GraphiQL")),
    responses((status = 200, description = "The file", body = String),
              (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json")))]
async fn graphiql_file(file: web::Path<String>) -> HttpResponse {
    serve(&format!("/graphiql/vendor/{file}"))
}

#[utoipa::path(get, path = "/api-docs", tag = "pages",
    responses((status = 200, description = "The API reference (this document, rendered offline)", body = String, content_type = "text/html")))]
async fn api_docs() -> HttpResponse {
    serve("/api-docs")
}

#[utoipa::path(get, path = "/api-docs/vendor/{file}", tag = "pages",
    params(("file" = String, Path, description = "A vendored file of the reference page")),
    responses((status = 200, description = "The file", body = String),
              (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json")))]
async fn api_docs_file(file: web::Path<String>) -> HttpResponse {
    serve(&format!("/api-docs/vendor/{file}"))
}

fn file(asset: &'static Asset) -> HttpResponse {
    // Pages are checked on every load (they follow the binary); vendored files are versioned.
    let cache = if asset.path.contains("/vendor/") {
        "public, max-age=86400"
    } else {
        "no-cache"
    };
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, asset.media_type))
        .insert_header((CACHE_CONTROL, cache))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(asset.bytes)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    scope: String,
    pid: Option<String>,
    org: Option<String>,
    /// Lifetime in seconds (default 3600, at most a day).
    ttl: Option<u64>,
}

#[utoipa::path(post, path = "/dev/token", tag = "pages",
    request_body(content = MintRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A development-issuer token", body = MintedToken),
        (status = 400, description = "A field is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The development issuer is disabled", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Wrong `Content-Type`", body = Problem, content_type = "application/problem+json")))]
/// `POST /dev/token {scope, pid | org, ttl}`: a token of the development issuer, as
/// `dialog-events token` prints it. Absent (404) unless `auth.dev_issuer.enabled`, which a node
/// on a non-loopback address refuses unless `auth.dev_issuer.allow_public`.
async fn mint(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(issuer) = &state.dev_issuer else {
        return Ok(problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            "the development issuer is disabled on this node",
            None,
        ));
    };
    let req: MintRequest = json_body(
        &req,
        body,
        state.settings.http.max_body,
        &["application/json"],
    )
    .await?;
    let party = match (&req.pid, &req.org) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad("pid", "give pid or org, not both"));
        }
        (Some(pid), None) => {
            Some(Party::person(pid).map_err(|e| ApiError::bad("pid", e.to_string()))?)
        }
        (None, Some(org)) => {
            Some(Party::organization(org).map_err(|e| ApiError::bad("org", e.to_string()))?)
        }
        (None, None) => None,
    };
    let ttl = req.ttl.unwrap_or(3600);
    if ttl == 0 || ttl > 86_400 {
        return Err(ApiError::bad("ttl", "ttl is in seconds, from 1 to 86400"));
    }
    let token =
        crate::auth::dev_token(issuer, &req.scope, party.as_ref(), Duration::from_secs(ttl));
    Ok(HttpResponse::Ok().json(MintedToken {
        token,
        expires_in: ttl,
    }))
}
