//! JWT bearer tokens checked against a JWKS (a URL, cached and refreshed,
//! or a file).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{AuthError, Identity};
use crate::config::JwtConfig;

/// Only asymmetric algorithms: a JWKS publishes public keys, and accepting
/// `HS*` would let anyone who knows a public key sign with it.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// Verifies JWTs for one issuer and audience.
pub(super) struct JwtVerifier {
    config: JwtConfig,
    source: KeySource,
    keys: ArcSwapOption<Keys>,
    /// Single-flight for fetches.
    fetching: tokio::sync::Mutex<()>,
}

enum KeySource {
    Url(reqwest::Client, String),
    File(std::path::PathBuf),
}

impl JwtVerifier {
    pub(super) fn new(config: JwtConfig, jwks_file: Option<std::path::PathBuf>) -> JwtVerifier {
        let source = match (jwks_file, &config.jwks_url) {
            (Some(file), _) => KeySource::File(file),
            (None, url) => KeySource::Url(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap_or_default(),
                url.clone().unwrap_or_default(),
            ),
        };
        JwtVerifier {
            config,
            source,
            keys: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks signature, issuer, audience, expiry and not-before, and turns
    /// the claims into an identity.
    pub(super) async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {e}")))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = self.key_for(header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|e| AuthError::Invalid(describe(&e)))?;
        Ok(identity_from_claims(data.claims, &self.config.groups_claim))
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.lookup(kid, false) {
            return key;
        }
        self.refresh().await?;
        self.lookup(kid, true).unwrap_or_else(|| {
            Err(AuthError::Invalid(
                "no key in the JWKS matches the token".into(),
            ))
        })
    }

    /// The key for `kid` from the cached set; `None` when the set should be
    /// refetched first (absent, stale, or the kid unknown).
    fn lookup(&self, kid: Option<&str>, fresh: bool) -> Option<Result<DecodingKey, AuthError>> {
        let keys = self.keys.load_full()?;
        if !fresh && keys.fetched.elapsed() > self.config.jwks_refresh {
            return None;
        }
        let jwk = match kid {
            Some(kid) => keys.set.find(kid),
            None if keys.set.keys.len() == 1 => keys.set.keys.first(),
            None => {
                return Some(Err(AuthError::Invalid(
                    "token has no `kid` and the JWKS holds several keys".into(),
                )))
            }
        };
        match jwk {
            Some(jwk) => Some(
                DecodingKey::from_jwk(jwk)
                    .map_err(|e| AuthError::Invalid(format!("unusable JWKS key: {e}"))),
            ),
            None if fresh || keys.fetched.elapsed() < self.config.jwks_refetch_min => Some(Err(
                AuthError::Invalid("no key in the JWKS matches the token".into()),
            )),
            None => None,
        }
    }

    async fn refresh(&self) -> Result<(), AuthError> {
        let _one = self.fetching.lock().await;
        // Another request may have refreshed while this one waited.
        if let Some(keys) = self.keys.load_full() {
            if keys.fetched.elapsed() < self.config.jwks_refetch_min {
                return Ok(());
            }
        }
        let set = match &self.source {
            KeySource::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    AuthError::Unavailable(format!("cannot read {}: {e}", path.display()))
                })?;
                serde_json::from_str::<JwkSet>(&text)
                    .map_err(|e| AuthError::Unavailable(format!("bad JWKS file: {e}")))?
            }
            KeySource::Url(client, url) => {
                let resp = client
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| AuthError::Unavailable(format!("fetching JWKS: {e}")))?;
                resp.json::<JwkSet>()
                    .await
                    .map_err(|e| AuthError::Unavailable(format!("bad JWKS: {e}")))?
            }
        };
        tracing::debug!(keys = set.keys.len(), "JWKS loaded");
        self.keys.store(Some(Arc::new(Keys {
            set,
            fetched: Instant::now(),
        })));
        Ok(())
    }
}

/// A reason a client can act on, without echoing the token.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token expired".into(),
        K::ImmatureSignature => "token not valid yet (nbf)".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidSignature => "bad signature".into(),
        K::MissingRequiredClaim(c) => format!("missing claim `{c}`"),
        other => format!("invalid token: {other:?}"),
    }
}

/// Subject from `sub`; groups from the configured claim (a list or a
/// space-separated string), plus `roles` when present; every claim kept.
pub(super) fn identity_from_claims(
    claims: serde_json::Map<String, serde_json::Value>,
    groups_claim: &str,
) -> Identity {
    let subject = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
        .to_owned();
    let mut groups = Vec::new();
    for claim in [groups_claim, "roles"] {
        match claims.get(claim) {
            Some(serde_json::Value::Array(items)) => {
                groups.extend(items.iter().filter_map(|g| g.as_str().map(str::to_owned)))
            }
            Some(serde_json::Value::String(s)) => {
                groups.extend(s.split_whitespace().map(str::to_owned))
            }
            _ => {}
        }
    }
    groups.dedup();
    Identity {
        subject,
        groups,
        claims,
    }
}
