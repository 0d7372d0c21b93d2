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

#[derive(Serialize, Deserialize)]
struct KeyFile {
    dev_issuer: String,
    dialog_token_primary: String,
    dialog_token_next: String,
}

/// The node's generated keys: the development issuer's key and the dialog-token key pair
/// (primary signs, next is published ahead of rotation).
#[derive(Clone)]
pub struct KeyStore {
    pub dev_issuer: SigningKey,
    pub dialog_primary: SigningKey,
    pub dialog_next: SigningKey,
}

/// File name of the generated keys inside `data_dir`.
const KEY_FILE: &str = "keys.json";

impl KeyStore {
    pub fn generate() -> Self {
        KeyStore {
            dev_issuer: SigningKey::generate(),
            dialog_primary: SigningKey::generate(),
            dialog_next: SigningKey::generate(),
        }
    }

    /// Loads the keys from `data_dir`, generating and saving them on first use.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(data_dir);
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            return Self::from_json(&text)
                .with_context(|| format!("failed to parse {}", path.display()));
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create data_dir {}", data_dir.display()))?;
        let keys = Self::generate();
        // Write to a temporary file and rename so a concurrent reader never sees half a file. The
        // file is created owner-only, so the private keys are never readable by others, not even
        // for a moment.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        write_private(&tmp, keys.to_json().as_bytes())
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(keys)
    }

    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let file: KeyFile = serde_json::from_str(text)?;
        Ok(KeyStore {
            dev_issuer: SigningKey::from_seed(&file.dev_issuer)?,
            dialog_primary: SigningKey::from_seed(&file.dialog_token_primary)?,
            dialog_next: SigningKey::from_seed(&file.dialog_token_next)?,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&KeyFile {
            dev_issuer: self.dev_issuer.seed_b64(),
            dialog_token_primary: self.dialog_primary.seed_b64(),
            dialog_token_next: self.dialog_next.seed_b64(),
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
    fn keys_persist_across_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = KeyStore::load_or_create(dir.path()).expect("create");
        let b = KeyStore::load_or_create(dir.path()).expect("load");
        assert_eq!(a.dev_issuer.kid, b.dev_issuer.kid);
        assert_eq!(a.dialog_primary.kid, b.dialog_primary.kid);
        assert_ne!(a.dialog_primary.kid, a.dialog_next.kid);
    }
}
