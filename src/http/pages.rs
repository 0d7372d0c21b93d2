//! Pages the node serves itself, with every asset embedded in the binary (nothing from a CDN):
//! the live console (`/console`), GraphiQL (`/graphiql`), and the development issuer's token
//! minting for them (`POST /dev/token`, only while that issuer is enabled).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::AppState;
use super::extract::json_body;
use super::problem::{ApiError, problem};
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
];

/// The path of every page and asset, for the route list.
pub fn paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    for asset in ASSETS {
        cfg.service(web::resource(asset.path).route(web::get().to(move || serve(asset))));
    }
    cfg.service(web::resource("/dev/token").route(web::post().to(mint)));
}

async fn serve(asset: &'static Asset) -> HttpResponse {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    scope: String,
    pid: Option<String>,
    org: Option<String>,
    /// Lifetime in seconds (default 3600, at most a day).
    ttl: Option<u64>,
}

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
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "token": token,
        "expiresIn": ttl,
    })))
}
