"""Metrics, traces, logs and the admin view, checked with real consumers: a
Prometheus server scraping the gateway, `promtool`, and an OTLP/HTTP
receiver decoding spans with the official OpenTelemetry protobufs."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from mcp import Client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import free_port, http_get, run, time_stdio, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


def call_time(url: str, headers: dict[str, str] | None = None, meta: dict | None = None):
    async def go():
        import httpx2
        from mcp.client.streamable_http import streamable_http_client
        from mcp.client.session import ClientSession

        async with httpx2.AsyncClient(headers=headers or {}) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    return await s.call_tool("time__get_current_time", {"timezone": "UTC"}, meta=meta)

    return run(go())


def test_metrics_count_calls_and_pass_promtool(procs):
    gw = procs.gateway({"upstreams": {"time": time_stdio()}})
    gw.wait_up("time")

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            await c.call_tool("time__get_current_time", {"timezone": "UTC"})
            with pytest.raises(Exception):
                await c.call_tool("time__no_such_tool", {})

    run(go())
    status, body = http_get(gw.endpoint("/metrics"))
    assert status == 200
    text = body.decode()
    assert (
        'portcullis_mcp_requests_total{gen_ai_tool_name="get_current_time",mcp_method_name="tools/call",'
        'outcome="ok",upstream="time"} 1' in text
    ), text
    # A name the registry does not know is not a label value of its own.
    assert 'gen_ai_tool_name="unknown",mcp_method_name="tools/call",outcome="invalid_params",upstream="none"} 1' in text
    assert "time__no_such_tool" not in text
    assert 'portcullis_upstream_up{upstream="time"} 1' in text
    assert "mcp_client_operation_duration_seconds_bucket" in text
    assert "portcullis_sessions_open" in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) must be installed"
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_prometheus_scrapes_a_tool_call(procs, tmp_path):
    gw = procs.gateway({"upstreams": {"time": time_stdio()}})
    gw.wait_up("time")
    target = urllib.parse.urlparse(gw.base).netloc
    (tmp_path / "prometheus.yml").write_text(
        "global: { scrape_interval: 1s }\n"
        f"scrape_configs: [ {{ job_name: portcullis, static_configs: [ {{ targets: ['{target}'] }} ] }} ]\n"
    )
    port = free_port()
    procs.spawn(
        "prometheus",
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
    )
    call_time(gw.url)
    query = urllib.parse.quote('sum(portcullis_mcp_requests_total{gen_ai_tool_name="get_current_time",outcome="ok"})')

    def counted():
        status, body = http_get(f"http://127.0.0.1:{port}/api/v1/query?query={query}")
        if status != 200:
            return None
        result = json.loads(body)["data"]["result"]
        return result and float(result[0]["value"][1]) >= 1

    wait_for(counted, timeout=60, what="Prometheus to scrape the counted call")


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver decoding the official protobufs."""

    def __init__(self):
        self.spans = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        receiver.spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def find(self, name_prefix: str):
        return [s for s in self.spans if s.name.startswith(name_prefix)]


def attrs(span) -> dict[str, str]:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value or (str(v.int_value) if v.HasField("int_value") else "")
    return out


def test_traces_continue_the_clients_trace(procs, tmp_path):
    receiver = OtlpReceiver()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text("rules: [{id: time-ok, match: {upstream: time}, action: allow}]\n")
    gw = procs.gateway(
        {
            "upstreams": {"time": time_stdio()},
            "telemetry": {"otlp_endpoint": receiver.url},
            "log": {"format": "json"},
            "policies": {"dir": str(tmp_path / "policies"), "audit": {"file": str(tmp_path / "audit.jsonl")}},
            "ratelimit": {"limits": [{"id": "per-user", "key": ["identity"], "rate": 100, "per": "1s"}]},
        }
    )
    gw.wait_up("time")
    call_time(gw.url, headers={"traceparent": TRACEPARENT})
    gw.stop()  # flushes the batch exporter

    servers = [s for s in receiver.find("tools/call") if s.kind == 2]  # SPAN_KIND_SERVER
    assert servers, [s.name for s in receiver.spans]
    server = servers[0]
    assert server.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == PARENT_SPAN
    a = attrs(server)
    assert a["mcp.method.name"] == "tools/call"
    assert a["gen_ai.tool.name"] == "get_current_time"
    assert a["mcp.upstream"] == "time"
    clients = [s for s in receiver.find("tools/call") if s.kind == 3]  # SPAN_KIND_CLIENT
    assert clients and clients[0].parent_span_id == server.span_id
    assert clients[0].trace_id == server.trace_id
    # Policy evaluation and rate limiting are child spans of the call.
    for step in ("policy tools/call", "ratelimit tools/call"):
        spans = receiver.find(step)
        assert spans and spans[0].parent_span_id == server.span_id, (step, [s.name for s in receiver.spans])
    audit = [json.loads(l) for l in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert audit[0]["trace_id"] == TRACE_ID, "audit lines join traces"

    access = [
        json.loads(line)
        for line in gw.output().splitlines()
        if line.startswith("{") and '"portcullis::access"' in line and "tools/call" in line
    ]
    assert access, gw.output()[-2000:]
    assert access[0]["span"]["trace_id"] == TRACE_ID
    assert "timezone" not in json.dumps(access[0]), "arguments stay out of logs unless configured"


def test_trace_context_from_request_meta(procs):
    receiver = OtlpReceiver()
    gw = procs.gateway({"upstreams": {"time": time_stdio()}, "telemetry": {"otlp_endpoint": receiver.url}})
    gw.wait_up("time")
    call_time(gw.url, meta={"traceparent": TRACEPARENT})
    gw.stop()
    servers = [s for s in receiver.find("tools/call") if s.kind == 2]
    assert servers and servers[0].trace_id.hex() == TRACE_ID


def test_admin_view_lists_upstreams_and_recent_calls(procs):
    gw = procs.gateway({"upstreams": {"time": time_stdio(), "broken": {"stdio": {"command": "/nonexistent"}}}})
    gw.wait_up("time")
    call_time(gw.url)
    status, body = http_get(gw.endpoint("/admin/api/upstreams"))
    assert status == 200
    ups = {u["name"]: u for u in json.loads(body)["upstreams"]}
    assert ups["time"]["health"]["state"] == "up" and ups["time"]["tools"] == 2 and ups["time"]["calls"] >= 1
    assert ups["broken"]["health"]["state"] == "down"
    status, body = http_get(gw.endpoint("/admin/api/calls"))
    calls = json.loads(body)["calls"]
    assert any(c["method"] == "tools/call" and c["target"] == "get_current_time" for c in calls)
    assert http_get(gw.endpoint("/admin"))[0] == 200


def test_admin_listener_keeps_metrics_off_the_public_port(procs):
    gw = procs.gateway({"upstreams": {"time": time_stdio()}, "telemetry": {"admin_listen": "127.0.0.1:0"}})
    assert http_get(gw.endpoint("/metrics"))[0] == 404
    assert gw.admin.startswith("http://127.0.0.1:")
    status, body = http_get(gw.admin + "/metrics")
    assert status == 200 and b"portcullis_upstream_up" in body
    assert http_get(gw.admin + "/admin/api/upstreams")[0] == 200


def test_arguments_are_logged_only_when_configured(procs):
    gw = procs.gateway({"upstreams": {"time": time_stdio()}, "telemetry": {"log_arguments": True}, "log": {"format": "json"}})
    gw.wait_up("time")
    call_time(gw.url)
    gw.stop()
    access = [json.loads(l) for l in gw.output().splitlines() if '"portcullis::access"' in l and "tools/call" in l]
    assert access and "UTC" in access[0]["fields"]["arguments"]
