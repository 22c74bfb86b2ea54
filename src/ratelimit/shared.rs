//! Rate limits counted in Redis, shared by every replica. One Lua script
//! runs GCRA over all the limits a call must pass, atomically and
//! all-or-nothing, on the Redis server's clock (so replicas need no clock
//! agreement).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{Check, Verdict};
use crate::config::RedisConfig;

/// GCRA over several keys. For key i, ARGV holds the emission interval and
/// the burst tolerance (interval × (burst − 1)) in microseconds, and the
/// units asked for. A key stores its theoretical arrival time (TAT) and
/// expires when that time has passed, since it then equals a fresh key.
/// Same arithmetic as governor: admitted when now ≥ TAT + interval × (n − 1)
/// − tolerance; the new TAT is max(TAT, now) + interval × n.
/// Returns {0, 0} when every key admits, else {i, wait in µs} for the key
/// that must wait longest, and writes nothing.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local worst, wait = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local n = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local late = tat + interval * (n - 1) - tolerance - now
  if late > wait then
    worst, wait = i, late
  end
  tats[i] = tat + interval * n
end
if worst > 0 then
  return {worst, math.ceil(wait)}
end
for i = 1, #KEYS do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', ttl)
end
return {0, 0}
";

/// Why the shared backend gave no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum SharedError {
    /// Redis refused, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the configured timeout.
    #[error("redis did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The script answered something it never returns.
    #[error("redis: unexpected reply {0:?}")]
    Reply(Vec<i64>),
}

/// The Redis backend.
pub(super) struct Shared {
    conn: Result<ConnectionManager, String>,
    script: Script,
    prefix: String,
    timeout: Duration,
}

impl Shared {
    /// Connects lazily: a Redis that is down at start-up is a backend error
    /// on each check (handled by `on_error`), not a start-up failure.
    pub(super) fn new(config: &RedisConfig) -> Shared {
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        // The manager spawns a task, which needs a Tokio runtime; without
        // one every check is a backend error rather than a panic.
        let conn = match tokio::runtime::Handle::try_current() {
            Ok(_) => redis::Client::open(config.url.as_str())
                .and_then(|client| ConnectionManager::new_lazy_with_config(client, manager))
                .map_err(|e| e.to_string()),
            Err(_) => Err("no Tokio runtime".to_owned()),
        };
        Shared {
            conn,
            script: Script::new(GCRA),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
        }
    }

    /// Spends every check's units, or none.
    pub(super) async fn check(&self, checks: &[Check]) -> Result<Verdict, SharedError> {
        let mut conn = match &self.conn {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(SharedError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "invalid Redis client",
                    e.clone(),
                ))))
            }
        };
        let mut invocation = self.script.prepare_invoke();
        for check in checks {
            let interval = check.spec.interval().as_nanos() as f64 / 1000.0;
            let tolerance = interval * f64::from(check.spec.burst() - 1);
            invocation
                .key(format!("{}{}", self.prefix, check.key))
                .arg(interval)
                .arg(tolerance)
                .arg(check.units);
        }
        let reply: Vec<i64> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| SharedError::Timeout(self.timeout))??;
        match reply.as_slice() {
            [0, _] => Ok(Verdict::Admitted),
            [i, wait] if *i >= 1 && (*i as usize) <= checks.len() => Ok(Verdict::Refused {
                index: *i as usize - 1,
                retry_after: Duration::from_micros((*wait).max(0) as u64),
            }),
            _ => Err(SharedError::Reply(reply)),
        }
    }
}
