//! Who is calling: the [`Identity`] every request carries through policy,
//! rate limiting and audit.

use std::sync::Arc;

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
