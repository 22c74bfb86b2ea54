use serde_json::json;

use super::*;
use crate::policy::Kind;
use rmcp::model::ToolAnnotations;

const ISSUE_EXAMPLE: &str = r#"
rules:
  - id: readers-read-only
    match: { groups: [readers], annotations: { readOnlyHint: false } }
    action: deny
    message: "readers may only use read-only tools"
  - id: fs-confined
    match: { tool: "fs__*", args: { /path: { glob: "/srv/shared/**" } } }
    action: allow
  - id: approve-destructive
    match: { annotations: { destructiveHint: true } }
    action: approve
guards:
  - id: no-secrets-out
    detect: [secrets, pii]
    on: [arguments, results]
    action: redact
"#;

fn who(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims: Map::new(),
    }
}

fn tool<'a>(
    upstream: &'a str,
    name: &'a str,
    exposed: &'a str,
    a: Option<&'a ToolAnnotations>,
) -> Subject<'a> {
    Subject {
        kind: Kind::Tool,
        upstream,
        name,
        exposed,
        annotations: a,
    }
}

fn set(yaml: &str, default: DefaultAction) -> PolicySet {
    PolicySet::from_str(yaml, default).unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

#[test]
fn issue_example_decides_as_documented() {
    let p = set(ISSUE_EXAMPLE, DefaultAction::Deny);
    assert_eq!(p.rule_count(), 3);
    assert_eq!(p.guard_count(), 1);
    let ro = ToolAnnotations::new().read_only(true);
    let additive = ToolAnnotations::new().read_only(false).destructive(false);
    let reader = who("alice", &["readers"]);
    let writer = who("bob", &["writers"]);
    let inside = obj(json!({"path": "/srv/shared/a.txt"}));
    let outside = obj(json!({"path": "/srv/shared/../../etc/passwd"}));

    // Reader, read-only tool inside the share: allowed by fs-confined.
    let read = tool("fs", "read_file", "fs__read_file", Some(&ro));
    let d = p.decide(&reader, &read, Some(&inside));
    assert_eq!(
        (d.action, d.rule.as_deref()),
        (Action::Allow, Some("fs-confined"))
    );
    // Outside the share nothing matches: default deny, no rule.
    let d = p.decide(&reader, &read, Some(&outside));
    assert_eq!((d.action, d.rule), (Action::Deny, None));
    // Reader, a writing tool: deny overrides the allow of fs-confined.
    let write = tool("fs", "write_file", "fs__write_file", Some(&additive));
    let d = p.decide(&reader, &write, Some(&inside));
    assert_eq!(d.action, Action::Deny);
    assert_eq!(d.rule.as_deref(), Some("readers-read-only"));
    assert_eq!(
        d.message.as_deref(),
        Some("readers may only use read-only tools")
    );
    // Writer, destructive tool inside the share: approve overrides allow.
    let delete = tool("fs", "delete_file", "fs__delete_file", None);
    let d = p.decide(&writer, &delete, Some(&inside));
    assert_eq!(
        (d.action, d.rule.as_deref()),
        (Action::Approve, Some("approve-destructive"))
    );
    // Writer, additive tool inside the share: plain allow.
    let d = p.decide(&writer, &write, Some(&inside));
    assert_eq!(d.action, Action::Allow);
}

#[test]
fn deny_overrides_approve_overrides_allow_whatever_the_order() {
    let yaml = r#"
rules:
  - { id: a, match: { tool: "*" }, action: allow }
  - { id: p, match: { tool: "*" }, action: approve }
  - { id: d, match: { tool: "x" }, action: deny }
  - { id: a2, match: { tool: "*" }, action: allow }
"#;
    let p = set(yaml, DefaultAction::Allow);
    let me = who("u", &[]);
    assert_eq!(
        p.decide(&me, &tool("u", "x", "u__x", None), None)
            .rule
            .as_deref(),
        Some("d")
    );
    assert_eq!(
        p.decide(&me, &tool("u", "y", "u__y", None), None)
            .rule
            .as_deref(),
        Some("p")
    );
    let only_allow = set(
        "rules:\n  - { id: a, match: { tool: '*' }, action: allow }\n  - { id: b, match: { tool: '*' }, action: allow }\n",
        DefaultAction::Deny,
    );
    // Among equals, the first in file order names the decision.
    assert_eq!(
        only_allow
            .decide(&me, &tool("u", "y", "u__y", None), None)
            .rule
            .as_deref(),
        Some("a")
    );
}

#[test]
fn default_decides_when_nothing_matches() {
    let me = who("u", &[]);
    let t = tool("u", "t", "u__t", None);
    assert_eq!(
        PolicySet::empty(DefaultAction::Allow)
            .decide(&me, &t, None)
            .action,
        Action::Allow
    );
    let d = PolicySet::empty(DefaultAction::Deny).decide(&me, &t, None);
    assert_eq!((d.action, d.rule, d.message), (Action::Deny, None, None));
}

#[test]
fn audit_rules_are_reported_but_never_decide() {
    let yaml = r#"
rules:
  - { id: try-deny, match: { tool: "*" }, action: deny, mode: audit }
  - { id: try-approve, match: { tool: "nope" }, action: approve, mode: audit }
  - { id: allow-all, match: { tool: "*" }, action: allow }
"#;
    let p = set(yaml, DefaultAction::Deny);
    let me = who("u", &[]);
    let t = tool("u", "t", "u__t", None);
    let d = p.decide(&me, &t, None);
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.audit_only, vec![("try-deny".to_owned(), Action::Deny)]);
    // Audit rules do not hide tools either.
    assert!(p.visible(&me, &t));
}

#[test]
fn visibility_follows_unconditional_denies_and_the_default() {
    let yaml = r#"
rules:
  - { id: block-shell, match: { tool: "shell__*" }, action: deny }
  - { id: guests-no-rm, match: { groups: [guests], tool: "*rm*", args: { /force: { equals: true } } }, action: deny }
  - { id: fs, match: { upstream: fs, args: { /path: { glob: "/srv/**" } } }, action: allow }
"#;
    let me = who("u", &["guests"]);
    let shell = tool("shell", "exec", "shell__exec", None);
    let rm = tool("fs", "rm", "fs__rm", None);
    let git = tool("git", "log", "git__log", None);
    for default in [DefaultAction::Allow, DefaultAction::Deny] {
        let p = set(yaml, default);
        assert!(!p.visible(&me, &shell), "unconditional deny hides");
        // A deny that depends on arguments does not hide; an allow that
        // could match (for some path) keeps it visible under default deny.
        assert!(p.visible(&me, &rm));
    }
    assert!(set(yaml, DefaultAction::Allow).visible(&me, &git));
    assert!(!set(yaml, DefaultAction::Deny).visible(&me, &git));
}

#[test]
fn resources_and_prompts_obey_the_same_rules() {
    let yaml = r#"
rules:
  - { id: no-secrets-dir, match: { resource: "file:///secrets/**" }, action: deny }
  - { id: prompts-ok, match: { prompt: "*" }, action: allow }
  - { id: tools-ok, match: { tool: "*" }, action: allow }
"#;
    let p = set(yaml, DefaultAction::Allow);
    let me = who("u", &[]);
    let secret = Subject {
        kind: Kind::Resource,
        upstream: "fs",
        name: "file:///secrets/key",
        exposed: "file:///secrets/key",
        annotations: None,
    };
    assert!(!p.visible(&me, &secret));
    assert_eq!(
        p.decide(&me, &secret, None).rule.as_deref(),
        Some("no-secrets-dir")
    );
    let prompt = Subject {
        kind: Kind::Prompt,
        upstream: "fs",
        name: "summarise",
        exposed: "fs__summarise",
        annotations: None,
    };
    assert_eq!(
        p.decide(&me, &prompt, None).rule.as_deref(),
        Some("prompts-ok")
    );
}

#[test]
fn guards_apply_by_direction_and_match() {
    let yaml = r#"
guards:
  - { id: args-only, detect: pii.email, on: arguments, action: block, message: "no emails upstream" }
  - { id: fs-results, detect: [secrets], on: [results], action: redact, match: { upstream: fs } }
"#;
    let p = set(yaml, DefaultAction::Allow);
    let me = who("u", &[]);
    let fs = tool("fs", "read", "fs__read", None);
    let git = tool("git", "show", "git__show", None);
    let mut v = json!({"to": "bob@example.com"});
    let out = p.guard(&me, &fs, Direction::Arguments, &mut v);
    assert_eq!(
        out.blocked,
        Some(("args-only".into(), "no emails upstream".into()))
    );
    let mut v = json!({"to": "bob@example.com"});
    assert!(p
        .guard(&me, &fs, Direction::Results, &mut v)
        .hits
        .is_empty());
    let token = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
    let mut v = json!({"text": token});
    let out = p.guard(&me, &fs, Direction::Results, &mut v);
    assert_eq!(out.hits.len(), 1);
    assert_eq!(v, json!({"text": "[REDACTED:secret.github_token]"}));
    let mut v = json!({"text": token});
    assert!(p
        .guard(&me, &git, Direction::Results, &mut v)
        .hits
        .is_empty());
}

#[test]
fn errors_name_file_item_field_and_problem() {
    let cases = [
        ("rules:\n  - { id: x, match: { tool: 'a[' }, action: allow }\n", "rule x: match.tool"),
        ("rules:\n  - { id: x, action: allow, match: { args: { path: { glob: a } } } }\n", "match.args.path"),
        ("rules:\n  - { id: x, action: maybe }\n", "rules[0].action"),
        ("rules:\n  - { id: x, action: allow, match: { tools: a } }\n", "rules[0].match"),
        ("rules:\n  - { id: x, action: allow }\n  - { id: x, action: deny }\n", "duplicate id"),
        ("rules:\n  - { id: 'has space', action: allow }\n", "rules[0]: id"),
        ("guards:\n  - { id: g, detect: [pii.nope], action: flag }\n", "guard g: detect: unknown detector `pii.nope`"),
        ("guards:\n  - { id: g, detect: pii, action: flag, match: { args: { /a: { equals: 1 } } } }\n", "guard g: match.args"),
        ("rules: 3\n", "rules"),
    ];
    for (yaml, want) in cases {
        let err = PolicySet::from_str(yaml, DefaultAction::Deny)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("<string>: "), "{err}");
        assert!(err.contains(want), "{err} should mention {want}");
    }
}

#[test]
fn load_dir_reads_yaml_files_in_order_and_names_the_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.yml"),
        "rules:\n  - { id: b, match: { tool: '*' }, action: allow }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "rules:\n  - { id: a, match: { tool: '*' }, action: allow }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not policy").unwrap();
    std::fs::write(dir.path().join("empty.yaml"), "# nothing yet\n").unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("tests/case.yaml"), "cases: []").unwrap();
    let p = PolicySet::load_dir(dir.path(), DefaultAction::Deny).unwrap();
    assert_eq!(p.rule_count(), 2);
    let d = p.decide(&who("u", &[]), &tool("u", "t", "u__t", None), None);
    assert_eq!(d.rule.as_deref(), Some("a"));
    std::fs::write(
        dir.path().join("c.yaml"),
        "rules:\n  - { id: a, action: deny }\n",
    )
    .unwrap();
    let err = PolicySet::load_dir(dir.path(), DefaultAction::Deny)
        .unwrap_err()
        .to_string();
    assert!(err.contains("c.yaml") && err.contains("duplicate"), "{err}");
    let missing = PolicySet::load_dir(&dir.path().join("nope"), DefaultAction::Deny);
    assert!(matches!(missing, Err(PolicyError::Io { .. })));
}

#[test]
fn star_in_argument_pointers_is_read_restrictively() {
    let yaml = r#"
rules:
  - { id: no-etc, match: { args: { /paths/*: { glob: "/etc/**" } } }, action: deny }
  - { id: shared, match: { args: { /paths/*: { glob: "/srv/**" } } }, action: allow }
"#;
    let p = set(yaml, DefaultAction::Deny);
    let me = who("u", &[]);
    let t = tool("fs", "read_multiple_files", "fs__read_multiple_files", None);
    let decide = |v: Value| p.decide(&me, &t, Some(&obj(v))).rule;
    assert_eq!(
        decide(json!({"paths": ["/srv/a", "/srv/b"]})).as_deref(),
        Some("shared")
    );
    // One bad element is enough for the deny...
    assert_eq!(
        decide(json!({"paths": ["/srv/a", "/etc/shadow"]})).as_deref(),
        Some("no-etc")
    );
    // ...and spoils the allow.
    assert_eq!(decide(json!({"paths": ["/srv/a", "/home/x"]})), None);
}
