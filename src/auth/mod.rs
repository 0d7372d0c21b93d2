//! Who is calling and what they may do: incoming JWT verification (configured issuers and the
//! development issuer), dialog tokens (Ed25519) and the authorization policy over the resource registry.

pub mod dialog_token;
pub mod keys;
pub mod principal;
pub mod source;
pub mod verifier;

pub use crate::domain::Policy;
pub use dialog_token::{DialogTokenClaims, DialogTokens};
pub use keys::{KeyStore, SigningKey};
pub use principal::{Principal, Scope};
pub use source::KeySource;
pub use verifier::{AuthError, TokenVerifier};

/// Issuer (`iss`) of tokens minted by the built-in development issuer.
pub const DEV_ISSUER: &str = "urn:dialog-events:dev-issuer";

use std::time::Duration;

use serde_json::json;

use crate::domain::Party;

/// A token of the development issuer: `scope` as given, `pid` for a person, Maskinporten-style
/// `consumer` for an organisation.
pub fn dev_token(key: &SigningKey, scope: &str, party: Option<&Party>, ttl: Duration) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": DEV_ISSUER,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "nbf": now,
        "exp": now + ttl.as_secs() as i64,
        "scope": scope,
    });
    match party {
        Some(Party::Person(pid)) => {
            claims["pid"] = json!(pid);
            claims["sub"] = json!(pid);
        }
        Some(Party::Organization(org)) => {
            claims["consumer"] =
                json!({"authority": "iso6523-actorid-upis", "ID": format!("0192:{org}")});
            claims["sub"] = json!(org);
        }
        None => {}
    }
    key.sign_jwt(&claims)
}
