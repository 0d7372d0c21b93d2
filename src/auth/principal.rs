//! The authenticated caller: the party a verified token speaks for and the scopes it grants.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::domain::Party;

/// Scopes the API checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    EndUser,
    ServiceOwner,
    EventsSubscribe,
    EventsPublish,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EndUser => "digdir:dialogporten",
            Scope::ServiceOwner => "digdir:dialogporten.serviceprovider",
            Scope::EventsSubscribe => "altinn:events.subscribe",
            Scope::EventsPublish => "altinn:events.publish",
            Scope::Admin => "dialog-events:admin",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub party: Option<Party>,
    pub scopes: BTreeSet<String>,
}

impl Principal {
    /// Reads `pid` (person) or `consumer` (organisation, Maskinporten object or plain URN) and `scope`.
    pub fn from_claims(claims: &Value) -> Principal {
        let party = claims
            .get("pid")
            .and_then(Value::as_str)
            .and_then(|pid| Party::person(pid).ok())
            .or_else(|| claims.get("consumer").and_then(consumer_party));
        let scopes = claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Principal { party, scopes }
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope.as_str())
    }
}

fn consumer_party(consumer: &Value) -> Option<Party> {
    match consumer {
        Value::String(urn) => Party::parse(urn)
            .ok()
            .filter(|p| matches!(p, Party::Organization(_))),
        Value::Object(obj) => {
            if obj.get("authority").and_then(Value::as_str) != Some("iso6523-actorid-upis") {
                return None;
            }
            let id = obj.get("ID").and_then(Value::as_str)?;
            Party::organization(id.strip_prefix("0192:")?).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pid_claim_gives_a_person_party() {
        let p =
            Principal::from_claims(&json!({"pid": "08895699684", "scope": "digdir:dialogporten"}));
        assert_eq!(p.party, Some(Party::Person("08895699684".into())));
        assert!(p.has(Scope::EndUser));
        assert!(!p.has(Scope::ServiceOwner));
    }

    #[test]
    fn both_consumer_forms_give_an_organization_party() {
        let a = Principal::from_claims(
            &json!({"consumer": {"authority": "iso6523-actorid-upis", "ID": "0192:991825827"}}),
        );
        let b = Principal::from_claims(
            &json!({"consumer": "urn:altinn:organization:identifier-no:991825827"}),
        );
        assert_eq!(a.party, Some(Party::Organization("991825827".into())));
        assert_eq!(a.party, b.party);
    }

    #[test]
    fn malformed_consumer_gives_no_party() {
        for c in [
            json!({"authority": "other", "ID": "0192:991825827"}),
            json!({"authority": "iso6523-actorid-upis", "ID": "991825827"}),
            json!("urn:altinn:person:identifier-no:08895699684"),
            json!(42),
        ] {
            assert_eq!(
                Principal::from_claims(&json!({ "consumer": c })).party,
                None
            );
        }
    }
}
