//! The `dialog-events` binary: `serve` starts a node, `token` mints a development-issuer token
//! (with the cluster's keys from Redis when `redis.url` is set).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dialog_events::auth::{KeyStore, dev_token};
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
