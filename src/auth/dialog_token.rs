//! Dialog tokens as Dialogporten issues them: a compact EdDSA JWS with claims
//! `jti c l p s i a iss iat nbf exp`, signed with the primary key; primary and next are published.

use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::keys::SigningKey;

/// The claims of a dialog token, named as Dialogporten names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogTokenClaims {
    pub jti: String,
    /// Authenticated party (the caller, or the `endUserId` a service owner acted for).
    pub c: String,
    /// Authentication level.
    pub l: u8,
    /// The dialog's party.
    pub p: String,
    /// The dialog's service resource.
    pub s: String,
    /// The dialog id.
    pub i: String,
    /// Granted actions, e.g. `read`.
    pub a: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

pub struct DialogTokens {
    primary: SigningKey,
    next: SigningKey,
    issuer: String,
    ttl: Duration,
}

/// Authentication level written into `l` (ID-porten substantial/high login as Dialogporten assumes).
const AUTH_LEVEL: u8 = 3;

impl DialogTokens {
    pub fn new(primary: SigningKey, next: SigningKey, base_url: &str, ttl: Duration) -> Self {
        DialogTokens {
            primary,
            next,
            issuer: format!("{base_url}/api/v1"),
            ttl,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn issue(
        &self,
        dialog_id: Uuid,
        party: &str,
        resource: &str,
        caller: &str,
        actions: &str,
    ) -> String {
        let now = Utc::now().timestamp();
        let claims = json!({
            "jti": Uuid::new_v4().to_string(),
            "c": caller,
            "l": AUTH_LEVEL,
            "p": party,
            "s": resource,
            "i": dialog_id.to_string(),
            "a": actions,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl.as_secs() as i64,
        });
        self.primary.sign_jwt(&claims)
    }

    /// Verifies signature (primary or next key), issuer and lifetime; returns the claims.
    pub fn verify(&self, token: &str) -> Option<DialogTokenClaims> {
        let claims = self
            .primary
            .verify_jwt(token)
            .or_else(|| self.next.verify_jwt(token))?;
        let claims: DialogTokenClaims = serde_json::from_value(claims).ok()?;
        let now = Utc::now().timestamp();
        (claims.iss == self.issuer && claims.nbf <= now + 30 && claims.exp > now).then_some(claims)
    }

    /// `GET /api/v1/.well-known/jwks.json`: primary first, then next.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.primary.public_jwk(), self.next.public_jwk()]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_token_verifies_and_carries_claims() {
        let tokens = DialogTokens::new(
            SigningKey::generate(),
            SigningKey::generate(),
            "http://h",
            Duration::from_secs(600),
        );
        let id = Uuid::now_v7();
        let t = tokens.issue(id, "urn:p", "urn:altinn:resource:r", "urn:c", "read");
        let c = tokens.verify(&t).expect("valid");
        assert_eq!(c.i, id.to_string());
        assert_eq!(c.iss, "http://h/api/v1");
        assert_eq!(c.exp - c.iat, 600);
    }

    #[test]
    fn expired_token_is_refused() {
        let tokens = DialogTokens::new(
            SigningKey::generate(),
            SigningKey::generate(),
            "http://h",
            Duration::ZERO,
        );
        let t = tokens.issue(Uuid::now_v7(), "p", "s", "c", "read");
        assert!(tokens.verify(&t).is_none());
    }
}
