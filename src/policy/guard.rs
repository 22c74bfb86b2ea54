//! Compiled content guards, and the walk that runs them over a JSON value.

use serde_json::{Map, Value};

use super::detect::{self, Mask};
use super::matcher::Matcher;
use super::{Direction, GuardAction, GuardOutcome, Hit};

/// One compiled guard.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) id: String,
    pub(crate) mask: Mask,
    pub(crate) arguments: bool,
    pub(crate) results: bool,
    pub(crate) action: GuardAction,
    pub(crate) message: Option<String>,
    pub(crate) matcher: Matcher,
}

impl Guard {
    pub(crate) fn applies_to(&self, dir: Direction) -> bool {
        match dir {
            Direction::Arguments => self.arguments,
            Direction::Results => self.results,
        }
    }
}

/// Runs `active` guards over every string in `value`, redacting in place
/// where a redacting guard covers the detector.
pub(crate) fn run(active: &[&Guard], value: &mut Value) -> GuardOutcome {
    let mask = active.iter().fold(0, |m, g| m | g.mask);
    let mut w = Walker {
        active,
        mask,
        redacting: active
            .iter()
            .filter(|g| g.action == GuardAction::Redact)
            .fold(0, |m, g| m | g.mask),
        out: GuardOutcome::default(),
    };
    if mask != 0 {
        w.value(value, &mut String::new());
    }
    w.out
}

struct Walker<'a> {
    active: &'a [&'a Guard],
    mask: Mask,
    redacting: Mask,
    out: GuardOutcome,
}

impl Walker<'_> {
    fn value(&mut self, value: &mut Value, path: &mut String) {
        match value {
            Value::String(s) => {
                if let Some(found) = self.scan(s, path) {
                    if let Some(redacted) = self.redacted(s, found) {
                        *s = redacted;
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&i.to_string());
                    self.value(v, path);
                    path.truncate(len);
                }
            }
            Value::Object(map) => self.object(map, path),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Keys are scanned too: results keyed by e-mail address are common,
    /// and a key is as visible to the client as a value. A key that holds
    /// a finding appears in hit paths only in its redacted form, so no
    /// path ever carries the value, and is renamed when a guard redacts.
    fn object(&mut self, map: &mut Map<String, Value>, path: &mut String) {
        let mut renames = Vec::new();
        for (k, v) in map.iter_mut() {
            let len = path.len();
            match detect::scan(k, self.mask) {
                found if found.is_empty() => push_key(path, k),
                found => {
                    push_key(path, &detect::redact(k, &found));
                    self.record(&found, path);
                    if let Some(new) = self.redacted(k, found) {
                        renames.push((k.clone(), new));
                    }
                }
            }
            self.value(v, path);
            path.truncate(len);
        }
        for (old, mut new) in renames {
            if let Some(v) = map.remove(&old) {
                let base = new.clone();
                let mut n = 2;
                while map.contains_key(&new) {
                    new = format!("{base}#{n}");
                    n += 1;
                }
                map.insert(new, v);
            }
        }
    }

    fn scan(&mut self, text: &str, path: &str) -> Option<Vec<detect::Detection>> {
        let found = detect::scan(text, self.mask);
        if found.is_empty() {
            return None;
        }
        self.record(&found, path);
        Some(found)
    }

    fn redacted(&self, text: &str, found: Vec<detect::Detection>) -> Option<String> {
        let spans: Vec<detect::Detection> = found
            .into_iter()
            .filter(|d| self.redacting & (1 << d.detector) != 0)
            .collect();
        (!spans.is_empty()).then(|| detect::redact(text, &spans))
    }

    fn record(&mut self, found: &[detect::Detection], path: &str) {
        let out = &mut self.out;
        let first_new = out.hits.len();
        for d in found {
            let def = &detect::DETECTORS[d.detector];
            for g in self
                .active
                .iter()
                .filter(|g| g.mask & (1 << d.detector) != 0)
            {
                // One hit per guard and detector per string, however many
                // times it occurs there.
                let seen = out.hits[first_new..]
                    .iter()
                    .any(|h| h.guard == g.id && h.detector == def.name);
                if seen {
                    continue;
                }
                if g.action == GuardAction::Block && out.blocked.is_none() {
                    let message = g.message.clone().unwrap_or_else(|| {
                        format!("blocked by policy guard {}: {} detected", g.id, def.name)
                    });
                    out.blocked = Some((g.id.clone(), message));
                }
                out.hits.push(Hit {
                    guard: g.id.clone(),
                    detector: def.name,
                    category: def.category,
                    path: path.to_owned(),
                    action: g.action,
                });
            }
        }
    }
}

/// Appends `/key` with RFC 6901 escaping.
pub(crate) fn push_key(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn guard(id: &str, detect: &str, action: GuardAction) -> Guard {
        Guard {
            id: id.into(),
            mask: detect::mask_for(detect).unwrap(),
            arguments: true,
            results: true,
            action,
            message: None,
            matcher: Matcher::default(),
        }
    }

    #[test]
    fn redacts_in_place_and_keeps_structure() {
        let g = guard("no-secrets", "secrets", GuardAction::Redact);
        let mut v = json!({"content": [{"type": "text", "text": "token ghp_0123456789abcdefghijABCDEFGHIJ012345 ok"}], "n": 3});
        let out = run(&[&g], &mut v);
        assert_eq!(
            v,
            json!({"content": [{"type": "text", "text": "token [REDACTED:secret.github_token] ok"}], "n": 3})
        );
        assert_eq!(out.blocked, None);
        assert_eq!(out.hits.len(), 1);
        assert_eq!(out.hits[0].path, "/content/0/text");
        assert_eq!(out.hits[0].detector, "secret.github_token");
        assert_eq!(out.hits[0].category, "secrets");
    }

    #[test]
    fn flag_reports_without_changing_and_block_names_the_guard() {
        let flag = guard("watch-pii", "pii", GuardAction::Flag);
        let block = guard("stop-keys", "secret.aws_access_key", GuardAction::Block);
        let original = json!({"a/b": ["mail bob@example.com", "AKIAIOSFODNN7EXAMPLE"]});
        let mut v = original.clone();
        let out = run(&[&flag, &block], &mut v);
        assert_eq!(v, original);
        let paths: Vec<(&str, &str)> = out
            .hits
            .iter()
            .map(|h| (h.path.as_str(), h.detector))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("/a~1b/0", "pii.email"),
                ("/a~1b/1", "secret.aws_access_key")
            ]
        );
        let (id, msg) = out.blocked.unwrap();
        assert_eq!(id, "stop-keys");
        assert!(msg.contains("secret.aws_access_key"));
        assert!(!msg.contains("AKIA"));
    }

    #[test]
    fn repeated_matches_in_one_string_are_one_hit() {
        let g = guard("pii", "pii.email", GuardAction::Redact);
        let mut v = json!("a@example.com, b@example.com");
        let out = run(&[&g], &mut v);
        assert_eq!(out.hits.len(), 1);
        assert_eq!(out.hits[0].path, "");
        assert_eq!(v, json!("[REDACTED:pii.email], [REDACTED:pii.email]"));
    }

    #[test]
    fn keys_are_scanned_and_never_appear_raw_in_paths() {
        let g = guard("pii", "pii", GuardAction::Redact);
        let mut v = json!({"users": {"bob@example.com": {"card": "4111111111111111"}, "amy@example.com": 1}});
        let out = run(&[&g], &mut v);
        let dump = format!("{out:?}");
        assert!(
            !dump.contains("bob@example.com") && !dump.contains("4111"),
            "{dump}"
        );
        let paths: Vec<&str> = out.hits.iter().map(|h| h.path.as_str()).collect();
        assert!(
            paths.contains(&"/users/[REDACTED:pii.email]/card"),
            "{paths:?}"
        );
        // Both keys redact to the same text; neither value is lost.
        let users = v["users"].as_object().unwrap();
        assert_eq!(users.len(), 2);
        assert!(!serde_json::to_string(&v).unwrap().contains("example.com"));
        let flag = guard("f", "pii", GuardAction::Flag);
        let mut v = json!({"bob@example.com": true});
        let out = run(&[&flag], &mut v);
        assert_eq!(out.hits[0].path, "/[REDACTED:pii.email]");
        assert_eq!(v, json!({"bob@example.com": true}));
    }

    #[test]
    fn hits_never_carry_the_matched_value() {
        let g = guard("all", "all", GuardAction::Flag);
        let mut v = json!({"k": "AKIAIOSFODNN7EXAMPLE bob@example.com"});
        let out = run(&[&g], &mut v);
        let dump = format!("{out:?}");
        assert!(!dump.contains("AKIAIOSFODNN7EXAMPLE"));
        assert!(!dump.contains("bob@example.com"));
    }
}
