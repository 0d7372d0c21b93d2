//! Typed settings: `config/default.toml` (embedded) → `--config FILE` → `DIALOG_EVENTS__…` env,
//! validated once at start-up so an invalid value stops the node with a message naming its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

pub use crate::domain::{DelegationEntry, ResourceEntry};

/// The defaults, built into the binary so a node runs with no files at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of configuration environment variables (`DIALOG_EVENTS__HTTP__BIND`).
const ENV_PREFIX: &str = "DIALOG_EVENTS";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub http: HttpSettings,
    pub public: PublicSettings,
    pub node: NodeSettings,
    pub log: LogSettings,
    pub redis: RedisSettings,
    pub store: StoreSettings,
    pub auth: AuthSettings,
    pub dialogs: DialogSettings,
    pub events: EventSettings,
    pub realtime: RealtimeSettings,
    pub graphql: GraphqlSettings,
    pub webhooks: WebhookSettings,
    pub shutdown: ShutdownSettings,
    pub resources: Vec<ResourceEntry>,
    pub delegations: Vec<DelegationEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    pub max_body: usize,
    pub workers: usize,
    /// Longest time to receive a whole request body (408 after it).
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// Origins that may call the node from a web page on another origin (`["*"]`: any); empty:
    /// same origin only. Also checked against `Origin` on WebSocket upgrades when set.
    pub cors_origins: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicSettings {
    pub base_url: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// One Redis, or with `cluster` one or more comma-separated seed nodes of a Redis Cluster.
    #[serde(default)]
    pub url: Option<String>,
    pub prefix: String,
    /// Redis Cluster: hash-tagged keys, partitioned logs and sharded pub/sub.
    #[serde(default)]
    pub cluster: bool,
    /// A commit is answered only after this many replicas acknowledged it (`WAIT`).
    #[serde(default)]
    pub wait_replicas: u32,
}

impl RedisSettings {
    /// The nodes `url` names: one, or a cluster's seeds.
    pub fn seeds(&self) -> Vec<String> {
        self.url
            .iter()
            .flat_map(|u| u.split(','))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Durable, in a redb file under `data_dir`.
    Embedded,
    /// In memory only: lost on exit.
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// A write is answered after it is fsynced (many writes share one fsync), in the commit log;
    /// the database file is checkpointed every `store.checkpoint_interval`.
    Always,
    /// fsync at most every `store.sync_interval`; a crash loses at most that much.
    Interval,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub kind: StoreKind,
    pub sync: SyncMode,
    #[serde(deserialize_with = "duration")]
    pub sync_interval: Duration,
    /// With `sync = "always"`: the longest time between checkpoints of the database file.
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
}

impl StoreSettings {
    /// The embedded store's interval: between checkpoints with `always`, between fsyncs with
    /// `interval`.
    pub fn interval(&self) -> Duration {
        match self.sync {
            SyncMode::Always => self.checkpoint_interval,
            SyncMode::Interval => self.sync_interval,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(deserialize_with = "duration")]
    pub dialog_token_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub jwks_cache_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub clock_leeway: Duration,
    pub issuers: Vec<IssuerSettings>,
    pub dev_issuer: DevIssuerSettings,
    /// Operator-provided signing keys (the `keys.json` shape); when set, none are generated and
    /// none are kept in Redis.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    pub issuer: String,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub jwks_inline: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuerSettings {
    pub enabled: bool,
    pub allow_public: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialogSettings {
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    pub max_page_size: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeSettings {
    pub history_size: usize,
    #[serde(deserialize_with = "duration")]
    pub history_ttl: Duration,
    pub client_queue_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub init_timeout: Duration,
    pub max_frame_bytes: usize,
    /// Operations one connection may run at once; more get an `error` (the socket stays).
    pub max_subscriptions_per_connection: usize,
    /// Longest operation id in bytes; longer closes the socket with 4400.
    pub max_operation_id_bytes: usize,
    /// Realtime connections (WebSocket and SSE) one authenticated party may hold on this node.
    pub max_connections_per_party: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlSettings {
    /// Operations in one batched `POST /graphql`; more are refused with 400.
    pub max_batch: usize,
    /// Introspection; unset = on exactly when the development issuer is enabled.
    #[serde(default)]
    pub introspection: Option<bool>,
}

impl Settings {
    /// Whether GraphQL introspection is served.
    pub fn introspection(&self) -> bool {
        self.graphql
            .introspection
            .unwrap_or(self.auth.dev_issuer.enabled)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    #[serde(deserialize_with = "durations")]
    pub validation_schedule: Vec<Duration>,
    pub jitter: f64,
    pub allow_http: bool,
    pub allow_private_networks: bool,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    pub max_in_flight_per_endpoint: usize,
    /// Attempts in flight on one node, over all endpoints.
    pub max_in_flight_per_node: usize,
    /// Delivery lanes hash to this many partitions, each owned by one node at a time.
    pub partitions: u16,
    /// A partition whose owner stops renewing its lease passes to another node after this.
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
    pub circuit_failures: u32,
    #[serde(deserialize_with = "duration")]
    pub circuit_cooldown: Duration,
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Most events one replay redelivers: the newest that match in its window.
    pub replay_max: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
        })
        .collect()
}

impl Settings {
    /// Loads the layers: defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        Self::load_layers(file, &[], true)
    }

    /// Defaults plus a TOML snippet, without the environment: how tests describe a node.
    pub fn from_toml(overrides: &str) -> anyhow::Result<Settings> {
        Self::load_layers(None, &[overrides], false)
    }

    /// Defaults plus several TOML snippets, later ones winning, without the environment.
    pub fn from_toml_layers(layers: &[&str]) -> anyhow::Result<Settings> {
        Self::load_layers(None, layers, false)
    }

    fn load_layers(file: Option<&Path>, overrides: &[&str], env: bool) -> anyhow::Result<Settings> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.exists() {
                bail!(
                    "failed to read config file {}: no such file",
                    path.display()
                );
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        for toml in overrides {
            builder = builder.add_source(config::File::from_str(toml, config::FileFormat::Toml));
        }
        if env {
            builder = builder.add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        }
        let raw = builder.build().context("failed to read configuration")?;
        let settings: Settings = raw
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that need more than one key or more than a type.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.http.max_body == 0 {
            bail!("invalid configuration: http.max_body must be greater than 0");
        }
        if self.http.body_timeout.is_zero() {
            bail!("invalid configuration: http.body_timeout must be greater than 0");
        }
        if let Some(bad) = self
            .http
            .cors_origins
            .iter()
            .find(|o| !crate::http::cors::valid_origin(o))
        {
            bail!(
                "invalid configuration: http.cors_origins: {bad:?} is not an origin \
                 (\"*\", or scheme://host[:port] such as \"https://app.example.no\")"
            );
        }
        if self.store.sync_interval.is_zero() {
            bail!("invalid configuration: store.sync_interval must be greater than 0");
        }
        if self.store.checkpoint_interval.is_zero() {
            bail!("invalid configuration: store.checkpoint_interval must be greater than 0");
        }
        if self.graphql.max_batch == 0 {
            bail!("invalid configuration: graphql.max_batch must be greater than 0");
        }
        for (key, value) in [
            (
                "realtime.max_subscriptions_per_connection",
                self.realtime.max_subscriptions_per_connection,
            ),
            (
                "realtime.max_operation_id_bytes",
                self.realtime.max_operation_id_bytes,
            ),
            (
                "realtime.max_connections_per_party",
                self.realtime.max_connections_per_party,
            ),
        ] {
            if value == 0 {
                bail!("invalid configuration: {key} must be greater than 0");
            }
        }
        if self.realtime.ping_interval.is_zero() {
            bail!("invalid configuration: realtime.ping_interval must be greater than 0");
        }
        if self.realtime.init_timeout.is_zero() {
            bail!("invalid configuration: realtime.init_timeout must be greater than 0");
        }
        if self.realtime.max_frame_bytes < 1024 {
            bail!("invalid configuration: realtime.max_frame_bytes must be at least 1024");
        }
        if !(0.0..=0.5).contains(&self.webhooks.jitter) {
            bail!("invalid configuration: webhooks.jitter must be between 0 and 0.5");
        }
        if self.webhooks.max_in_flight_per_endpoint == 0 {
            bail!(
                "invalid configuration: webhooks.max_in_flight_per_endpoint must be greater than 0"
            );
        }
        if self.webhooks.max_in_flight_per_node == 0 {
            bail!("invalid configuration: webhooks.max_in_flight_per_node must be greater than 0");
        }
        if !(1..=4096).contains(&self.webhooks.partitions) {
            bail!("invalid configuration: webhooks.partitions must be between 1 and 4096");
        }
        if self.webhooks.lease_ttl < Duration::from_millis(500) {
            bail!("invalid configuration: webhooks.lease_ttl must be at least 500ms");
        }
        if self.webhooks.circuit_failures == 0 {
            bail!("invalid configuration: webhooks.circuit_failures must be greater than 0");
        }
        if self.webhooks.replay_max == 0 {
            bail!("invalid configuration: webhooks.replay_max must be greater than 0");
        }
        if self.dialogs.max_page_size == 0 {
            bail!("invalid configuration: dialogs.max_page_size must be greater than 0");
        }
        let has_scheme = |url: &str, schemes: &[&str]| schemes.iter().any(|s| url.starts_with(s));
        if !self.public.base_url.is_empty()
            && !has_scheme(&self.public.base_url, &["http://", "https://"])
        {
            bail!("invalid configuration: public.base_url must start with http:// or https://");
        }
        if self.redis.url.is_some() {
            let seeds = self.redis.seeds();
            if seeds.is_empty()
                || seeds
                    .iter()
                    .any(|u| !has_scheme(u, &["redis://", "rediss://", "redis+unix://"]))
            {
                bail!(
                    "invalid configuration: redis.url must start with redis://, rediss:// or redis+unix://"
                );
            }
            if seeds.len() > 1 && !self.redis.cluster {
                bail!(
                    "invalid configuration: redis.url names several nodes; set redis.cluster = true for a Redis Cluster"
                );
            }
        }
        if self.redis.wait_replicas > 16 {
            bail!("invalid configuration: redis.wait_replicas must be at most 16");
        }
        if self.redis.prefix.is_empty() {
            bail!("invalid configuration: redis.prefix must not be empty");
        }
        for (i, issuer) in self.auth.issuers.iter().enumerate() {
            let sources = [
                issuer.jwks_url.is_some(),
                issuer.jwks_file.is_some(),
                issuer.jwks_inline.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                bail!(
                    "invalid configuration: auth.issuers[{i}] needs exactly one of jwks_url, jwks_file, jwks_inline"
                );
            }
            if issuer.issuer.is_empty() {
                bail!("invalid configuration: auth.issuers[{i}].issuer must not be empty");
            }
        }
        if self.auth.dev_issuer.enabled
            && !self.auth.dev_issuer.allow_public
            && !self.http.bind.ip().is_loopback()
        {
            bail!(
                "invalid configuration: auth.dev_issuer.enabled on non-loopback bind {} needs auth.dev_issuer.allow_public = true",
                self.http.bind
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::from_toml("").expect("defaults are valid");
        assert_eq!(s.http.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.http.max_body, 262_144);
        assert!(s.redis.url.is_none());
        assert_eq!(s.redis.prefix, "de");
        assert_eq!(s.events.retention, Duration::from_secs(90 * 86_400));
    }

    /// `store.sync_interval` spaces the fsyncs of `sync = "interval"`; with `always`, the
    /// checkpoints follow `store.checkpoint_interval` (10 s unless set).
    #[test]
    fn the_store_interval_follows_the_sync_mode() {
        let s = Settings::from_toml("").expect("defaults");
        assert_eq!(s.store.checkpoint_interval, Duration::from_secs(10));
        assert_eq!(s.store.interval(), Duration::from_secs(10));
        let s = Settings::from_toml("[store]\nsync = \"interval\"").expect("interval");
        assert_eq!(s.store.interval(), Duration::from_secs(1));
        let s = Settings::from_toml("[store]\ncheckpoint_interval = \"2s\"").expect("2s");
        assert_eq!(s.store.interval(), Duration::from_secs(2));
        for key in ["sync_interval", "checkpoint_interval"] {
            let err = Settings::from_toml(&format!("[store]\n{key} = \"0s\""))
                .expect_err("zero is refused");
            assert_eq!(
                err.to_string(),
                format!("invalid configuration: store.{key} must be greater than 0")
            );
        }
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = Settings::from_toml("[http]\nbind = \"nonsense\"").expect_err("invalid");
        assert!(format!("{err:#}").contains("bind"), "{err:#}");
        let err = Settings::from_toml("[dialogs]\nidle_timeout = \"soon\"").expect_err("invalid");
        assert!(format!("{err:#}").contains("idle_timeout"), "{err:#}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err = Settings::from_toml("[http]\nbindd = \"127.0.0.1:1\"").expect_err("unknown key");
        assert!(format!("{err:#}").contains("bindd"), "{err:#}");
    }

    #[test]
    fn webhook_partition_settings_out_of_range_are_refused_by_name() {
        for (toml, key) in [
            ("[webhooks]\npartitions = 0", "webhooks.partitions"),
            ("[webhooks]\npartitions = 4097", "webhooks.partitions"),
            ("[webhooks]\nlease_ttl = \"499ms\"", "webhooks.lease_ttl"),
            (
                "[webhooks]\nmax_in_flight_per_node = 0",
                "webhooks.max_in_flight_per_node",
            ),
        ] {
            let err = Settings::from_toml(toml).expect_err(toml);
            assert!(format!("{err:#}").contains(key), "{toml}: {err:#}");
        }
        let s = Settings::from_toml(
            "[webhooks]\npartitions = 4096\nlease_ttl = \"500ms\"\nmax_in_flight_per_node = 1",
        )
        .expect("the bounds themselves are valid");
        assert_eq!(s.webhooks.partitions, 4096);
        assert_eq!(s.webhooks.lease_ttl, Duration::from_millis(500));
        let d = Settings::from_toml("").expect("defaults");
        assert_eq!(
            (d.webhooks.partitions, d.webhooks.lease_ttl),
            (64, Duration::from_secs(5))
        );
        assert_eq!(d.webhooks.max_in_flight_per_node, 256);
    }

    #[test]
    fn several_redis_seeds_need_cluster_mode_and_each_needs_a_scheme() {
        let err =
            Settings::from_toml("[redis]\nurl = \"redis://127.0.0.1:7000,redis://127.0.0.1:7001\"")
                .expect_err("two nodes without cluster");
        assert!(err.to_string().contains("redis.cluster"), "{err}");
        let err = Settings::from_toml(
            "[redis]\nurl = \"redis://127.0.0.1:7000,127.0.0.1:7001\"\ncluster = true",
        )
        .expect_err("a seed without scheme");
        assert!(err.to_string().contains("redis.url"), "{err}");
        let err = Settings::from_toml("[redis]\nwait_replicas = 17").expect_err("too many");
        assert!(err.to_string().contains("redis.wait_replicas"), "{err}");
        let s = Settings::from_toml(
            "[redis]\nurl = \"redis://127.0.0.1:7000, redis://127.0.0.1:7001\"\ncluster = true\nwait_replicas = 1",
        )
        .expect("a cluster of two seeds");
        assert_eq!(
            s.redis.seeds(),
            ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        assert_eq!(s.redis.wait_replicas, 1);
        let d = Settings::from_toml("").expect("defaults");
        assert!(!d.redis.cluster);
        assert_eq!(d.redis.wait_replicas, 0);
    }

    #[test]
    fn dev_issuer_on_public_bind_is_refused_unless_allowed() {
        let err = Settings::from_toml("[http]\nbind = \"0.0.0.0:0\"").expect_err("public bind");
        assert!(
            format!("{err:#}").contains("auth.dev_issuer.allow_public"),
            "{err:#}"
        );
        Settings::from_toml("[http]\nbind = \"0.0.0.0:0\"\n[auth.dev_issuer]\nallow_public = true")
            .expect("allowed");
    }

    #[test]
    fn resources_and_delegations_parse_with_urn_checks() {
        let s = Settings::from_toml(
            r#"
            [[resources]]
            id = "urn:altinn:resource:a"
            owner = "urn:altinn:organization:identifier-no:991825827"
            [[delegations]]
            from = "urn:altinn:person:identifier-no:08895699684"
            to = "urn:altinn:person:identifier-no:12345678901"
            resources = ["urn:altinn:resource:a"]
            "#,
        )
        .expect("valid");
        assert_eq!(s.resources.len(), 1);
        assert_eq!(s.delegations.len(), 1);
        let err = Settings::from_toml("[[resources]]\nid = \"bad\"\nowner = \"urn:altinn:organization:identifier-no:991825827\"")
            .expect_err("bad urn");
        assert!(format!("{err:#}").contains("resource"), "{err:#}");
    }
}
