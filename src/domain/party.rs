//! Party and resource URNs (`urn:altinn:person:identifier-no:…`, `urn:altinn:organization:identifier-no:…`,
//! `urn:altinn:resource:…`): parsing with precise errors, used by the API, the policy and the events.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const PERSON_PREFIX: &str = "urn:altinn:person:identifier-no:";
const ORG_PREFIX: &str = "urn:altinn:organization:identifier-no:";
const RESOURCE_PREFIX: &str = "urn:altinn:resource:";

/// A party a dialog belongs to or a token speaks for: a person (11-digit national identity number)
/// or an organisation (9-digit organisation number).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Party {
    Person(String),
    Organization(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrnError {
    #[error(
        "expected a party URN (urn:altinn:person:identifier-no:<11 digits> or urn:altinn:organization:identifier-no:<9 digits>)"
    )]
    BadParty,
    #[error(
        "expected a resource URN (urn:altinn:resource:<id> with id of letters, digits, '-' and '_')"
    )]
    BadResource,
}

fn all_digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

impl Party {
    pub fn person(pid: &str) -> Result<Self, UrnError> {
        if all_digits(pid, 11) {
            Ok(Party::Person(pid.to_owned()))
        } else {
            Err(UrnError::BadParty)
        }
    }

    pub fn organization(orgnr: &str) -> Result<Self, UrnError> {
        if all_digits(orgnr, 9) {
            Ok(Party::Organization(orgnr.to_owned()))
        } else {
            Err(UrnError::BadParty)
        }
    }

    pub fn parse(urn: &str) -> Result<Self, UrnError> {
        if let Some(pid) = urn.strip_prefix(PERSON_PREFIX) {
            Party::person(pid)
        } else if let Some(org) = urn.strip_prefix(ORG_PREFIX) {
            Party::organization(org)
        } else {
            Err(UrnError::BadParty)
        }
    }

    pub fn urn(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Person(pid) => write!(f, "{PERSON_PREFIX}{pid}"),
            Party::Organization(org) => write!(f, "{ORG_PREFIX}{org}"),
        }
    }
}

impl Serialize for Party {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Party {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Party::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A service resource URN, e.g. `urn:altinn:resource:super-simple-service`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceUrn(String);

impl ResourceUrn {
    pub fn parse(urn: &str) -> Result<Self, UrnError> {
        let id = urn
            .strip_prefix(RESOURCE_PREFIX)
            .ok_or(UrnError::BadResource)?;
        let ok = !id.is_empty()
            && id.len() <= 255
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(ResourceUrn(urn.to_owned()))
        } else {
            Err(UrnError::BadResource)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceUrn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ResourceUrn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ResourceUrn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ResourceUrn::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// In the API both are URN strings.
impl utoipa::PartialSchema for Party {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A party URN: urn:altinn:person:identifier-no:{11 digits} or \
                 urn:altinn:organization:identifier-no:{9 digits}",
            ))
            .examples(["urn:altinn:person:identifier-no:08895699684"])
            .into()
    }
}

impl utoipa::ToSchema for Party {}

impl utoipa::PartialSchema for ResourceUrn {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^urn:altinn:resource:[A-Za-z0-9_-]{1,255}$"))
            .examples(["urn:altinn:resource:super-simple-service"])
            .into()
    }
}

impl utoipa::ToSchema for ResourceUrn {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn person_urn_round_trips() {
        let p = Party::parse("urn:altinn:person:identifier-no:08895699684").expect("valid");
        assert_eq!(p, Party::Person("08895699684".into()));
        assert_eq!(p.urn(), "urn:altinn:person:identifier-no:08895699684");
    }

    #[test]
    fn organization_urn_round_trips() {
        let p = Party::parse("urn:altinn:organization:identifier-no:991825827").expect("valid");
        assert_eq!(p, Party::Organization("991825827".into()));
        assert_eq!(
            p.to_string(),
            "urn:altinn:organization:identifier-no:991825827"
        );
    }

    #[test]
    fn party_urns_with_wrong_length_prefix_or_letters_are_rejected() {
        for bad in [
            "",
            "urn:altinn:person:identifier-no:123",
            "urn:altinn:person:identifier-no:0889569968a",
            "urn:altinn:organization:identifier-no:99182582",
            "urn:altinn:organization:identifier-no:9918258270",
            "urn:altinn:org:identifier-no:991825827",
            "991825827",
        ] {
            assert_eq!(Party::parse(bad), Err(UrnError::BadParty), "{bad}");
        }
    }

    #[test]
    fn resource_urns_need_prefix_and_plain_id() {
        assert!(ResourceUrn::parse("urn:altinn:resource:super-simple_service1").is_ok());
        for bad in [
            "urn:altinn:resource:",
            "urn:altinn:resource:has space",
            "urn:altinn:resource:a/b",
            "resource:x",
        ] {
            assert_eq!(ResourceUrn::parse(bad), Err(UrnError::BadResource), "{bad}");
        }
    }
}
