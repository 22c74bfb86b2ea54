//! The `auth` and `policies` sections: how downstream clients prove who they
//! are, and where the org-wide tool policy lives.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How downstream clients authenticate. With neither `api_keys` nor `jwt`,
/// auth is off and every caller is `anonymous` (local development).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static API keys, sent as `Authorization: Bearer KEY` or `X-API-Key`.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// JWT bearer tokens checked against a JWKS.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// The identity of `portcullis stdio` sessions (there is no token on
    /// stdin); also of HTTP callers when auth is off.
    #[serde(default)]
    pub stdio: Option<StaticIdentity>,
    /// This gateway's public URL, advertised as the protected resource in
    /// `/.well-known/oauth-protected-resource`; defaults to the request's
    /// `Host`.
    #[serde(default)]
    pub resource: Option<String>,
    /// Scopes a token must carry (space-separated `scope` or `scp` claim);
    /// a valid token without them gets 403 `insufficient_scope`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
}

impl AuthConfig {
    /// True when some authentication method is configured.
    pub fn enabled(&self) -> bool {
        !self.api_keys.is_empty() || self.jwt.is_some()
    }
}

/// How the opaque tokens the gateway hands clients (2026-07-28 task ids, a
/// multi-round call's `requestState`) are sealed.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// Secrets (at least 32 bytes each, e.g. `${PORTCULLIS_TOKEN_SECRET}`)
    /// the sealing keys are derived from: the first seals, every one opens,
    /// so a secret is rotated by putting the new one first and dropping the
    /// old one once its tokens have expired. Replicas with the same secrets
    /// open each other's tokens, and tokens survive a restart. Empty (the
    /// default): a random key per process.
    #[serde(default)]
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for TokensConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokensConfig")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .finish()
    }
}

/// The shortest token secret accepted, in bytes.
pub const MIN_TOKEN_SECRET: usize = 32;

/// One static API key. The config holds only the key's SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The identity's subject, e.g. `ci-bot`.
    pub id: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// Groups for policy rules.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra claims for policy rules.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// JWT validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Where to fetch the JWKS (cached, refreshed on an unknown `kid`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JWKS file, instead of a URL.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (one of).
    pub audience: String,
    /// Claim holding groups or roles.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// How long a fetched JWKS is trusted before refetching.
    #[serde(default = "default_jwks_ttl", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by tokens with an unknown
    /// `kid` (key rotation), so forged tokens cannot flood the IdP.
    #[serde(default = "default_refetch_min", with = "humantime_serde")]
    pub jwks_refetch_min: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Authorization servers listed in the protected-resource metadata;
    /// defaults to `issuer`.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_jwks_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_refetch_min() -> Duration {
    Duration::from_secs(10)
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// A fixed identity (for stdio sessions).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticIdentity {
    /// Subject.
    pub subject: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Claims.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Where policy files live and what happens when no rule matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Directory of `*.yaml` policy files, relative to the config file.
    pub dir: PathBuf,
    /// Decision when no rule matches a call.
    #[serde(default)]
    pub default: DefaultAction,
    /// Tool-definition pinning.
    #[serde(default)]
    pub pinning: PinningConfig,
    /// Where audit lines go.
    #[serde(default)]
    pub audit: AuditConfig,
    /// What to do with a tool whose definition (description, schemas)
    /// carries prompt-injection text: `block` hides it, `flag` audits it.
    #[serde(default)]
    pub scan: PinAction,
    /// How long an approval request waits for the human.
    #[serde(default = "default_approval_timeout", with = "humantime_serde")]
    pub approval_timeout: Duration,
}

fn default_approval_timeout() -> Duration {
    Duration::from_secs(120)
}

/// The decision when no rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Allow unmatched calls.
    Allow,
    /// Deny unmatched calls (the safe default).
    #[default]
    Deny,
}

/// Tool-definition pinning.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinningConfig {
    /// The lock file `portcullis pin` writes; relative to the config file.
    /// Unset: pinning is off.
    #[serde(default)]
    pub lockfile: Option<PathBuf>,
    /// What to do with a tool whose definition differs from its pin.
    #[serde(default)]
    pub on_change: PinAction,
    /// What to do with a tool that has no pin yet.
    #[serde(default = "default_unpinned")]
    pub on_new: PinAction,
}

fn default_unpinned() -> PinAction {
    PinAction::Flag
}

/// Enforcement of a pin or a definition-scan finding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinAction {
    /// Hide the tool and refuse calls to it.
    #[default]
    Block,
    /// Serve it, and audit.
    Flag,
}

/// Audit output.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A file to append JSON lines to; unset: stdout for `serve`, stderr
    /// for `stdio` (whose stdout carries MCP).
    #[serde(default)]
    pub file: Option<PathBuf>,
}
