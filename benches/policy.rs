//! Policy evaluation cost on the call path: a decision against ~50 rules,
//! list filtering, and the content detectors over a 100 KB result.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use portcullis::auth::Identity;
use portcullis::config::DefaultAction;
use portcullis::policy::{Direction, Kind, PolicySet, Subject};
use rmcp::model::ToolAnnotations;
use serde_json::{json, Map, Value};

/// 50 rules of the shapes real policies use; none matches the benchmark
/// call before the last few, so every rule is evaluated.
fn fifty_rules() -> String {
    let mut y = String::from("rules:\n");
    for i in 0..10 {
        y += &format!(
            "  - {{ id: block-{i}, match: {{ tool: \"blocked{i}__*\" }}, action: deny }}\n"
        );
        y += &format!("  - {{ id: group-{i}, match: {{ groups: [team{i}], annotations: {{ readOnlyHint: false }} }}, action: deny }}\n");
        y += &format!("  - {{ id: path-{i}, match: {{ upstream: fs{i}, args: {{ /path: {{ glob: \"/srv/team{i}/**\" }} }} }}, action: allow }}\n");
        y += &format!("  - {{ id: claim-{i}, match: {{ claims: {{ dept: [d{i}, e{i}] }}, tool: \"*admin*\" }}, action: approve }}\n");
        y += &format!("  - {{ id: regex-{i}, match: {{ tool: \"db__query\", args: {{ /sql: {{ regex: \"(?i)drop table t{i}.*\" }} }} }}, action: deny, mode: audit }}\n");
    }
    y += "  - { id: fs-shared, match: { upstream: fs, args: { /path: { glob: \"/srv/shared/**\" } } }, action: allow }\n";
    y += "  - { id: destructive, match: { annotations: { destructiveHint: true } }, action: approve }\n";
    y += "guards:\n  - { id: out, detect: [secrets, pii, injection], on: results, action: redact }\n";
    y
}

/// About 100 KB of tool result: text blocks of ordinary prose and JSON-ish
/// lines with a few secrets and emails among them.
fn big_result() -> Value {
    let line = "2024-05-01T10:30:00Z INFO request handled path=/api/v1/users/12345 status=200 \
                duration_ms=12 user_agent=\"Mozilla/5.0 (X11; Linux x86_64)\" trace=550e8400-e29b-41d4-a716-446655440000\n";
    let mut blocks = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < 100_000 {
        let mut text = line.repeat(8);
        if i % 10 == 3 {
            text.push_str(
                "contact ops@example.com or token ghp_0123456789abcdefghijABCDEFGHIJ012345\n",
            );
        }
        size += text.len();
        blocks.push(json!({"type": "text", "text": text}));
        i += 1;
    }
    json!({"content": blocks, "isError": false})
}

fn bench(c: &mut Criterion) {
    let set = PolicySet::from_str(&fifty_rules(), DefaultAction::Deny).expect("bench policy");
    assert_eq!(set.rule_count(), 52);
    let who = Identity {
        subject: "alice".into(),
        groups: vec!["engineering".into()],
        claims: Map::new(),
    };
    let ann = ToolAnnotations::new().read_only(false).destructive(false);
    let subject = Subject {
        kind: Kind::Tool,
        upstream: "fs",
        name: "write_file",
        exposed: "fs__write_file",
        annotations: Some(&ann),
    };
    let args = json!({"path": "/srv/shared/reports/../q3.txt", "content": "hello"});
    let args = args.as_object().cloned().unwrap_or_default();

    c.bench_function("decide/52 rules", |b| {
        b.iter(|| set.decide(black_box(&who), black_box(&subject), Some(black_box(&args))))
    });
    c.bench_function("visible/52 rules", |b| {
        b.iter(|| set.visible(black_box(&who), black_box(&subject)))
    });

    let result = big_result();
    let len = serde_json::to_string(&result).map(|s| s.len()).unwrap_or(0);
    let mut g = c.benchmark_group("guard");
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("100 KB result, all detectors", |b| {
        b.iter_batched(
            || result.clone(),
            |mut v| set.guard(&who, &subject, Direction::Results, &mut v),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
