//! Table-driven policy tests (`portcullis policy test FILE...`): each case
//! names a caller, a tool and arguments (or a value to guard) and the
//! expected outcome. The file format is documented in `docs/policy.md`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::file::{OneOrMany, RawAnnotations};
use super::{Action, Direction, Kind, PolicyError, PolicySet, Subject};
use crate::auth::Identity;
use crate::config::DefaultAction;

/// The outcome of one test file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    /// Cases that passed.
    pub passed: usize,
    /// `case name: why` for every case that failed.
    pub failed: Vec<String>,
    /// Every case in file order, with its failure if any.
    pub cases: Vec<CaseResult>,
}

/// One case's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Policies directory relative to the test file.
    #[serde(default)]
    policies: Option<PathBuf>,
    #[serde(default)]
    default: DefaultAction,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    identity: Option<TestIdentity>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    exposed: Option<String>,
    #[serde(default)]
    annotations: Option<RawAnnotations>,
    #[serde(default)]
    args: Option<Map<String, Value>>,
    #[serde(default)]
    expect: Option<Action>,
    /// The deciding rule's id, or `default` for the config default.
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    expect_audit: Option<Vec<String>>,
    #[serde(default)]
    expect_visible: Option<bool>,
    #[serde(default)]
    guard: Option<Direction>,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    expect_hits: Option<Vec<String>>,
    #[serde(default)]
    expect_blocked: Option<bool>,
    #[serde(default)]
    expect_value: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestIdentity {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    groups: Option<OneOrMany<String>>,
    #[serde(default)]
    claims: Map<String, Value>,
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        match String::deserialize(d)?.as_str() {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            "approve" => Ok(Action::Approve),
            other => Err(serde::de::Error::custom(format!(
                "unknown action `{other}`, expected allow, deny or approve"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Direction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Direction, D::Error> {
        match String::deserialize(d)?.as_str() {
            "arguments" => Ok(Direction::Arguments),
            "results" => Ok(Direction::Results),
            other => Err(serde::de::Error::custom(format!(
                "unknown direction `{other}`, expected arguments or results"
            ))),
        }
    }
}

/// Runs one test file against the policies it names. An unreadable or
/// malformed test file, or an invalid policy, is an error; failed cases are
/// in the report.
pub fn run_file(path: &Path) -> Result<TestReport, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
    let file_name = path.display().to_string();
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    let file: TestFile = serde_path_to_error::deserialize(de).map_err(|e| PolicyError::Parse {
        file: file_name.clone(),
        message: format!("{}: {}", e.path(), e.inner()),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let dir = base.join(file.policies.unwrap_or_else(|| PathBuf::from("..")));
    let set = PolicySet::load_dir(&dir, file.default)?;
    let mut report = TestReport::default();
    for case in &file.cases {
        let failure = run_case(&set, case).err();
        match &failure {
            None => report.passed += 1,
            Some(why) => report.failed.push(format!("{}: {why}", case.name)),
        }
        report.cases.push(CaseResult {
            name: case.name.clone(),
            failure,
        });
    }
    Ok(report)
}

fn run_case(set: &PolicySet, case: &Case) -> Result<(), String> {
    let who = identity(case.identity.as_ref());
    let upstream = case.upstream.as_deref().unwrap_or("test");
    let (kind, name) = match (&case.tool, &case.resource, &case.prompt) {
        (Some(t), None, None) => (Kind::Tool, t.as_str()),
        (None, Some(r), None) => (Kind::Resource, r.as_str()),
        (None, None, Some(p)) => (Kind::Prompt, p.as_str()),
        (None, None, None) if case.guard.is_some() => (Kind::Tool, "test"),
        (None, None, None) => return Err("name a tool, resource or prompt".into()),
        _ => return Err("name only one of tool, resource, prompt".into()),
    };
    let exposed = match (&case.exposed, kind) {
        (Some(e), _) => e.clone(),
        (None, Kind::Resource) => name.to_owned(),
        (None, _) => format!("{upstream}__{name}"),
    };
    let annotations = case.annotations.as_ref().map(|a| {
        let mut t = rmcp::model::ToolAnnotations::new();
        t.read_only_hint = a.read_only_hint;
        t.destructive_hint = a.destructive_hint;
        t.idempotent_hint = a.idempotent_hint;
        t.open_world_hint = a.open_world_hint;
        t
    });
    let subject = Subject {
        kind,
        upstream,
        name,
        exposed: &exposed,
        annotations: annotations.as_ref(),
    };
    let mut checked = false;
    if case.expect.is_some() || case.rule.is_some() || case.expect_audit.is_some() {
        checked = true;
        check_decision(set, &who, &subject, case)?;
    }
    if let Some(want) = case.expect_visible {
        checked = true;
        let got = set.visible(&who, &subject);
        if got != want {
            return Err(format!("expected visible: {want}, got {got}"));
        }
    }
    if let Some(dir) = case.guard {
        checked = true;
        check_guard(set, &who, &subject, dir, case)?;
    }
    if checked {
        Ok(())
    } else {
        Err("the case checks nothing: add expect, expect_visible or guard".into())
    }
}

fn check_decision(set: &PolicySet, who: &Identity, s: &Subject, case: &Case) -> Result<(), String> {
    let d = set.decide(who, s, case.args.as_ref());
    let by = d.rule.as_deref().unwrap_or("default");
    if let Some(want) = case.expect {
        if d.action != want {
            return Err(format!("expected {want}, got {} (by {by})", d.action));
        }
    }
    if let Some(want) = &case.rule {
        if by != want {
            return Err(format!("expected rule {want}, decided by {by}"));
        }
    }
    if let Some(want) = &case.expect_audit {
        let got: Vec<&str> = d.audit_only.iter().map(|(id, _)| id.as_str()).collect();
        if got != want.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(format!("expected audit rules {want:?}, got {got:?}"));
        }
    }
    Ok(())
}

fn check_guard(
    set: &PolicySet,
    who: &Identity,
    s: &Subject,
    dir: Direction,
    case: &Case,
) -> Result<(), String> {
    let mut value = case
        .value
        .clone()
        .ok_or("a guard case needs a value to guard")?;
    let out = set.guard(who, s, dir, &mut value);
    if let Some(want) = &case.expect_hits {
        let mut got: Vec<&str> = out.hits.iter().map(|h| h.detector).collect();
        got.sort_unstable();
        got.dedup();
        let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
        want.sort_unstable();
        want.dedup();
        if got != want {
            return Err(format!("expected hits {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = case.expect_blocked {
        let got = out.blocked.is_some();
        if got != want {
            let by = out
                .blocked
                .map(|(g, _)| format!(" (by {g})"))
                .unwrap_or_default();
            return Err(format!("expected blocked: {want}, got {got}{by}"));
        }
    }
    if let Some(want) = &case.expect_value {
        if &value != want {
            return Err(format!("expected value {want}, got {value}"));
        }
    }
    Ok(())
}

fn identity(t: Option<&TestIdentity>) -> Identity {
    let t = t.map_or_else(TestIdentity::default, |t| TestIdentity {
        subject: t.subject.clone(),
        groups: t.groups.clone(),
        claims: t.claims.clone(),
    });
    Identity {
        subject: t.subject.unwrap_or_else(|| "anonymous".to_owned()),
        groups: t.groups.map(OneOrMany::into_vec).unwrap_or_default(),
        claims: t.claims,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
rules:
  - id: readers-read-only
    match: { groups: [readers], annotations: { readOnlyHint: false } }
    action: deny
  - id: shadow
    match: { tool: "*" }
    action: deny
    mode: audit
  - id: allow-all
    match: { tool: "*" }
    action: allow
guards:
  - { id: keys, detect: secrets, on: results, action: redact }
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn passing_and_failing_cases_are_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p.yaml", POLICY);
        let tests = write(
            dir.path(),
            "tests/t.yaml",
            r#"
cases:
  - name: reader cannot delete
    identity: { subject: alice, groups: [readers] }
    upstream: fs
    tool: delete_file
    annotations: { destructiveHint: true }
    expect: deny
    rule: readers-read-only
    expect_audit: [shadow]
  - name: wrong on purpose
    upstream: fs
    tool: read_file
    expect: deny
  - name: hidden from readers
    identity: { groups: readers }
    upstream: fs
    tool: write_file
    expect_visible: false
  - name: redacts a github token
    guard: results
    value: { content: [ { type: text, text: "token ghp_0123456789abcdefghijABCDEFGHIJ012345" } ] }
    expect_hits: [secret.github_token]
    expect_blocked: false
    expect_value: { content: [ { type: text, text: "token [REDACTED:secret.github_token]" } ] }
  - name: checks nothing
    tool: x
"#,
        );
        let r = run_file(&tests).unwrap();
        assert_eq!(r.passed, 3, "{r:?}");
        assert_eq!(r.failed.len(), 2);
        assert!(
            r.failed[0].starts_with("wrong on purpose: expected deny, got allow (by allow-all)"),
            "{r:?}"
        );
        assert!(r.failed[1].starts_with("checks nothing:"));
        assert_eq!(r.cases.len(), 5);
    }

    #[test]
    fn policies_path_and_default_are_honoured() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "elsewhere/p.yaml", "rules: []\n");
        let tests = write(
            dir.path(),
            "t.yaml",
            "policies: elsewhere\ndefault: allow\ncases:\n  - { name: d, tool: x, expect: allow, rule: default }\n",
        );
        let r = run_file(&tests).unwrap();
        assert_eq!((r.passed, r.failed.len()), (1, 0), "{r:?}");
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p.yaml", POLICY);
        let tests = write(
            dir.path(),
            "tests/t.yaml",
            "cases:\n  - { name: x, tool: y, expect: maybe }\n",
        );
        let err = run_file(&tests).unwrap_err().to_string();
        assert!(err.contains("t.yaml") && err.contains("maybe"), "{err}");
        write(dir.path(), "p.yaml", "rules: [ { id: bad } ]");
        let tests = write(dir.path(), "tests/t.yaml", "cases: []\n");
        let err = run_file(&tests).unwrap_err().to_string();
        assert!(err.contains("p.yaml"), "{err}");
    }
}
