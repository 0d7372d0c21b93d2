//! Webhook subscription API (Altinn Events compatible, SPEC 7) and the dead-letter admin API.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::extract::{Caller, json_body, parse_uuid};
use super::problem::ApiError;
use super::state::AppState;
use super::views::Problem;
use super::views::{
    DeadLetterList, DeliveryList, Redriven, Replayed, RotatedSecret, SubscriptionList,
    SubscriptionView,
};
use crate::auth::Scope;
use crate::domain::{Subscription, SubscriptionChange};
use crate::webhooks::dispatcher::{Redeliver, Validate};
use crate::webhooks::rules::{self, NewSubscription, Refused};
use crate::webhooks::signing;

const JSON: &[&str] = &["application/json"];

/// Events read from the global log per page while a replay looks for its window.
const REPLAY_PAGE: usize = 5_000;

/// How long the secret before a rotation keeps signing deliveries beside the new one.
const PREVIOUS_SECRET_GRACE: chrono::Duration = chrono::Duration::hours(24);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/events/api/v1/subscriptions")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(
        web::resource("/events/api/v1/subscriptions/{id}")
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    )
    .service(
        web::resource("/events/api/v1/subscriptions/{id}/deliveries")
            .route(web::get().to(deliveries)),
    )
    .service(
        web::resource("/events/api/v1/subscriptions/{id}/replay").route(web::post().to(replay)),
    )
    .service(
        web::resource("/events/api/v1/subscriptions/{id}/secret/rotate")
            .route(web::post().to(rotate_secret)),
    )
    .service(web::resource("/admin/v1/dead-letters").route(web::get().to(dead_letters)))
    .service(web::resource("/admin/v1/dead-letters/redrive").route(web::post().to(redrive)));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    end_point: String,
    resource_filter: String,
    #[serde(default)]
    subject_filter: Option<String>,
    #[serde(default)]
    type_filter: Option<String>,
    #[serde(default)]
    source_filter: Option<String>,
    #[serde(default)]
    include_subunits: bool,
}

impl From<CreateBody> for NewSubscription {
    fn from(b: CreateBody) -> Self {
        NewSubscription {
            end_point: b.end_point,
            resource_filter: b.resource_filter,
            subject_filter: b.subject_filter,
            type_filter: b.type_filter,
            source_filter: b.source_filter,
            include_subunits: b.include_subunits,
        }
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Field { field, message } => ApiError::bad(field, message),
            Refused::Forbidden(why) => ApiError::Forbidden(why),
        }
    }
}

#[utoipa::path(post, path = "/events/api/v1/subscriptions", operation_id = "createSubscription", tag = "webhooks",
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, with its secret (shown only here); validation follows", body = SubscriptionView),
        (status = 200, description = "The same subscription existed: it, without its secret", body = SubscriptionView),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
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
    let party = caller.party_with(Scope::EventsSubscribe)?.clone();
    let body: CreateBody = json_body(&req, body, state.settings.http.max_body, JSON).await?;
    // Fields first (400 names the field), then whether the caller may receive what it asks for.
    let checked = NewSubscription::from(body).check(&state.settings.webhooks)?;
    let policy = state.store.policy().await?;
    let candidate = checked.admit(&party, &policy)?;
    // Re-POSTing an identical subscription returns the existing one (never its secret, which is
    // shown only at creation) and re-sends validation.
    let existing = rules::existing(state.store.subscriptions().await?, &candidate);
    let (subscription, status, created) = match existing {
        Some(s) => (s, actix_web::http::StatusCode::OK, false),
        None => {
            state.store.put_subscription(&candidate).await?;
            (candidate, actix_web::http::StatusCode::CREATED, true)
        }
    };
    // A new subscription is validated; a re-POST re-sends the validation (a validated one keeps
    // receiving events meanwhile).
    state.dispatcher.do_send(Validate(subscription.clone()));
    Ok(HttpResponse::build(status)
        .insert_header((
            "Location",
            format!("/events/api/v1/subscriptions/{}", subscription.id),
        ))
        .json(SubscriptionView::of(&subscription, created)))
}

/// `POST …/{id}/secret/rotate`: a new secret, shown once; the old one keeps signing beside it
/// (a second `v1,` signature) for 24 hours.
#[utoipa::path(post, path = "/events/api/v1/subscriptions/{id}/secret/rotate", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The subscription id")),
    responses(
        (status = 200, description = "The new secret, shown once", body = RotatedSecret),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn rotate_secret(
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let s = own(&state, &caller, &path).await?;
    let change = SubscriptionChange::SecretRotated {
        secret: signing::new_secret(),
        previous_until: Utc::now() + PREVIOUS_SECRET_GRACE,
    };
    let Some(s) = state.store.update_subscription(s.id, change).await? else {
        return Err(ApiError::NotFound("no such subscription".into()));
    };
    Ok(HttpResponse::Ok().json(RotatedSecret {
        secret: &s.secret,
        previous_secret_expires: s.previous_secret_until,
    }))
}

/// The caller's own subscription `id` (404 for others', as if it did not exist).
async fn own(state: &AppState, caller: &Caller, id: &str) -> Result<Subscription, ApiError> {
    let party = caller.party_with(Scope::EventsSubscribe)?;
    let id = parse_uuid("id", id)?;
    match state.store.get_subscription(id).await? {
        Some(s) if s.consumer == party.urn() => Ok(s),
        _ => Err(ApiError::NotFound("no such subscription".into())),
    }
}

#[utoipa::path(get, path = "/events/api/v1/subscriptions", operation_id = "listSubscriptions", tag = "webhooks",
    responses(
        (status = 200, description = "The caller's subscriptions", body = SubscriptionList),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let party = caller.party_with(Scope::EventsSubscribe)?.urn();
    let all = state.store.subscriptions().await?;
    let mine: Vec<SubscriptionView> = all
        .iter()
        .filter(|s| s.consumer == party)
        .map(|s| SubscriptionView::of(s, false))
        .collect();
    Ok(HttpResponse::Ok().json(SubscriptionList {
        count: mine.len(),
        subscriptions: mine,
    }))
}

#[utoipa::path(get, path = "/events/api/v1/subscriptions/{id}", operation_id = "getSubscription", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The subscription id")),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionView),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get(
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let s = own(&state, &caller, &path).await?;
    Ok(HttpResponse::Ok().json(SubscriptionView::of(&s, false)))
}

#[utoipa::path(delete, path = "/events/api/v1/subscriptions/{id}", operation_id = "deleteSubscription", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The subscription id")),
    responses(
        (status = 204, description = "Deleted; no further deliveries"),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete(
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let s = own(&state, &caller, &path).await?;
    state.store.delete_subscription(s.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/events/api/v1/subscriptions/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The subscription id")),
    responses(
        (status = 200, description = "Recent delivery attempts, newest first", body = DeliveryList),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn deliveries(
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let s = own(&state, &caller, &path).await?;
    let list = state.store.deliveries(s.id).await?;
    Ok(HttpResponse::Ok().json(DeliveryList {
        count: list.len(),
        deliveries: &list,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ReplayBody {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

#[utoipa::path(post, path = "/events/api/v1/subscriptions/{id}/replay", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The subscription id")),
    request_body(content = ReplayBody, content_type = "application/json"),
    responses(
        (status = 202, description = "The matching retained events (at most `webhooks.replay_max`, the newest) are queued", body = Replayed),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such resource (or not the caller's)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn replay(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let s = own(&state, &caller, &path).await?;
    let range: ReplayBody = json_body(&req, body, state.settings.http.max_body, JSON).await?;
    if range.to < range.from {
        return Err(ApiError::bad("to", "must not be before from"));
    }
    let policy = state.store.policy().await?;
    let party =
        crate::domain::Party::parse(&s.consumer).map_err(|e| ApiError::Internal(e.into()))?;
    let wanted = |e: &crate::domain::CloudEvent| {
        let at = DateTime::parse_from_rfc3339(&e.time).map(|t| t.with_timezone(&Utc));
        at.is_ok_and(|t| t >= range.from && t <= range.to)
            && s.matches(e)
            && policy.may_receive_event(&party, e)
    };
    // The whole retained log is read page by page; of the matching events the newest
    // `webhooks.replay_max` are kept (oldest first), so a long window never loses its recent end.
    let max = state.settings.webhooks.replay_max;
    let mut events = std::collections::VecDeque::new();
    let mut after = 0;
    // A subscription receives events of its one resource: that resource's log is read.
    loop {
        let page = state
            .store
            .read_log(&s.resource_filter, after, REPLAY_PAGE, &wanted)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        let full = page.len() == REPLAY_PAGE;
        for entry in page {
            if events.len() == max {
                events.pop_front();
            }
            events.push_back(entry.event);
        }
        if !full {
            break;
        }
    }
    let events: Vec<_> = events.into();
    let n = state
        .dispatcher
        .send(Redeliver {
            subscription: s.id,
            events,
        })
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(HttpResponse::Accepted().json(Replayed { replayed: n }))
}

#[utoipa::path(get, path = "/admin/v1/dead-letters", tag = "admin",
    responses(
        (status = 200, description = "Deliveries that exhausted their attempts", body = DeadLetterList),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn dead_letters(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let letters = state.store.dead_letters().await?;
    Ok(HttpResponse::Ok().json(DeadLetterList {
        count: letters.len(),
        dead_letters: &letters,
    }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedriveBody {
    #[serde(default)]
    ids: Option<Vec<Uuid>>,
    #[serde(default)]
    subscription_id: Option<Uuid>,
}

#[utoipa::path(post, path = "/admin/v1/dead-letters/redrive", tag = "admin",
    request_body(content = Option<RedriveBody>, content_type = "application/json",
                 description = "Which to redrive: `ids`, a `subscriptionId`, or (no body) all"),
    responses(
        (status = 202, description = "Queued for delivery again", body = Redriven),
        (status = 400, description = "a field is missing or wrong (problem+json naming it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller may not do this", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over `http.max_body`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "wrong `Content-Type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a backend is unavailable; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn redrive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let filter: RedriveBody = if body.is_empty() {
        RedriveBody::default()
    } else {
        let essence = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !essence.starts_with("application/json") {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type application/json".into(),
            ));
        }
        super::extract::parse_json(&body)?
    };
    let all = state.store.dead_letters().await?;
    let chosen: Vec<Uuid> = all
        .iter()
        .filter(|l| filter.ids.as_ref().is_none_or(|ids| ids.contains(&l.id)))
        .filter(|l| {
            filter
                .subscription_id
                .is_none_or(|s| s == l.subscription_id)
        })
        .map(|l| l.id)
        .collect();
    let taken = state.store.take_dead_letters(&chosen).await?;
    let mut by_sub: std::collections::BTreeMap<
        Uuid,
        Vec<std::sync::Arc<crate::domain::CloudEvent>>,
    > = Default::default();
    for l in &taken {
        by_sub
            .entry(l.subscription_id)
            .or_default()
            .push(std::sync::Arc::new(l.event.clone()));
    }
    for (subscription, events) in by_sub {
        state
            .dispatcher
            .send(Redeliver {
                subscription,
                events,
            })
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    }
    Ok(HttpResponse::Accepted().json(Redriven {
        redriven: taken.len(),
    }))
}
