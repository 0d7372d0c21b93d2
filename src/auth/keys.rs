//! Ed25519 signing keys: generation, persistence (a JSON file in `data_dir` in embedded mode),
//! compact JWS signing and their public JWK form.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One Ed25519 key with its key id.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    pub fn generate() -> Self {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        Self::from_key(key)
    }

    fn from_key(key: ed25519_dalek::SigningKey) -> Self {
        // The kid is derived from the public key so every node holding the key names it alike.
        let public = key.verifying_key().to_bytes();
        let kid = format!("de-{}", URL_SAFE_NO_PAD.encode(&public[..9]));
        SigningKey { kid, key }
    }

    fn from_seed(seed_b64: &str) -> anyhow::Result<Self> {
        let bytes = STANDARD
            .decode(seed_b64)
            .context("failed to decode key seed")?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("key seed must be 32 bytes"))?;
        Ok(Self::from_key(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    fn seed_b64(&self) -> String {
        STANDARD.encode(self.key.to_bytes())
    }

    /// A compact JWS (`header.payload.signature`) over `claims`, header `{"alg":"EdDSA","typ":"JWT","kid":…}`.
    pub fn sign_jwt(&self, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.key.sign(out.as_bytes());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        out
    }

    /// Checks a compact JWS made by this key; returns the claims.
    pub fn verify_jwt(&self, token: &str) -> Option<Value> {
        let (signed, sig) = token.rsplit_once('.')?;
        let (header, payload) = signed.split_once('.')?;
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg")? != "EdDSA" || header.get("kid")? != self.kid.as_str() {
            return None;
        }
        let sig: [u8; 64] = URL_SAFE_NO_PAD.decode(sig).ok()?.try_into().ok()?;
        self.key
            .verifying_key()
            .verify_strict(
                signed.as_bytes(),
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    /// The public half as a JWK (RFC 8037 OKP).
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "use": "sig",
            "alg": "EdDSA",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes()),
        })
    }
}

/// The keys as JSON (`keys.json`, `auth.keys_file`, the cluster's copy in Redis): base64 seeds
/// of the Ed25519 keys.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    dev_issuer: String,
    dialog_token_primary: String,
    dialog_token_next: String,
    /// Former primaries, kept so the dialog tokens they signed verify until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dialog_token_retired: Vec<RetiredSeed>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredSeed {
    key: String,
    /// When it stopped signing (Unix seconds).
    retired_at: i64,
}

/// A former primary dialog-token key: it signs no more, and verifies what it signed until the
/// longest lifetime of a dialog token has passed.
#[derive(Clone)]
pub struct RetiredKey {
    pub key: SigningKey,
    pub retired_at: i64,
}

/// The node's keys: the development issuer's key and the dialog-token keys (primary signs, next
/// is published ahead of rotation, retired ones still verify).
#[derive(Clone)]
pub struct KeyStore {
    pub dev_issuer: SigningKey,
    pub dialog_primary: SigningKey,
    pub dialog_next: SigningKey,
    pub dialog_retired: Vec<RetiredKey>,
}

/// File name of the generated keys inside `data_dir`.
pub const KEY_FILE: &str = "keys.json";

impl KeyStore {
    pub fn generate() -> Self {
        KeyStore {
            dev_issuer: SigningKey::generate(),
            dialog_primary: SigningKey::generate(),
            dialog_next: SigningKey::generate(),
            dialog_retired: Vec::new(),
        }
    }

    /// Rotation at `now` (Unix seconds): the next key becomes primary, a new next key is made, and
    /// the old primary is retired. Retired keys older than `keep` (the longest dialog-token
    /// lifetime) are dropped: nothing they signed is still valid.
    pub fn rotate(&mut self, now: i64, keep: std::time::Duration) {
        let next = std::mem::replace(&mut self.dialog_next, SigningKey::generate());
        let old = std::mem::replace(&mut self.dialog_primary, next);
        self.dialog_retired.push(RetiredKey {
            key: old,
            retired_at: now,
        });
        self.dialog_retired
            .retain(|r| r.retired_at + keep.as_secs() as i64 > now);
    }

    /// Every dialog-token key a token may carry: primary, next, then the retired ones.
    pub fn dialog_kids(&self) -> Vec<&str> {
        [&self.dialog_primary, &self.dialog_next]
            .into_iter()
            .chain(self.dialog_retired.iter().map(|r| &r.key))
            .map(|k| k.kid.as_str())
            .collect()
    }

    /// Reads a key file written by `to_json` (or by an operator in that shape); it must exist.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the keys file {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("failed to parse {}", path.display()))
    }

    /// Writes the keys to `path` (owner-only), replacing it whole: a reader sees the old file or
    /// the new one.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, self.to_json().as_bytes())
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))
    }

    /// Loads the keys from `data_dir`, generating and saving them on first use.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(data_dir);
        if path.exists() {
            return Self::load(&path);
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create data_dir {}", data_dir.display()))?;
        let keys = Self::generate();
        // Written to a temporary file, owner-only from its creation, then renamed: the private
        // keys are never readable by others, and no reader sees half a file.
        keys.save(&path)?;
        Ok(keys)
    }

    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let file: KeyFile = serde_json::from_str(text)?;
        Ok(KeyStore {
            dev_issuer: SigningKey::from_seed(&file.dev_issuer)?,
            dialog_primary: SigningKey::from_seed(&file.dialog_token_primary)?,
            dialog_next: SigningKey::from_seed(&file.dialog_token_next)?,
            dialog_retired: file
                .dialog_token_retired
                .iter()
                .map(|r| {
                    Ok(RetiredKey {
                        key: SigningKey::from_seed(&r.key)?,
                        retired_at: r.retired_at,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&KeyFile {
            dev_issuer: self.dev_issuer.seed_b64(),
            dialog_token_primary: self.dialog_primary.seed_b64(),
            dialog_token_next: self.dialog_next.seed_b64(),
            dialog_token_retired: self
                .dialog_retired
                .iter()
                .map(|r| RetiredSeed {
                    key: r.key.seed_b64(),
                    retired_at: r.retired_at,
                })
                .collect(),
        })
        .unwrap_or_default()
    }

    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(KEY_FILE)
    }
}

/// Creates `path` (which must not exist) with mode 0600 on Unix and writes `bytes` to it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_jwt_verifies_with_jsonwebtoken_through_the_public_jwk() {
        let key = SigningKey::generate();
        let token = key.sign_jwt(&json!({"sub": "x", "exp": 4_102_444_800u64}));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk()).expect("jwk");
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).expect("verifies");
        assert_eq!(data.claims["sub"], "x");
        assert_eq!(key.verify_jwt(&token).expect("self verify")["sub"], "x");
    }

    #[test]
    fn tampered_jwt_is_rejected() {
        let key = SigningKey::generate();
        let token = key.sign_jwt(&json!({"i": "a"}));
        let (head, _) = token.split_once('.').expect("jws");
        let forged = format!(
            "{head}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"i":"b"}"#),
            token.rsplit('.').next().expect("sig")
        );
        assert!(key.verify_jwt(&forged).is_none());
        assert!(SigningKey::generate().verify_jwt(&token).is_none());
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        KeyStore::load_or_create(dir.path()).expect("create");
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotation_promotes_next_makes_a_new_next_and_keeps_the_old_primary_for_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut keys = KeyStore::load_or_create(dir.path()).expect("create");
        let (primary, next) = (
            keys.dialog_primary.kid.clone(),
            keys.dialog_next.kid.clone(),
        );
        let signed = keys.dialog_primary.sign_jwt(&json!({"i": "x"}));
        let ttl = std::time::Duration::from_secs(600);
        keys.rotate(1_000, ttl);
        assert_eq!(keys.dialog_primary.kid, next);
        assert_ne!(keys.dialog_next.kid, next);
        assert_ne!(keys.dialog_next.kid, primary);
        assert_eq!(keys.dialog_retired[0].key.kid, primary);
        // Saved and read back, the retired key still verifies what it signed.
        keys.save(&dir.path().join(KEY_FILE)).expect("save");
        let read = KeyStore::load(&dir.path().join(KEY_FILE)).expect("load");
        assert_eq!(read.dialog_kids(), keys.dialog_kids());
        assert!(read.dialog_retired[0].key.verify_jwt(&signed).is_some());
        // A later rotation drops retired keys whose tokens have all expired.
        keys.rotate(1_000 + 601, ttl);
        assert_eq!(keys.dialog_retired.len(), 1);
        assert_eq!(keys.dialog_retired[0].key.kid, next);
    }

    #[test]
    fn a_key_file_without_retired_keys_still_loads() {
        let keys = KeyStore::generate();
        let mut v: Value = serde_json::from_str(&keys.to_json()).expect("json");
        assert!(v.get("dialog_token_retired").is_none());
        v["dialog_token_retired"] = json!([]);
        let read = KeyStore::from_json(&v.to_string()).expect("loads");
        assert_eq!(read.dialog_primary.kid, keys.dialog_primary.kid);
    }

    #[test]
    fn keys_persist_across_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = KeyStore::load_or_create(dir.path()).expect("create");
        let b = KeyStore::load_or_create(dir.path()).expect("load");
        assert_eq!(a.dev_issuer.kid, b.dev_issuer.kid);
        assert_eq!(a.dialog_primary.kid, b.dialog_primary.kid);
        assert_ne!(a.dialog_primary.kid, a.dialog_next.kid);
    }
}
