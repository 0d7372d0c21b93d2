//! The one boundary that turns errors into `application/problem+json` (RFC 9457): 4xx with a detail
//! naming the field, 5xx opaque and logged once with its cause.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::dialogs::CommandError;
use crate::domain::InputError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the resource's revision does not match If-Match")]
    PreconditionFailed,
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "Bad Request",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound(_) => "Not Found",
            ApiError::Gone(_) => "Gone",
            ApiError::Conflict(_) => "Conflict",
            ApiError::PreconditionFailed => "Precondition Failed",
            ApiError::PayloadTooLarge(_) => "Payload Too Large",
            ApiError::UnsupportedMediaType(_) => "Unsupported Media Type",
            ApiError::Unavailable(_) => "Service Unavailable",
            ApiError::Internal(_) => "Internal Server Error",
        }
    }
}

/// A problem+json response for `status` with `detail`.
pub fn problem(status: StatusCode, title: &str, detail: &str, field: Option<&str>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .body(problem_body(status, title, detail, field))
}

/// The JSON of a problem, for answers written outside actix-web (a refused WebSocket upgrade).
pub fn problem_body(status: StatusCode, title: &str, detail: &str, field: Option<&str>) -> String {
    let body = super::views::Problem {
        kind: format!(
            "https://datatracker.ietf.org/doc/html/rfc9110#status.{}",
            status.as_u16()
        ),
        title: title.to_owned(),
        status: status.as_u16(),
        detail: detail.to_owned(),
        errors: field.map(|f| std::iter::once((f.to_owned(), vec![detail.to_owned()])).collect()),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut resp = match self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                problem(status, self.title(), "an internal error occurred", None)
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "request refused: backend unavailable");
                problem(
                    status,
                    self.title(),
                    "a backend is unavailable; nothing was written, try again",
                    None,
                )
            }
            ApiError::BadRequest { field, .. } => {
                problem(status, self.title(), &self.to_string(), Some(field))
            }
            _ => problem(status, self.title(), &self.to_string(), None),
        };
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::BadRequest {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            StoreError::AlreadyExists => ApiError::Conflict(e.to_string()),
            StoreError::Conflict => ApiError::Conflict(e.to_string()),
            StoreError::PolicyMoved => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound => ApiError::NotFound("dialog not found".into()),
            CommandError::Gone => ApiError::Gone("the dialog is deleted".into()),
            CommandError::Forbidden(why) => ApiError::Forbidden(why.into()),
            CommandError::PreconditionFailed => ApiError::PreconditionFailed,
            CommandError::AlreadyExists => {
                ApiError::Conflict("a dialog with this id already exists".into())
            }
            CommandError::Invalid(e) => e.into(),
            CommandError::Unavailable(why) => ApiError::Unavailable(why),
        }
    }
}
