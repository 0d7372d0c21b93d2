//! Verifies incoming bearer tokens (RS256, ES256, EdDSA) against the configured issuers' JWKS
//! (inline, file or URL, cached) and the development issuer, and turns the claims into a `Principal`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::principal::Principal;
use crate::config::AuthSettings;

/// Why a token was refused; every variant is a 401 to the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

enum JwksSource {
    Inline(JwkSet),
    File(PathBuf),
    Url(String),
}

struct Issuer {
    source: JwksSource,
    audience: Option<String>,
}

/// Shortest time between two fetches of one issuer's JWKS triggered by an unknown `kid`, so a flood
/// of tokens with random kids cannot turn into a flood of fetches.
const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Largest JWKS document accepted from a URL, in bytes.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Verified tokens remembered at once. A client sends the same bearer token with every request;
/// a signature check (tens of µs) is the largest part of a small request's CPU. When full, the
/// memory is emptied and refilled by the tokens in use.
const VERIFIED_KEEP: usize = 10_000;

pub struct TokenVerifier {
    issuers: HashMap<String, Issuer>,
    leeway: u64,
    cache_ttl: Duration,
    /// Fetched key sets of `File` and `Url` issuers, by issuer, with their fetch time. Written by
    /// `verify` after a fetch; the lock is never held across an await.
    cache: RwLock<HashMap<String, (Instant, JwkSet)>>,
    /// Tokens verified lately, with the principal they carry and until when the answer holds:
    /// their `exp`, and no longer than `jwks_cache_ttl` (so a key withdrawn from a JWKS stops
    /// counting as soon as the key set is fetched again). Written by `verify`; never held across
    /// an await.
    verified: std::sync::Mutex<HashMap<String, (Principal, Instant)>>,
}

impl TokenVerifier {
    /// `dev_issuer_jwks` is the development issuer's public key set when it is enabled.
    pub fn new(settings: &AuthSettings, dev_issuer_jwks: Option<Value>) -> anyhow::Result<Self> {
        let mut issuers = HashMap::new();
        for (i, cfg) in settings.issuers.iter().enumerate() {
            let source = if let Some(inline) = &cfg.jwks_inline {
                let set: JwkSet = serde_json::from_str(inline).map_err(|e| {
                    anyhow::anyhow!("invalid configuration: auth.issuers[{i}].jwks_inline: {e}")
                })?;
                JwksSource::Inline(set)
            } else if let Some(file) = &cfg.jwks_file {
                JwksSource::File(file.clone())
            } else if let Some(url) = &cfg.jwks_url {
                JwksSource::Url(url.clone())
            } else {
                anyhow::bail!("invalid configuration: auth.issuers[{i}] has no JWKS source");
            };
            issuers.insert(
                cfg.issuer.clone(),
                Issuer {
                    source,
                    audience: cfg.audience.clone(),
                },
            );
        }
        if let Some(jwks) = dev_issuer_jwks {
            let set: JwkSet = serde_json::from_value(jwks)?;
            issuers.insert(
                super::DEV_ISSUER.to_owned(),
                Issuer {
                    source: JwksSource::Inline(set),
                    audience: None,
                },
            );
        }
        Ok(TokenVerifier {
            issuers,
            leeway: settings.clock_leeway.as_secs(),
            cache_ttl: settings.jwks_cache_ttl,
            cache: RwLock::new(HashMap::new()),
            verified: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now = Instant::now();
        if let Some((principal, until)) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            && *until > now
        {
            return Ok(principal.clone());
        }
        let (principal, exp) = self.verify_signed(token).await?;
        let left = exp
            .and_then(|exp| u64::try_from(exp - chrono::Utc::now().timestamp()).ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let until = now + left.min(self.cache_ttl);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_KEEP {
            verified.clear();
        }
        verified.insert(token.to_owned(), (principal.clone(), until));
        Ok(principal)
    }

    /// Checks signature, issuer, audience and lifetime; returns the principal and the `exp` claim.
    async fn verify_signed(&self, token: &str) -> Result<(Principal, Option<i64>), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let iss =
            unverified_issuer(token).ok_or_else(|| AuthError::Invalid("no iss claim".into()))?;
        let issuer = self
            .issuers
            .get(&iss)
            .ok_or_else(|| AuthError::Invalid(format!("untrusted issuer {iss}")))?;
        let jwk = self.find_key(&iss, issuer, header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.set_issuer(&[&iss]);
        match &issuer.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                // Without this, a token lacking `aud` altogether would pass the audience check.
                validation.set_required_spec_claims(&["exp", "aud"]);
            }
            None => validation.validate_aud = false,
        }
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let exp = data.claims.get("exp").and_then(Value::as_i64);
        Ok((Principal::from_claims(&data.claims), exp))
    }

    async fn find_key(
        &self,
        iss: &str,
        issuer: &Issuer,
        kid: Option<&str>,
    ) -> Result<jsonwebtoken::jwk::Jwk, AuthError> {
        let pick = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        if let JwksSource::Inline(set) = &issuer.source {
            return pick(set).ok_or_else(|| AuthError::Invalid("unknown key id".into()));
        }
        let cached = self.cached(iss);
        if let Some((fetched, set)) = &cached {
            let fresh = fetched.elapsed() < self.cache_ttl;
            if let Some(jwk) = pick(set).filter(|_| fresh) {
                return Ok(jwk);
            }
            if fresh && fetched.elapsed() < REFETCH_MIN_INTERVAL {
                return Err(AuthError::Invalid("unknown key id".into()));
            }
        }
        let set = match &issuer.source {
            JwksSource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| AuthError::Invalid(format!("issuer keys unavailable: {e}")))?;
                serde_json::from_str::<JwkSet>(&text)
                    .map_err(|e| AuthError::Invalid(format!("issuer keys unreadable: {e}")))?
            }
            JwksSource::Url(url) => fetch_jwks(url).await?,
            JwksSource::Inline(_) => unreachable!("handled above"),
        };
        let found = pick(&set);
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(iss.to_owned(), (Instant::now(), set));
        }
        found.ok_or_else(|| AuthError::Invalid("unknown key id".into()))
    }

    fn cached(&self, iss: &str) -> Option<(Instant, JwkSet)> {
        self.cache.read().ok()?.get(iss).cloned()
    }
}

async fn fetch_jwks(url: &str) -> Result<JwkSet, AuthError> {
    let unavailable = |e: String| AuthError::Invalid(format!("issuer keys unavailable: {e}"));
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!("{url} answered {}", resp.status())));
    }
    resp.json::<JwkSet>()
        .limit(MAX_JWKS_BYTES)
        .await
        .map_err(|e| unavailable(e.to_string()))
}

/// The `iss` claim before verification, to choose which keys verify the token.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}
