//! Which calls a limit applies to, and the counter key a call spends.
//! Pure functions of (limit, identity, target), so they test in isolation.

use crate::auth::Identity;
use crate::config::KeyPart;
use crate::registry::Target;

/// A limit's filters and key parts.
#[derive(Debug)]
pub(super) struct Scope {
    key: Vec<KeyPart>,
    upstream: Option<String>,
    tool: ToolFilter,
}

#[derive(Debug)]
enum ToolFilter {
    Any,
    Glob(globset::GlobMatcher),
    /// Validation rejects bad globs; should one slip through, the limit
    /// applies to every tool rather than silently to none.
    Invalid,
}

/// What kind of counter a key belongs to, so a call limit, a request limit
/// and a unit budget never share a counter even with equal ids.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Call,
    Request,
    Units,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Request => "request",
            Kind::Units => "units",
        }
    }
}

impl Scope {
    pub(super) fn new(key: &[KeyPart], upstream: Option<&str>, tool: Option<&str>) -> Scope {
        let tool = match tool {
            None => ToolFilter::Any,
            Some(glob) => match globset::Glob::new(glob) {
                Ok(g) => ToolFilter::Glob(g.compile_matcher()),
                Err(_) => ToolFilter::Invalid,
            },
        };
        Scope {
            key: key.to_vec(),
            upstream: upstream.map(str::to_owned),
            tool,
        }
    }

    /// The same filters with other key parts.
    pub(super) fn with_key(&self, key: &[KeyPart]) -> Scope {
        Scope {
            key: key.to_vec(),
            upstream: self.upstream.clone(),
            tool: match &self.tool {
                ToolFilter::Any => ToolFilter::Any,
                ToolFilter::Glob(g) => ToolFilter::Glob(g.clone()),
                ToolFilter::Invalid => ToolFilter::Invalid,
            },
        }
    }

    /// True when the limit applies to a call of `target`.
    pub(super) fn matches(&self, target: &Target) -> bool {
        let upstream_ok = self
            .upstream
            .as_deref()
            .is_none_or(|u| u == &*target.upstream);
        let tool_ok = match &self.tool {
            ToolFilter::Any | ToolFilter::Invalid => true,
            ToolFilter::Glob(g) => g.is_match(&target.original),
        };
        upstream_ok && tool_ok
    }

    /// The counter key. Each part is tagged and length-prefixed, so no
    /// subject or tool name, whatever characters it holds, can forge
    /// another key.
    pub(super) fn key(
        &self,
        kind: Kind,
        id: &str,
        identity: &Identity,
        target: Option<&Target>,
    ) -> String {
        let mut key = format!("{}:{id}", kind.tag());
        for part in &self.key {
            let (tag, value) = match (part, target) {
                (KeyPart::Identity, _) => ("i", identity.subject.clone()),
                (KeyPart::Tool, Some(t)) => ("t", format!("{}/{}", t.upstream, t.original)),
                (KeyPart::Upstream, Some(t)) => ("u", t.upstream.to_string()),
                // Global, or a call part where there is no call (validation
                // keeps those out of request limits).
                _ => continue,
            };
            push_part(&mut key, tag, &value);
        }
        key
    }
}

/// The key of a unit budget (`Limits::consume`).
pub(super) fn units_key(id: &str, key: &str) -> String {
    let mut out = format!("{}:{id}", Kind::Units.tag());
    push_part(&mut out, "k", key);
    out
}

fn push_part(key: &mut String, tag: &str, value: &str) {
    key.push('|');
    key.push_str(tag);
    key.push_str(&value.len().to_string());
    key.push(':');
    key.push_str(value);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn who(subject: &str) -> Identity {
        Identity {
            subject: subject.to_owned(),
            groups: Vec::new(),
            claims: Default::default(),
        }
    }

    fn target(upstream: &str, tool: &str) -> Target {
        Target {
            upstream: Arc::from(upstream),
            original: tool.to_owned(),
        }
    }

    #[test]
    fn filters_by_upstream_and_tool_glob() {
        let s = Scope::new(&[KeyPart::Upstream], Some("time"), Some("get_*"));
        assert!(s.matches(&target("time", "get_current_time")));
        assert!(!s.matches(&target("time", "convert_time")));
        assert!(!s.matches(&target("everything", "get_current_time")));
        let all = Scope::new(&[], None, None);
        assert!(all.matches(&target("anything", "at_all")));
    }

    #[test]
    fn keys_separate_identities_tools_and_kinds() {
        let s = Scope::new(&[KeyPart::Identity, KeyPart::Tool], None, None);
        let t = target("time", "get_current_time");
        let alice = s.key(Kind::Call, "l", &who("alice"), Some(&t));
        assert_eq!(alice, "call:l|i5:alice|t21:time/get_current_time");
        assert_ne!(alice, s.key(Kind::Call, "l", &who("bob"), Some(&t)));
        assert_ne!(
            alice,
            s.key(Kind::Call, "l", &who("alice"), Some(&target("time", "x")))
        );
        assert_ne!(alice, s.key(Kind::Request, "l", &who("alice"), Some(&t)));
        let global = Scope::new(&[KeyPart::Global], None, None);
        assert_eq!(global.key(Kind::Call, "g", &who("a"), Some(&t)), "call:g");
        assert_eq!(units_key("tokens", "alice"), "units:tokens|k5:alice");
    }

    #[test]
    fn a_subject_cannot_forge_another_key() {
        let s = Scope::new(&[KeyPart::Identity, KeyPart::Upstream], None, None);
        let a = s.key(Kind::Call, "l", &who("a|u4:time"), Some(&target("x", "t")));
        let b = s.key(Kind::Call, "l", &who("a"), Some(&target("time", "t")));
        assert_ne!(a, b);
    }

    #[test]
    fn request_keys_skip_call_parts() {
        let s = Scope::new(&[KeyPart::Identity, KeyPart::Tool], None, None);
        assert_eq!(
            s.key(Kind::Request, "r", &who("bob"), None),
            "request:r|i3:bob"
        );
    }
}
