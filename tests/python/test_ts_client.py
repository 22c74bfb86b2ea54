"""The official TypeScript SDK's client (`@modelcontextprotocol/sdk`, the
one most desktop apps and IDEs are built on) against the gateway: the
whole of a session, from `initialize` to `DELETE`, with the client's own
handlers answering the upstream's questions. `tests/js/ts_client.mjs` runs
the session and reports each step; this test checks the report.

The upstream is the fixture over stdio and over streamable HTTP, because
the gateway finds the call an upstream's question belongs to differently
on each (`upstream::routes`).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from conftest import NODE, PEERS, ROOT, fixture_stdio, metric

SDK = PEERS / "npm" / "node_modules" / "@modelcontextprotocol" / "sdk" / "dist" / "esm"
SCRIPT = ROOT / "tests" / "js" / "ts_client.mjs"


def run_ts_client(url: str, skip: tuple[str, ...] = ()) -> dict:
    done = subprocess.run([str(NODE), str(SCRIPT), str(SDK), url, ",".join(skip)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads(done.stdout)


def ok(report: dict, step: str):
    got = report["steps"][step]
    assert got["ok"], f"{step}: {got}"
    return got["value"]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_typescript_sdk_client_gets_the_whole_protocol(procs, transport):
    upstream = fixture_stdio() if transport == "stdio" else {"http": {"url": procs.fixture_http()}}
    gw = procs.gateway({"upstreams": {"fx": upstream}})
    gw.wait_up("fx")
    # The fixture speaks both eras, so over stdio the gateway runs a second
    # child for legacy clients (`upstream::eras`): this client's calls run
    # there, while the catalogue and resource watches are the 2026 child's,
    # which never hears of them. Known, left as a design question (see the
    # closing notes): the change notifications are checked over HTTP only.
    r = run_ts_client(gw.url, skip=("subscribe", "toolListChanged") if transport == "stdio" else ())

    assert r["session"] and r["protocolVersion"] == "2025-11-25"
    assert r["server"]["name"] == "portcullis"
    assert {"tools", "prompts", "resources", "logging", "completions"} <= set(r["capabilities"])
    tools = ok(r, "listTools")
    assert {"fx__echo", "fx__add", "fx__slow", "fx__test_elicitation"} <= set(tools)
    assert all(t.startswith("fx__") for t in tools)

    assert ok(r, "echo") == "hi from ts"
    # The SDK validates structuredContent against the outputSchema it listed.
    assert ok(r, "structured") == {"sum": 5}
    assert ok(r, "progress") == {"isError": False, "progress": [0, 50, 100]}

    # The upstream's questions reach this client's handlers, and their answers go back.
    elicited = ok(r, "elicitation")
    assert elicited["asked"] == ["who are you?"]
    assert '"username":"ts-username"' in elicited["text"] and "action=accept" in elicited["text"]
    sampled = ok(r, "sampling")
    assert sampled == {"text": "LLM response: sampled by ts", "asked": ["ts prompt"]}
    # A 2026-07-28 tool's input requests, asked of this 2025 client as requests of its own.
    roots = ok(r, "roots")
    assert roots["asked"] == 1 and not roots["isError"] and "file:///srv/ts" in roots["text"]
    assert ok(r, "inputRequired") == {"text": "Hello, ts-name!", "isError": False, "asked": ["What is your name?"]}

    logging = ok(r, "logging")
    assert logging["lines"] == 3
    assert [line["data"] for line in r["seen"]["logs"]] == [
        "Tool execution started", "Tool processing data", "Tool execution completed"]

    unknown = r["steps"]["unknownTool"]
    assert not unknown["ok"] and unknown["code"] == -32602 and "fx__no_such_tool" in unknown["error"]

    resources = ok(r, "resources")
    assert "test://static-text" in resources["uris"] and resources["templates"] == ["test://template/{id}/data"]
    assert resources["read"] == "This is the content of the static text resource."
    prompts = ok(r, "prompts")
    assert "fx__test_simple_prompt" in prompts["names"]
    assert prompts["text"] == "Prompt with arguments: arg1='one', arg2='two'"

    assert ok(r, "complete") == ["paris", "park", "party", "test", "testValue"]
    if transport == "http":
        assert ok(r, "subscribe") == ["test://watched-resource"]
        assert ok(r, "toolListChanged") >= 1

    cancel = ok(r, "cancel")
    assert cancel["cancelled"] and "ts test cancels" in cancel["error"]
    # The client's notifications/cancelled made the gateway cancel its own call upstream.
    assert cancel["counted"]
    assert metric(gw, "mcp_client_operation_duration_seconds_count", mcp_method_name="tools/call",
                  outcome="cancelled", upstream="fx") == 1
    ok(r, "ping")

    # After DELETE the session is gone for good.
    assert ok(r, "terminate") is None and r["sessionId"]
    req = urllib.request.Request(gw.url, method="POST", data=json.dumps(
        {"jsonrpc": "2.0", "id": 99, "method": "tools/list", "params": {}}).encode(), headers={
        "content-type": "application/json", "accept": "application/json, text/event-stream",
        "mcp-session-id": r["sessionId"], "mcp-protocol-version": "2025-11-25"})
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(req, timeout=10)
    assert gone.value.code == 404
