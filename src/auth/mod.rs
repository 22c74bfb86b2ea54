//! Who is calling: the [`Identity`] every request carries through policy,
//! rate limiting and audit, and the [`Authenticator`] that establishes it
//! from an HTTP request's credentials (static API keys or JWT bearer
//! tokens). The gateway is an OAuth 2.1 resource server: it checks tokens,
//! it never forwards them.

mod jwt;

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use serde::Serialize;

use crate::config::AuthConfig;

/// The authenticated caller of a request.
///
/// Built once per HTTP request (or once for a stdio session) and shared;
/// policy rules match on `subject`, `groups` and any claim.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    /// Stable subject: an API key's id, a JWT's `sub`, or `anonymous`.
    pub subject: String,
    /// Groups or roles the caller belongs to.
    pub groups: Vec<String>,
    /// Every other claim, for rules that match on them (JWT claims, or the
    /// `claims` map of an API key).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Identity {
    /// The identity of an unauthenticated caller when auth is off.
    pub fn anonymous() -> Arc<Identity> {
        Arc::new(Identity {
            subject: "anonymous".to_owned(),
            groups: Vec::new(),
            claims: serde_json::Map::new(),
        })
    }

    /// The identity of callers that present no credentials: the config's
    /// `auth.stdio` identity if set, else [`Identity::anonymous`].
    pub fn configured(auth: &AuthConfig) -> Arc<Identity> {
        match &auth.stdio {
            Some(s) => Arc::new(Identity {
                subject: s.subject.clone(),
                groups: s.groups.clone(),
                claims: s.claims.clone(),
            }),
            None => Identity::anonymous(),
        }
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No credentials where some are required (401).
    #[error("authentication required")]
    Missing,
    /// Credentials present but not valid (401).
    #[error("{0}")]
    Invalid(String),
    /// Valid credentials without a required scope (403).
    #[error("token lacks required scope: {0}")]
    InsufficientScope(String),
    /// The key source could not be reached (503: retry later).
    #[error("cannot verify tokens now: {0}")]
    Unavailable(String),
}

/// Checks a request's credentials against the configured methods.
pub struct Authenticator {
    /// SHA-256 of each key → its identity.
    api_keys: HashMap<[u8; 32], Arc<Identity>>,
    jwt: Option<jwt::JwtVerifier>,
    required_scopes: Vec<String>,
    anonymous: Arc<Identity>,
}

impl Authenticator {
    /// Builds the authenticator; `jwks_file` is the config's `jwks_file`
    /// already resolved against the config's directory.
    pub fn new(auth: &AuthConfig, jwks_file: Option<std::path::PathBuf>) -> Authenticator {
        let api_keys = auth
            .api_keys
            .iter()
            .filter_map(|k| {
                let mut hash = [0u8; 32];
                decode_hex(&k.sha256, &mut hash)?;
                Some((
                    hash,
                    Arc::new(Identity {
                        subject: k.id.clone(),
                        groups: k.groups.clone(),
                        claims: k.claims.clone(),
                    }),
                ))
            })
            .collect();
        Authenticator {
            api_keys,
            jwt: auth
                .jwt
                .clone()
                .map(|j| jwt::JwtVerifier::new(j, jwks_file)),
            required_scopes: auth.required_scopes.clone(),
            anonymous: Identity::configured(auth),
        }
    }

    /// True when requests must carry credentials.
    pub fn required(&self) -> bool {
        !self.api_keys.is_empty() || self.jwt.is_some()
    }

    /// The caller of a request with these headers. `Authorization: Bearer`
    /// carries an API key or a JWT (a JWT has two dots; keys never do);
    /// `X-API-Key` carries an API key.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Arc<Identity>, AuthError> {
        if !self.required() {
            return Ok(self.anonymous.clone());
        }
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let token = match (bearer, api_key) {
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => return Err(AuthError::Missing),
        };
        if token.matches('.').count() == 2 {
            if let Some(jwt) = &self.jwt {
                let identity = jwt.verify(token).await?;
                self.check_scopes(&identity)?;
                return Ok(Arc::new(identity));
            }
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.api_keys
            .get(&hash)
            .cloned()
            .ok_or_else(|| AuthError::Invalid("unknown API key".into()))
    }

    fn check_scopes(&self, identity: &Identity) -> Result<(), AuthError> {
        if self.required_scopes.is_empty() {
            return Ok(());
        }
        let granted: Vec<&str> = ["scope", "scp"]
            .iter()
            .filter_map(|c| identity.claims.get(*c))
            .flat_map(|v| match v {
                serde_json::Value::String(s) => s.split_whitespace().collect::<Vec<_>>(),
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
                _ => Vec::new(),
            })
            .collect();
        let missing: Vec<&str> = self
            .required_scopes
            .iter()
            .map(String::as_str)
            .filter(|s| !granted.contains(s))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope(missing.join(" ")))
        }
    }

    /// Scopes a token must carry, for `WWW-Authenticate` and the metadata.
    pub fn required_scopes(&self) -> &[String] {
        &self.required_scopes
    }
}

/// Decodes 64 hex digits into `out`; `None` if malformed (config
/// validation reports it; a bad entry simply matches nothing).
fn decode_hex(hex: &str, out: &mut [u8; 32]) -> Option<()> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeyConfig, AuthConfig};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn with_key(key: &str) -> Authenticator {
        let auth = AuthConfig {
            api_keys: vec![ApiKeyConfig {
                id: "ci-bot".into(),
                sha256: hex(&Sha256::digest(key.as_bytes())),
                groups: vec!["automation".into()],
                claims: Default::default(),
            }],
            ..Default::default()
        };
        Authenticator::new(&auth, None)
    }

    fn headers(name: &str, value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn api_key_by_bearer_or_header() {
        let a = with_key("s3cret-key");
        let id = a
            .authenticate(&headers("authorization", "Bearer s3cret-key"))
            .await
            .unwrap();
        assert_eq!(id.subject, "ci-bot");
        assert_eq!(id.groups, ["automation"]);
        let id = a
            .authenticate(&headers("x-api-key", "s3cret-key"))
            .await
            .unwrap();
        assert_eq!(id.subject, "ci-bot");
    }

    #[tokio::test]
    async fn wrong_or_missing_key_is_refused() {
        let a = with_key("s3cret-key");
        assert!(matches!(
            a.authenticate(&headers("authorization", "Bearer nope"))
                .await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.authenticate(&http::HeaderMap::new()).await,
            Err(AuthError::Missing)
        ));
    }

    #[tokio::test]
    async fn auth_off_is_anonymous() {
        let a = Authenticator::new(&AuthConfig::default(), None);
        let id = a.authenticate(&http::HeaderMap::new()).await.unwrap();
        assert_eq!(id.subject, "anonymous");
    }

    #[test]
    fn groups_from_list_or_string_claims() {
        let claims =
            serde_json::json!({"sub": "alice", "groups": ["readers"], "roles": "admin ops"});
        let id = jwt::identity_from_claims(claims.as_object().unwrap().clone(), "groups");
        assert_eq!(id.subject, "alice");
        assert_eq!(id.groups, ["readers", "admin", "ops"]);
    }
}
