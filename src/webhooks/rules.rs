//! Subscription rules: what a new webhook subscription must satisfy before it is stored (a
//! reachable endpoint, a resource, well-formed filters) and whether its consumer may receive what
//! it asks for. The HTTP layer maps a refusal to its status; the dispatcher applies the same
//! receive rule (`Policy::may_receive_event`) before every attempt.

use chrono::Utc;
use uuid::Uuid;

use super::{guard, signing};
use crate::config::WebhookSettings;
use crate::domain::{Party, Policy, ResourceUrn, Subscription};

/// A subscription as its consumer asks for it.
pub struct NewSubscription {
    pub end_point: String,
    pub resource_filter: String,
    pub subject_filter: Option<String>,
    pub type_filter: Option<String>,
    pub source_filter: Option<String>,
    pub include_subunits: bool,
}

/// Why a subscription is not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// A field is malformed (400, naming the field).
    Field {
        field: &'static str,
        message: String,
    },
    /// The consumer may not receive the events it asks for (403).
    Forbidden(String),
}

fn bad(field: &'static str, message: impl Into<String>) -> Refused {
    Refused::Field {
        field,
        message: message.into(),
    }
}

/// A filter that is given must say something: an empty one is refused rather than read as "all".
fn non_empty(field: &'static str, value: Option<String>) -> Result<Option<String>, Refused> {
    match value {
        Some(v) if v.trim().is_empty() => Err(bad(
            field,
            "must not be empty (leave it out to match everything)",
        )),
        other => Ok(other),
    }
}

/// The fields of a subscription, checked; `admit` then checks who asks for it.
pub struct Checked {
    new: NewSubscription,
    resource: ResourceUrn,
}

impl NewSubscription {
    /// Checks every field, in the order a client reads the errors: endpoint, resource, filters.
    pub fn check(self, hooks: &WebhookSettings) -> Result<Checked, Refused> {
        guard::check_url(
            &self.end_point,
            hooks.allow_http,
            hooks.allow_private_networks,
        )
        .map_err(|why| bad("endPoint", why))?;
        if self.resource_filter.trim().is_empty() {
            return Err(bad("resourceFilter", "must not be empty"));
        }
        let resource = ResourceUrn::parse(&self.resource_filter)
            .map_err(|e| bad("resourceFilter", e.to_string()))?;
        let new = NewSubscription {
            subject_filter: non_empty("subjectFilter", self.subject_filter)?,
            type_filter: non_empty("typeFilter", self.type_filter)?,
            source_filter: non_empty("sourceFilter", self.source_filter)?,
            ..self
        };
        if let Some(t) = &new.type_filter
            && t.trim_end_matches('*').contains('*')
        {
            return Err(bad(
                "typeFilter",
                "'*' is allowed only at the end, as a prefix wildcard",
            ));
        }
        Ok(Checked { new, resource })
    }
}

impl Checked {
    /// The subscription `consumer` gets, if the policy lets it receive events of the resource (and
    /// subject) it asks for: not validated yet, with a new secret.
    pub fn admit(self, consumer: &Party, policy: &Policy) -> Result<Subscription, Refused> {
        let Checked { new, resource } = self;
        if !policy.may_receive(consumer, &resource, new.subject_filter.as_deref()) {
            return Err(Refused::Forbidden(format!(
                "{consumer} may not receive events of {resource}{}",
                new.subject_filter
                    .as_deref()
                    .map(|s| format!(" about {s}"))
                    .unwrap_or_default()
            )));
        }
        Ok(Subscription {
            id: Uuid::now_v7(),
            end_point: new.end_point,
            resource_filter: resource.to_string(),
            subject_filter: new.subject_filter,
            type_filter: new.type_filter,
            source_filter: new.source_filter,
            include_subunits: new.include_subunits,
            consumer: consumer.urn(),
            created_by: consumer.urn(),
            created: Utc::now(),
            validated: false,
            secret: signing::new_secret(),
            previous_secret: None,
            previous_secret_until: None,
            disabled: false,
            disabled_reason: None,
        })
    }
}

/// The stored subscription `candidate` repeats (same consumer, endpoint and filters), if any: a
/// re-POST returns it instead of making a second one.
pub fn existing(stored: Vec<Subscription>, candidate: &Subscription) -> Option<Subscription> {
    stored.into_iter().find(|s| s.same_as(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DelegationEntry, ResourceEntry};

    fn hooks() -> WebhookSettings {
        crate::config::Settings::from_toml(
            "[webhooks]\nallow_http = true\nallow_private_networks = true",
        )
        .expect("settings")
        .webhooks
    }

    fn owner() -> Party {
        Party::organization("991825827").expect("org")
    }

    fn policy() -> Policy {
        Policy::new(
            vec![ResourceEntry {
                id: ResourceUrn::parse("urn:altinn:resource:a").expect("urn"),
                owner: owner(),
                subscribers: vec![],
            }],
            Vec::<DelegationEntry>::new(),
        )
    }

    fn new(resource: &str) -> NewSubscription {
        NewSubscription {
            end_point: "http://127.0.0.1:9/hook".into(),
            resource_filter: resource.into(),
            subject_filter: None,
            type_filter: None,
            source_filter: None,
            include_subunits: false,
        }
    }

    fn field_of(r: Result<Checked, Refused>) -> &'static str {
        match r {
            Err(Refused::Field { field, .. }) => field,
            Err(other) => panic!("refused otherwise: {other:?}"),
            Ok(_) => panic!("admitted"),
        }
    }

    #[test]
    fn each_malformed_field_is_refused_by_name() {
        let a = "urn:altinn:resource:a";
        let no_url = NewSubscription {
            end_point: "not a url".into(),
            ..new(a)
        };
        assert_eq!(field_of(no_url.check(&hooks())), "endPoint");
        assert_eq!(field_of(new(" ").check(&hooks())), "resourceFilter");
        assert_eq!(field_of(new("not-a-urn").check(&hooks())), "resourceFilter");
        let empty_subject = NewSubscription {
            subject_filter: Some(" ".into()),
            ..new(a)
        };
        assert_eq!(field_of(empty_subject.check(&hooks())), "subjectFilter");
        let inner_wildcard = NewSubscription {
            type_filter: Some("dialogporten.*.created".into()),
            ..new(a)
        };
        assert_eq!(field_of(inner_wildcard.check(&hooks())), "typeFilter");
        let prefix = NewSubscription {
            type_filter: Some("dialogporten.dialog.*".into()),
            ..new(a)
        };
        assert!(
            prefix.check(&hooks()).is_ok(),
            "a trailing wildcard is a prefix"
        );
    }

    #[test]
    fn the_policy_decides_who_may_subscribe_and_a_repeat_finds_the_first() {
        let stranger = Party::organization("912345678").expect("org");
        let refused = new("urn:altinn:resource:a")
            .check(&hooks())
            .expect("fields")
            .admit(&stranger, &policy());
        assert!(matches!(refused, Err(Refused::Forbidden(_))), "{refused:?}");

        let first = new("urn:altinn:resource:a")
            .check(&hooks())
            .expect("fields")
            .admit(&owner(), &policy())
            .expect("the owner may subscribe");
        assert!(!first.validated);
        assert_eq!(first.consumer, owner().urn());
        let again = new("urn:altinn:resource:a")
            .check(&hooks())
            .expect("fields")
            .admit(&owner(), &policy())
            .expect("again");
        assert_ne!(again.id, first.id);
        let found = existing(vec![first.clone()], &again).expect("the same subscription");
        assert_eq!(found.id, first.id);
        let other_endpoint = Subscription {
            end_point: "http://127.0.0.1:9/other".into(),
            ..again
        };
        assert!(existing(vec![first], &other_endpoint).is_none());
    }
}
