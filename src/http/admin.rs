//! Admin API (scope `dialog-events:admin`): the resource registry and delegations, stored through
//! the `Store` so every node sees a change.

use super::views::Problem;
use super::views::{BackupDone, DelegationList, NodeList, ResourceList};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::extract::{Caller, json_body};
use super::problem::ApiError;
use super::state::AppState;
use crate::auth::Scope;
use crate::config::{DelegationEntry, ResourceEntry};
use crate::domain::{Party, ResourceUrn};

const JSON: &[&str] = &["application/json"];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/v1/nodes").route(web::get().to(list_nodes)))
        .service(web::resource("/admin/v1/resources").route(web::get().to(list_resources)))
        .service(
            web::resource("/admin/v1/resources/{id}")
                .route(web::put().to(put_resource))
                .route(web::delete().to(delete_resource)),
        )
        .service(
            web::resource("/admin/v1/delegations")
                .route(web::get().to(list_delegations))
                .route(web::post().to(add_delegation))
                .route(web::delete().to(remove_delegation)),
        )
        .service(web::resource("/admin/v1/backup").route(web::post().to(backup)));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// A new file on the node's machine (an absolute path).
    #[schema(value_type = String)]
    to: std::path::PathBuf,
}

/// `POST /admin/v1/backup {"to": FILE}`: a consistent copy of the embedded store, taken from one
/// snapshot while the node keeps serving (what `dialog-events backup` asks a running node for).
#[utoipa::path(post, path = "/admin/v1/backup", tag = "admin",
    request_body(content = BackupBody, content_type = "application/json"),
    responses(
        (status = 200, description = "A consistent copy of the embedded store was written", body = BackupDone),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflict", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn backup(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let b: BackupBody = json_body(&req, body, state.settings.http.max_body, JSON).await?;
    let Some(store) = state.embedded.clone() else {
        return Err(ApiError::Conflict(
            "this node does not run on the embedded store (store.kind = embedded, no redis.url)"
                .into(),
        ));
    };
    if !b.to.is_absolute() {
        return Err(ApiError::bad("to", "must be an absolute path"));
    }
    if b.to.exists() {
        return Err(ApiError::bad("to", "exists already; name a new file"));
    }
    let to = b.to.clone();
    // The copy holds every write acknowledged before the request.
    store.settled().await?;
    let bytes = web::block(move || store.backup(&to))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("backup task failed: {e}")))??;
    Ok(HttpResponse::Ok().json(BackupDone { path: &b.to, bytes }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResourceBody {
    owner: Party,
    #[serde(default)]
    subscribers: Vec<Party>,
}

fn resource_id(path: &str) -> Result<ResourceUrn, ApiError> {
    ResourceUrn::parse(path).map_err(|e| ApiError::bad("id", e.to_string()))
}

/// Live nodes of the cluster (the node itself in embedded mode).
#[utoipa::path(get, path = "/admin/v1/nodes", tag = "admin",
    responses(
        (status = 200, description = "Live nodes", body = NodeList),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_nodes(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let nodes = state.store.nodes().await?;
    Ok(HttpResponse::Ok().json(NodeList {
        count: nodes.len(),
        nodes: &nodes,
    }))
}

#[utoipa::path(get, path = "/admin/v1/resources", tag = "admin",
    responses(
        (status = 200, description = "The resource registry", body = ResourceList),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_resources(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let policy = state.store.policy().await?;
    let mut list: Vec<&ResourceEntry> = policy.resources().collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(HttpResponse::Ok().json(ResourceList { resources: list }))
}

#[utoipa::path(put, path = "/admin/v1/resources/{id}", tag = "admin",
    params(("id" = String, Path, description = "The resource URN")),
    request_body(content = ResourceBody, content_type = "application/json"),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn put_resource(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let id = resource_id(&path)?;
    let body: ResourceBody = json_body(&req, body, state.settings.http.max_body, JSON).await?;
    let entry = ResourceEntry {
        id,
        owner: body.owner,
        subscribers: body.subscribers,
    };
    state.store.put_resource(entry.clone()).await?;
    Ok(HttpResponse::Ok().json(entry))
}

#[utoipa::path(delete, path = "/admin/v1/resources/{id}", tag = "admin",
    params(("id" = String, Path, description = "The resource URN")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_resource(
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let id = resource_id(&path)?;
    if state.store.delete_resource(&id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound(format!("{id} is not registered")))
    }
}

#[utoipa::path(get, path = "/admin/v1/delegations", tag = "admin",
    responses(
        (status = 200, description = "The delegations", body = DelegationList),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_delegations(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let policy = state.store.policy().await?;
    Ok(HttpResponse::Ok().json(DelegationList {
        delegations: policy.delegations(),
    }))
}

#[utoipa::path(post, path = "/admin/v1/delegations", tag = "admin",
    request_body(content = DelegationEntry, content_type = "application/json"),
    responses(
        (status = 204, description = "Added"),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn add_delegation(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let entry: DelegationEntry = json_body(&req, body, state.settings.http.max_body, JSON).await?;
    if entry.resources.is_empty() {
        return Err(ApiError::bad(
            "resources",
            "must name at least one resource",
        ));
    }
    state.store.add_delegation(entry.clone()).await?;
    Ok(HttpResponse::Created().json(entry))
}

#[utoipa::path(delete, path = "/admin/v1/delegations", tag = "admin",
    request_body(content = DelegationEntry, content_type = "application/json"),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn remove_delegation(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let entry: DelegationEntry = json_body(&req, body, state.settings.http.max_body, JSON).await?;
    if state.store.remove_delegation(&entry).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound("no such delegation".into()))
    }
}
