//! Runs every table-driven test in `policies/tests/` against the example
//! policies, so CI checks the examples the way users check their own.

use std::path::Path;

use portcullis::policy::testrun;

#[test]
fn example_policy_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("policies/tests exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected the example test files, found {files:?}"
    );
    let mut failures = Vec::new();
    let mut passed = 0;
    for f in &files {
        match testrun::run_file(f) {
            Ok(r) => {
                passed += r.passed;
                failures.extend(r.failed.iter().map(|w| format!("{}: {w}", f.display())));
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "failed:\n{}", failures.join("\n"));
    assert!(passed >= 30, "only {passed} cases ran");
}
