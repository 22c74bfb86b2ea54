//! The HTTP face of authentication: credentials checked before any MCP or
//! model handling, 401/403 answers a client's OAuth library understands,
//! protected-resource metadata (RFC 9728), and binding each MCP session to
//! the identity that opened it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};

use super::compact::{Key, Pool};
use super::{json, Body};
use crate::auth::{AuthError, Authenticator, Identity};

const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Authentication state of the listener.
pub(super) struct HttpAuth {
    pub(super) authenticator: Arc<Authenticator>,
    /// Who opened each MCP session.
    owners: Owners,
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
            owners: Owners::new(config.http.session_idle_timeout + Duration::from_secs(60)),
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
            if !self
                .owners
                .admits(session, &identity.subject, Instant::now())
            {
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
            self.owners.bind(id, &identity.subject, Instant::now());
        }
    }

    /// Forgets the owner of a session its client has ended (`DELETE`).
    pub(super) fn forget(&self, session: &str) {
        self.owners.forget(session);
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

/// MCP session id → the subject that opened it. A session id is a bearer
/// of server state; another identity must not ride on it.
///
/// One inline table entry per session and one copy of each subject
/// (`compact.rs`): a cache entry of its own per session cost a sleeping
/// session ~17 KB of pinned, freed memory.
struct Owners {
    table: Mutex<OwnerTable>,
    /// How long an entry outlives its session's last request: past the
    /// session's own idle timeout, after which it is gone anyway.
    ttl: Duration,
    subjects: Pool<str>,
}

struct OwnerTable {
    sessions: HashMap<Key, Owner>,
    swept: Instant,
}

struct Owner {
    subject: Arc<str>,
    seen: Instant,
}

impl Owners {
    fn new(ttl: Duration) -> Owners {
        Owners {
            table: Mutex::new(OwnerTable {
                sessions: HashMap::new(),
                swept: Instant::now(),
            }),
            ttl,
            subjects: Pool::new(),
        }
    }

    fn table(&self) -> MutexGuard<'_, OwnerTable> {
        // A panic elsewhere while holding the lock leaves the table usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `owner` was seen within the entries' lifetime.
    fn live(&self, owner: &Owner, now: Instant) -> bool {
        now.saturating_duration_since(owner.seen) <= self.ttl
    }

    /// Whether `subject` may use `session`: it opened it, or no one is
    /// known to have (the session manager refuses unknown ids itself).
    fn admits(&self, session: &str, subject: &str, now: Instant) -> bool {
        let key = Key::of_any(session);
        let mut table = self.table();
        match table.sessions.get_mut(&key) {
            Some(owner) if self.live(owner, now) => {
                owner.seen = now;
                &*owner.subject == subject
            }
            _ => true,
        }
    }

    /// Records `subject` as the owner of `session` unless one is known.
    fn bind(&self, session: &str, subject: &str, now: Instant) {
        let key = Key::of_any(session);
        let mut table = self.table();
        if table.sessions.get(&key).is_some_and(|o| self.live(o, now)) {
            return;
        }
        let owner = Owner {
            subject: self.subjects.intern(subject),
            seen: now,
        };
        let mut ended: Vec<Arc<str>> = table
            .sessions
            .insert(key, owner)
            .map(|o| o.subject)
            .into_iter()
            .collect();
        // Often enough that the table holds at most a few periods' worth
        // of ended sessions.
        if now.saturating_duration_since(table.swept) >= self.ttl / 4 {
            table.swept = now;
            table.sessions.retain(|_, o| {
                let live = self.live(o, now);
                if !live {
                    ended.push(o.subject.clone());
                }
                live
            });
        }
        drop(table);
        for subject in ended {
            self.subjects.release(subject);
        }
    }

    fn forget(&self, session: &str) {
        let removed = self.table().sessions.remove(&Key::of_any(session));
        if let Some(owner) = removed {
            self.subjects.release(owner.subject);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b0c5d1e-8a4b-4b8e-9d55-2f3f0a4c7e21";

    #[test]
    fn a_session_is_its_openers_alone() {
        let owners = Owners::new(Duration::from_secs(60));
        let now = Instant::now();
        assert!(
            owners.admits(ID, "bob", now),
            "an unknown session is the session manager's to refuse"
        );
        owners.bind(ID, "alice", now);
        assert!(owners.admits(ID, "alice", now));
        assert!(!owners.admits(ID, "bob", now));
        // A later response on the session does not hand it over.
        owners.bind(ID, "bob", now);
        assert!(!owners.admits(ID, "bob", now));
        assert!(owners.admits(ID, "alice", now));
    }

    #[test]
    fn ids_of_any_shape_are_bound() {
        let owners = Owners::new(Duration::from_secs(60));
        let now = Instant::now();
        owners.bind("not-a-uuid", "alice", now);
        assert!(!owners.admits("not-a-uuid", "bob", now));
        assert!(owners.admits("not-a-uuid-either", "bob", now));
    }

    #[test]
    fn an_ended_session_is_forgotten_with_its_subject() {
        let owners = Owners::new(Duration::from_secs(60));
        let now = Instant::now();
        owners.bind(ID, "alice", now);
        owners.forget(ID);
        assert_eq!(owners.len(), 0);
        assert_eq!(owners.subjects.len(), 0);
    }

    #[test]
    fn an_idle_entry_expires_and_is_swept() {
        let ttl = Duration::from_secs(60);
        let owners = Owners::new(ttl);
        let start = Instant::now();
        owners.bind(ID, "alice", start);
        // Used within its lifetime, it lives on from the last use.
        assert!(!owners.admits(ID, "bob", start + ttl / 2));
        assert!(!owners.admits(ID, "bob", start + ttl));
        let later = start + ttl * 3;
        assert!(owners.admits(ID, "bob", later), "expired");
        // A later binding sweeps what expired.
        owners.bind("5f7a2c3d-1111-4222-8333-944455556666", "carol", later);
        assert_eq!(owners.len(), 1);
        assert_eq!(owners.subjects.len(), 1, "alice's copy went with her entry");
    }

    #[test]
    fn sessions_of_one_subject_share_its_copy() {
        let owners = Owners::new(Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..10u128 {
            owners.bind(&uuid::Uuid::from_u128(i + 1).to_string(), "alice", now);
        }
        assert_eq!(owners.len(), 10);
        assert_eq!(owners.subjects.len(), 1);
    }
}
