//! Dialog tokens as Dialogporten issues them: a compact EdDSA JWS with claims
//! `jti c l p s i a iss iat nbf exp`, signed with the primary key; primary and next are published,
//! and keys retired by a rotation keep verifying (and stay published) until their tokens expire.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::keys::{KeyStore, SigningKey};

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
    /// Swapped whole when the keys are rotated.
    keys: RwLock<Arc<DialogKeys>>,
    issuer: String,
    ttl: Duration,
}

struct DialogKeys {
    primary: SigningKey,
    next: SigningKey,
    retired: Vec<SigningKey>,
}

/// Authentication level written into `l` (ID-porten substantial/high login as Dialogporten assumes).
const AUTH_LEVEL: u8 = 3;

impl DialogTokens {
    pub fn new(primary: SigningKey, next: SigningKey, base_url: &str, ttl: Duration) -> Self {
        DialogTokens {
            keys: RwLock::new(Arc::new(DialogKeys {
                primary,
                next,
                retired: Vec::new(),
            })),
            issuer: format!("{base_url}/api/v1"),
            ttl,
        }
    }

    /// From a key store, with its retired keys.
    pub fn from_keys(keys: &KeyStore, base_url: &str, ttl: Duration) -> Self {
        let tokens = Self::new(
            keys.dialog_primary.clone(),
            keys.dialog_next.clone(),
            base_url,
            ttl,
        );
        tokens.set_keys(keys);
        tokens
    }

    /// Takes the dialog-token keys of `keys` (after a rotation): new tokens are signed with its
    /// primary; its next and retired keys verify.
    pub fn set_keys(&self, keys: &KeyStore) {
        let fresh = Arc::new(DialogKeys {
            primary: keys.dialog_primary.clone(),
            next: keys.dialog_next.clone(),
            retired: keys.dialog_retired.iter().map(|r| r.key.clone()).collect(),
        });
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// The key ids in use: primary, next, retired.
    pub fn kids(&self) -> Vec<String> {
        let keys = self.current();
        [&keys.primary, &keys.next]
            .into_iter()
            .chain(&keys.retired)
            .map(|k| k.kid.clone())
            .collect()
    }

    fn current(&self) -> Arc<DialogKeys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
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
        self.current().primary.sign_jwt(&claims)
    }

    /// Verifies signature (primary, next or a retired key), issuer and lifetime; returns the
    /// claims.
    pub fn verify(&self, token: &str) -> Option<DialogTokenClaims> {
        let keys = self.current();
        let claims = [&keys.primary, &keys.next]
            .into_iter()
            .chain(&keys.retired)
            .find_map(|k| k.verify_jwt(token))?;
        let claims: DialogTokenClaims = serde_json::from_value(claims).ok()?;
        let now = Utc::now().timestamp();
        (claims.iss == self.issuer && claims.nbf <= now + 30 && claims.exp > now).then_some(claims)
    }

    /// `GET /api/v1/.well-known/jwks.json`: primary first, then next, then retired keys.
    pub fn jwks(&self) -> Value {
        let keys = self.current();
        let all: Vec<Value> = [&keys.primary, &keys.next]
            .into_iter()
            .chain(&keys.retired)
            .map(SigningKey::public_jwk)
            .collect();
        json!({ "keys": all })
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
