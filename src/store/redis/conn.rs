//! The one connection every command of a node shares: a multiplexed connection to a single Redis,
//! or a cluster connection (one multiplexed connection per master, following MOVED and ASK and
//! refreshing the slot map on its own after a failover).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::Runtime;
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::OP_TIMEOUT;
use crate::config::RedisSettings;

/// A connection to one Redis or to a Redis Cluster; cheap to clone (a handle).
#[derive(Clone)]
pub enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Pool {
    Single(deadpool_redis::Pool),
    /// The cluster client itself: deadpool-redis builds its cluster clients without a response
    /// timeout, and a cluster connection refreshes its slot map under a lock every command waits
    /// for, so one master that stops answering mid-refresh would hold up the commands to all.
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// Retries of one command inside the cluster connection (MOVED, ASK, TRYAGAIN, a reconnect):
/// with its backoff from 10 ms doubling, they fit in one operation timeout.
const CLUSTER_RETRIES: u32 = 6;

/// A cluster connection from which no command got an answer for this long, while commands
/// time out, is replaced: it is wedged, not slow.
const SILENT_FOR: Duration = Duration::from_secs(6);

/// One connection that every caller shares (redis-rs pipelines the commands of concurrent
/// callers on it), taken out of the pool and replaced after a connection error. A pool checkout
/// costs a round trip of its own (deadpool-redis checks each connection before handing it out):
/// three per dialog write, more than the write itself. Nothing here uses WATCH/MULTI across
/// calls or blocking commands, which a shared connection could not serve.
pub struct SharedConnection {
    pool: Pool,
    current: std::sync::Mutex<Option<Conn>>,
    /// Held while connecting: callers that find no connection wait for one connect, instead of
    /// each starting its own (a burst of connects under the load that broke the last one).
    connecting: tokio::sync::Mutex<()>,
    epoch: Instant,
    /// When a command last got an answer (or the connection was made), in ms since `epoch`.
    answered_ms: AtomicU64,
}

impl SharedConnection {
    pub(super) fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let invalid =
            |e: &dyn std::fmt::Display| anyhow::anyhow!("invalid configuration: redis.url: {e}");
        let mut pool_cfg = deadpool_redis::PoolConfig::new(4);
        pool_cfg.timeouts.wait = Some(OP_TIMEOUT);
        pool_cfg.timeouts.create = Some(OP_TIMEOUT);
        pool_cfg.timeouts.recycle = Some(OP_TIMEOUT);
        let seeds = settings.seeds();
        let pool = if settings.cluster {
            Pool::Cluster(Box::new(
                redis::cluster::ClusterClientBuilder::new(seeds)
                    .connection_timeout(OP_TIMEOUT)
                    .response_timeout(OP_TIMEOUT)
                    .retries(CLUSTER_RETRIES)
                    .build()
                    .map_err(|e| invalid(&e))?,
            ))
        } else {
            let url = seeds.first().cloned().unwrap_or_default();
            let mut cfg = deadpool_redis::Config::from_url(url);
            cfg.pool = Some(pool_cfg);
            Pool::Single(
                cfg.create_pool(Some(Runtime::Tokio1))
                    .map_err(|e| invalid(&e))?,
            )
        };
        Ok(SharedConnection {
            pool,
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            epoch: Instant::now(),
            answered_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A command got its answer: the connection is alive.
    fn answered(&self) {
        self.answered_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// What a command's outcome says about the connection: an answer (an error reply too) shows
    /// it alive, a timeout (the cluster client's own) counts as a slow answer, and a broken
    /// connection is dropped so the next call connects again.
    pub fn observe<T>(&self, outcome: &redis::RedisResult<T>) {
        match outcome {
            Err(e) if e.is_timeout() => self.timed_out(),
            Err(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() =>
            {
                self.forget()
            }
            Ok(_) | Err(_) => self.answered(),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Conn>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared connection, connecting first when there is none.
    pub async fn get(&self) -> Result<Conn, String> {
        if let Some(c) = self.current().clone() {
            return Ok(c);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.current().clone() {
            return Ok(c);
        }
        let taken = match &self.pool {
            Pool::Single(p) => Conn::Single(deadpool_redis::Connection::take(
                p.get().await.map_err(|e| e.to_string())?,
            )),
            Pool::Cluster(client) => Conn::Cluster(
                tokio::time::timeout(OP_TIMEOUT, client.get_async_connection())
                    .await
                    .map_err(|_| "connecting to the cluster timed out".to_owned())?
                    .map_err(|e| e.to_string())?,
            ),
        };
        self.answered();
        Ok(self.current().get_or_insert(taken).clone())
    }

    /// After an error that may have broken the connection: the next call connects again.
    fn forget(&self) {
        self.current().take();
    }

    /// After an answer that did not come in time. One Redis: the connection may be stuck, so the
    /// next call connects again. A cluster connection is kept while it answers anything: it
    /// replaces a broken node connection by itself, and dropping it would reconnect to every
    /// master at once, under the load that made the answer slow. One that has answered nothing
    /// for `SILENT_FOR` is replaced.
    pub fn timed_out(&self) {
        let replace = match self.current().as_ref() {
            Some(Conn::Single(_)) => true,
            Some(Conn::Cluster(_)) => {
                let silent = self
                    .now_ms()
                    .saturating_sub(self.answered_ms.load(Ordering::Relaxed));
                let wedged = silent >= SILENT_FOR.as_millis() as u64;
                if wedged {
                    tracing::warn!(
                        silent_for = ?SILENT_FOR,
                        "the redis cluster connection answers nothing: connecting again"
                    );
                }
                wedged
            }
            None => false,
        };
        if replace {
            self.forget();
        }
    }
}
