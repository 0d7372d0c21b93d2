//! Dialog API (SPEC 4): service-owner writes and reads, end-user search and details. Handlers are
//! thin: authenticate, parse, hand a `Command` to the dialog's actor, render.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use uuid::Uuid;

use super::extract::{Caller, bool_param, if_match, json_body, parse_uuid, query_map};
use super::problem::ApiError;
use super::state::AppState;
use super::views::Problem;
use super::views::{DialogPage, DialogView};
use crate::auth::Scope;
use crate::dialogs::{Access, Command};
use crate::domain::{ActivityInput, Dialog, DialogInput, Party, ResourceUrn, TransmissionInput};
use crate::store::DialogQuery;

const JSON: &[&str] = &["application/json"];

/// Default page size of the list endpoints.
const DEFAULT_PAGE: usize = 100;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/serviceowner/dialogs")
            .route(web::post().to(create))
            .route(web::get().to(list_as_owner)),
    )
    .service(
        web::resource("/api/v1/serviceowner/dialogs/{id}")
            .route(web::get().to(get_as_owner))
            .route(web::put().to(replace))
            .route(web::delete().to(delete)),
    )
    .service(
        web::resource("/api/v1/serviceowner/dialogs/{id}/activities")
            .route(web::post().to(add_activity)),
    )
    .service(
        web::resource("/api/v1/serviceowner/dialogs/{id}/transmissions")
            .route(web::post().to(add_transmission)),
    )
    .service(
        web::resource("/api/v1/serviceowner/dialogs/{id}/actions/restore")
            .route(web::post().to(restore)),
    )
    .service(
        web::resource("/api/v1/serviceowner/dialogs/{id}/actions/purge")
            .route(web::post().to(purge)),
    )
    .service(web::resource("/api/v1/enduser/dialogs").route(web::get().to(list_as_end_user)))
    .service(web::resource("/api/v1/enduser/dialogs/{id}").route(web::get().to(get_as_end_user)));
}

async fn owner_access(state: &AppState, caller: &Caller) -> Result<Access, ApiError> {
    let party = caller.party_with(Scope::ServiceOwner)?.clone();
    let policy = state.store.policy().await?;
    Ok(Access::ServiceOwner { party, policy })
}

/// `owner_access` for a change: the dialog's actor authorizes it again should the store find, at
/// the commit, that the policy has moved since (`RegistryStore::policy_for_change`).
async fn owner_change_access(state: &AppState, caller: &Caller) -> Result<Access, ApiError> {
    let party = caller.party_with(Scope::ServiceOwner)?.clone();
    let policy = state.store.policy_for_change().await?;
    Ok(Access::ServiceOwner { party, policy })
}

fn dialog_id(path: &web::Path<String>) -> Result<Uuid, ApiError> {
    parse_uuid("id", path.as_str())
}

fn silent(req: &HttpRequest) -> Result<bool, ApiError> {
    bool_param(&query_map(req)?, "isSilentUpdate")
}

fn etag(d: &Dialog) -> (header::HeaderName, String) {
    (header::ETAG, d.revision.to_string())
}

#[utoipa::path(post, path = "/api/v1/serviceowner/dialogs", operation_id = "createDialog", tag = "dialogs",
    params(("isSilentUpdate" = Option<bool>, Query, description = "Emit no poll events; `updatedAt` is kept")),
    request_body(content = DialogInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `Location` and `ETag` (the revision) set", body = String),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflict", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    // The current policy: a create is refused here, before it reaches a dialog's actor.
    let access = owner_access(&state, &caller).await?;
    let input: DialogInput = json_body(&req, body, state.settings.http.max_body, JSON).await?;
    let resource = input
        .service_resource
        .clone()
        .ok_or_else(|| ApiError::bad("serviceResource", "is required"))?;
    if let Access::ServiceOwner { party, policy } = &access
        && !policy.owns(party, &resource)
    {
        return Err(ApiError::Forbidden(format!(
            "{resource} is not owned by {party}"
        )));
    }
    let id = match input.id {
        Some(id) if id.get_version_num() != 7 => {
            return Err(ApiError::bad("id", "must be a UUIDv7"));
        }
        Some(id) => id,
        None => Uuid::now_v7(),
    };
    let outcome = state
        .registry
        .send(id, access, Command::Create(Box::new(input)))
        .await?;
    let d = outcome
        .dialog
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("create returned no dialog")))?;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/v1/serviceowner/dialogs/{id}"),
        ))
        .insert_header(etag(&d))
        .json(id.to_string()))
}

#[utoipa::path(get, path = "/api/v1/serviceowner/dialogs/{id}", tag = "dialogs",
    params(("id" = Uuid, Path, description = "The dialog id (UUIDv7)"), ("endUserId" = Option<String>, Query, description = "Read as this end user (their view counts as seen)")),
    responses(
        (status = 200, description = "The dialog with a dialog token; `ETag` is its revision", body = DialogView),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_as_owner(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = dialog_id(&path)?;
    let q = query_map(&req)?;
    let viewer = match q.get("endUserId") {
        Some(urn) => {
            Some(Party::parse(urn).map_err(|e| ApiError::bad("endUserId", e.to_string()))?)
        }
        None => None,
    };
    let access = owner_access(&state, &caller).await?;
    // The dialog token names who acts: the end user a service owner reads for, else the owner.
    let acting = match &viewer {
        Some(user) => user.clone(),
        None => caller.party_with(Scope::ServiceOwner)?.clone(),
    };
    let outcome = state
        .registry
        .send(
            id,
            access,
            Command::View {
                viewer: viewer.clone(),
            },
        )
        .await?;
    let d = outcome
        .dialog
        .ok_or_else(|| ApiError::NotFound("dialog not found".into()))?;
    Ok(render_single(
        &state,
        &d,
        &acting,
        viewer.as_ref(),
        "read;write",
    ))
}

#[utoipa::path(get, path = "/api/v1/enduser/dialogs/{id}", tag = "dialogs",
    params(("id" = Uuid, Path, description = "The dialog id (UUIDv7)")),
    responses(
        (status = 200, description = "The dialog with a dialog token (the first read after an update emits `seen`)", body = DialogView),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "the dialog is deleted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_as_end_user(
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = dialog_id(&path)?;
    let party = caller.party_with(Scope::EndUser)?.clone();
    let policy = state.store.policy().await?;
    let access = Access::EndUser {
        party: party.clone(),
        policy,
    };
    let outcome = state
        .registry
        .send(
            id,
            access,
            Command::View {
                viewer: Some(party.clone()),
            },
        )
        .await?;
    let d = outcome
        .dialog
        .ok_or_else(|| ApiError::NotFound("dialog not found".into()))?;
    Ok(render_single(&state, &d, &party, Some(&party), "read"))
}

/// A single-dialog response: the dialog, its views since the last update and a fresh dialog token.
fn render_single(
    state: &AppState,
    d: &Dialog,
    caller: &Party,
    viewer: Option<&Party>,
    actions: &str,
) -> HttpResponse {
    let mut body = DialogView::of(d, viewer);
    body.dialog_token = Some(state.dialog_tokens.issue(
        d.id,
        &d.party.urn(),
        d.service_resource.as_str(),
        &caller.urn(),
        actions,
    ));
    HttpResponse::Ok().insert_header(etag(d)).json(body)
}

#[utoipa::path(put, path = "/api/v1/serviceowner/dialogs/{id}", tag = "dialogs",
    params(("id" = Uuid, Path, description = "The dialog id (UUIDv7)"), ("If-Match" = Option<String>, Header, description = "The revision the change was made from"), ("isSilentUpdate" = Option<bool>, Query, description = "Emit no poll events; `updatedAt` is kept")),
    request_body(content = DialogInput, content_type = "application/json"),
    responses(
        (status = 204, description = "Replaced; `ETag` is the new revision"),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "the dialog is deleted", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another revision", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn replace(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = dialog_id(&path)?;
    let access = owner_change_access(&state, &caller).await?;
    let (if_match, silent) = (if_match(&req)?, silent(&req)?);
    let input: DialogInput = json_body(&req, body, state.settings.http.max_body, JSON).await?;
    let outcome = state
        .registry
        .send(
            id,
            access,
            Command::Replace {
                input: Box::new(input),
                if_match,
                silent,
            },
        )
        .await?;
    no_content(outcome.dialog.as_deref())
}

#[utoipa::path(post, path = "/api/v1/serviceowner/dialogs/{id}/activities", tag = "dialogs",
    params(("id" = Uuid, Path, description = "The dialog id (UUIDv7)"), ("If-Match" = Option<String>, Header, description = "The revision the change was made from"), ("isSilentUpdate" = Option<bool>, Query, description = "Emit no poll events; `updatedAt` is kept")),
    request_body(content = ActivityInput, content_type = "application/json"),
    responses(
        (status = 201, description = "The new activity's id", body = String),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "the dialog is deleted", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another revision", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn add_activity(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = dialog_id(&path)?;
    let access = owner_change_access(&state, &caller).await?;
    let (if_match, silent) = (if_match(&req)?, silent(&req)?);
    let input: ActivityInput = json_body(&req, body, state.settings.http.max_body, JSON).await?;
    let outcome = state
        .registry
        .send(
            id,
            access,
            Command::AddActivity {
                input: Box::new(input),
                if_match,
                silent,
            },
        )
        .await?;
    created_child(id, "activities", &outcome)
}

#[utoipa::path(post, path = "/api/v1/serviceowner/dialogs/{id}/transmissions", tag = "dialogs",
    params(("id" = Uuid, Path, description = "The dialog id (UUIDv7)"), ("If-Match" = Option<String>, Header, description = "The revision the change was made from"), ("isSilentUpdate" = Option<bool>, Query, description = "Emit no poll events; `updatedAt` is kept")),
    request_body(content = TransmissionInput, content_type = "application/json"),
    responses(
        (status = 201, description = "The new transmission's id", body = String),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "the dialog is deleted", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another revision", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn add_transmission(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = dialog_id(&path)?;
    let access = owner_change_access(&state, &caller).await?;
    let (if_match, silent) = (if_match(&req)?, silent(&req)?);
    let input: TransmissionInput =
        json_body(&req, body, state.settings.http.max_body, JSON).await?;
    let outcome = state
        .registry
        .send(
            id,
            access,
            Command::AddTransmission {
                input: Box::new(input),
                if_match,
                silent,
            },
        )
        .await?;
    created_child(id, "transmissions", &outcome)
}

fn created_child(
    id: Uuid,
    kind: &str,
    outcome: &crate::dialogs::Outcome,
) -> Result<HttpResponse, ApiError> {
    let child = outcome
        .child_id
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("command returned no child id")))?;
    let mut resp = HttpResponse::Created();
    resp.insert_header((
        header::LOCATION,
        format!("/api/v1/serviceowner/dialogs/{id}/{kind}/{child}"),
    ));
    if let Some(d) = &outcome.dialog {
        resp.insert_header(etag(d));
    }
    Ok(resp.json(child.to_string()))
}

fn no_content(d: Option<&Dialog>) -> Result<HttpResponse, ApiError> {
    let mut resp = HttpResponse::NoContent();
    if let Some(d) = d {
        resp.insert_header(etag(d));
    }
    Ok(resp.finish())
}

#[utoipa::path(delete, path = "/api/v1/serviceowner/dialogs/{id}", operation_id = "deleteDialog", tag = "dialogs",
    params(("id" = Uuid, Path, description = "The dialog id (UUIDv7)"), ("If-Match" = Option<String>, Header, description = "The revision the change was made from"), ("isSilentUpdate" = Option<bool>, Query, description = "Emit no poll events; `updatedAt` is kept")),
    responses(
        (status = 204, description = "Soft-deleted"),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "the dialog is deleted", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another revision", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = dialog_id(&path)?;
    let access = owner_change_access(&state, &caller).await?;
    let (if_match, silent) = (if_match(&req)?, silent(&req)?);
    let outcome = state
        .registry
        .send(id, access, Command::Delete { if_match, silent })
        .await?;
    no_content(outcome.dialog.as_deref())
}

#[utoipa::path(post, path = "/api/v1/serviceowner/dialogs/{id}/actions/restore", tag = "dialogs",
    params(("id" = Uuid, Path, description = "The dialog id (UUIDv7)"), ("If-Match" = Option<String>, Header, description = "The revision the change was made from"), ("isSilentUpdate" = Option<bool>, Query, description = "Emit no poll events; `updatedAt` is kept")),
    responses(
        (status = 204, description = "Restored (a no-op when not deleted)"),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another revision", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn restore(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = dialog_id(&path)?;
    let access = owner_change_access(&state, &caller).await?;
    let silent = silent(&req)?;
    let outcome = state
        .registry
        .send(id, access, Command::Restore { silent })
        .await?;
    no_content(outcome.dialog.as_deref())
}

#[utoipa::path(post, path = "/api/v1/serviceowner/dialogs/{id}/actions/purge", tag = "dialogs",
    params(("id" = Uuid, Path, description = "The dialog id (UUIDv7)"), ("If-Match" = Option<String>, Header, description = "The revision the change was made from")),
    responses(
        (status = 204, description = "Deleted for good; the id stays taken"),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another revision", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn purge(
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = dialog_id(&path)?;
    let access = owner_change_access(&state, &caller).await?;
    state.registry.send(id, access, Command::Purge).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Shared paging parameters: `limit` (1..=max) and `continuationToken` (opaque: the last id).
fn paging(q: &HashMap<String, String>, max: usize) -> Result<(usize, Option<Uuid>), ApiError> {
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE.min(max),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    "limit",
                    format!("must be an integer between 1 and {max}"),
                ));
            }
        },
    };
    let after =
        match q.get("continuationToken") {
            None => None,
            Some(t) => Some(Uuid::parse_str(t).map_err(|_| {
                ApiError::bad("continuationToken", "is not a token this API issued")
            })?),
        };
    Ok((limit, after))
}

fn optional_party(q: &HashMap<String, String>) -> Result<Option<Party>, ApiError> {
    q.get("party")
        .map(|p| Party::parse(p).map_err(|e| ApiError::bad("party", e.to_string())))
        .transpose()
}

fn optional_resource(q: &HashMap<String, String>) -> Result<Option<ResourceUrn>, ApiError> {
    q.get("serviceResource")
        .map(|r| ResourceUrn::parse(r).map_err(|e| ApiError::bad("serviceResource", e.to_string())))
        .transpose()
}

fn page(items: Vec<Dialog>, limit: usize, viewer: Option<&Party>) -> HttpResponse {
    let has_next = items.len() > limit;
    let items: Vec<Dialog> = items.into_iter().take(limit).collect();
    let token = if has_next {
        items.last().map(|d| d.id.to_string())
    } else {
        None
    };
    HttpResponse::Ok().json(DialogPage {
        items: items.iter().map(|d| DialogView::of(d, viewer)).collect(),
        has_next_page: has_next,
        continuation_token: token,
    })
}

#[utoipa::path(get, path = "/api/v1/serviceowner/dialogs", tag = "dialogs",
    params(("serviceResource" = Option<String>, Query, description = "Only this resource (one the caller owns)"),
           ("party" = Option<String>, Query, description = "Only this party"),
           ("limit" = Option<usize>, Query, description = "Page size (default 100, at most `dialogs.max_page_size`)"),
           ("continuationToken" = Option<String>, Query, description = "From the previous page")),
    responses(
        (status = 200, description = "One page, ordered by id", body = DialogPage),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_as_owner(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let party = caller.party_with(Scope::ServiceOwner)?.clone();
    let q = query_map(&req)?;
    let (limit, after) = paging(&q, state.settings.dialogs.max_page_size)?;
    let policy = state.store.policy().await?;
    let resources = match optional_resource(&q)? {
        Some(r) if policy.owns(&party, &r) => vec![r],
        Some(r) => return Err(ApiError::Forbidden(format!("{r} is not owned by {party}"))),
        None => policy
            .resources()
            .filter(|r| r.owner == party)
            .map(|r| r.id.clone())
            .collect(),
    };
    let query = DialogQuery {
        resources: Some(resources),
        parties: optional_party(&q)?.map(|p| vec![p]),
        include_deleted: true,
        after,
        limit: limit + 1,
    };
    Ok(page(state.store.list_dialogs(&query).await?, limit, None))
}

#[utoipa::path(get, path = "/api/v1/enduser/dialogs", tag = "dialogs",
    params(("serviceResource" = Option<String>, Query, description = "Only this resource"),
           ("party" = Option<String>, Query, description = "Only this party (the caller or one it acts for)"),
           ("limit" = Option<usize>, Query, description = "Page size (default 100, at most `dialogs.max_page_size`)"),
           ("continuationToken" = Option<String>, Query, description = "From the previous page")),
    responses(
        (status = 200, description = "One page, ordered by id (listing records no view)", body = DialogPage),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_as_end_user(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let me = caller.party_with(Scope::EndUser)?.clone();
    let q = query_map(&req)?;
    let (limit, after) = paging(&q, state.settings.dialogs.max_page_size)?;
    let policy = state.store.policy().await?;
    let mut parties: Vec<Party> = vec![me.clone()];
    parties.extend(
        policy
            .delegations()
            .iter()
            .filter(|d| d.to == me)
            .map(|d| d.from.clone()),
    );
    parties.dedup();
    if let Some(p) = optional_party(&q)? {
        if !parties.contains(&p) {
            return Err(ApiError::Forbidden(format!("you may not act for {p}")));
        }
        parties = vec![p];
    }
    let query = DialogQuery {
        resources: optional_resource(&q)?.map(|r| vec![r]),
        parties: Some(parties),
        include_deleted: false,
        after,
        limit: limit + 1,
    };
    let now = chrono::Utc::now();
    // Listing never emits seen events; it reads the store directly, not through the actors.
    let items: Vec<Dialog> = state
        .store
        .list_dialogs(&query)
        .await?
        .into_iter()
        .filter(|d| {
            d.is_visible_at(now) && policy.may_read_as_end_user(&me, &d.party, &d.service_resource)
        })
        .collect();
    Ok(page(items, limit, Some(&me)))
}
