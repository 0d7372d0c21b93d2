//! Admin API (scope `dialog-events:admin`): the resource registry and delegations, stored through
//! the `Store` so every node sees a change.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// A new file on the node's machine.
    to: std::path::PathBuf,
}

/// `POST /admin/v1/backup {"to": FILE}`: a consistent copy of the embedded store, taken from one
/// snapshot while the node keeps serving (what `dialog-events backup` asks a running node for).
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
    let bytes = web::block(move || store.backup(&to))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("backup task failed: {e}")))??;
    Ok(HttpResponse::Ok().json(json!({ "path": b.to, "bytes": bytes })))
}

#[derive(Deserialize)]
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
async fn list_nodes(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let nodes = state.store.nodes().await?;
    Ok(HttpResponse::Ok().json(json!({ "count": nodes.len(), "nodes": nodes })))
}

async fn list_resources(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let policy = state.store.policy().await?;
    let mut list: Vec<&ResourceEntry> = policy.resources().collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(HttpResponse::Ok().json(json!({ "resources": list })))
}

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

async fn list_delegations(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let policy = state.store.policy().await?;
    Ok(HttpResponse::Ok().json(json!({ "delegations": policy.delegations() })))
}

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
