"""Clients of both protocol eras through the gateway: the Python SDK in
`mode="2026-07-28"`, `"auto"` and `"legacy"` against `/mcp` and
`/mcp/{upstream}` over legacy upstreams, and multi round-trip requests
(MRTR) bridged for 2026-07-28 clients: an upstream's elicitation or
sampling request reaches the client as an `InputRequiredResult`, and the
retried call's answer goes back to the upstream call still waiting for it.
The `requestState` the gateway hands out is sealed: altered, or presented
by another identity, it is refused."""

from __future__ import annotations

import hashlib
import json
import urllib.request

import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conftest import everything_stdio, fixture_stdio, run, wait_for

MODES = ["2026-07-28", "auto", "legacy"]


@pytest.fixture
def gateway(procs):
    # The fixture speaks both eras; `legacy` makes it the legacy upstream
    # whose server-to-client requests these tests bridge (with the default
    # `auto`, 2026-07-28 clients would meet it in 2026-07-28, as directly).
    fx = {**fixture_stdio(), "protocol": "legacy"}
    gw = procs.gateway({"upstreams": {"fx": fx, "ev": everything_stdio()}})
    gw.wait_up("fx", "ev")
    return gw


@pytest.mark.parametrize("mode", MODES)
def test_every_era_lists_calls_and_gets_progress(gateway, mode):
    progress: list[float] = []

    async def on_progress(p, total, message):
        progress.append(p)

    async def go():
        async with Client(gateway.url, mode=mode) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"fx__echo", "ev__echo"} <= names
            assert (await c.call_tool("fx__echo", {"message": "m"})).content[0].text == "m"
            r = await c.call_tool("fx__add", {"a": 2, "b": 3})
            assert r.structured_content == {"sum": 5}
            await c.call_tool(
                "ev__trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress
            )
            text = await c.read_resource("test://static-text")
            assert text.contents
            prompt = await c.get_prompt("fx__test_simple_prompt")
            assert prompt.messages
        async with Client(gateway.endpoint("/mcp/fx"), mode=mode) as c:
            assert "echo" in {t.name for t in (await c.list_tools()).tools}
            assert (await c.call_tool("echo", {"message": "single"})).content[0].text == "single"

    run(go())
    assert progress[-1] == 3.0


@pytest.mark.parametrize("mode", MODES)
def test_upstream_elicitation_and_sampling_reach_every_era(gateway, mode):
    asked: list[str] = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    async def sample(context, params):
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled reply"), model="m"
        )

    async def go():
        async with Client(gateway.url, mode=mode, elicitation_callback=elicit, sampling_callback=sample) as c:
            r = await c.call_tool("fx__test_elicitation", {"message": "Who are you?"})
            assert "action=accept" in r.content[0].text and "ada" in r.content[0].text
            r = await c.call_tool("ev__trigger-sampling-request", {"prompt": "hi", "maxTokens": 10})
            assert "sampled reply" in json.dumps([b.model_dump() for b in r.content])

    run(go())
    assert asked == ["Who are you?", "sampling"]


def post_2026_raw(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, list[dict]]:
    """A 2026-07-28 POST: the HTTP status and every JSON-RPC message of the answer."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": body["method"],
            **({"mcp-name": name} if (name := body["params"].get("name") or body["params"].get("taskId")) else {}),
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode()
    frames = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:") and line[5:].strip()]
    return status, frames or [json.loads(raw)]


def post_2026(url: str, body: dict, headers: dict[str, str] | None = None) -> dict:
    return post_2026_raw(url, body, headers)[1][-1]


def elicit_call(request_state=None, responses=None, rid=1):
    params = {
        "name": "fx__test_elicitation",
        "arguments": {"message": "Name?"},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        },
    }
    if request_state is not None:
        params["requestState"] = request_state
        params["inputResponses"] = responses or {}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def test_request_state_is_tamper_evident_and_bound_to_identity(procs):
    keys = {"alice": "key-alice-0001", "bob": "key-bob-0002"}
    gw = procs.gateway(
        {
            "upstreams": {"fx": {**fixture_stdio(), "protocol": "legacy"}},
            "auth": {
                "api_keys": [{"id": who, "sha256": hashlib.sha256(k.encode()).hexdigest()} for who, k in keys.items()]
            },
        }
    )
    gw.wait_up("fx")
    alice = {"authorization": f"Bearer {keys['alice']}"}
    bob = {"authorization": f"Bearer {keys['bob']}"}

    first = post_2026(gw.url, elicit_call(), alice)["result"]
    assert first["resultType"] == "input_required"
    (key, request), = first["inputRequests"].items()
    assert request["method"] == "elicitation/create" and request["params"]["message"] == "Name?"
    state = first["requestState"]
    answer = {key: {"action": "accept", "content": {"username": "a", "email": "a@example.com"}}}

    # Altered by one character: refused.
    flipped = state[:-2] + ("A" if state[-2] != "A" else "B") + state[-1]
    err = post_2026(gw.url, elicit_call(flipped, answer, 2), alice)["error"]
    assert err["code"] == -32602 and "requestState" in err["message"]
    # Presented by another identity: refused.
    err = post_2026(gw.url, elicit_call(state, answer, 3), bob)["error"]
    assert err["code"] == -32602 and "requestState" in err["message"]
    # The rightful retry completes the waiting upstream call.
    done = post_2026(gw.url, elicit_call(state, answer, 4), alice)["result"]
    assert "action=accept" in done["content"][0]["text"] and "a@example.com" in done["content"][0]["text"]
    # A state is good for one answer only.
    err = post_2026(gw.url, elicit_call(state, answer, 5), alice)["error"]
    assert err["code"] == -32602


@pytest.mark.parametrize("upstream_protocol", ["2026-07-28", "auto"])
@pytest.mark.parametrize("mode", MODES)
def test_modern_upstream_serves_every_client_era(procs, upstream_protocol, mode):
    """The gateway speaks 2026-07-28 to the upstream (`protocol:`); the
    upstream's own multi round-trip requests reach a 2026 client as a
    wrapped InputRequiredResult and a legacy client as a server-to-client
    request, whose answer becomes the next round."""
    url = procs.fixture_http()
    gw = procs.gateway({"upstreams": {"fx": {"http": {"url": url}, "protocol": upstream_protocol}}})
    gw.wait_up("fx")
    asked: list[str] = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def go():
        async with Client(gateway_url := gw.url, mode=mode, elicitation_callback=elicit) as c:
            assert "fx__echo" in {t.name for t in (await c.list_tools()).tools}
            assert (await c.call_tool("fx__echo", {"message": "m"})).content[0].text == "m"
            r = await c.call_tool("fx__test_input_required_result_elicitation", {})
            assert r.content[0].text == "Hello, Ada!", gateway_url

    run(go())
    assert asked == ["What is your name?"]


def test_modern_upstream_input_needs_the_client_capability(procs):
    url = procs.fixture_http()
    gw = procs.gateway({"upstreams": {"fx": {"http": {"url": url}, "protocol": "2026-07-28"}}})
    gw.wait_up("fx")

    async def go():
        async with Client(gw.url, mode="legacy") as c:  # no elicitation callback: capability not declared
            try:
                await c.call_tool("fx__test_input_required_result_elicitation", {})
            except MCPError as e:
                return e
        return None

    err = run(go())
    assert err is not None and err.error.code == -32021 and "elicitation/create" in err.error.message


def test_list_cache_hints_describe_the_gateways_cache(procs, tmp_path):
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    }
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    plain = procs.gateway({"upstreams": {"fx": fixture_stdio()}, "http": {"list_ttl": "45s"}}, name="plain")
    plain.wait_up("fx")
    result = post_2026(plain.url, listing)["result"]
    assert (result["ttlMs"], result["cacheScope"]) == (45000, "public")
    # With policy, what a caller sees depends on who it is: private.
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "r.yaml").write_text("rules: [{id: all, match: {upstream: fx}, action: allow}]\n")
    filtered = procs.gateway(
        {
            "upstreams": {"fx": fixture_stdio()},
            "policies": {"dir": str(tmp_path / "p"), "audit": {"file": str(tmp_path / "a.jsonl")}},
        },
        name="filtered",
    )
    filtered.wait_up("fx")
    for method in ("tools/list", "prompts/list", "resources/list"):
        result = post_2026(filtered.url, {**listing, "method": method})["result"]
        assert (result["ttlMs"], result["cacheScope"]) == (30000, "private"), method


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_auto_upstream_meets_each_client_in_its_own_era(procs, transport):
    """With the default `protocol: auto`, a dual-era server is spoken to in
    2026-07-28, and legacy clients get a legacy connection of their own: a
    tool that sends elicitation mid-call (legacy style) reaches a legacy
    client as it would directly, and a 2026-07-28-style tool still reaches
    it, bridged."""
    upstream = {"http": {"url": procs.fixture_http()}} if transport == "http" else fixture_stdio()
    gw = procs.gateway({"upstreams": {"fx": upstream}})
    gw.wait_up("fx")
    asked: list[str] = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com", "name": "Ada"})

    async def go():
        async with Client(gw.url, mode="legacy", elicitation_callback=elicit) as c:
            r = await c.call_tool("fx__test_elicitation", {"message": "Who are you?"})
            assert "action=accept" in r.content[0].text and "ada" in r.content[0].text
            r = await c.call_tool("fx__test_input_required_result_elicitation", {})
            assert r.content[0].text == "Hello, Ada!"
        async with Client(gw.url, mode="2026-07-28", elicitation_callback=elicit) as c:
            r = await c.call_tool("fx__test_input_required_result_elicitation", {})
            assert r.content[0].text == "Hello, Ada!"

    run(go())
    assert asked == ["Who are you?", "What is your name?", "What is your name?"]


@pytest.mark.parametrize("protocol", ["legacy", "2026-07-28"])
def test_log_lines_reach_a_2026_client_only_at_its_request_level(procs, protocol):
    """A 2026-07-28 request gets log lines at or above the `_meta` log level
    it set, and none without one, whatever era the upstream speaks."""
    gw = procs.gateway({"upstreams": {"fx": {"http": {"url": procs.fixture_http()}, "protocol": protocol}}})
    gw.wait_up("fx")
    # The legacy upstream logs at its session's level (`test_tool_with_logging`: three
    # info lines), so the gateway filters; the 2026 one reads the forwarded `_meta` level.
    tool, args = ("test_tool_with_logging", {}) if protocol == "legacy" else ("test_logging_tool", {})

    def call(level: str | None) -> list[dict]:
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            **({"io.modelcontextprotocol/logLevel": level} if level else {}),
        }
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args, "_meta": meta}}
        return post_2026_raw(gw.endpoint("/mcp/fx"), body)[1]

    def logs(frames):
        return [f["params"]["level"] for f in frames if f.get("method") == "notifications/message"]

    assert logs(call(None)) == []
    assert logs(call("debug"))
    assert "debug" not in logs(call("error")) and "info" not in logs(call("error"))


@pytest.mark.parametrize("session", ["shared", "per-client"])
def test_mcp_param_headers_are_checked_downstream_and_sent_upstream_under_its_own_name(procs, session):
    """SEP-2243 through a renamed tool: the gateway checks the client's
    `Mcp-Param-Region` against the body (HTTP 400, -32020 on a mismatch),
    and the upstream, which checks its own headers, accepts the forwarded
    call, so it got its own tool name in `Mcp-Name` and the mirrored header.
    A per-client connection carries calls of tools it never listed itself
    (the shared connection did), and mirrors the header all the same."""
    url = procs.fixture_http()
    gw = procs.gateway(
        {
            "upstreams": {
                "fx": {"http": {"url": url}, "session": session, "tools": {"rename": {"test_custom_header": "where"}}}
            }
        }
    )
    gw.wait_up("fx")
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}

    def call(region_header: str | None) -> tuple[int, dict]:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "fx__where", "arguments": {"region": "eu-west"}, "_meta": meta},
        }
        headers = {"mcp-param-region": region_header} if region_header is not None else {}
        status, frames = post_2026_raw(gw.url, body, headers)
        return status, frames[-1]

    # No client listed tools first: the gateway has the definition at hand
    # from when the upstream came up. The first call may race that, so poll
    # until the gateway itself compares the header (until then the call goes
    # through unchecked, and the upstream refuses it for a header the
    # gateway's client did not yet know to mirror).
    wait_for(
        lambda: "does not match" in call("us-east")[1].get("error", {}).get("message", ""),
        what="the tool's definition at the gateway",
    )
    status, answer = call("eu-west")
    assert status == 200 and answer["result"]["content"][0]["text"] == "region=eu-west", answer
    status, answer = call("=?base64?ZXUtd2VzdA==?=")  # "eu-west", Base64-wrapped
    assert status == 200 and answer["result"]["content"][0]["text"] == "region=eu-west", answer
    status, answer = call("us-east")
    assert status == 400 and answer["error"]["code"] == -32020, answer
    status, answer = call(None)
    assert status == 400 and answer["error"]["code"] == -32020, answer


def audit_lines(path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize(
    ("client", "upstream_protocol", "tool", "bridge"),
    [
        # A legacy upstream's elicitation, parked for a 2026-07-28 client's retry.
        ("2026-07-28", "legacy", "fx__test_elicitation", "parked"),
        # A 2026-07-28 upstream's own round, wrapped for a 2026-07-28 client.
        ("2026-07-28", "2026-07-28", "fx__test_input_required_result_elicitation", "upstream"),
        # A 2026-07-28 upstream's round, asked of a legacy client.
        ("legacy", "2026-07-28", "fx__test_input_required_result_elicitation", "legacy_client"),
    ],
)
def test_rounds_of_one_call_are_linked_in_audit_metrics_and_policy(procs, tmp_path, client, upstream_protocol, tool, bridge):
    """Every round of a multi round-trip call is one logical call: decided
    and admitted once (a one-call rate limit is not spent twice), and every
    round's audit record carries the same call id with its round number."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "r.yaml").write_text(
        "rules: [{id: fx-tools, match: {upstream: fx}, action: allow, limit: {rate: 1, per: 1m}}]\n"
    )
    audit = tmp_path / "a.jsonl"
    url = procs.fixture_http()
    gw = procs.gateway(
        {
            "upstreams": {"fx": {"http": {"url": url}, "protocol": upstream_protocol}},
            "policies": {"dir": str(tmp_path / "p"), "audit": {"file": str(audit)}},
        }
    )
    gw.wait_up("fx")

    async def elicit(context, params):
        return types.ElicitResult(action="accept", content={"name": "Ada", "username": "ada", "email": "a@example.com"})

    async def go():
        async with Client(gw.url, mode=client, elicitation_callback=elicit) as c:
            r = await c.call_tool(tool, {"message": "Name?"} if bridge == "parked" else {})
            assert "Ada" in r.content[0].text or "ada" in r.content[0].text
            # The rule allows one call a minute: the rounds did not spend it twice,
            # and the next logical call is refused.
            with pytest.raises(MCPError) as refused:
                await c.call_tool(tool, {"message": "Again?"} if bridge == "parked" else {})
            assert refused.value.error.code == -32029

    run(go())
    from test_ratelimit import metric

    assert metric(gw, "portcullis_input_rounds_total", bridge=bridge) == 1
    records = wait_for(
        lambda: (got := [r for r in audit_lines(audit) if r["method"] == "tools/call"]) and len(got) >= 3 and got,
        what="audit records of both calls",
    )
    first, second = records[0], records[1]
    assert (first["event"], first["action"], first["round"]) == ("decision", "allow", 1)
    assert (second["event"], second["action"], second["round"]) == ("round", "continued", 2)
    assert first["call_id"] == second["call_id"]
    # The refused second call is a call of its own.
    assert records[2]["event"] == "decision" and records[2]["call_id"] != first["call_id"]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_input_request_on_the_upstreams_get_stream_reaches_the_caller(procs, mode):
    """A legacy upstream may send a call's elicitation on its GET stream,
    not on the call's own stream (the Python SDK does when the server code
    does not name the related request): it reaches the client of the call
    in flight (asked directly, or as an InputRequiredResult round)."""
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("get_stream_upstream.py")
    url = procs.listening("get-stream-upstream", [sys.executable, str(script)])
    gw = procs.gateway({"upstreams": {"gs": {"http": {"url": url}, "protocol": "legacy"}}})
    gw.wait_up("gs")
    asked: list[str] = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def go():
        async with Client(gw.url, mode=mode, elicitation_callback=elicit) as c:
            r = await c.call_tool("gs__ask_on_get", {})
            assert r.content[0].text == "Hello, Ada!", r

    run(go())
    assert asked == ["What is your name?"]
