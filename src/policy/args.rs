//! Conditions on call arguments: a JSON pointer into the arguments and one
//! test on the value found there. A missing argument never matches, so a
//! rule constrained on `/path` says nothing about calls without a path.

use globset::{GlobBuilder, GlobMatcher};
use regex::Regex;
use serde_json::{Map, Value};

use super::file::RawArgCond;

/// One compiled `pointer: {test}` entry.
#[derive(Debug, Clone)]
pub(crate) struct ArgCheck {
    /// Unescaped reference tokens; `None` is a `*` (every array element).
    segments: Vec<Option<String>>,
    test: ArgTest,
}

/// How a `*` segment combines the elements it expands to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Quantifier {
    /// Every element must pass (allow and approve rules: admitting a call
    /// needs all of it to qualify).
    #[default]
    All,
    /// One passing element is enough (deny rules: refusing a call needs
    /// only one bad element).
    Any,
}

#[derive(Debug, Clone)]
enum ArgTest {
    Equals(Value),
    OneOf(Vec<Value>),
    Glob(GlobMatcher),
    Regex(Regex),
    Range { min: Option<f64>, max: Option<f64> },
    Not(Box<ArgTest>),
}

impl ArgCheck {
    /// Compiles one entry; the error is `(field, problem)` relative to
    /// `match.args`.
    pub(crate) fn compile(pointer: &str, raw: RawArgCond) -> Result<ArgCheck, (String, String)> {
        if !pointer.starts_with('/') {
            return Err((
                pointer.to_owned(),
                "an argument is named by a JSON pointer starting with `/`, e.g. `/path`".into(),
            ));
        }
        let segments = pointer[1..]
            .split('/')
            .map(|t| (t != "*").then(|| t.replace("~1", "/").replace("~0", "~")))
            .collect();
        Ok(ArgCheck {
            segments,
            test: ArgTest::compile(pointer, raw)?,
        })
    }

    /// True when the argument exists and passes the test. Where a `*`
    /// expands to array elements, `q` says whether all or any must pass; an
    /// empty array, or an element without the rest of the path, never
    /// passes.
    pub(crate) fn matches(&self, args: &Map<String, Value>, q: Quantifier) -> bool {
        let Some((first, rest)) = self.segments.split_first() else {
            return false;
        };
        let Some(Some(v)) = first.as_ref().map(|k| args.get(k)) else {
            return false;
        };
        let mut found = Vec::new();
        resolve(v, rest, &mut found);
        if found.is_empty() {
            return false;
        }
        let pass = |v: &Option<&Value>| v.is_some_and(|v| self.test.matches(v));
        match q {
            Quantifier::All => found.iter().all(pass),
            Quantifier::Any => found.iter().any(pass),
        }
    }
}

/// Follows `segments` from `v`, expanding `*` over array elements; pushes
/// `None` for each branch where the path does not exist.
fn resolve<'a>(v: &'a Value, segments: &[Option<String>], out: &mut Vec<Option<&'a Value>>) {
    let Some((seg, rest)) = segments.split_first() else {
        out.push(Some(v));
        return;
    };
    match (seg, v) {
        (None, Value::Array(items)) => {
            for item in items {
                resolve(item, rest, out);
            }
        }
        (Some(key), Value::Object(map)) => match map.get(key) {
            Some(next) => resolve(next, rest, out),
            None => out.push(None),
        },
        (Some(index), Value::Array(items)) => {
            match index.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(next) => resolve(next, rest, out),
                None => out.push(None),
            }
        }
        _ => out.push(None),
    }
}

impl ArgTest {
    fn compile(pointer: &str, raw: RawArgCond) -> Result<ArgTest, (String, String)> {
        let set = [
            raw.equals.is_some(),
            raw.one_of.is_some(),
            raw.glob.is_some(),
            raw.regex.is_some(),
            raw.range.is_some(),
            raw.not.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err((
                pointer.to_owned(),
                "needs exactly one of equals, one_of, glob, regex, range, not".into(),
            ));
        }
        let field = |k: &str| format!("{pointer}.{k}");
        let test = if let Some(v) = raw.equals {
            ArgTest::Equals(v)
        } else if let Some(v) = raw.one_of {
            if v.is_empty() {
                return Err((field("one_of"), "must list at least one value".into()));
            }
            ArgTest::OneOf(v)
        } else if let Some(g) = raw.glob {
            ArgTest::Glob(path_glob(&g).map_err(|e| (field("glob"), e))?)
        } else if let Some(r) = raw.regex {
            // Anchored: an allow rule's regex must describe the whole value,
            // or `^/srv` would also admit `/srv/../etc`-style surprises.
            let re =
                Regex::new(&format!("^(?:{r})$")).map_err(|e| (field("regex"), e.to_string()))?;
            ArgTest::Regex(re)
        } else if let Some(r) = raw.range {
            if r.min.is_none() && r.max.is_none() {
                return Err((field("range"), "needs min, max or both".into()));
            }
            if let (Some(a), Some(b)) = (r.min, r.max) {
                if a > b {
                    return Err((field("range"), "min is greater than max".into()));
                }
            }
            ArgTest::Range {
                min: r.min,
                max: r.max,
            }
        } else if let Some(inner) = raw.not {
            let inner = ArgTest::compile(&field("not"), *inner)?;
            ArgTest::Not(Box::new(inner))
        } else {
            return Err((
                pointer.to_owned(),
                "needs exactly one of equals, one_of, glob, regex, range".into(),
            ));
        };
        Ok(test)
    }

    fn matches(&self, v: &Value) -> bool {
        match self {
            ArgTest::Equals(want) => json_eq(v, want),
            ArgTest::OneOf(list) => list.iter().any(|w| json_eq(v, w)),
            ArgTest::Glob(g) => v.as_str().is_some_and(|s| g.is_match(normalize_path(s))),
            ArgTest::Regex(re) => v.as_str().is_some_and(|s| re.is_match(s)),
            ArgTest::Range { min, max } => v
                .as_f64()
                .is_some_and(|n| min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m)),
            ArgTest::Not(inner) => !inner.matches(v),
        }
    }
}

/// A glob where `*` stays within one path segment and `**` crosses them.
pub(crate) fn path_glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.to_string())
}

/// Equality that treats `1` and `1.0` as the same number.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) => p == q,
            _ => x == y,
        },
        _ => a == b,
    }
}

/// Lexically resolves `.`, `..` and repeated slashes, so
/// `/srv/shared/../etc/passwd` is judged as `/etc/passwd`. A `scheme://`
/// prefix (file URIs) is kept and the path after the authority resolved.
/// Symlinks cannot be seen from here; confinement by glob is lexical.
pub(crate) fn normalize_path(s: &str) -> String {
    if !s.contains('/') {
        return s.to_owned();
    }
    let (prefix, path) = match s.find("://") {
        Some(i) => {
            let after = &s[i + 3..];
            let cut = after.find('/').map_or(s.len(), |j| i + 3 + j);
            (&s[..cut], &s[cut..])
        }
        None => ("", s),
    };
    let absolute = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !absolute {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    let mut r = String::with_capacity(s.len());
    r.push_str(prefix);
    if absolute {
        r.push('/');
    }
    r.push_str(&out.join("/"));
    // Keep a trailing slash: `/srv/shared/` is the directory itself.
    if path.ends_with('/') && !out.is_empty() {
        r.push('/');
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(pointer: &str, cond: Value) -> ArgCheck {
        let raw: RawArgCond = serde_json::from_value(cond).unwrap();
        ArgCheck::compile(pointer, raw).unwrap()
    }

    impl ArgCheck {
        fn matches_all(&self, args: &Map<String, Value>) -> bool {
            self.matches(args, Quantifier::All)
        }
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn normalizes_dot_segments_and_slashes() {
        assert_eq!(
            normalize_path("/srv/shared/../etc/passwd"),
            "/srv/etc/passwd"
        );
        assert_eq!(
            normalize_path("/srv/shared/../../etc/passwd"),
            "/etc/passwd"
        );
        assert_eq!(normalize_path("/srv/shared//../../etc"), "/etc");
        assert_eq!(normalize_path("/srv/./shared/a"), "/srv/shared/a");
        assert_eq!(normalize_path("/../../etc"), "/etc");
        assert_eq!(normalize_path("a/../../b"), "../b");
        assert_eq!(normalize_path("/srv/shared/"), "/srv/shared/");
        assert_eq!(normalize_path("file:///srv/shared/../x"), "file:///srv/x");
        assert_eq!(normalize_path("plain"), "plain");
    }

    #[test]
    fn glob_confines_paths_after_normalizing() {
        let c = check("/path", json!({"glob": "/srv/shared/**"}));
        assert!(c.matches_all(&args(json!({"path": "/srv/shared/a/b.txt"}))));
        assert!(c.matches_all(&args(json!({"path": "/srv/shared/x/../y"}))));
        assert!(!c.matches_all(&args(json!({"path": "/srv/shared/../etc/passwd"}))));
        assert!(!c.matches_all(&args(json!({"path": "/srv/sharedevil/x"}))));
        assert!(!c.matches_all(&args(json!({"path": 7}))));
        assert!(!c.matches_all(&args(json!({"other": "/srv/shared/a"}))));
    }

    #[test]
    fn single_star_stays_in_one_segment() {
        let c = check("/path", json!({"glob": "/tmp/*.txt"}));
        assert!(c.matches_all(&args(json!({"path": "/tmp/a.txt"}))));
        assert!(!c.matches_all(&args(json!({"path": "/tmp/a/b.txt"}))));
    }

    #[test]
    fn equals_and_one_of_compare_json_values() {
        let c = check("/mode", json!({"equals": "ro"}));
        assert!(c.matches_all(&args(json!({"mode": "ro"}))));
        assert!(!c.matches_all(&args(json!({"mode": "rw"}))));
        let n = check("/n", json!({"equals": 1}));
        assert!(n.matches_all(&args(json!({"n": 1.0}))));
        let null = check("/x", json!({"equals": null}));
        assert!(null.matches_all(&args(json!({"x": null}))));
        assert!(!null.matches_all(&args(json!({}))));
        let o = check("/db", json!({"one_of": ["a", "b"]}));
        assert!(o.matches_all(&args(json!({"db": "b"}))));
        assert!(!o.matches_all(&args(json!({"db": "c"}))));
    }

    #[test]
    fn regex_is_anchored() {
        let c = check("/q", json!({"regex": "SELECT .*"}));
        assert!(c.matches_all(&args(json!({"q": "SELECT * FROM t"}))));
        assert!(!c.matches_all(&args(json!({"q": "x; SELECT 1"}))));
    }

    #[test]
    fn range_is_inclusive_and_numeric_only() {
        let c = check("/n", json!({"range": {"min": 1, "max": 10}}));
        assert!(c.matches_all(&args(json!({"n": 1}))));
        assert!(c.matches_all(&args(json!({"n": 10.0}))));
        assert!(!c.matches_all(&args(json!({"n": 11}))));
        assert!(!c.matches_all(&args(json!({"n": "5"}))));
        let open = check("/n", json!({"range": {"max": 0}}));
        assert!(open.matches_all(&args(json!({"n": -3}))));
    }

    #[test]
    fn not_negates_but_a_missing_argument_still_fails() {
        let c = check("/path", json!({"not": {"glob": "/srv/shared/**"}}));
        assert!(c.matches_all(&args(json!({"path": "/etc/passwd"}))));
        assert!(c.matches_all(&args(json!({"path": "/srv/shared/../../etc/passwd"}))));
        assert!(!c.matches_all(&args(json!({"path": "/srv/shared/a"}))));
        assert!(!c.matches_all(&args(json!({}))));
        let raw: RawArgCond = serde_json::from_value(json!({"not": {}})).unwrap();
        assert_eq!(ArgCheck::compile("/p", raw).unwrap_err().0, "/p.not");
    }

    #[test]
    fn nested_pointers_and_escapes() {
        let c = check("/opts/mode", json!({"equals": "x"}));
        assert!(c.matches_all(&args(json!({"opts": {"mode": "x"}}))));
        let e = check("/a~1b", json!({"equals": 1}));
        assert!(e.matches_all(&args(json!({"a/b": 1}))));
        let i = check("/list/1", json!({"equals": 2}));
        assert!(i.matches_all(&args(json!({"list": [1, 2]}))));
    }

    #[test]
    fn star_expands_arrays_all_for_allow_any_for_deny() {
        let c = check("/paths/*", json!({"glob": "/srv/shared/**"}));
        let inside = args(json!({"paths": ["/srv/shared/a", "/srv/shared/b"]}));
        let mixed = args(json!({"paths": ["/srv/shared/a", "/etc/passwd"]}));
        let empty = args(json!({"paths": []}));
        assert!(c.matches(&inside, Quantifier::All));
        assert!(!c.matches(&mixed, Quantifier::All));
        assert!(c.matches(&mixed, Quantifier::Any));
        assert!(!c.matches(&empty, Quantifier::All));
        assert!(!c.matches(&empty, Quantifier::Any));
        let nested = check("/edits/*/path", json!({"glob": "/srv/**"}));
        assert!(nested.matches(
            &args(json!({"edits": [{"path": "/srv/a"}, {"path": "/srv/b"}]})),
            Quantifier::All
        ));
        // An element without the path fails "all".
        assert!(!nested.matches(
            &args(json!({"edits": [{"path": "/srv/a"}, {"to": "/x"}]})),
            Quantifier::All
        ));
        // A `*` over something that is not an array matches nothing.
        assert!(!c.matches(&args(json!({"paths": "/srv/shared/a"})), Quantifier::Any));
    }

    #[test]
    fn rejects_malformed_conditions() {
        let raw: RawArgCond = serde_json::from_value(json!({})).unwrap();
        assert!(ArgCheck::compile("/p", raw).is_err());
        let raw: RawArgCond = serde_json::from_value(json!({"glob": "a", "regex": "b"})).unwrap();
        assert!(ArgCheck::compile("/p", raw).is_err());
        let raw: RawArgCond = serde_json::from_value(json!({"equals": 1})).unwrap();
        assert!(ArgCheck::compile("path", raw).is_err());
        let raw: RawArgCond = serde_json::from_value(json!({"regex": "("})).unwrap();
        assert!(ArgCheck::compile("/p", raw).is_err());
        let raw: RawArgCond =
            serde_json::from_value(json!({"range": {"min": 2, "max": 1}})).unwrap();
        assert!(ArgCheck::compile("/p", raw).is_err());
    }
}
