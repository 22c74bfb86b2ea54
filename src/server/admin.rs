//! `/metrics` and the read-only admin view: `/admin/api/upstreams`,
//! `/admin/api/calls` (JSON) and `/admin` (a small HTML page over them).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::Body;
use crate::gateway::Gateway;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// Prometheus text exposition.
pub(super) fn metrics(gateway: &Gateway) -> Response<Body> {
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        gateway.metrics().render(),
    )
}

/// Upstreams with state, tool counts and call/error counts.
pub(super) async fn upstreams(gateway: &Gateway) -> Response<Body> {
    let registry = gateway.registry();
    let counts = gateway.metrics().calls_by_upstream();
    let mut list = Vec::new();
    for (name, up) in registry.upstreams() {
        let tools = registry
            .tools(&crate::registry::Endpoint::Single(name.clone()))
            .await
            .items
            .len();
        let (calls, errors) = counts.get(&**name).copied().unwrap_or_default();
        list.push(json!({
            "name": &**name,
            "health": up.health(),
            "tools": tools,
            "calls": calls,
            "errors": errors,
            "error_rate": if calls == 0 { 0.0 } else { errors as f64 / calls as f64 },
            // The 2025-11-25 `tasks` capability it declared (rmcp drops it).
            "tasks_2025": up.tasks_capability_2025(),
        }));
    }
    let body = json!({ "upstreams": list, "sessions": gateway.session_count() });
    respond(StatusCode::OK, "application/json", body.to_string())
}

/// The most recent calls, newest first.
pub(super) fn calls(gateway: &Gateway) -> Response<Body> {
    let body = json!({ "calls": gateway.recent_calls() });
    respond(StatusCode::OK, "application/json", body.to_string())
}

/// A page that renders the two JSON endpoints.
pub(super) fn page() -> Response<Body> {
    respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_owned())
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Portcullis</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f4f4f4}</style></head>
<body><h1>Portcullis</h1><h2>Upstreams</h2><table id="u"></table><h2>Recent calls</h2><table id="c"></table>
<script>
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;"}[c]));
const row = (cells, tag = "td") => "<tr>" + cells.map(c => `<${tag}>${esc(c)}</${tag}>`).join("") + "</tr>";
async function refresh() {
  const u = await (await fetch("api/upstreams")).json();
  document.getElementById("u").innerHTML = row(["upstream","state","tools","calls","errors","error rate"], "th") +
    u.upstreams.map(x => row([x.name, x.health.state, x.tools, x.calls, x.errors, (100*x.error_rate).toFixed(1)+"%"])).join("");
  const c = await (await fetch("api/calls")).json();
  document.getElementById("c").innerHTML = row(["time","method","upstream","target","outcome","ms"], "th") +
    c.calls.map(x => row([x.time, x.method, x.upstream, x.target, x.outcome, x.duration_ms.toFixed(2)])).join("");
}
refresh(); setInterval(refresh, 5000);
</script></body></html>
"#;
