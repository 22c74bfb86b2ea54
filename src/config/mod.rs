//! Gateway configuration: the YAML file's types, loading, `${VAR}`
//! interpolation and validation.
//!
//! Loading is two steps. The file is parsed into a YAML tree, environment
//! references are substituted on that tree (so an error can name the field
//! it came from), and the tree is deserialized into [`Config`]. Then
//! [`Config::validate`] checks what serde cannot: names, globs, URLs and
//! references between sections. Every error names the file, the field and
//! the problem, because `portcullis check` prints it to a person.

mod auth;
mod interpolate;
mod llm;
mod ratelimit;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use auth::*;
pub use interpolate::interpolate;
pub use llm::*;
pub use ratelimit::*;

/// A configuration problem, always naming the file and, where there is one,
/// the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML itself is malformed.
    #[error("{file}: invalid YAML: {message}")]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// A field is missing, misspelt or of the wrong type, or fails validation.
    #[error("{file}: field `{field}`: {message}")]
    Field {
        /// The config file.
        file: PathBuf,
        /// Dotted path of the field, e.g. `upstreams.time.stdio.command`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn field(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field {
            file: file.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The whole gateway configuration, as written in the YAML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP listener binds, e.g. `127.0.0.1:8080` (port 0 picks one).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Separator between upstream prefix and tool or prompt name on `/mcp`.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// HTTP-level protections and limits.
    #[serde(default)]
    pub http: HttpConfig,
    /// Upstream MCP servers by name; the name is the default prefix and the
    /// path segment of `/mcp/{upstream}`.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Curated tool sets served at `/mcp/v/{name}`.
    #[serde(default)]
    pub virtual_servers: BTreeMap<String, VirtualServerConfig>,
    /// Logging output.
    #[serde(default)]
    pub log: LogConfig,
    /// The async runtime.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Metrics, traces and the admin view.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// How downstream clients authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// How the tokens handed to clients are sealed.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// Org-wide tool policy; unset: every call is allowed and not audited.
    #[serde(default)]
    pub policies: Option<PoliciesConfig>,
    /// Rate limits and concurrency caps; unset: nothing is limited.
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
    /// Model providers by name (OpenAI-compatible or Anthropic endpoints).
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Model aliases clients name on `/v1/*`, each routed to targets.
    #[serde(default)]
    pub models: BTreeMap<String, ModelAliasConfig>,
    /// Serve MCP sampling requests from upstreams through a model alias.
    #[serde(default)]
    pub sampling: Option<SamplingConfig>,
    /// Where the config came from; set by [`Config::load`], used in errors.
    #[serde(skip)]
    pub source: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_separator() -> String {
    "__".to_owned()
}

/// HTTP listener protections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Accepted `Host` header values (host or host:port). Defaults to the
    /// loopback names, which blocks DNS-rebinding attacks on a local gateway;
    /// a deployment behind a real hostname lists it here. `"*"` allows any.
    #[serde(default = "default_allowed_hosts")]
    pub allowed_hosts: Vec<String>,
    /// Accepted browser `Origin` values (with scheme, e.g.
    /// `https://app.example.com`). Empty: requests carrying an `Origin`
    /// header are accepted only from loopback origins.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Idle downstream sessions are closed after this long.
    #[serde(default = "default_session_idle", with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// A downstream session idle this long, with no call in flight and no
    /// state beyond its `initialize` (no log level, subscription or
    /// per-client upstream connection), gives up its worker and keeps only
    /// its `initialize` parameters; its GET stream stays open, and its next
    /// request rebuilds it, unseen by the client. `0s` keeps every
    /// session's worker until `session_idle_timeout`.
    #[serde(default = "default_session_hibernate", with = "humantime_serde")]
    pub session_hibernate_after: Duration,
    /// Items per page in list results the gateway returns.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// How long a 2026-07-28 client may cache a list result (`ttlMs`). The
    /// gateway's own lists change when an upstream says so; a client that
    /// does not listen for that should look again after this long.
    #[serde(default = "default_list_ttl", with = "humantime_serde")]
    pub list_ttl: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_hosts: default_allowed_hosts(),
            allowed_origins: Vec::new(),
            max_body_bytes: default_max_body(),
            session_idle_timeout: default_session_idle(),
            session_hibernate_after: default_session_hibernate(),
            page_size: default_page_size(),
            list_ttl: default_list_ttl(),
        }
    }
}

fn default_allowed_hosts() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1", "[::1]"]
        .map(String::from)
        .to_vec()
}

fn default_max_body() -> usize {
    4 * 1024 * 1024
}

fn default_session_idle() -> Duration {
    Duration::from_secs(30 * 60)
}

/// rmcp keeps a finished response stream for `Last-Event-ID` resumption
/// for 60 s; a session hibernated sooner would forget it.
fn default_session_hibernate() -> Duration {
    Duration::from_secs(60)
}

fn default_list_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_page_size() -> usize {
    500
}

/// Protocol era spoken to an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum UpstreamProtocol {
    /// Probe with `server/discover`, fall back to `initialize`; a server
    /// that speaks both eras also gets a legacy connection for legacy
    /// clients (see `upstream::eras`). The default.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// The `initialize` handshake only.
    #[serde(rename = "legacy")]
    Legacy,
    /// 2026-07-28 only.
    #[serde(rename = "2026-07-28")]
    Modern,
}

/// One upstream MCP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A child process speaking MCP over stdin/stdout.
    #[serde(default)]
    pub stdio: Option<StdioConfig>,
    /// A streamable HTTP server.
    #[serde(default)]
    pub http: Option<HttpUpstreamConfig>,
    /// A server on the legacy 2024-11-05 HTTP+SSE transport.
    #[serde(default)]
    pub sse: Option<HttpUpstreamConfig>,
    /// Whether downstream sessions share one upstream session.
    #[serde(default)]
    pub session: SessionMode,
    /// Protocol era spoken to this upstream: `legacy` (the `initialize`
    /// handshake, 2025-11-25 and older), `2026-07-28` (`server/discover`,
    /// per-request metadata, multi round-trip requests), or `auto`
    /// (discover, then fall back to legacy). Default: `auto`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Cap on live upstream sessions in `per-client` mode.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// A `per-client` upstream session unused this long is closed.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Deadline for one forwarded request.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Deadline for connecting and initializing.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Prefix for names on `/mcp`; defaults to the upstream's name.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Which tools to expose, and under what names.
    #[serde(default)]
    pub tools: ToolFilterConfig,
    /// Restart backoff for a failed upstream.
    #[serde(default)]
    pub restart: RestartConfig,
    /// Liveness pings on the shared connection.
    #[serde(default)]
    pub health: HealthConfig,
}

/// Liveness checking. A connection whose pings fail `failures` times in a
/// row is torn down and reconnected; a failed call triggers a ping at once.
/// This catches HTTP servers that restarted and forgot our session without
/// saying so in a way the transport recognises.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between pings while idle.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Deadline for one ping.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed pings before reconnecting.
    #[serde(default = "default_health_failures")]
    pub failures: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            failures: default_health_failures(),
        }
    }
}

fn default_health_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_health_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_health_failures() -> u32 {
    2
}

fn default_max_sessions() -> usize {
    64
}

fn default_idle() -> Duration {
    Duration::from_secs(10 * 60)
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(60)
}

/// How downstream sessions map onto upstream sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionMode {
    /// One upstream session serves every downstream session.
    #[default]
    Shared,
    /// One upstream session per downstream session.
    PerClient,
}

/// A stdio upstream: the command to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioConfig {
    /// Program to run (looked up on `PATH`).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

/// An HTTP upstream (streamable HTTP or legacy SSE).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUpstreamConfig {
    /// The endpoint URL.
    pub url: String,
    /// Headers sent on every request (credentials for this upstream).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Tool selection and presentation for one upstream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolFilterConfig {
    /// Globs of upstream tool names to expose; empty means all.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs of upstream tool names to hide (applied after `include`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Upstream tool name to the name exposed in its place (before prefixing).
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Upstream tool name to a description that replaces the upstream's.
    #[serde(default)]
    pub descriptions: BTreeMap<String, String>,
}

/// Exponential backoff between restarts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// First delay.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            initial_backoff: default_backoff_initial(),
            max_backoff: default_backoff_max(),
        }
    }
}

fn default_backoff_initial() -> Duration {
    Duration::from_millis(250)
}

fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

/// A curated tool set drawn from several upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServerConfig {
    /// Globs over the names tools have on `/mcp` (e.g. `time__*`).
    pub tools: Vec<String>,
    /// Optional description shown as the server's instructions.
    #[serde(default)]
    pub description: Option<String>,
}

/// Log output settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info,portcullis=debug`; `RUST_LOG` wins.
    #[serde(default)]
    pub level: Option<String>,
}

/// The async runtime.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; unset: `TOKIO_WORKER_THREADS`, else one per core.
    /// One worker avoids cross-thread wakeups, which at low load cost more
    /// than they give (see docs/benchmarks.md); more serve more calls at
    /// once.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// Metrics, traces and the admin view.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL (e.g. `http://127.0.0.1:4318`); traces
    /// are off when unset.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` on exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Serve `/metrics` and `/admin` on this separate address instead of the
    /// main listener (keeps them off a public port).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Record raw tool arguments in spans and logs. Off by default: arguments
    /// may hold secrets.
    #[serde(default)]
    pub log_arguments: bool,
    /// How many recent calls the admin view keeps.
    #[serde(default = "default_recent_calls")]
    pub recent_calls: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: default_service_name(),
            admin_listen: None,
            log_arguments: false,
            recent_calls: default_recent_calls(),
        }
    }
}

fn default_service_name() -> String {
    "portcullis".to_owned()
}

fn default_recent_calls() -> usize {
    100
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which transport an upstream uses, resolved from its config.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Child process over stdio.
    Stdio(StdioConfig),
    /// Streamable HTTP.
    Http(HttpUpstreamConfig),
    /// Legacy HTTP+SSE.
    Sse(HttpUpstreamConfig),
}

impl UpstreamConfig {
    /// The configured transport. Validation guarantees exactly one is set.
    pub fn transport(&self) -> Option<Transport> {
        match (&self.stdio, &self.http, &self.sse) {
            (Some(s), None, None) => Some(Transport::Stdio(s.clone())),
            (None, Some(h), None) => Some(Transport::Http(h.clone())),
            (None, None, Some(h)) => Some(Transport::Sse(h.clone())),
            _ => None,
        }
    }
}

impl Config {
    /// Reads, interpolates, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses config text. `env` resolves `${VAR}` references; it is a
    /// parameter so tests need not touch the process environment.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax {
                file: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if tree.is_null() {
            tree = serde_yaml_ng::Value::Mapping(Default::default());
        }
        interpolate(&mut tree, env).map_err(|e| ConfigError::field(path, e.field, e.message))?;
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::field(path, field, e.into_inner().to_string())
        })?;
        config.source = path.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    /// A path from the config, resolved against the config file's directory
    /// when relative (so a config works from any working directory).
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        match self.source.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The prefix an upstream's names carry on `/mcp`.
    pub fn prefix_of<'a>(&'a self, upstream: &'a str) -> &'a str {
        self.upstreams
            .get(upstream)
            .and_then(|u| u.prefix.as_deref())
            .unwrap_or(upstream)
    }
}

#[cfg(test)]
mod tests;
