//! The model-routing sections: `providers` (where models are served),
//! `models` (aliases clients name, each mapped to targets by a strategy) and
//! `sampling` (which alias serves MCP sampling requests).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::validate::is_name;
use super::ConfigError;

/// One model provider: an OpenAI-compatible or Anthropic API endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Which wire format the provider speaks.
    pub kind: ProviderKind,
    /// API base URL, e.g. `https://api.openai.com/v1` (OpenAI: paths such as
    /// `/chat/completions` are appended) or `https://api.anthropic.com`
    /// (Anthropic: `/v1/messages` is appended).
    pub base_url: String,
    /// API key, usually `${ENV_VAR}`; unset: no credential is sent (local
    /// servers such as Ollama or vLLM).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Extra headers on every request (e.g. `api-key` for Azure OpenAI).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Deadline for the TCP and TLS connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline for the first byte of the answer (response headers and,
    /// when streaming, the first event).
    #[serde(default = "default_first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Deadline for the whole answer, streamed or not.
    #[serde(default = "default_total_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Prices per model served by this provider; a target's own `price`
    /// takes precedence.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceConfig>,
}

/// Wire format of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI's Chat Completions API (OpenAI, Azure OpenAI, vLLM, Ollama...).
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
}

/// Price in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Per million uncached input tokens.
    #[serde(default)]
    pub input: f64,
    /// Per million output tokens.
    #[serde(default)]
    pub output: f64,
    /// Per million cached input tokens; defaults to the input price.
    #[serde(default)]
    pub cached: Option<f64>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_total_timeout() -> Duration {
    Duration::from_secs(600)
}

/// A model alias: the name a client sends, served by one of its targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAliasConfig {
    /// How a target is chosen for each request.
    #[serde(default)]
    pub strategy: Strategy,
    /// Candidate targets; order matters to `fallback` and `header`.
    pub targets: Vec<TargetConfig>,
    /// Retries of one target before moving to the next.
    #[serde(default)]
    pub retry: RetryConfig,
    /// When a target is cooled down after failing.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// `max_tokens` sent to Anthropic targets when an OpenAI-format request
    /// sets none (Anthropic requires it).
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
}

fn default_max_tokens() -> u64 {
    4096
}

/// Target-selection strategy of an alias.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Targets in order; each failure moves to the next.
    #[default]
    Fallback,
    /// Random by `weight`; the others follow as fallbacks.
    Weighted,
    /// Lowest moving average of time to first token first.
    Latency,
    /// Cheapest by price first.
    Cost,
    /// The target named by the `x-portcullis-target` header (or
    /// `metadata.portcullis_target` in the body) first, then in order.
    Header,
}

/// One (provider, model) an alias may be served by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// A key of `providers`.
    pub provider: String,
    /// The model name the provider knows.
    pub model: String,
    /// Relative share under `weighted`.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Price of this target; defaults to the provider's `prices` entry.
    #[serde(default)]
    pub price: Option<PriceConfig>,
}

fn default_weight() -> u32 {
    1
}

/// Retries of one target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per target after the first (on connect errors, 429 and 5xx).
    #[serde(default = "default_retries")]
    pub attempts: u32,
    /// First backoff; doubles with each retry.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// Longest `Retry-After` the gateway waits for when no other target is
    /// left; a longer one fails the request at once.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: default_retries(),
            backoff: default_backoff(),
            max_retry_after: default_max_retry_after(),
        }
    }
}

fn default_retries() -> u32 {
    1
}

fn default_backoff() -> Duration {
    Duration::from_millis(200)
}

fn default_max_retry_after() -> Duration {
    Duration::from_secs(10)
}

/// Circuit breaker per target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed requests that open the breaker.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// How long an open breaker keeps the target out before one probe.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_breaker_failures(),
            cooldown: default_cooldown(),
        }
    }
}

fn default_breaker_failures() -> u32 {
    3
}

fn default_cooldown() -> Duration {
    Duration::from_secs(30)
}

/// MCP sampling served by the model router.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// The alias (a key of `models`) that serves `sampling/createMessage`.
    pub model: String,
    /// `fallback` (default): only when the calling client cannot sample;
    /// `always`: every sampling request, even from clients that can.
    #[serde(default)]
    pub mode: SamplingMode,
    /// Other aliases a request's `modelPreferences` (hints, then cost or
    /// speed priority) may choose instead of `model`. Empty (the default):
    /// every request goes to `model`, whatever it prefers.
    #[serde(default)]
    pub candidates: Vec<String>,
}

/// When the gateway serves sampling itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMode {
    /// Only for clients without the sampling capability.
    #[default]
    Fallback,
    /// For every sampling request.
    Always,
}

/// Validates `providers`, `models` and `sampling` together (aliases refer to
/// providers, sampling to an alias).
pub(crate) fn validate_llm(
    file: &Path,
    providers: &BTreeMap<String, ProviderConfig>,
    models: &BTreeMap<String, ModelAliasConfig>,
    sampling: Option<&SamplingConfig>,
) -> Result<(), ConfigError> {
    for (name, p) in providers {
        validate_provider(file, name, p)?;
    }
    for (name, alias) in models {
        validate_alias(file, name, alias, providers)?;
    }
    if let Some(s) = sampling {
        let fields = std::iter::once(("sampling.model".to_owned(), &s.model)).chain(
            s.candidates
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("sampling.candidates.{i}"), a)),
        );
        for (field, alias) in fields {
            if !models.contains_key(alias) {
                return Err(ConfigError::field(
                    file,
                    field,
                    format!("`{alias}` is not a key of `models`"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_provider(file: &Path, name: &str, p: &ProviderConfig) -> Result<(), ConfigError> {
    let field = format!("providers.{name}");
    if !is_name(name) {
        return Err(ConfigError::field(
            file,
            field,
            "name must use only A-Z a-z 0-9 _ - .",
        ));
    }
    let url = reqwest::Url::parse(&p.base_url).map_err(|e| {
        ConfigError::field(file, format!("{field}.base_url"), format!("not a URL: {e}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::field(
            file,
            format!("{field}.base_url"),
            "scheme must be http or https",
        ));
    }
    for (h, v) in &p.headers {
        let hf = format!("{field}.headers.{h}");
        http::HeaderName::try_from(h.as_str())
            .map_err(|_| ConfigError::field(file, &hf, "not a valid header name"))?;
        http::HeaderValue::try_from(v.as_str())
            .map_err(|_| ConfigError::field(file, &hf, "not a valid header value"))?;
    }
    if let Some(key) = &p.api_key {
        http::HeaderValue::try_from(key.as_str()).map_err(|_| {
            ConfigError::field(file, format!("{field}.api_key"), "not a valid header value")
        })?;
    }
    if p.connect_timeout.is_zero() || p.first_byte_timeout.is_zero() || p.timeout.is_zero() {
        return Err(ConfigError::field(
            file,
            field,
            "timeouts must be greater than 0",
        ));
    }
    for (model, price) in &p.prices {
        check_price(file, &format!("{field}.prices.{model}"), price)?;
    }
    Ok(())
}

fn validate_alias(
    file: &Path,
    name: &str,
    alias: &ModelAliasConfig,
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<(), ConfigError> {
    let field = format!("models.{name}");
    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConfigError::field(
            file,
            field,
            "name must be non-empty without spaces or control characters",
        ));
    }
    if alias.targets.is_empty() {
        return Err(ConfigError::field(
            file,
            format!("{field}.targets"),
            "needs at least one target",
        ));
    }
    for (i, t) in alias.targets.iter().enumerate() {
        let tf = format!("{field}.targets.{i}");
        if !providers.contains_key(&t.provider) {
            return Err(ConfigError::field(
                file,
                format!("{tf}.provider"),
                format!("`{}` is not a key of `providers`", t.provider),
            ));
        }
        if t.model.trim().is_empty() {
            return Err(ConfigError::field(file, format!("{tf}.model"), "is empty"));
        }
        if let Some(price) = &t.price {
            check_price(file, &format!("{tf}.price"), price)?;
        }
    }
    if alias.strategy == Strategy::Weighted && alias.targets.iter().all(|t| t.weight == 0) {
        return Err(ConfigError::field(
            file,
            format!("{field}.targets"),
            "`weighted` needs at least one target with a weight above 0",
        ));
    }
    if alias.breaker.failures == 0 {
        return Err(ConfigError::field(
            file,
            format!("{field}.breaker.failures"),
            "must be at least 1",
        ));
    }
    if alias.default_max_tokens == 0 {
        return Err(ConfigError::field(
            file,
            format!("{field}.default_max_tokens"),
            "must be at least 1",
        ));
    }
    Ok(())
}

fn check_price(file: &Path, field: &str, p: &PriceConfig) -> Result<(), ConfigError> {
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if ok(p.input) && ok(p.output) && p.cached.is_none_or(ok) {
        Ok(())
    } else {
        Err(ConfigError::field(
            file,
            field,
            "prices must be finite and not negative",
        ))
    }
}

impl ModelAliasConfig {
    /// The price of target `i`: its own, else its provider's entry for the
    /// model, else `None` (cost is then not accounted).
    pub fn price_of(
        &self,
        i: usize,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> Option<PriceConfig> {
        let t = self.targets.get(i)?;
        t.price.or_else(|| {
            providers
                .get(&t.provider)
                .and_then(|p| p.prices.get(&t.model).copied())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gw.yaml"), &|name| {
            matches!(name, "OPENAI_API_KEY" | "ANTHROPIC_API_KEY").then(|| format!("key-{name}"))
        })
    }

    const ISSUE_EXAMPLE: &str = r#"
providers:
  openai: { kind: openai, base_url: "https://api.openai.com/v1", api_key: "${OPENAI_API_KEY}" }
  claude: { kind: anthropic, base_url: "https://api.anthropic.com", api_key: "${ANTHROPIC_API_KEY}" }
  local:  { kind: openai, base_url: "http://127.0.0.1:11434/v1" }
models:
  smart:
    strategy: fallback        # fallback | weighted | latency | cost | header
    targets:
      - { provider: openai, model: gpt-4o, price: { input: 2.5, output: 10.0 } }
      - { provider: claude, model: claude-sonnet-4-5, weight: 1 }
  cheap:
    strategy: weighted
    targets: [ { provider: local, model: llama3, weight: 3 }, { provider: openai, model: gpt-4o-mini, weight: 1 } ]
sampling: { model: smart }   # serve upstream sampling requests with this alias
"#;

    #[test]
    fn issue_example_parses() {
        let c = parse(ISSUE_EXAMPLE).unwrap();
        assert_eq!(
            c.providers["openai"].api_key.as_deref(),
            Some("key-OPENAI_API_KEY")
        );
        assert_eq!(c.models["cheap"].targets[0].weight, 3);
        assert_eq!(c.sampling.as_ref().unwrap().model, "smart");
        let price = c.models["smart"].price_of(0, &c.providers).unwrap();
        assert_eq!(price.output, 10.0);
        assert!(c.models["smart"].price_of(1, &c.providers).is_none());
    }

    fn field_of(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Field { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn alias_target_must_name_a_provider() {
        let text = ISSUE_EXAMPLE.replace("provider: local", "provider: nowhere");
        assert_eq!(field_of(&text), "models.cheap.targets.0.provider");
    }

    #[test]
    fn sampling_must_name_an_alias() {
        let text = ISSUE_EXAMPLE.replace("sampling: { model: smart }", "sampling: { model: x }");
        assert_eq!(field_of(&text), "sampling.model");
        let text = ISSUE_EXAMPLE.replace(
            "sampling: { model: smart }",
            "sampling: { model: smart, candidates: [cheap, gone] }",
        );
        assert_eq!(field_of(&text), "sampling.candidates.1");
        let text = ISSUE_EXAMPLE.replace(
            "sampling: { model: smart }",
            "sampling: { model: smart, candidates: [cheap] }",
        );
        assert_eq!(
            parse(&text).unwrap().sampling.unwrap().candidates,
            ["cheap"]
        );
    }

    #[test]
    fn unknown_kind_and_bad_prices_are_rejected() {
        let text = ISSUE_EXAMPLE.replace("kind: anthropic", "kind: gemini");
        assert!(field_of(&text).starts_with("providers.claude"));
        let text = ISSUE_EXAMPLE.replace("input: 2.5", "input: -1");
        assert_eq!(field_of(&text), "models.smart.targets.0.price");
    }

    #[test]
    fn missing_key_variable_is_an_error() {
        let text = ISSUE_EXAMPLE.replace("${OPENAI_API_KEY}", "${NOT_SET_ANYWHERE}");
        assert_eq!(field_of(&text), "providers.openai.api_key");
    }
}
