//! The compiled `match:` block: every condition present must hold (AND);
//! lists inside one condition are alternatives (OR).

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use rmcp::model::ToolAnnotations;
use serde_json::{Map, Value};

pub(crate) use super::args::Quantifier;
use super::args::{normalize_path, ArgCheck};
use super::file::{OneOrMany, RawMatch};
use super::{Kind, Subject};
use crate::auth::Identity;

/// A compiled matcher. An absent condition matches everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    subject: Option<GlobSet>,
    groups: Vec<String>,
    claims: Vec<(String, Vec<Value>)>,
    upstream: Option<GlobSet>,
    kind: Option<Kind>,
    names: Option<GlobSet>,
    annotations: Hints,
    args: Vec<ArgCheck>,
    quantifier: Quantifier,
}

/// Required values of the tool hints; `None` = not constrained.
#[derive(Debug, Clone, Copy, Default)]
struct Hints {
    destructive: Option<bool>,
    read_only: Option<bool>,
    open_world: Option<bool>,
    idempotent: Option<bool>,
}

type Problem = (String, String);

impl Matcher {
    /// Compiles a raw block; errors are `(field, problem)` relative to the
    /// item (e.g. `match.tool`).
    pub(crate) fn compile(raw: RawMatch, quantifier: Quantifier) -> Result<Matcher, Problem> {
        let mut m = Matcher {
            quantifier,
            subject: names_glob("match.subject", raw.subject, false)?,
            upstream: names_glob("match.upstream", raw.upstream, false)?,
            ..Matcher::default()
        };
        if let Some(g) = raw.groups {
            m.groups = g.into_vec();
            if m.groups.is_empty() {
                return Err(("match.groups".into(), "empty list matches nobody".into()));
            }
        }
        for (name, values) in raw.claims {
            let values = values.into_vec();
            if values.is_empty() {
                return Err((
                    format!("match.claims.{name}"),
                    "empty list matches nobody".into(),
                ));
            }
            m.claims.push((name, values));
        }
        let kinds = [
            ("tool", Kind::Tool, raw.tool, false),
            ("resource", Kind::Resource, raw.resource, true),
            ("prompt", Kind::Prompt, raw.prompt, false),
            ("model", Kind::Model, raw.model, false),
        ];
        for (key, kind, list, separator) in kinds {
            let Some(list) = list else { continue };
            if m.kind.is_some() {
                return Err((
                    format!("match.{key}"),
                    "a match names at most one of tool, resource, prompt, model".into(),
                ));
            }
            m.kind = Some(kind);
            m.names = names_glob(&format!("match.{key}"), Some(list), separator)?;
        }
        if let Some(a) = raw.annotations {
            if m.kind.is_some_and(|k| k != Kind::Tool) {
                return Err((
                    "match.annotations".into(),
                    "annotations exist only on tools".into(),
                ));
            }
            m.kind = Some(Kind::Tool);
            m.annotations = Hints {
                destructive: a.destructive_hint,
                read_only: a.read_only_hint,
                open_world: a.open_world_hint,
                idempotent: a.idempotent_hint,
            };
        }
        for (pointer, cond) in raw.args {
            let check = ArgCheck::compile(&pointer, cond)
                .map_err(|(f, p)| (format!("match.args.{f}"), p))?;
            m.args.push(check);
        }
        Ok(m)
    }

    /// True when the rule carries argument conditions (so whether it
    /// matches depends on the call, not only on who and what).
    pub(crate) fn has_args(&self) -> bool {
        !self.args.is_empty()
    }

    /// Identity and subject conditions, ignoring arguments.
    pub(crate) fn matches_target(&self, who: &Identity, s: &Subject) -> bool {
        self.matches_subject(s) && self.matches_identity(who)
    }

    /// Every condition, arguments included (absent arguments are an empty
    /// object: any argument condition then fails).
    pub(crate) fn matches(
        &self,
        who: &Identity,
        s: &Subject,
        args: Option<&Map<String, Value>>,
    ) -> bool {
        self.matches_target(who, s) && self.matches_args(args)
    }

    fn matches_args(&self, args: Option<&Map<String, Value>>) -> bool {
        if self.args.is_empty() {
            return true;
        }
        let Some(args) = args else { return false };
        self.args.iter().all(|c| c.matches(args, self.quantifier))
    }

    fn matches_identity(&self, who: &Identity) -> bool {
        if self
            .subject
            .as_ref()
            .is_some_and(|g| !g.is_match(&who.subject))
        {
            return false;
        }
        if !self.groups.is_empty() && !self.groups.iter().any(|g| who.groups.contains(g)) {
            return false;
        }
        self.claims
            .iter()
            .all(|(name, want)| claim(&who.claims, name).is_some_and(|v| claim_matches(v, want)))
    }

    fn matches_subject(&self, s: &Subject) -> bool {
        if self.kind.is_some_and(|k| k != s.kind) {
            return false;
        }
        if self
            .upstream
            .as_ref()
            .is_some_and(|g| !g.is_match(s.upstream))
        {
            return false;
        }
        if let Some(g) = &self.names {
            let hit = if s.kind == Kind::Resource {
                g.is_match(normalize_path(s.exposed)) || g.is_match(normalize_path(s.name))
            } else {
                g.is_match(s.exposed) || g.is_match(s.name)
            };
            if !hit {
                return false;
            }
        }
        self.hints_match(s.annotations)
    }

    fn hints_match(&self, a: Option<&ToolAnnotations>) -> bool {
        let h = self.annotations;
        let read_only = a.and_then(|a| a.read_only_hint).unwrap_or(false);
        // The spec gives destructiveHint (default true) and idempotentHint
        // (default false) meaning only for tools that are not read-only; a
        // read-only tool destroys nothing and is trivially idempotent.
        let destructive = !read_only && a.and_then(|a| a.destructive_hint).unwrap_or(true);
        let idempotent = read_only || a.and_then(|a| a.idempotent_hint).unwrap_or(false);
        let open_world = a.and_then(|a| a.open_world_hint).unwrap_or(true);
        h.read_only.is_none_or(|w| w == read_only)
            && h.destructive.is_none_or(|w| w == destructive)
            && h.idempotent.is_none_or(|w| w == idempotent)
            && h.open_world.is_none_or(|w| w == open_world)
    }
}

/// A claim by name, or by JSON pointer when the name starts with `/`
/// (nested claims such as `/realm_access/roles`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(rest) = name.strip_prefix('/') {
        let (first, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let v = claims.get(first)?;
        if tail.is_empty() {
            Some(v)
        } else {
            v.pointer(tail)
        }
    } else {
        claims.get(name)
    }
}

/// A claim matches when it equals one of the wanted values, or (for a list
/// claim such as `roles`) when any of its elements does.
fn claim_matches(v: &Value, want: &[Value]) -> bool {
    let eq = |x: &Value| want.iter().any(|w| scalar_eq(x, w));
    match v {
        Value::Array(items) => items.iter().any(eq),
        other => eq(other),
    }
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn names_glob(
    field: &str,
    list: Option<OneOrMany<String>>,
    literal_separator: bool,
) -> Result<Option<GlobSet>, Problem> {
    let Some(list) = list else { return Ok(None) };
    let list = list.into_vec();
    if list.is_empty() {
        return Err((field.to_owned(), "empty list matches nothing".into()));
    }
    let mut b = GlobSetBuilder::new();
    for p in &list {
        let g: Result<Glob, _> = GlobBuilder::new(p)
            .literal_separator(literal_separator)
            .build();
        b.add(g.map_err(|e| (field.to_owned(), e.to_string()))?);
    }
    b.build()
        .map(Some)
        .map_err(|e| (field.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matcher(v: Value) -> Matcher {
        let raw: RawMatch = serde_json::from_value(v).unwrap();
        Matcher::compile(raw, Quantifier::All).unwrap()
    }

    fn who(subject: &str, groups: &[&str], claims: Value) -> Identity {
        Identity {
            subject: subject.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims: claims.as_object().cloned().unwrap_or_default(),
        }
    }

    fn tool<'a>(upstream: &'a str, name: &'a str, exposed: &'a str) -> Subject<'a> {
        Subject {
            kind: Kind::Tool,
            upstream,
            name,
            exposed,
            annotations: None,
        }
    }

    #[test]
    fn identity_conditions() {
        let anyone = who(
            "alice",
            &["readers"],
            json!({"tier": "gold", "roles": ["a", "b"]}),
        );
        assert!(
            matcher(json!({"subject": "ali*"})).matches_target(&anyone, &tool("u", "t", "u__t"))
        );
        assert!(!matcher(json!({"subject": ["bob", "carol"]}))
            .matches_target(&anyone, &tool("u", "t", "u__t")));
        assert!(matcher(json!({"groups": ["x", "readers"]}))
            .matches_target(&anyone, &tool("u", "t", "u__t")));
        assert!(
            !matcher(json!({"groups": "writers"})).matches_target(&anyone, &tool("u", "t", "u__t"))
        );
        assert!(matcher(json!({"claims": {"tier": ["gold", "silver"]}}))
            .matches_target(&anyone, &tool("u", "t", "u__t")));
        assert!(matcher(json!({"claims": {"roles": "b"}}))
            .matches_target(&anyone, &tool("u", "t", "u__t")));
        assert!(!matcher(json!({"claims": {"roles": "c"}}))
            .matches_target(&anyone, &tool("u", "t", "u__t")));
        assert!(!matcher(json!({"claims": {"missing": "x"}}))
            .matches_target(&anyone, &tool("u", "t", "u__t")));
        let nested = who("s", &[], json!({"realm": {"roles": ["admin"]}}));
        assert!(matcher(json!({"claims": {"/realm/roles": "admin"}}))
            .matches_target(&nested, &tool("u", "t", "u__t")));
    }

    #[test]
    fn tool_glob_matches_exposed_or_own_name() {
        let m = matcher(json!({"tool": "fs__*"}));
        let a = who("a", &[], json!({}));
        assert!(m.matches_target(&a, &tool("fs", "read", "fs__read")));
        assert!(!m.matches_target(&a, &tool("git", "read", "git__read")));
        let own = matcher(json!({"tool": "delete_*"}));
        assert!(own.matches_target(&a, &tool("fs", "delete_file", "fs__delete_file")));
        assert!(matcher(json!({"upstream": "f?"})).matches_target(&a, &tool("fs", "x", "fs__x")));
    }

    #[test]
    fn kind_keys_restrict_the_kind() {
        let a = who("a", &[], json!({}));
        let res = Subject {
            kind: Kind::Resource,
            upstream: "fs",
            name: "file:///srv/a",
            exposed: "file:///srv/a",
            annotations: None,
        };
        assert!(!matcher(json!({"tool": "*"})).matches_target(&a, &res));
        assert!(matcher(json!({"resource": "file:///srv/**"})).matches_target(&a, &res));
        assert!(!matcher(json!({"prompt": "*"})).matches_target(&a, &res));
        assert!(matcher(json!({})).matches_target(&a, &res));
        assert!(!matcher(json!({"annotations": {"readOnlyHint": false}})).matches_target(&a, &res));
        let escape = Subject {
            name: "file:///srv/../etc/passwd",
            exposed: "file:///srv/../etc/passwd",
            ..res
        };
        assert!(!matcher(json!({"resource": "file:///srv/**"})).matches_target(&a, &escape));
    }

    #[test]
    fn annotations_use_mcp_defaults() {
        let a = who("a", &[], json!({}));
        let bare = tool("u", "t", "u__t");
        let destructive = matcher(json!({"annotations": {"destructiveHint": true}}));
        let not_ro = matcher(json!({"annotations": {"readOnlyHint": false}}));
        let open = matcher(json!({"annotations": {"openWorldHint": true}}));
        // No annotations: destructive, not read-only, open world.
        assert!(destructive.matches_target(&a, &bare));
        assert!(not_ro.matches_target(&a, &bare));
        assert!(open.matches_target(&a, &bare));
        let ro = ToolAnnotations::new().read_only(true);
        let read_only = Subject {
            annotations: Some(&ro),
            ..tool("u", "t", "u__t")
        };
        assert!(!destructive.matches_target(&a, &read_only));
        assert!(!not_ro.matches_target(&a, &read_only));
        let additive = ToolAnnotations::new().read_only(false).destructive(false);
        let add = Subject {
            annotations: Some(&additive),
            ..tool("u", "t", "u__t")
        };
        assert!(!destructive.matches_target(&a, &add));
        assert!(not_ro.matches_target(&a, &add));
        let closed = ToolAnnotations::new().open_world(false);
        assert!(!open.matches_target(
            &a,
            &Subject {
                annotations: Some(&closed),
                ..tool("u", "t", "u__t")
            }
        ));
    }

    #[test]
    fn args_are_anded_and_missing_args_fail() {
        let a = who("a", &[], json!({}));
        let m = matcher(json!({"args": {"/path": {"glob": "/srv/**"}, "/mode": {"equals": "r"}}}));
        let t = tool("u", "t", "u__t");
        assert!(m.has_args());
        let ok = json!({"path": "/srv/x", "mode": "r"});
        let bad = json!({"path": "/srv/x", "mode": "w"});
        assert!(m.matches(&a, &t, ok.as_object()));
        assert!(!m.matches(&a, &t, bad.as_object()));
        assert!(!m.matches(&a, &t, None));
    }

    #[test]
    fn invalid_blocks_name_the_field() {
        let raw: RawMatch = serde_json::from_value(json!({"tool": "a", "prompt": "b"})).unwrap();
        assert_eq!(
            Matcher::compile(raw, Quantifier::All).unwrap_err().0,
            "match.prompt"
        );
        let raw: RawMatch = serde_json::from_value(json!({"tool": "a[", })).unwrap();
        assert_eq!(
            Matcher::compile(raw, Quantifier::All).unwrap_err().0,
            "match.tool"
        );
        let raw: RawMatch =
            serde_json::from_value(json!({"resource": "x", "annotations": {"readOnlyHint": true}}))
                .unwrap();
        assert_eq!(
            Matcher::compile(raw, Quantifier::All).unwrap_err().0,
            "match.annotations"
        );
        let raw: RawMatch = serde_json::from_value(json!({"groups": []})).unwrap();
        assert_eq!(
            Matcher::compile(raw, Quantifier::All).unwrap_err().0,
            "match.groups"
        );
    }
}
