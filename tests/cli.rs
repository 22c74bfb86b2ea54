//! The `portcullis` command line: `check`, `--version`, and start-up errors.

use std::io::Write;
use std::process::Command;

fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes()).expect("write config");
    f
}

#[test]
fn check_accepts_the_example_config() {
    let out = portcullis()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/portcullis.yaml"),
        ])
        .output()
        .expect("run portcullis");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 upstreams"));
}

#[test]
fn check_names_file_field_and_problem() {
    let cases = [
        (
            "upstreams:\n  a:\n    http: { url: \"${PORTCULLIS_TEST_UNSET}\" }\n",
            "upstreams.a.http.url",
            "PORTCULLIS_TEST_UNSET",
        ),
        (
            "upstreams:\n  a: { stdio: { command: x }, session: sometimes }\n",
            "upstreams.a.session",
            "unknown variant",
        ),
        (
            "upstreams:\n  'bad name': { stdio: { command: x } }\n",
            "upstreams.bad name",
            "name must use",
        ),
        ("listen: nowhere\n", "listen", "invalid socket address"),
    ];
    for (text, field, problem) in cases {
        let file = config_file(text);
        let out = portcullis()
            .args(["check", "--config"])
            .arg(file.path())
            .output()
            .expect("run portcullis");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {text}");
        assert!(
            stderr.contains(&file.path().display().to_string()),
            "no file in: {stderr}"
        );
        assert!(
            stderr.contains(&format!("`{field}`")),
            "no field `{field}` in: {stderr}"
        );
        assert!(
            stderr.contains(problem),
            "no problem `{problem}` in: {stderr}"
        );
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = portcullis()
        .args(["check", "--config", "/nonexistent/portcullis.yaml"])
        .output()
        .expect("run portcullis");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/portcullis.yaml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn version_prints_the_crate_version() {
    let out = portcullis()
        .arg("--version")
        .output()
        .expect("run portcullis");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn policy_test_runs_cases_and_fails_on_a_failing_one() {
    let examples = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/tests/10-blocked.yaml"
    );
    let out = portcullis()
        .args(["policy", "test", examples])
        .output()
        .expect("run portcullis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("  ok    printEnv is refused with its message"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("p.yaml"),
        "rules:\n  - { id: a, match: { tool: '*' }, action: allow }\n",
    )
    .expect("write policy");
    std::fs::create_dir(dir.path().join("tests")).expect("mkdir");
    let tests = dir.path().join("tests/t.yaml");
    std::fs::write(
        &tests,
        "cases:\n  - { name: good, tool: x, expect: allow }\n  - { name: bad, tool: x, expect: deny }\n",
    )
    .expect("write tests");
    let out = portcullis()
        .args(["policy", "test"])
        .arg(&tests)
        .output()
        .expect("run portcullis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("  FAIL  bad: expected deny, got allow (by a)"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn check_validates_policies_and_serve_refuses_a_bad_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    std::fs::write(
        policies.join("ok.yaml"),
        "rules:\n  - { id: a, match: { tool: \"x__*\" }, action: allow }\n",
    )
    .expect("write policy");
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\npolicies: { dir: policies, default: deny }\n",
    )
    .expect("write config");
    let out = portcullis()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run portcullis");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 policy rules"));

    std::fs::write(
        policies.join("bad.yaml"),
        "rules:\n  - { id: b, match: {}, action: perhaps }\n",
    )
    .expect("write policy");
    for command in ["check", "serve"] {
        let out = portcullis()
            .args([command, "--config"])
            .arg(&config)
            .output()
            .expect("run portcullis");
        assert!(!out.status.success(), "{command} accepted a bad policy");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.yaml"), "{command}: {err}");
    }
}
