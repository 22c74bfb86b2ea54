//! Micro-benchmarks of the gateway's per-call hot paths that are not policy
//! (policy evaluation and detectors are in `benches/policy.rs`):
//!
//! - **routing**: exposed-name construction, collision resolution and view
//!   building over 50 upstreams × 100 tools, and the lookup a `tools/call`
//!   does in the view;
//! - **json**: the request rewrite (parse the client's `tools/call`, rename
//!   it to the upstream's name, add the trace context to `_meta`, serialize)
//!   and the result round trip (the upstream's `CallToolResult` read as the
//!   untagged `ServerResult` and written back for the client).
//!
//! Run with `cargo bench --bench gateway`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use portcullis::config::Config;
use portcullis::registry::naming::{exposed_name, resolve_collisions};
use portcullis::registry::view::{named_view, Naming};
use rmcp::model::{
    CallToolResult, ClientJsonRpcMessage, ClientRequest, JsonObject, RequestParamsMeta as _,
    ServerJsonRpcMessage, ServerResult, Tool,
};
use serde_json::json;

const UPSTREAMS: usize = 50;
const TOOLS: usize = 100;

fn config() -> Config {
    let mut text = String::from("upstreams:\n");
    for u in 0..UPSTREAMS {
        text.push_str(&format!(
            "  up{u}: {{ http: {{ url: \"http://127.0.0.1:9/mcp\" }} }}\n"
        ));
    }
    match Config::parse(&text, Path::new("bench.yaml"), &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn schema() -> JsonObject {
    match json!({
        "type": "object",
        "properties": { "text": { "type": "string" }, "count": { "type": "integer" } },
        "required": ["text"],
    }) {
        serde_json::Value::Object(o) => o,
        _ => JsonObject::new(),
    }
}

fn lists() -> Vec<(Arc<str>, Arc<Vec<Tool>>)> {
    (0..UPSTREAMS)
        .map(|u| {
            let tools = (0..TOOLS)
                .map(|t| Tool::new(format!("tool_{t}"), format!("Tool {t}"), schema()))
                .collect();
            (Arc::from(format!("up{u}")), Arc::new(tools))
        })
        .collect()
}

fn routing(c: &mut Criterion) {
    let config = config();
    let lists = lists();
    let mut g = c.benchmark_group("routing");
    g.bench_function("exposed_name/plain", |b| {
        b.iter(|| {
            exposed_name(
                Some((black_box("time"), "__")),
                "time",
                "get_current_time",
                "get_current_time",
            )
        })
    });
    let long = "x".repeat(80);
    g.bench_function("exposed_name/hashed", |b| {
        b.iter(|| exposed_name(Some((black_box("up"), "__")), "up", &long, &long))
    });
    let names: Vec<(String, String, String)> = (0..UPSTREAMS * TOOLS)
        .map(|i| {
            let (u, t) = (format!("up{}", i / TOOLS), format!("tool_{}", i % TOOLS));
            (format!("{u}__{t}"), u, t)
        })
        .collect();
    g.throughput(Throughput::Elements(names.len() as u64));
    g.bench_function("resolve_collisions/5000", |b| {
        b.iter_batched(
            || {
                names
                    .iter()
                    .map(|(n, u, t)| (n.clone(), u.as_str(), t.as_str()))
                    .collect::<Vec<_>>()
            },
            |mut entries| resolve_collisions(&mut entries),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("named_view/50x100", |b| {
        b.iter(|| {
            named_view(Naming::Prefixed(&config), &lists, &|_, t| {
                Some(t.name.to_string())
            })
        })
    });
    g.throughput(Throughput::Elements(1));
    let view = named_view(Naming::Prefixed(&config), &lists, &|_, t| {
        Some(t.name.to_string())
    });
    g.bench_function("lookup/hit", |b| {
        b.iter(|| view.index.get(black_box("up37__tool_42")).cloned())
    });
    g.bench_function("lookup/miss", |b| {
        b.iter(|| view.index.get(black_box("up37__tool_420")).cloned())
    });
    // What `call_tool` does besides the index lookup: find the tool's
    // annotations by a linear scan over the view's items.
    g.bench_function("annotations_scan/5000", |b| {
        b.iter(|| {
            view.items
                .iter()
                .find(|t| *t.name == *black_box("up37__tool_42"))
                .and_then(|t| t.annotations.clone())
        })
    });
    g.finish();
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"fx__echo","arguments":{"message":"hello"},"_meta":{"progressToken":"p-17"}}}"#;

fn result_json() -> String {
    json!({
        "jsonrpc": "2.0",
        "id": 5,
        "result": {
            "content": [{ "type": "text", "text": "hello" }],
            "structuredContent": { "echo": "hello", "length": 5 },
            "isError": false,
        },
    })
    .to_string()
}

fn json_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("json");
    g.bench_function("call_request_rewrite", |b| {
        b.iter(|| {
            let msg: ClientJsonRpcMessage = match serde_json::from_str(black_box(CALL)) {
                Ok(m) => m,
                Err(e) => panic!("{e}"),
            };
            let ClientJsonRpcMessage::Request(mut req) = msg else {
                panic!("not a request")
            };
            if let ClientRequest::CallToolRequest(call) = &mut req.request {
                call.params.name = "echo".into();
                call.params
                    .set_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            }
            serde_json::to_vec(&ClientJsonRpcMessage::Request(req))
        })
    });
    let result = result_json();
    g.bench_function("call_result_round_trip/server_result", |b| {
        b.iter(|| {
            let msg: ServerJsonRpcMessage = match serde_json::from_str(black_box(&result)) {
                Ok(m) => m,
                Err(e) => panic!("{e}"),
            };
            serde_json::to_vec(&msg)
        })
    });
    let inner = json!({
        "content": [{ "type": "text", "text": "hello" }],
        "structuredContent": { "echo": "hello", "length": 5 },
        "isError": false,
    })
    .to_string();
    g.bench_function("call_result_round_trip/typed", |b| {
        b.iter(|| {
            let r: CallToolResult = match serde_json::from_str(black_box(&inner)) {
                Ok(r) => r,
                Err(e) => panic!("{e}"),
            };
            serde_json::to_vec(&r)
        })
    });
    g.bench_function("call_result_round_trip/untagged_server_result", |b| {
        b.iter(|| {
            let r: ServerResult = match serde_json::from_str(black_box(&inner)) {
                Ok(r) => r,
                Err(e) => panic!("{e}"),
            };
            serde_json::to_vec(&r)
        })
    });
    g.finish();
}

criterion_group!(benches, routing, json_rewrite);
criterion_main!(benches);
