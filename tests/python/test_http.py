"""HTTP-level behaviour: health, readiness, DNS-rebinding protection, body
limits, malformed JSON-RPC and protocol version negotiation."""

from __future__ import annotations

import json
import urllib.request

import pytest

from conftest import everything_stdio, http_get, time_stdio

ACCEPT = "application/json, text/event-stream"


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Accept": ACCEPT, **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def initialize(version: str) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        }
    ).encode()


def sse_json(body: bytes) -> dict:
    """The JSON-RPC message in a JSON or single-event SSE response."""
    text = body.decode()
    if text.lstrip().startswith("{"):
        return json.loads(text)
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            return json.loads(line[5:])
    raise AssertionError(f"no JSON-RPC message in {text!r}")


@pytest.fixture
def gateway(procs):
    return procs.gateway({"upstreams": {"time": time_stdio()}, "http": {"max_body_bytes": 65536}})


def test_health_and_readiness(gateway):
    assert http_get(gateway.endpoint("/healthz"))[0] == 200
    gateway.wait_up("time")
    status, body = http_get(gateway.endpoint("/readyz"))
    assert status == 200
    ready = json.loads(body)
    assert ready["ready"] is True
    assert ready["upstreams"]["time"]["state"] == "up"


def test_unknown_paths_are_404(gateway):
    assert http_get(gateway.endpoint("/nope"))[0] == 404
    assert post(gateway.endpoint("/mcp/not-an-upstream"), initialize("2025-11-25"))[0] == 404
    assert post(gateway.endpoint("/mcp/v/not-a-virtual-server"), initialize("2025-11-25"))[0] == 404


def test_dns_rebinding_protection(gateway):
    status, _, body = post(gateway.url, initialize("2025-11-25"), {"Host": "evil.example"})
    assert status == 403, body
    status, _, body = post(gateway.url, initialize("2025-11-25"), {"Origin": "http://evil.example"})
    assert status == 403, body
    status, _, _ = post(gateway.url, initialize("2025-11-25"), {"Origin": "http://localhost:3000"})
    assert status == 200


def test_oversized_body_is_413(gateway):
    padding = "x" * 70000
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": {"pad": padding}}})
    status, _, _ = post(gateway.url, body.encode())
    assert status == 413


def test_malformed_json_is_a_parse_error(gateway):
    status, headers, body = post(gateway.url, b"{not json")
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == -32700


@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18", "2025-11-25"])
def test_protocol_versions_negotiate(gateway, version):
    status, headers, body = post(gateway.url, initialize(version))
    assert status == 200, body
    assert sse_json(body)["result"]["protocolVersion"] == version
    assert headers.get("mcp-session-id") or headers.get("Mcp-Session-Id")


def test_gateway_keeps_serving_after_bad_input(gateway, procs):
    for junk in [b"", b"[]", b"null", b'{"jsonrpc":"2.0"}', b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}']:
        status, _, _ = post(gateway.url, junk)
        assert 400 <= status < 500 or status == 202, (junk, status)
    status, _, body = post(gateway.url, initialize("2025-11-25"))
    assert status == 200, body
    assert gateway.proc.poll() is None, "the gateway must not die on bad input"
