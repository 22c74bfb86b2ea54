//! The HTTP face of authentication: credentials checked before any MCP or
//! model handling, 401/403 answers a client's OAuth library understands,
//! protected-resource metadata (RFC 9728), and binding each MCP session to
//! the identity that opened it.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};

use super::{json, Body};
use crate::auth::{AuthError, Authenticator, Identity};

const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Authentication state of the listener.
pub(super) struct HttpAuth {
    pub(super) authenticator: Arc<Authenticator>,
    /// MCP session id → subject that initialized it. A session id is a
    /// bearer of server state; another identity must not ride on it.
    sessions: moka::sync::Cache<String, String>,
    resource: Option<String>,
    authorization_servers: Vec<String>,
}

impl HttpAuth {
    pub(super) fn new(
        authenticator: Arc<Authenticator>,
        config: &crate::config::Config,
    ) -> HttpAuth {
        let authorization_servers = config
            .auth
            .jwt
            .as_ref()
            .map(|j| {
                if j.authorization_servers.is_empty() {
                    vec![j.issuer.clone()]
                } else {
                    j.authorization_servers.clone()
                }
            })
            .unwrap_or_default();
        HttpAuth {
            authenticator,
            sessions: moka::sync::Cache::builder()
                .time_to_idle(config.http.session_idle_timeout + Duration::from_secs(60))
                .build(),
            resource: config.auth.resource.clone(),
            authorization_servers,
        }
    }

    /// Whether `path` is the metadata document (served without credentials).
    pub(super) fn is_metadata(path: &str) -> bool {
        path == METADATA_PATH
            || path.starts_with(concat!("/.well-known/oauth-protected-resource", "/"))
    }

    /// The protected-resource metadata for the resource at `path`'s suffix.
    pub(super) fn metadata<B>(&self, req: &Request<B>, path: &str) -> Response<Body> {
        let suffix = path.strip_prefix(METADATA_PATH).unwrap_or("");
        let resource_path = if suffix.is_empty() { "/mcp" } else { suffix };
        let body = serde_json::json!({
            "resource": format!("{}{resource_path}", self.base_url(req)),
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
            "scopes_supported": self.authenticator.required_scopes(),
            "resource_name": "Portcullis MCP gateway",
        });
        json(StatusCode::OK, &body)
    }

    fn base_url<B>(&self, req: &Request<B>) -> String {
        if let Some(r) = &self.resource {
            return r.trim_end_matches('/').to_owned();
        }
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("localhost");
        format!("http://{host}")
    }

    /// Authenticates `req` and attaches the identity to its extensions, or
    /// returns the refusal to send.
    pub(super) async fn admit<B>(
        &self,
        req: &mut Request<B>,
        path: &str,
    ) -> Result<Arc<Identity>, Response<Body>> {
        let identity = match self.authenticator.authenticate(req.headers()).await {
            Ok(identity) => identity,
            Err(e) => return Err(self.refusal(req, path, &e)),
        };
        if let Some(session) = req
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            if let Some(owner) = self.sessions.get(session) {
                if owner != identity.subject {
                    return Err(json(
                        StatusCode::FORBIDDEN,
                        &super::rpc_error(
                            serde_json::Value::Null,
                            rmcp::model::ErrorData::invalid_request(
                                "this MCP session belongs to another identity",
                                None,
                            ),
                        ),
                    ));
                }
            }
        }
        req.extensions_mut().insert(identity.clone());
        Ok(identity)
    }

    /// Records the owner of a session the response just created.
    pub(super) fn bind(&self, resp: &Response<Body>, identity: &Identity) {
        if let Some(id) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            self.sessions
                .entry(id.to_owned())
                .or_insert_with(|| identity.subject.clone());
        }
    }

    fn refusal<B>(&self, req: &Request<B>, path: &str, e: &AuthError) -> Response<Body> {
        let metadata = format!("{}{METADATA_PATH}{path}", self.base_url(req));
        let (status, challenge) = match e {
            AuthError::Missing => (
                StatusCode::UNAUTHORIZED,
                format!("Bearer resource_metadata=\"{metadata}\""),
            ),
            AuthError::Invalid(why) => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\", resource_metadata=\"{metadata}\"",
                    why.replace('"', "'")
                ),
            ),
            AuthError::InsufficientScope(scopes) => (
                StatusCode::FORBIDDEN,
                format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{scopes}\", resource_metadata=\"{metadata}\""
                ),
            ),
            AuthError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
        };
        tracing::info!(path, status = status.as_u16(), reason = %e, "request refused by auth");
        let mut resp = json(
            status,
            &serde_json::json!({"error": match e {
                AuthError::Missing | AuthError::Invalid(_) => "invalid_token",
                AuthError::InsufficientScope(_) => "insufficient_scope",
                AuthError::Unavailable(_) => "temporarily_unavailable",
            }, "error_description": e.to_string()}),
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            if !challenge.is_empty() {
                resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}
