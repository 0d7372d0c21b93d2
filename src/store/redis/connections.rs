//! `RedisStore`: realtime connections per party across the cluster
//! (`realtime.max_connections_per_party`).
//!
//! One hash per party, `conns:{party}`: field `{node}` holds that node's open connections of the
//! party, field `{node}:exp` until when (Redis clock, ms) that count holds. A node refreshes its
//! counts well before they lapse; the counts of a node that stopped refreshing (killed) stop
//! counting at their expiry, and the hash itself expires with the last of them.

use super::*;

/// Counts the live connections of the party (dropping lapsed node counts) and takes up to ARGV[4]
/// more for node ARGV[1], as many as keep the total within ARGV[2]. ARGV[3]: how long the count
/// holds (ms). Returns how many were taken (0 when the party is at its limit).
const ACQUIRE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local fields = {}
for i = 1, #all, 2 do fields[all[i]] = all[i + 1] end
local total = 0
for f, v in pairs(fields) do
  if string.sub(f, -4) ~= ':exp' then
    if tonumber(fields[f .. ':exp'] or '0') > now then
      total = total + tonumber(v)
    else
      redis.call('HDEL', KEYS[1], f, f .. ':exp')
    end
  end
end
local take = math.min(tonumber(ARGV[4]), tonumber(ARGV[2]) - total)
if take <= 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], take)
redis.call('HSET', KEYS[1], ARGV[1] .. ':exp', now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return take
"#;

/// Gives back ARGV[2] connections of node ARGV[1].
const RELEASE_LUA: &str = r#"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(ARGV[2]))
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1], ARGV[1] .. ':exp') end
return n
"#;

/// Sets node ARGV[1]'s count of each party KEYS[i] to ARGV[i + 2], holding for ARGV[2] ms.
const REFRESH_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, ARGV[1], ARGV[i + 2], ARGV[1] .. ':exp', until_ms)
  if tonumber(redis.call('PTTL', key)) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', key, ARGV[2])
  end
end
return #KEYS
"#;

/// Parties per refresh call.
const REFRESH_CHUNK: usize = 500;

/// The scripts of the connection counts.
pub(super) struct ConnectionScripts {
    acquire: redis::Script,
    release: redis::Script,
    refresh: redis::Script,
}

impl ConnectionScripts {
    pub(super) fn new() -> Self {
        ConnectionScripts {
            acquire: redis::Script::new(ACQUIRE_LUA),
            release: redis::Script::new(RELEASE_LUA),
            refresh: redis::Script::new(REFRESH_LUA),
        }
    }
}

impl RedisStore {
    fn connections_key(&self, party: &str) -> String {
        // One slot for all parties on a cluster: a refresh sets many parties in one script.
        self.tagged("conns", &format!("conns:{party}"))
    }

    /// Takes up to `want` of `party`'s `limit` connections for `node` (as many as the cluster has
    /// left), counted for `ttl` unless refreshed; returns how many (0: the party is at its limit).
    pub async fn acquire_connections(
        &self,
        party: &str,
        node: &str,
        limit: usize,
        want: usize,
        ttl: Duration,
    ) -> Result<usize, StoreError> {
        let mut inv = self.connections.acquire.prepare_invoke();
        inv.key(self.connections_key(party))
            .arg(node)
            .arg(limit as u64)
            .arg(ttl.as_millis() as u64)
            .arg(want as u64);
        let taken: i64 = self
            .with(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(usize::try_from(taken).unwrap_or(0))
    }

    /// Gives back `n` connections `acquire_connections` took.
    pub async fn release_connections(
        &self,
        party: &str,
        node: &str,
        n: usize,
    ) -> Result<(), StoreError> {
        let mut inv = self.connections.release.prepare_invoke();
        inv.key(self.connections_key(party)).arg(node).arg(n as u64);
        let _: i64 = self
            .with(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(())
    }

    /// Sets `node`'s counts of these parties (absolute, correcting any drift) for another `ttl`.
    pub async fn refresh_connections(
        &self,
        node: &str,
        counts: &[(String, usize)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        for chunk in counts.chunks(REFRESH_CHUNK) {
            let mut inv = self.connections.refresh.prepare_invoke();
            inv.arg(node).arg(ttl.as_millis() as u64);
            for (party, n) in chunk {
                inv.key(self.connections_key(party)).arg(*n as u64);
            }
            let _: i64 = self
                .with(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
        }
        Ok(())
    }
}
