"""Rate limits and concurrency caps, driven through the official Python
client: refusals carry the documented JSON-RPC error, never reach the
upstream, and recover; two gateways sharing a real redis-server admit the
configured total; a stopped Redis follows `on_error`. Identities are two
API keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import time
import urllib.request

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conftest import fixture_stdio, free_port, http_get, mcp_session, metric, run, wait_for

RATE_LIMITED = -32029


def forwarded_calls(gw, upstream: str) -> float:
    """tools/call requests the gateway actually sent to `upstream`."""
    return sum(
        metric(gw, "mcp_client_operation_duration_seconds_count", mcp_method_name="tools/call", upstream=upstream, outcome=o)
        for o in ("ok", "error")
    )


async def refusal(c: Client, tool: str, args: dict) -> dict:
    """Calls `tool`, expecting a rate-limit refusal; returns the error."""
    with pytest.raises(MCPError) as err:
        await c.call_tool(tool, args)
    e = err.value.error
    assert e.code == RATE_LIMITED, (e.code, e.message)
    assert e.data["limit"] in e.message, "the message names the limit"
    return {"message": e.message, **e.data}


def fixture_gateway(procs, ratelimit: dict, upstreams=("fx",), **extra):
    gw = procs.gateway({"upstreams": {u: fixture_stdio() for u in upstreams}, "ratelimit": ratelimit, **extra})
    gw.wait_up(*upstreams)
    return gw


def test_burst_then_refusal_then_recovery(procs):
    gw = fixture_gateway(procs, {"limits": [{"id": "echo-burst", "key": ["tool"], "rate": 3, "per": "1s"}]})

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            for i in range(3):
                r = await c.call_tool("fx__echo", {"message": f"m{i}"})
                assert r.content[0].text == f"m{i}"
            refused = await refusal(c, "fx__echo", {"message": "too many"})
            assert refused["limit"] == "echo-burst"
            assert 0 < refused["retry_after_ms"] <= 334, refused
            # One unit comes back every 1/3 s: waiting out retry_after is
            # the behaviour under test, so this sleep cannot be a poll.
            await asyncio.sleep(refused["retry_after_ms"] / 1000)
            r = await c.call_tool("fx__echo", {"message": "again"})
            assert r.content[0].text == "again"
            await refusal(c, "fx__echo", {"message": "spent again"})

    run(go())
    assert forwarded_calls(gw, "fx") == 4, "refused calls never reach the upstream"
    assert metric(gw, "portcullis_ratelimit_refusals_total", limit="echo-burst") == 2
    assert metric(gw, "portcullis_mcp_requests_total", mcp_method_name="tools/call", upstream="fx",
                  gen_ai_tool_name="echo", outcome="rate_limited") == 2


def test_tool_and_upstream_keys_do_not_interfere(procs):
    gw = fixture_gateway(
        procs,
        {
            "limits": [
                {"id": "per-tool", "key": ["tool"], "rate": 2, "per": "1h"},
                {"id": "b-add", "key": ["upstream"], "upstream": "b", "tool": "add", "rate": 1, "per": "1h"},
            ]
        },
        upstreams=("a", "b"),
    )

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            for _ in range(2):
                await c.call_tool("a__echo", {"message": "x"})
            assert (await refusal(c, "a__echo", {"message": "x"}))["limit"] == "per-tool"
            # Same upstream, other tool; same tool name, other upstream.
            await c.call_tool("a__slow", {"ms": 0})
            for _ in range(2):
                await c.call_tool("b__echo", {"message": "x"})
            # b-add limits only `add` on b, keyed by upstream.
            await c.call_tool("b__add", {"a": 1, "b": 2})
            assert (await refusal(c, "b__add", {"a": 1, "b": 2}))["limit"] == "b-add"
            await c.call_tool("a__add", {"a": 1, "b": 2})
            await c.call_tool("a__add", {"a": 1, "b": 2})

    run(go())
    assert forwarded_calls(gw, "a") == 5 and forwarded_calls(gw, "b") == 3


KEYS = {"alice": "pk-alice-0123456789", "bob": "pk-bob-0123456789"}
AUTH = {
    "api_keys": [{"id": who, "sha256": hashlib.sha256(key.encode()).hexdigest()} for who, key in KEYS.items()]
}


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


def test_identity_keys_do_not_interfere(procs):
    gw = fixture_gateway(
        procs,
        {"limits": [{"id": "per-user-tool", "key": ["identity", "tool"], "rate": 2, "per": "1h"}]},
        auth=AUTH,
    )

    async def go():
        async with mcp_session(gw.url, bearer("alice")) as alice, mcp_session(gw.url, bearer("bob")) as bob:
            for _ in range(2):
                await alice.call_tool("fx__echo", {"message": "a"})
            with pytest.raises(MCPError) as err:
                await alice.call_tool("fx__echo", {"message": "a"})
            assert err.value.error.code == RATE_LIMITED
            assert err.value.error.data["limit"] == "per-user-tool"
            for _ in range(2):
                r = await bob.call_tool("fx__echo", {"message": "b"})
                assert r.content[0].text == "b", "bob has his own budget"
            await alice.call_tool("fx__add", {"a": 1, "b": 2})
            with pytest.raises(MCPError):
                await bob.call_tool("fx__echo", {"message": "b"})

    run(go())
    assert forwarded_calls(gw, "fx") == 5


def test_concurrency_cap_with_slow_tool(procs):
    gw = fixture_gateway(
        procs, {"concurrency": [{"id": "slow-cap", "key": ["upstream"], "max": 2, "wait": "2s"}]}
    )

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            holders = [asyncio.create_task(c.call_tool("fx__slow", {"ms": 3000})) for _ in range(2)]
            while metric(gw, "portcullis_ratelimit_in_flight", limit="slow-cap") < 2:
                await asyncio.sleep(0.05)
            # Both slots are held for about 3 s: a call waits its 2 s and is refused.
            started = time.monotonic()
            refused = await refusal(c, "fx__echo", {"message": "third"})
            waited = time.monotonic() - started
            assert refused["limit"] == "slow-cap" and refused["retry_after_ms"] == 2000, refused
            assert waited >= 1.9, waited
            assert not any(h.done() for h in holders), "the holders still run"
            # The next one waits again and gets a slot when the holders finish.
            r = await c.call_tool("fx__echo", {"message": "fourth"})
            assert r.content[0].text == "fourth"
            for h in holders:
                assert not (await h).is_error

    run(go())
    assert metric(gw, "portcullis_ratelimit_in_flight", limit="slow-cap") == 0
    assert metric(gw, "portcullis_ratelimit_refusals_total", limit="slow-cap") == 1
    assert forwarded_calls(gw, "fx") == 3


def test_http_requests_over_the_limit_get_429(procs):
    gw = fixture_gateway(
        procs,
        {"requests": [{"id": "http-per-identity", "key": ["identity"], "rate": 2, "per": "1h"}]},
        auth=AUTH,
    )
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        }
    ).encode()

    def post(who: str = "alice"):
        req = urllib.request.Request(
            gw.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **bearer(who)},
        )
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    assert [post()[0] for _ in range(2)] == [200, 200]
    status, headers, text = post()
    assert status == 429
    assert int(headers["Retry-After"]) > 1000, "one request per 30 minutes"
    assert b"http-per-identity" in text
    assert post("bob")[0] == 200, "another identity has its own request budget"
    assert http_get(gw.endpoint("/healthz"))[0] == 200, "health checks are not limited"
    assert metric(gw, "portcullis_ratelimit_refusals_total", limit="http-per-identity") == 1


def _connects(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_redis(procs, port: int | None = None):
    """A real redis-server on a free port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required (scripts/test.sh installs it)")
        pytest.skip("redis-server is not installed")
    port = port or free_port()
    proc = procs.spawn(
        f"redis-{port}-{time.monotonic_ns()}",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    )
    wait_for(lambda: _connects(port), what=f"redis-server on {port}")
    return proc, port


def redis_limits(port: int, on_error: str = "allow", limits=None) -> dict:
    return {
        "backend": "redis",
        "redis": {"url": f"redis://127.0.0.1:{port}", "on_error": on_error, "timeout": "200ms"},
        "limits": limits or [{"id": "shared-total", "key": ["tool"], "rate": 6, "per": "1h"}],
    }


def test_two_gateways_sharing_redis_admit_the_configured_total(procs):
    _, port = start_redis(procs)
    gws = [
        procs.gateway({"upstreams": {"fx": fixture_stdio()}, "ratelimit": redis_limits(port)}, name=f"gw{i}")
        for i in range(2)
    ]
    for gw in gws:
        gw.wait_up("fx")

    async def go():
        admitted = refused = 0
        async with Client(gws[0].url, mode="legacy") as a, Client(gws[1].url, mode="legacy") as b:
            for i in range(12):
                try:
                    await (a, b)[i % 2].call_tool("fx__echo", {"message": str(i)})
                    admitted += 1
                except MCPError as e:
                    assert e.error.code == RATE_LIMITED and e.error.data["limit"] == "shared-total"
                    refused += 1
        return admitted, refused

    assert run(go()) == (6, 6), "6 per hour in total, not 6 per gateway"
    assert sum(forwarded_calls(gw, "fx") for gw in gws) == 6
    assert all(metric(gw, "portcullis_ratelimit_backend_errors_total") == 0 for gw in gws)


def test_redis_stopped_mid_run_follows_on_error(procs):
    redis, port = start_redis(procs)
    limits = [{"id": "roomy", "key": ["tool"], "rate": 1000, "per": "1s"}]
    open_gw = procs.gateway(
        {"upstreams": {"fx": fixture_stdio()}, "ratelimit": redis_limits(port, "allow", limits)}, name="open"
    )
    closed_gw = procs.gateway(
        {"upstreams": {"fx": fixture_stdio()}, "ratelimit": redis_limits(port, "deny", limits)}, name="closed"
    )
    open_gw.wait_up("fx")
    closed_gw.wait_up("fx")

    async def go():
        async with Client(open_gw.url, mode="legacy") as o, Client(closed_gw.url, mode="legacy") as c:
            await o.call_tool("fx__echo", {"message": "up"})
            await c.call_tool("fx__echo", {"message": "up"})
            redis.stop()
            for _ in range(3):
                r = await o.call_tool("fx__echo", {"message": "fail open"})
                assert r.content[0].text == "fail open"
                refused = await refusal(c, "fx__echo", {"message": "fail closed"})
                assert refused["limit"] == "roomy" and "unavailable" in refused["message"], refused
                assert refused["retry_after_ms"] == 1000
            # Redis back on the same port: the closed gateway admits again.
            start_redis(procs, port)
            deadline = time.monotonic() + 30
            while True:
                try:
                    await c.call_tool("fx__echo", {"message": "recovered"})
                    break
                except MCPError as e:
                    assert e.error.code == RATE_LIMITED
                    assert time.monotonic() < deadline, "closed gateway never reconnected"
                    await asyncio.sleep(0.1)

    run(go())
    assert metric(open_gw, "portcullis_ratelimit_backend_errors_total") >= 3
    assert metric(closed_gw, "portcullis_ratelimit_backend_errors_total") >= 3
    assert forwarded_calls(open_gw, "fx") == 4
    assert forwarded_calls(closed_gw, "fx") == 2, "denied calls never reach the upstream"
    for gw in (open_gw, closed_gw):
        log = gw.output()
        assert "rate-limit backend failed" in log, log[-2000:]
        assert log.count("rate-limit backend failed") <= 2, "the error log is rate-limited"
