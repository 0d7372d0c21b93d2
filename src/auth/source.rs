//! Where a node's signing keys live, and how they are read again after a rotation.
//!
//! - `auth.keys_file`: keys an operator provides (the `keys.json` shape); nothing is generated,
//!   and in Redis mode nothing is kept in Redis: every node reads its own copy of the file.
//! - Otherwise a single node keeps generated keys in `data_dir/keys.json`, and the nodes of a
//!   cluster share the keys kept in Redis (the first node's generated keys win).
//!
//! Running nodes read their source again every `RELOAD_EVERY`, so `dialog-events keys rotate`
//! reaches them without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::KeyStore;
use crate::config::Settings;
use crate::store::RedisStore;

/// How often a running node reads its keys again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

pub enum KeySource {
    Operator(PathBuf),
    DataDir(PathBuf),
    Redis(Arc<RedisStore>),
}

impl KeySource {
    /// The source `settings` name; `redis` is the cluster's store in Redis mode.
    pub fn new(settings: &Settings, redis: Option<Arc<RedisStore>>) -> KeySource {
        match (&settings.auth.keys_file, redis) {
            (Some(path), _) => KeySource::Operator(path.clone()),
            (None, Some(redis)) => KeySource::Redis(redis),
            (None, None) => KeySource::DataDir(settings.data_dir.clone()),
        }
    }

    /// The keys, generated and saved on first use where the source allows it.
    pub async fn load(&self) -> anyhow::Result<KeyStore> {
        match self {
            KeySource::Operator(path) => {
                anyhow::ensure!(
                    path.exists(),
                    "auth.keys_file {} does not exist: create it with \
                     `dialog-events keys generate --to {}`",
                    path.display(),
                    path.display()
                );
                KeyStore::load(path)
            }
            KeySource::DataDir(dir) => KeyStore::load_or_create(dir),
            KeySource::Redis(redis) => {
                let json = redis
                    .shared_keys(KeyStore::generate().to_json())
                    .await
                    .context("failed to read the cluster's keys from Redis")?;
                KeyStore::from_json(&json).context("failed to read the cluster's keys from Redis")
            }
        }
    }

    /// Replaces the stored keys (a rotation).
    pub async fn save(&self, keys: &KeyStore) -> anyhow::Result<()> {
        match self {
            KeySource::Operator(path) => keys.save(path),
            KeySource::DataDir(dir) => keys.save(&dir.join(super::keys::KEY_FILE)),
            KeySource::Redis(redis) => redis
                .set_shared_keys(keys.to_json())
                .await
                .context("failed to write the cluster's keys to Redis"),
        }
    }

    /// Where the keys are, for messages.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Operator(path) => format!("auth.keys_file {}", path.display()),
            KeySource::DataDir(dir) => format!("{}", dir.join(super::keys::KEY_FILE).display()),
            KeySource::Redis(_) => "the cluster's keys in Redis".to_owned(),
        }
    }
}
