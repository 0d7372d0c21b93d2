//! One delivery attempt over HTTP, signed as Standard Webhooks, and what its answer means for the
//! dispatcher: delivered, gone (410 disables the subscription), or failed, with whether to count
//! the failure against the whole endpoint.

use std::time::Duration;

use chrono::Utc;

use super::retry::parse_retry_after;
use super::signing;
use crate::domain::Subscription;

/// Largest response body read from an endpoint; the rest is ignored.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How an attempt ended.
pub enum Outcome {
    Delivered(u16),
    Failed {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
        /// The failure says the endpoint as a whole is in trouble (no connection, a timeout, a
        /// 5xx or 429) and counts toward its circuit breaker; a 4xx about one delivery, or a
        /// refusal before any request was made, does not.
        endpoint_wide: bool,
    },
    Gone,
    /// The subscription is gone, disabled, or no longer authorized: drop silently.
    Dropped(&'static str),
}

impl Outcome {
    /// What an endpoint's answer with `status` means. 2xx delivered; 410 gone; anything else
    /// failed and retried, counted against the endpoint when it speaks for the endpoint as a whole
    /// (5xx, 429) rather than for one delivery (other 4xx).
    pub fn of_status(status: awc::http::StatusCode, retry_after: Option<Duration>) -> Outcome {
        if status.is_success() {
            return Outcome::Delivered(status.as_u16());
        }
        if status == awc::http::StatusCode::GONE {
            return Outcome::Gone;
        }
        Outcome::Failed {
            status: Some(status.as_u16()),
            error: format!("endpoint answered {status}"),
            retry_after,
            endpoint_wide: status.is_server_error()
                || status == awc::http::StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A failure decided before any request was made (circuit open, address refused, the store
    /// unavailable): retried, never counted against the endpoint.
    pub fn refused(error: impl Into<String>) -> Outcome {
        Outcome::Failed {
            status: None,
            error: error.into(),
            retry_after: None,
            endpoint_wide: false,
        }
    }
}

/// POSTs `body` as delivery `id` of `sub`, signed with each of the subscription's secrets.
pub async fn send(client: &awc::Client, sub: &Subscription, id: &str, body: &[u8]) -> Outcome {
    let now = Utc::now();
    let timestamp = now.timestamp();
    // Standard Webhooks: several signatures are separated by spaces; the receiver accepts any.
    let signature = sub
        .signing_secrets(now)
        .map(|secret| signing::sign(secret, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ");
    let request = client
        .post(&sub.end_point)
        .insert_header((
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        ))
        .insert_header(("webhook-id", id))
        .insert_header(("webhook-timestamp", timestamp.to_string()))
        .insert_header(("webhook-signature", signature));
    let mut resp = match request.send_body(body.to_vec()).await {
        Ok(r) => r,
        // No connection, a refused address, a timeout: the endpoint as a whole.
        Err(e) => {
            return Outcome::Failed {
                status: None,
                error: e.to_string(),
                retry_after: None,
                endpoint_wide: true,
            };
        }
    };
    // Read (at most 64 KiB of) the body so the connection can be reused; its content is ignored.
    let _ = resp.body().limit(MAX_RESPONSE_BYTES).await;
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    Outcome::of_status(resp.status(), retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use awc::http::StatusCode;

    fn endpoint_wide(status: u16) -> Option<bool> {
        match Outcome::of_status(StatusCode::from_u16(status).expect("status"), None) {
            Outcome::Failed { endpoint_wide, .. } => Some(endpoint_wide),
            _ => None,
        }
    }

    #[test]
    fn answers_are_delivered_gone_or_failed_and_only_endpoint_wide_failures_count() {
        assert!(matches!(
            Outcome::of_status(StatusCode::NO_CONTENT, None),
            Outcome::Delivered(204)
        ));
        assert!(matches!(
            Outcome::of_status(StatusCode::GONE, None),
            Outcome::Gone
        ));
        assert_eq!(endpoint_wide(500), Some(true));
        assert_eq!(endpoint_wide(503), Some(true));
        assert_eq!(endpoint_wide(429), Some(true));
        assert_eq!(endpoint_wide(400), Some(false));
        assert_eq!(endpoint_wide(404), Some(false));
        assert!(matches!(
            Outcome::refused("circuit open"),
            Outcome::Failed {
                endpoint_wide: false,
                status: None,
                ..
            }
        ));
    }
}
