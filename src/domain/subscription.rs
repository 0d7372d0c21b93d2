//! Webhook subscriptions (Altinn Events compatible): filters and their matching, delivery records
//! and dead letters. Pure types; the dispatcher and the store build on them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::event::CloudEvent;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: Uuid,
    pub end_point: String,
    pub resource_filter: String,
    #[serde(default)]
    pub subject_filter: Option<String>,
    #[serde(default)]
    pub type_filter: Option<String>,
    #[serde(default)]
    pub source_filter: Option<String>,
    #[serde(default)]
    pub include_subunits: bool,
    /// The party the subscription delivers for (authorization is checked against it).
    pub consumer: String,
    pub created_by: String,
    pub created: DateTime<Utc>,
    pub validated: bool,
    /// `whsec_` + base64 of the HMAC key.
    pub secret: String,
    /// The secret before the last rotation: deliveries are signed with it too until
    /// `previous_secret_until`, so a receiver can switch keys without losing any delivery.
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_secret_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub disabled_reason: Option<String>,
}

impl Subscription {
    /// Whether `event` passes the filters: exact matches, `typeFilter` with a trailing `*` as prefix.
    pub fn matches(&self, event: &CloudEvent) -> bool {
        let exact = |filter: &Option<String>, value: Option<&str>| {
            filter.as_deref().is_none_or(|f| value == Some(f))
        };
        let type_ok = match self.type_filter.as_deref() {
            None => true,
            Some(f) => match f.strip_suffix('*') {
                Some(prefix) => event.kind.starts_with(prefix),
                None => event.kind == f,
            },
        };
        event.resource.as_deref() == Some(self.resource_filter.as_str())
            && exact(&self.subject_filter, event.subject.as_deref())
            && exact(&self.source_filter, Some(event.source.as_str()))
            && type_ok
    }

    /// The secrets deliveries are signed with at `now`: the current one, then the previous one
    /// while it is still honoured.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> impl Iterator<Item = &str> {
        let previous = self
            .previous_secret
            .as_deref()
            .filter(|_| self.previous_secret_until.is_some_and(|until| until > now));
        std::iter::once(self.secret.as_str()).chain(previous)
    }

    /// Applies `change` in place. The store applies changes inside one atomic read-modify-write, so
    /// a change made from an older copy (a validation finishing after a secret rotation) never
    /// undoes another.
    pub fn apply(&mut self, change: &SubscriptionChange) {
        match change {
            SubscriptionChange::Validated => self.validated = true,
            SubscriptionChange::Disabled { reason } => {
                self.disabled = true;
                self.disabled_reason = Some(reason.clone());
            }
            SubscriptionChange::SecretRotated {
                secret,
                previous_until,
            } => {
                self.previous_secret = Some(std::mem::replace(&mut self.secret, secret.clone()));
                self.previous_secret_until = Some(*previous_until);
            }
        }
    }

    /// Same consumer, endpoint and filters: a re-POST of this subscription.
    pub fn same_as(&self, other: &Subscription) -> bool {
        self.consumer == other.consumer
            && self.end_point == other.end_point
            && self.resource_filter == other.resource_filter
            && self.subject_filter == other.subject_filter
            && self.type_filter == other.type_filter
            && self.source_filter == other.source_filter
            && self.include_subunits == other.include_subunits
    }
}

/// One change to a stored subscription, made without rewriting the rest of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionChange {
    /// The endpoint answered the validation handshake.
    Validated,
    /// Deliveries stop (the endpoint answered 410 Gone).
    Disabled { reason: String },
    /// `secret` becomes current; the old one keeps signing beside it until `previous_until`.
    SecretRotated {
        secret: String,
        previous_until: DateTime<Utc>,
    },
}

/// One delivery attempt, as `GET …/subscriptions/{id}/deliveries` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub event_id: String,
    pub attempt: u32,
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
    pub duration_ms: u64,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub next_attempt: Option<DateTime<Utc>>,
}

/// A delivery not finished yet, kept in the store so a node taking over the dispatcher resumes it
/// (with its attempt count) instead of losing it or sending it again from the start of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingDelivery {
    pub subscription: Uuid,
    pub event: CloudEvent,
    /// Global log position of the event (0 for replays and redrives).
    pub position: u64,
    pub attempts: u32,
    #[serde(default)]
    pub last_status: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the next attempt is due (absent: at once).
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
}

impl PendingDelivery {
    /// Identity in the store: subscription, position and event id.
    pub fn key(subscription: Uuid, position: u64, event_id: &str) -> String {
        format!("{subscription}|{position}|{event_id}")
    }
}

/// A delivery that failed its last attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub event: CloudEvent,
    pub attempts: u32,
    #[serde(default)]
    pub last_status: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    pub dead_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, subject: &str) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".into(),
            id: "1".into(),
            kind: kind.into(),
            time: "2026-01-01T00:00:00Z".into(),
            source: "https://s/1".into(),
            subject: Some(subject.into()),
            resource: Some("urn:altinn:resource:r".into()),
            resourceinstance: None,
            dialogsequence: None,
            datacontenttype: None,
            data: None,
            extensions: Default::default(),
        }
    }

    fn sub(type_filter: Option<&str>, subject: Option<&str>) -> Subscription {
        Subscription {
            id: Uuid::nil(),
            end_point: "https://e".into(),
            resource_filter: "urn:altinn:resource:r".into(),
            subject_filter: subject.map(str::to_owned),
            type_filter: type_filter.map(str::to_owned),
            source_filter: None,
            include_subunits: false,
            consumer: "c".into(),
            created_by: "c".into(),
            created: Utc::now(),
            validated: true,
            secret: "new".into(),
            previous_secret: None,
            previous_secret_until: None,
            disabled: false,
            disabled_reason: None,
        }
    }

    #[test]
    fn a_rotated_secret_signs_beside_the_new_one_until_its_grace_ends() {
        let now = Utc::now();
        let mut s = sub(None, None);
        assert_eq!(s.signing_secrets(now).collect::<Vec<_>>(), ["new"]);
        s.previous_secret = Some("old".into());
        s.previous_secret_until = Some(now + chrono::Duration::hours(24));
        assert_eq!(s.signing_secrets(now).collect::<Vec<_>>(), ["new", "old"]);
        let later = now + chrono::Duration::hours(25);
        assert_eq!(s.signing_secrets(later).collect::<Vec<_>>(), ["new"]);
    }

    #[test]
    fn type_filter_matches_exactly_or_by_prefix_with_a_star() {
        let e = event("dialogporten.dialog.activity.payment-made.v1", "p");
        assert!(sub(None, None).matches(&e));
        assert!(sub(Some("dialogporten.dialog.activity.payment-made.v1"), None).matches(&e));
        assert!(sub(Some("dialogporten.dialog.activity.*"), None).matches(&e));
        assert!(!sub(Some("dialogporten.dialog.activity."), None).matches(&e));
        assert!(!sub(Some("dialogporten.dialog.created.v1"), None).matches(&e));
    }

    #[test]
    fn subject_and_resource_filters_match_exactly() {
        let e = event("t", "urn:p:1");
        assert!(sub(None, Some("urn:p:1")).matches(&e));
        assert!(!sub(None, Some("urn:p:2")).matches(&e));
        let mut other = sub(None, None);
        other.resource_filter = "urn:altinn:resource:other".into();
        assert!(!other.matches(&e));
    }
}
