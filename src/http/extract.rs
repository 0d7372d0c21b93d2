//! Request extractors: the authenticated caller, size- and type-checked JSON bodies, and query
//! parameters with errors that name the parameter.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::problem::ApiError;
use super::state::AppState;
use crate::auth::{AuthError, Principal, Scope};

/// The verified caller of a request (401 when the bearer token is missing or invalid).
pub struct Caller(pub Principal);

impl Caller {
    /// 403 unless the token grants `scope`.
    pub fn require(&self, scope: Scope) -> Result<&Principal, ApiError> {
        if self.0.has(scope) {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden(format!(
                "the token lacks the scope {}",
                scope.as_str()
            )))
        }
    }

    /// 403 unless the token grants `scope` and names a party.
    pub fn party_with(&self, scope: Scope) -> Result<&crate::domain::Party, ApiError> {
        self.require(scope)?
            .party
            .as_ref()
            .ok_or_else(|| ApiError::Forbidden("the token names no party (pid or consumer)".into()))
    }
}

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))?;
            let token = bearer(&req)
                .ok_or(AuthError::Missing)
                .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
            let principal = state
                .verifier
                .verify(token)
                .await
                .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
            Ok(Caller(principal))
        })
    }
}

/// Reads a JSON body: 415 unless the media type is one of `media_types`, 413 over `max` bytes,
/// 400 naming the JSON path of a malformed or mistyped field.
pub async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
    media_types: &[&str],
) -> Result<T, ApiError> {
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !media_types.contains(&essence.as_str()) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type {}, got {:?}",
            media_types.join(" or "),
            content_type
        )));
    }
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::PayloadTooLarge(max));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad("body", e.to_string()))?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::PayloadTooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    parse_json(&body)
}

/// Parses a JSON object with errors naming the field path (`activities[0].type`, also for a
/// missing field), or `body` when the text is not well-formed JSON or not an object.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad("body", "must be a JSON object"));
    }
    // Well-formedness first: serde_json reports some type mismatches (a number where an enum is
    // expected) as syntax errors, so the typed pass alone cannot tell the two apart.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        let text = e.to_string();
        let message = text.split(" at line ").next().unwrap_or(&text);
        return Err(ApiError::bad("body", format!("malformed JSON: {message}")));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends " at line L column C"; the field name says more.
        let text = inner.to_string();
        let message = text.split(" at line ").next().unwrap_or(&text).to_owned();
        let parent = if path.is_empty() || path == "." || path == "?" {
            None
        } else {
            Some(path)
        };
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        let field = match (parent, missing) {
            (Some(p), Some(m)) => format!("{p}.{m}"),
            (None, Some(m)) => m,
            (Some(p), None) => p,
            (None, None) => "body".to_owned(),
        };
        ApiError::bad(field, message)
    })
}

/// Query parameters as a map (repeated keys: last wins).
pub fn query_map(req: &HttpRequest) -> Result<HashMap<String, String>, ApiError> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| ApiError::bad("query", e.to_string()))
}

pub fn parse_uuid(field: &str, value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value).map_err(|_| ApiError::bad(field, format!("{value:?} is not a UUID")))
}

/// `?flag=true|false`, absent = false.
pub fn bool_param(q: &HashMap<String, String>, field: &str) -> Result<bool, ApiError> {
    match q.get(field).map(|s| s.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(ApiError::bad(field, format!("{v:?} is not true or false"))),
    }
}

/// The `If-Match` revision, quoted or not; `*` means any.
pub fn if_match(req: &HttpRequest) -> Result<Option<Uuid>, ApiError> {
    let Some(v) = req.headers().get(actix_web::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::bad("If-Match", "not a revision"))?
        .trim();
    if v == "*" {
        return Ok(None);
    }
    let v = v.trim_start_matches("W/").trim_matches('"');
    parse_uuid("If-Match", v).map(Some)
}
