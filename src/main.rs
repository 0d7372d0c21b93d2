//! The `dialog-events` binary: `serve` starts a node, `token` mints a development-issuer token
//! (with the cluster's keys from Redis when `redis.url` is set), `backup` copies the embedded store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dialog_events::app::lock_data_dir;
use dialog_events::auth::{KeyStore, dev_token};
use dialog_events::config::StoreKind;
use dialog_events::domain::Party;
use dialog_events::{App, Settings, telemetry};

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
    let keys = match &settings.redis.url {
        None => KeyStore::load_or_create(&settings.data_dir)?,
        // The nodes of a cluster sign and verify with the keys kept in Redis: use those.
        Some(url) => actix_web::rt::System::new().block_on(async {
            let store = dialog_events::store::RedisStore::new(
                url,
                &settings.redis.prefix,
                settings.events.retention,
            )?;
            let json = store
                .shared_keys(KeyStore::generate().to_json())
                .await
                .with_context(|| format!("failed to read the cluster's keys from {url}"))?;
            KeyStore::from_json(&json).context("failed to read the cluster's keys from Redis")
        })?,
    };
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
            let keys = KeyStore::load_or_create(&settings.data_dir)?;
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
