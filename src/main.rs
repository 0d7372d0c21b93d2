//! The `dialog-events` binary: `serve` starts a node, `token` mints a development-issuer token
//! (with the cluster's keys from Redis when `redis.url` is set), `backup` copies the embedded store,
//! `keys rotate` rotates the dialog-token keys and `keys generate` writes a keys file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dialog_events::app::lock_data_dir;
use dialog_events::auth::{KeySource, KeyStore, dev_token};
use dialog_events::config::StoreKind;
use dialog_events::domain::Party;
use dialog_events::{App, Settings, telemetry};

/// mimalloc: the node allocates many short-lived buffers (request bodies, JSON, frames) on
/// several threads, where glibc's allocator spent a fifth of the server's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "dialog-events",
    version,
    about = "Realtime change notifications for dialogs: CloudEvents, GraphQL subscriptions, webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a node.
    Serve {
        /// Configuration file layered over the built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a JWT signed by the built-in development issuer.
    Token {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Space-separated scopes, e.g. "digdir:dialogporten.serviceprovider".
        #[arg(long)]
        scope: String,
        /// A person's 11-digit national identity number (claim `pid`).
        #[arg(long, conflicts_with = "org")]
        pid: Option<String>,
        /// An organisation number (Maskinporten-style `consumer` claim).
        #[arg(long)]
        org: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Signing keys: rotate the dialog-token keys, or write a new keys file.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Write a consistent copy of the embedded store to a new file; a running node is asked to
    /// take it (from one snapshot, while it keeps serving), a stopped one is read directly.
    Backup {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The new file (absolute or relative to here; it must not exist).
        #[arg(long)]
        to: PathBuf,
        /// The running node's URL; default `http://{http.bind}`.
        #[arg(long)]
        url: Option<String>,
        /// An admin token (scope dialog-events:admin) for a running node; default: one minted by
        /// the development issuer of data_dir.
        #[arg(long)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// The next dialog-token key becomes primary and a new next key is made; tokens signed with
    /// the old primary verify until they expire. Running nodes take the keys within seconds.
    Rotate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write a new keys file (the shape of `auth.keys_file`), owner-only.
    Generate {
        /// The new file (it must not exist).
        #[arg(long)]
        to: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve { config } => serve(config),
        Cmd::Token {
            config,
            scope,
            pid,
            org,
            ttl,
        } => token(config, &scope, pid, org, ttl),
        Cmd::Backup {
            config,
            to,
            url,
            token,
        } => backup(config, to, url, token),
        Cmd::Keys {
            command: KeysCmd::Rotate { config },
        } => rotate_keys(config),
        Cmd::Keys {
            command: KeysCmd::Generate { to },
        } => generate_keys(&to),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    telemetry::init(&settings.log);
    actix_web::rt::System::new().block_on(async move {
        let app = App::build(settings).await?;
        app.run().await
    })
}

fn token(
    config: Option<PathBuf>,
    scope: &str,
    pid: Option<String>,
    org: Option<String>,
    ttl: u64,
) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    if !settings.auth.dev_issuer.enabled {
        anyhow::bail!("the development issuer is disabled (auth.dev_issuer.enabled = false)");
    }
    let party = match (pid, org) {
        (Some(pid), _) => Some(Party::person(&pid).context("--pid must be 11 digits")?),
        (None, Some(org)) => Some(Party::organization(&org).context("--org must be 9 digits")?),
        (None, None) => None,
    };
    // The keys the nodes use (in a cluster, those kept in Redis).
    let keys =
        actix_web::rt::System::new().block_on(async { key_source(&settings)?.load().await })?;
    println!(
        "{}",
        dev_token(
            &keys.dev_issuer,
            scope,
            party.as_ref(),
            Duration::from_secs(ttl)
        )
    );
    Ok(())
}

/// Where `settings` keeps its keys; in Redis mode, connected to the cluster's Redis.
fn key_source(settings: &Settings) -> anyhow::Result<KeySource> {
    let redis = match &settings.redis.url {
        Some(url) if settings.auth.keys_file.is_none() => Some(std::sync::Arc::new(
            dialog_events::store::RedisStore::new(&settings.redis, settings.events.retention)
                .with_context(|| format!("failed to reach Redis at redis.url {url}"))?,
        )),
        _ => None,
    };
    Ok(KeySource::new(settings, redis))
}

fn rotate_keys(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    let source = key_source(&settings)?;
    actix_web::rt::System::new().block_on(async {
        let mut keys = source.load().await?;
        let old = keys.dialog_primary.kid.clone();
        // Tokens signed before the rotation live at most dialog_token_ttl (plus clock leeway).
        let keep = settings.auth.dialog_token_ttl + settings.auth.clock_leeway;
        keys.rotate(chrono::Utc::now().timestamp(), keep);
        source.save(&keys).await?;
        println!(
            "rotated {}: primary {} (was next), next {} (new); {old} verifies until its tokens \
             expire (dialog_token_ttl {}); running nodes take the keys within {} s{}",
            source.describe(),
            keys.dialog_primary.kid,
            keys.dialog_next.kid,
            humantime::format_duration(settings.auth.dialog_token_ttl),
            dialog_events::auth::source::RELOAD_EVERY.as_secs(),
            if matches!(source, KeySource::Operator(_)) {
                " (copy the file to every node)"
            } else {
                ""
            }
        );
        Ok(())
    })
}

fn generate_keys(to: &std::path::Path) -> anyhow::Result<()> {
    if to.exists() {
        anyhow::bail!("{} exists already; name a new file", to.display());
    }
    let keys = KeyStore::generate();
    keys.save(to)?;
    println!(
        "{}: dev issuer {}, dialog tokens primary {} and next {}",
        to.display(),
        keys.dev_issuer.kid,
        keys.dialog_primary.kid,
        keys.dialog_next.kid
    );
    Ok(())
}

fn backup(
    config: Option<PathBuf>,
    to: PathBuf,
    url: Option<String>,
    token: Option<String>,
) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    if settings.redis.url.is_some() || settings.store.kind != StoreKind::Embedded {
        anyhow::bail!(
            "backup copies the embedded store; this configuration uses {} (back Redis up with its own tools)",
            if settings.redis.url.is_some() {
                "Redis"
            } else {
                "the memory store"
            }
        );
    }
    if to.exists() {
        anyhow::bail!("{} exists already; name a new file", to.display());
    }
    let to = std::path::absolute(&to).context("failed to resolve --to")?;
    // A free lock means no node runs on the directory: read the file directly.
    if let Ok(_lock) = lock_data_dir(&settings.data_dir) {
        let bytes = dialog_events::store::embedded::backup_file(&settings.data_dir, &to)?;
        println!("{} ({bytes} bytes, from the stopped store)", to.display());
        return Ok(());
    }
    let url = url.unwrap_or_else(|| format!("http://{}", settings.http.bind));
    let token = match token {
        Some(t) => t,
        None if settings.auth.dev_issuer.enabled => {
            let keys = actix_web::rt::System::new()
                .block_on(async { key_source(&settings)?.load().await })?;
            dev_token(
                &keys.dev_issuer,
                "dialog-events:admin",
                None,
                Duration::from_secs(60),
            )
        }
        None => anyhow::bail!("the node runs and the dev issuer is disabled: pass --token"),
    };
    actix_web::rt::System::new().block_on(async move {
        let mut resp = awc::Client::new()
            .post(format!("{}/admin/v1/backup", url.trim_end_matches('/')))
            .bearer_auth(token)
            .timeout(Duration::from_secs(600))
            .send_json(&serde_json::json!({ "to": to }))
            .await
            .map_err(|e| anyhow::anyhow!("failed to reach the node at {url}: {e}"))?;
        let body = resp.body().await.unwrap_or_default();
        if !resp.status().is_success() {
            anyhow::bail!(
                "the node at {url} answered {}: {}",
                resp.status(),
                String::from_utf8_lossy(&body)
            );
        }
        println!("{}", String::from_utf8_lossy(&body));
        Ok(())
    })
}
