//! Event API (SPEC 5): the poll endpoint over each resource's log and service-owner publishing of
//! custom CloudEvents with `(resource, source, id)` dedupe.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::extract::{Caller, json_body, parse_json, query_map};
use super::problem::ApiError;
use super::state::AppState;
use super::views::Problem;
use crate::auth::Scope;
use crate::domain::{CloudEvent, ResourceUrn};

/// Default and largest `size` of a poll page.
const DEFAULT_SIZE: usize = 50;
const MAX_SIZE: usize = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/events/api/v1/events")
            .route(web::get().to(poll))
            .route(web::post().to(publish)),
    );
}

#[utoipa::path(get, path = "/events/api/v1/events", tag = "events",
    params(("resource" = String, Query, description = "The resource whose events to read"),
           ("after" = String, Query, description = "`0`, or the id of the last event read"),
           ("subject" = Option<String>, Query, description = "Only events about this party"),
           ("type" = Option<String>, Query, description = "Only this event type"),
           ("size" = Option<usize>, Query, description = "1..1000, default 50")),
    responses(
        (status = 200, description = "Events oldest first; the `next` header holds the next page's URL", body = Vec<CloudEvent>,
         headers(("next" = String, description = "URL of the next page"))),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn poll(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let party = caller.party_with(Scope::EventsSubscribe)?.clone();
    let q = query_map(&req)?;
    let resource_param = q
        .get("resource")
        .ok_or_else(|| ApiError::bad("resource", "is required"))?;
    let resource =
        ResourceUrn::parse(resource_param).map_err(|e| ApiError::bad("resource", e.to_string()))?;
    let after_param = q
        .get("after")
        .ok_or_else(|| ApiError::bad("after", "is required"))?;
    let size = match q.get("size") {
        None => DEFAULT_SIZE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_SIZE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    "size",
                    format!("must be an integer between 1 and {MAX_SIZE}"),
                ));
            }
        },
    };
    let subject = q.get("subject").cloned();
    let kind = q.get("type").cloned();
    let after = if after_param == "0" {
        0
    } else {
        state
            .store
            .log_position(resource_param, after_param)
            .await?
            .ok_or_else(|| {
                ApiError::bad("after", "no retained event of this resource has this id")
            })?
    };
    // Held-back events whose time has come are released before the read, so the answer is exact.
    state.store.release_due(Utc::now()).await?;
    let policy = state.store.policy().await?;
    let filter = move |e: &CloudEvent| {
        subject
            .as_deref()
            .is_none_or(|s| e.subject.as_deref() == Some(s))
            && kind.as_deref().is_none_or(|t| e.kind == t)
            && policy.may_receive(&party, &resource, e.subject.as_deref())
    };
    let entries = state
        .store
        .read_log(resource_param, after, size, &filter)
        .await?;
    let last = entries
        .last()
        .map(|e| e.event.id.clone())
        .unwrap_or_else(|| after_param.clone());
    let mut params: Vec<(&str, &str)> =
        vec![("resource", resource_param), ("after", &last), ("size", "")];
    let size_text = size.to_string();
    params[2].1 = &size_text;
    for key in ["subject", "type"] {
        if let Some(v) = q.get(key) {
            params.push((key, v));
        }
    }
    let next = format!(
        "{}/events/api/v1/events?{}",
        state.base_url,
        serde_urlencoded::to_string(&params).map_err(|e| ApiError::Internal(e.into()))?
    );
    let events: Vec<&CloudEvent> = entries.iter().map(|e| e.event.as_ref()).collect();
    Ok(HttpResponse::Ok()
        .insert_header(("next", next))
        .json(events))
}

fn required_string(obj: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::bad(field, "must not be empty")),
        Some(_) => Err(ApiError::bad(field, "must be a string")),
        None => Err(ApiError::bad(field, "is required")),
    }
}

#[utoipa::path(post, path = "/events/api/v1/events", tag = "events",
    request_body(content = CloudEvent, content_type = "application/cloudevents+json",
                 description = "A CloudEvent 1.0 for a resource the caller owns; (id, source) deduplicated within the resource"),
    responses(
        (status = 200, description = "Accepted (or a duplicate, ignored): its id", body = String),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn publish(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let party = caller.party_with(Scope::EventsPublish)?.clone();
    let mut obj: Map<String, Value> = json_body(
        &req,
        body,
        state.settings.http.max_body,
        &["application/cloudevents+json"],
    )
    .await?;
    if required_string(&obj, "specversion")? != "1.0" {
        return Err(ApiError::bad("specversion", "must be \"1.0\""));
    }
    let id = required_string(&obj, "id")?;
    let source = required_string(&obj, "source")?;
    if !source.contains(':') {
        return Err(ApiError::bad("source", "must be an absolute URI"));
    }
    required_string(&obj, "type")?;
    let resource = ResourceUrn::parse(&required_string(&obj, "resource")?)
        .map_err(|e| ApiError::bad("resource", e.to_string()))?;
    for optional in ["subject", "resourceinstance", "datacontenttype"] {
        if obj.get(optional).is_some_and(|v| !v.is_string()) {
            return Err(ApiError::bad(optional, "must be a string"));
        }
    }
    match obj.get("time") {
        None => {
            obj.insert(
                "time".into(),
                Value::String(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)),
            );
        }
        Some(Value::String(t)) if DateTime::parse_from_rfc3339(t).is_ok() => {}
        Some(_) => return Err(ApiError::bad("time", "must be an RFC 3339 timestamp")),
    }
    let policy = state.store.policy().await?;
    if !policy.owns(&party, &resource) {
        return Err(ApiError::Forbidden(format!(
            "{resource} is not owned by {party}"
        )));
    }
    let event: CloudEvent =
        parse_json(&serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.into()))?)?;
    if state.store.append_external(event.clone()).await? {
        state
            .metrics
            .events
            .with_label_values(&[event.kind.as_str()])
            .inc();
        // Webhook subscribers get it now, not at the dispatcher's next periodic poll.
        state.bus.feed_changed(&event);
    } else {
        tracing::debug!(%id, %source, "duplicate published event ignored");
    }
    Ok(HttpResponse::Ok().json(id))
}
