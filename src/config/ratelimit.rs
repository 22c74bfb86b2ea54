//! The `ratelimit` section: rate limits and concurrency caps on tool calls,
//! a request limit at the HTTP layer, and where the counters live (this
//! process, or a Redis shared by every replica).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::validate::is_name;
use super::{ConfigError, UpstreamConfig};

/// Rate and concurrency limits. Empty (the default): nothing is limited.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Where rate-limit counters live.
    #[serde(default)]
    pub backend: RateLimitBackend,
    /// The shared Redis, required when `backend: redis`.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Rate limits on tool calls; every limit that matches a call must admit it.
    #[serde(default)]
    pub limits: Vec<RateLimitRule>,
    /// Caps on calls in flight at once; always counted per replica.
    #[serde(default)]
    pub concurrency: Vec<ConcurrencyRule>,
    /// Rate limits on HTTP requests to the MCP endpoints, applied before MCP
    /// handling (refusals get 429 with `Retry-After`). Keys may use only
    /// `identity` and `global`.
    #[serde(default)]
    pub requests: Vec<RateLimitRule>,
    /// Token budgets on model traffic (`/v1/*` and sampling served by the
    /// router): `rate` tokens (input + output) per `per`, keyed by
    /// `identity` or `global`, optionally for aliases matching `model`.
    #[serde(default)]
    pub tokens: Vec<TokenLimitRule>,
}

/// A token budget on model traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimitRule {
    /// Name in refusals and metrics.
    pub id: String,
    /// What the budget is keyed by; empty means `[global]`.
    #[serde(default)]
    pub key: Vec<KeyPart>,
    /// Only aliases matching this glob.
    #[serde(default)]
    pub model: Option<String>,
    /// Tokens per period.
    pub rate: u32,
    /// The period.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Tokens one request may use after a quiet spell; defaults to `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Where rate-limit counters live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    /// In this process (governor): each replica counts on its own.
    #[default]
    Local,
    /// In Redis, through an atomic GCRA script: replicas share the counts.
    Redis,
}

/// The shared Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `unix:///path`.
    pub url: String,
    /// What a call gets when Redis cannot answer in time.
    #[serde(default)]
    pub on_error: OnBackendError,
    /// Deadline for one Redis round trip (and for connecting).
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Prefix of every key the gateway writes, so several gateways (or other
    /// applications) can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(250)
}

fn default_key_prefix() -> String {
    "portcullis:rl:".to_owned()
}

/// The choice when the shared backend fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendError {
    /// Fail open: admit the call unlimited.
    #[default]
    Allow,
    /// Fail closed: refuse the call.
    Deny,
}

/// What a limit's counter is keyed by; several parts combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPart {
    /// The caller's identity subject.
    Identity,
    /// The tool, as `upstream/name` (the upstream's own name for it, so one
    /// tool counts once whichever endpoint it is called through).
    Tool,
    /// The upstream.
    Upstream,
    /// Nothing: one counter for everything the limit matches.
    Global,
}

/// One rate limit: `rate` calls per `per`, with bursts up to `burst`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Name in refusals, metrics and policy overrides.
    pub id: String,
    /// What the counter is keyed by; empty means `[global]`.
    #[serde(default)]
    pub key: Vec<KeyPart>,
    /// Only calls to this upstream.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Only tools whose upstream name matches this glob.
    #[serde(default)]
    pub tool: Option<String>,
    /// Calls admitted per period, on average.
    pub rate: u32,
    /// The period.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Calls admitted at once after a quiet spell; defaults to `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimitRule {
    /// The burst in force: `burst`, or `rate` when unset.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.rate)
    }
}

/// One concurrency cap: at most `max` calls in flight per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyRule {
    /// Name in refusals and metrics.
    pub id: String,
    /// What the cap is keyed by; empty means `[global]`.
    #[serde(default)]
    pub key: Vec<KeyPart>,
    /// Only calls to this upstream.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Only tools whose upstream name matches this glob.
    #[serde(default)]
    pub tool: Option<String>,
    /// Calls in flight at once.
    pub max: u32,
    /// How long a call waits for a slot before it is refused (0: refuse at once).
    #[serde(default, with = "humantime_serde")]
    pub wait: Duration,
}

impl RateLimitConfig {
    /// Validates the section; `upstreams` are the configured upstreams
    /// that `upstream:` filters must name.
    pub(crate) fn validate(
        &self,
        file: &Path,
        upstreams: &BTreeMap<String, UpstreamConfig>,
    ) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let mut unique = |field: &str, id: &str| {
            if !is_name(id) {
                return Err(ConfigError::field(
                    file,
                    format!("{field}.id"),
                    "must use only A-Z a-z 0-9 _ - .",
                ));
            }
            if !ids.insert(id.to_owned()) {
                return Err(ConfigError::field(
                    file,
                    format!("{field}.id"),
                    format!("`{id}` is used by another limit"),
                ));
            }
            Ok(())
        };
        for (i, rule) in self.limits.iter().enumerate() {
            let field = format!("ratelimit.limits.{i}");
            unique(&field, &rule.id)?;
            check_rate(file, &field, rule)?;
            check_filters(file, &field, &rule.upstream, &rule.tool, upstreams)?;
        }
        for (i, rule) in self.requests.iter().enumerate() {
            let field = format!("ratelimit.requests.{i}");
            unique(&field, &rule.id)?;
            check_rate(file, &field, rule)?;
            if rule.upstream.is_some() || rule.tool.is_some() {
                return Err(ConfigError::field(
                    file,
                    field,
                    "request limits apply before a tool is known: no `upstream` or `tool`",
                ));
            }
            if rule
                .key
                .iter()
                .any(|k| matches!(k, KeyPart::Tool | KeyPart::Upstream))
            {
                return Err(ConfigError::field(
                    file,
                    format!("{field}.key"),
                    "request limits may be keyed only by `identity` or `global`",
                ));
            }
        }
        for (i, rule) in self.tokens.iter().enumerate() {
            let field = format!("ratelimit.tokens.{i}");
            unique(&field, &rule.id)?;
            if rule.rate == 0 || rule.per.is_zero() || rule.burst == Some(0) {
                return Err(ConfigError::field(
                    file,
                    field,
                    "rate, per and burst must be greater than zero",
                ));
            }
            if rule
                .key
                .iter()
                .any(|k| matches!(k, KeyPart::Tool | KeyPart::Upstream))
            {
                return Err(ConfigError::field(
                    file,
                    format!("{field}.key"),
                    "token limits may be keyed only by `identity` or `global`",
                ));
            }
            if let Some(glob) = &rule.model {
                if globset::Glob::new(glob).is_err() {
                    return Err(ConfigError::field(
                        file,
                        format!("{field}.model"),
                        "not a valid glob",
                    ));
                }
            }
        }
        for (i, rule) in self.concurrency.iter().enumerate() {
            let field = format!("ratelimit.concurrency.{i}");
            unique(&field, &rule.id)?;
            if rule.max == 0 {
                return Err(ConfigError::field(
                    file,
                    format!("{field}.max"),
                    "must be at least 1",
                ));
            }
            check_filters(file, &field, &rule.upstream, &rule.tool, upstreams)?;
        }
        self.check_backend(file)
    }

    fn check_backend(&self, file: &Path) -> Result<(), ConfigError> {
        let redis = match (&self.backend, &self.redis) {
            (RateLimitBackend::Redis, None) => {
                return Err(ConfigError::field(
                    file,
                    "ratelimit.redis",
                    "`backend: redis` needs `redis: { url: ... }`",
                ))
            }
            (_, Some(redis)) => redis,
            (_, None) => return Ok(()),
        };
        // Parsing opens no connection; it catches a malformed URL here rather
        // than as a backend error on every call.
        let scheme = redis.url.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("redis" | "unix" | "redis+unix")) {
            return Err(ConfigError::field(
                file,
                "ratelimit.redis.url",
                "must start with redis:// or unix:// (TLS is not supported)",
            ));
        }
        redis::Client::open(redis.url.as_str()).map_err(|e| {
            ConfigError::field(file, "ratelimit.redis.url", format!("not a Redis URL: {e}"))
        })?;
        if redis.timeout.is_zero() {
            return Err(ConfigError::field(
                file,
                "ratelimit.redis.timeout",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

fn check_rate(file: &Path, field: &str, rule: &RateLimitRule) -> Result<(), ConfigError> {
    if rule.rate == 0 {
        return Err(ConfigError::field(
            file,
            format!("{field}.rate"),
            "must be at least 1",
        ));
    }
    if rule.per.is_zero() {
        return Err(ConfigError::field(
            file,
            format!("{field}.per"),
            "must be greater than 0",
        ));
    }
    if rule.burst == Some(0) {
        return Err(ConfigError::field(
            file,
            format!("{field}.burst"),
            "must be at least 1",
        ));
    }
    Ok(())
}

fn check_filters(
    file: &Path,
    field: &str,
    upstream: &Option<String>,
    tool: &Option<String>,
    upstreams: &BTreeMap<String, UpstreamConfig>,
) -> Result<(), ConfigError> {
    if let Some(name) = upstream {
        if !upstreams.contains_key(name) {
            return Err(ConfigError::field(
                file,
                format!("{field}.upstream"),
                format!("no upstream named `{name}`"),
            ));
        }
    }
    if let Some(glob) = tool {
        globset::Glob::new(glob).map_err(|e| {
            ConfigError::field(file, format!("{field}.tool"), format!("bad glob: {e}"))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError, KeyPart, OnBackendError, RateLimitBackend};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gw.yaml"), &|_| None)
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Field { field, message, .. }) => format!("{field}: {message}"),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    const UPSTREAMS: &str = r#"
upstreams:
  time: { stdio: { command: time-server } }
  everything: { stdio: { command: everything } }
"#;

    #[test]
    fn issue_example_parses() {
        let config = parse(&format!(
            r#"{UPSTREAMS}
ratelimit:
  backend: local
  redis: {{ url: "redis://127.0.0.1:6379", on_error: allow }}
  limits:
    - {{ id: per-user-tool, key: [identity, tool], rate: 10, per: 1s, burst: 20 }}
    - {{ id: protect-time, key: [upstream], upstream: time, rate: 100, per: 1m }}
  concurrency:
    - {{ id: slow-upstream, key: [upstream], upstream: everything, max: 4, wait: 2s }}
"#
        ))
        .unwrap();
        let rl = &config.ratelimit;
        assert_eq!(rl.backend, RateLimitBackend::Local);
        assert_eq!(rl.redis.as_ref().unwrap().on_error, OnBackendError::Allow);
        assert_eq!(rl.limits[0].key, [KeyPart::Identity, KeyPart::Tool]);
        assert_eq!(rl.limits[0].burst(), 20);
        assert_eq!(rl.limits[1].burst(), 100, "burst defaults to rate");
        assert_eq!(rl.limits[1].per, std::time::Duration::from_secs(60));
        assert_eq!(rl.concurrency[0].max, 4);
    }

    #[test]
    fn absent_section_limits_nothing() {
        let config = parse(UPSTREAMS).unwrap();
        assert!(config.ratelimit.limits.is_empty());
        assert_eq!(config.ratelimit.backend, RateLimitBackend::Local);
    }

    #[test]
    fn rejects_bad_limits_naming_the_field() {
        let cases = [
            (
                "limits: [{ id: a, rate: 0, per: 1s }]",
                "ratelimit.limits.0.rate",
            ),
            (
                "limits: [{ id: a, rate: 1, per: 0s }]",
                "ratelimit.limits.0.per",
            ),
            (
                "limits: [{ id: a, rate: 1, per: 1s, burst: 0 }]",
                "ratelimit.limits.0.burst",
            ),
            (
                "limits: [{ id: a, rate: 1, per: 1s, upstream: nope }]",
                "ratelimit.limits.0.upstream",
            ),
            (
                "limits: [{ id: a, rate: 1, per: 1s, tool: 'a[' }]",
                "ratelimit.limits.0.tool",
            ),
            (
                "limits: [{ id: a, rate: 1, per: 1s }, { id: a, rate: 1, per: 1s }]",
                "ratelimit.limits.1.id",
            ),
            (
                "limits: [{ id: 'a b', rate: 1, per: 1s }]",
                "ratelimit.limits.0.id",
            ),
            (
                "concurrency: [{ id: c, max: 0 }]",
                "ratelimit.concurrency.0.max",
            ),
            (
                "requests: [{ id: r, key: [tool], rate: 1, per: 1s }]",
                "ratelimit.requests.0.key",
            ),
            (
                "requests: [{ id: r, upstream: time, rate: 1, per: 1s }]",
                "ratelimit.requests.0",
            ),
            ("backend: redis", "ratelimit.redis"),
            ("redis: { url: 'http://x:1' }", "ratelimit.redis.url"),
            (
                "limits: [{ id: a, key: [user], rate: 1, per: 1s }]",
                "ratelimit.limits[0].key[0]",
            ),
        ];
        for (section, field) in cases {
            let text = format!("{UPSTREAMS}\nratelimit:\n  {section}\n");
            let got = error(&text);
            assert!(
                got.starts_with(&format!("{field}:")),
                "{section}: expected field {field}, got {got}"
            );
        }
    }
}
