"""Every mix of client era and upstream era, through the gateway, for the
features the two eras share: lists, calls, resources and templates,
prompts, completions, progress, logging and cancellation. The client is the
official Python SDK in `mode="2026-07-28"` or `"legacy"`; the upstream is
the fixture over streamable HTTP, spoken to in 2026-07-28 or legacy
(`protocol:`)."""

from __future__ import annotations

import asyncio

import anyio
import mcp.types as types
import pytest
from mcp import Client

from conftest import http_get, legacy_initialize, run, wait_for

CLIENTS = ["2026-07-28", "legacy"]
UPSTREAMS = ["2026-07-28", "legacy"]


def upstream_cancellations(gw) -> float:
    _, body = http_get(gw.endpoint("/metrics"))
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("mcp_client_operation_duration_seconds_count") and 'outcome="cancelled"' in line
    )


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", CLIENTS)
def test_shared_features_work_across_eras(procs, client, upstream):
    url = procs.fixture_http()
    gw = procs.gateway({"upstreams": {"fx": {"http": {"url": url}, "protocol": upstream}}})
    gw.wait_up("fx")
    progress: list[float] = []
    logs: list[str] = []

    async def on_progress(p, total, message):
        progress.append(p)

    async def on_log(params):
        logs.append(str(params.data))

    async def go():
        async with Client(gw.url, mode=client, logging_callback=on_log, log_level="info") as c:
            if client == "legacy":
                await c.set_logging_level("info")
            tools = {t.name for t in (await c.list_tools()).tools}
            assert {"fx__echo", "fx__test_tool_with_progress", "fx__slow"} <= tools
            assert (await c.call_tool("fx__echo", {"message": "m"})).content[0].text == "m"

            resources = {str(r.uri) for r in (await c.list_resources()).resources}
            assert "test://static-text" in resources
            read = await c.read_resource("test://static-text")
            assert read.contents[0].text == "This is the content of the static text resource."
            templates = (await c.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["test://template/{id}/data"]

            assert "fx__test_prompt_with_arguments" in {p.name for p in (await c.list_prompts()).prompts}
            prompt = await c.get_prompt("fx__test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
            assert "a" in str(prompt.messages[0].content)
            done = await c.complete(
                types.PromptReference(name="fx__test_prompt_with_arguments"), {"name": "arg1", "value": ""}
            )
            assert done.completion.values

            await c.call_tool("fx__test_tool_with_progress", {}, progress_callback=on_progress)
            r = await c.call_tool("fx__test_tool_with_logging", {})
            assert r.content[0].text == "Tool with logging executed successfully"

            with anyio.move_on_after(1.0) as scope:
                await c.call_tool("fx__slow", {"ms": 30000})
            assert scope.cancelled_caught
            assert (await c.call_tool("fx__echo", {"message": "after"})).content[0].text == "after"

    run(go())
    assert progress == [0.0, 50.0, 100.0]
    wait_for(lambda: any("Tool execution completed" in line for line in logs), timeout=10, what=f"logs, got {logs}")
    wait_for(lambda: upstream_cancellations(gw) >= 1, timeout=15, what="upstream call cancelled")


@pytest.mark.parametrize("client", CLIENTS)
def test_renamed_tool_reaches_a_modern_upstream_under_its_own_name(procs, client):
    """`Mcp-Name` on the upstream request is the upstream's own tool name,
    not the name the gateway exposes (a 2026-07-28 server checks it against
    the body)."""
    import json

    url = procs.fixture_http()
    gw = procs.gateway(
        {
            "upstreams": {
                "fx": {"http": {"url": url}, "protocol": "2026-07-28", "tools": {"rename": {"headers": "whoami"}}}
            }
        }
    )
    gw.wait_up("fx")

    async def go():
        async with Client(gw.url, mode=client) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "fx__whoami" in names and "fx__headers" not in names
            return await c.call_tool("fx__whoami", {})

    result = run(go())
    seen = json.loads(result.content[0].text)
    assert seen["mcp-name"] == "headers"
    assert seen["mcp-method"] == "tools/call"
    assert seen["mcp-protocol-version"] == "2026-07-28"


def test_a_modern_only_upstream_serves_every_client_era(procs):
    """An upstream that speaks 2026-07-28 alone (the fixture behind a gate
    that refuses every other request with 400 and -32022) works with the
    default `protocol: auto`, for clients of both eras: lists, calls and an
    input round."""
    url = procs.fixture_http("--modern-only")
    status, _, refused = legacy_initialize(url)
    assert status == 400 and refused["error"]["code"] == -32022, refused

    gw = procs.gateway({"upstreams": {"fx": {"http": {"url": url}}}})
    gw.wait_up("fx")
    asked: list[str] = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def go(mode):
        async with Client(gw.url, mode=mode, elicitation_callback=elicit) as c:
            assert "fx__echo" in {t.name for t in (await c.list_tools()).tools}
            assert (await c.call_tool("fx__echo", {"message": mode})).content[0].text == mode
            read = await c.read_resource("test://static-text")
            assert read.contents[0].text == "This is the content of the static text resource."
            r = await c.call_tool("fx__test_input_required_result_elicitation", {})
            assert r.content[0].text == "Hello, Ada!"

    for mode in CLIENTS:
        run(go(mode))
    assert asked == ["What is your name?"] * len(CLIENTS)


def test_prompt_and_resource_input_rounds_reach_clients_of_both_eras(procs, tmp_path):
    """A 2026-07-28-only upstream answers `prompts/get` and `resources/read`
    with an InputRequiredResult: a 2026 client gets it (its state wrapped)
    and retries; a legacy client is asked by server-to-client elicitation
    and the answer becomes the upstream's next round, audited as a round of
    the same call; a legacy client that did not declare elicitation gets
    -32021 naming what the upstream needs."""
    import json

    from mcp.shared.exceptions import MCPError

    from test_ratelimit import metric

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "r.yaml").write_text("rules: [{id: fx-all, match: {upstream: fx}, action: allow}]\n")
    audit = tmp_path / "a.jsonl"
    gw = procs.gateway(
        {
            "upstreams": {"fx": {"http": {"url": procs.fixture_http("--modern-only")}}},
            "policies": {"dir": str(tmp_path / "p"), "audit": {"file": str(audit)}},
        }
    )
    gw.wait_up("fx")
    asked: list[str] = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"context": "ctx", "section": "7"})

    async def go(mode):
        async with Client(gw.url, mode=mode, elicitation_callback=elicit) as c:
            prompt = await c.get_prompt("fx__test_input_required_result_prompt")
            assert prompt.messages[0].content.text == "Use this context: ctx"
            read = await c.read_resource("test://input-required")
            assert read.contents[0].text == "Section 7"

    for mode in CLIENTS:
        run(go(mode))
    assert asked == ["What context should the prompt use?", "Which section should be read?"] * len(CLIENTS)
    assert metric(gw, "portcullis_input_rounds_total", bridge="legacy_client") == 2

    async def unprepared():
        async with Client(gw.url, mode="legacy") as c:
            with pytest.raises(MCPError) as refused:
                await c.get_prompt("fx__test_input_required_result_prompt")
            return refused.value.error

    err = run(unprepared())
    assert err.code == -32021 and "elicitation/create" in err.message

    def reads_with_rounds():
        lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()] if audit.exists() else []
        got = [r for r in lines if r["method"] in ("prompts/get", "resources/read") and r["event"] == "round"]
        return lines if len(got) >= 4 else None

    lines = wait_for(reads_with_rounds, what="round records of both clients' reads")
    for method in ("prompts/get", "resources/read"):
        # One call per client era, each a decision and a linked second round.
        calls = {r["call_id"] for r in lines if r["method"] == method and r["event"] == "round"}
        assert len(calls) == len(CLIENTS), calls
        for call in calls:
            records = [r for r in lines if r.get("call_id") == call]
            assert [(r["method"], r["event"], r["round"]) for r in records] == [
                (method, "decision", 1),
                (method, "round", 2),
            ]
