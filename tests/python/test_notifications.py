"""Notifications and small requests forwarded both ways: logging and
logging/setLevel, resource subscriptions, roots, completions, ping."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import mcp.types as types
import pytest
from mcp import Client

from conftest import everything_stdio, fixture_stdio, metric, run, text, time_stdio, until_waiting


@pytest.fixture
def gateway(procs):
    gw = procs.gateway({"upstreams": {"everything": everything_stdio(), "time": time_stdio()}})
    gw.wait_up("everything", "time")
    return gw


def test_logging_messages_reach_the_client_at_its_level(gateway):
    """The reference server's simulated log lines come every 5 s, outside
    any call: they are the connection's, and reach every session at its
    level."""

    async def go():
        got: dict[str, list[types.LoggingMessageNotificationParams]] = {"a": [], "b": []}
        arrived = {"a": asyncio.Event(), "b": asyncio.Event()}

        def listener(who):
            async def on_log(params):
                got[who].append(params)
                arrived[who].set()

            return on_log

        async with (
            Client(gateway.url, mode="legacy", logging_callback=listener("a")) as a,
            Client(gateway.url, mode="legacy", logging_callback=listener("b")) as b,
        ):
            await a.set_logging_level("debug")
            await b.set_logging_level("debug")
            await a.call_tool("everything__toggle-simulated-logging", {})
            await asyncio.wait_for(asyncio.gather(arrived["a"].wait(), arrived["b"].wait()), 30)
            await a.call_tool("everything__toggle-simulated-logging", {})
        return got

    got = run(go())
    for lines in got.values():
        assert lines[0].level in {"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"}
        assert lines[0].data


def test_resource_subscription_updates_reach_the_subscriber(gateway):
    async def go():
        updated = asyncio.Event()
        uris: list[str] = []

        async def on_message(message):
            if isinstance(message, types.ResourceUpdatedNotification):
                uris.append(str(message.params.uri))
                updated.set()

        async with Client(gateway.url, mode="legacy", message_handler=on_message) as c:
            resource = (await c.list_resources()).resources[0]
            await c.subscribe_resource(str(resource.uri))
            await c.call_tool("everything__toggle-subscriber-updates", {})
            await asyncio.wait_for(updated.wait(), 30)
            await c.call_tool("everything__toggle-subscriber-updates", {})
            await c.unsubscribe_resource(str(resource.uri))
            return str(resource.uri), uris

    uri, uris = run(go())
    assert uri in uris


def test_roots_reach_a_per_client_upstream_from_its_client(procs):
    # Roots describe one client, so a server that keeps them needs its own
    # upstream session: `per-client` routes even unprompted roots/list there.
    gw = procs.gateway({"upstreams": {"everything": {**everything_stdio(), "session": "per-client"}}})
    gw.wait_up("everything")

    async def on_roots(context):
        return types.ListRootsResult(roots=[types.Root(uri="file:///srv/project", name="project")])

    async def go():
        async with Client(gw.url, mode="legacy", list_roots_callback=on_roots) as c:
            return await c.call_tool("everything__get-roots-list", {})

    result = run(go())
    assert "file:///srv/project" in str(result.content)


def test_completions_are_routed_to_the_prompts_upstream(gateway):
    async def go():
        async with Client(gateway.url, mode="legacy") as c:
            ref = types.PromptReference(name="everything__completable-prompt")
            return await c.complete(ref, {"name": "department", "value": "E"})

    result = run(go())
    assert "Engineering" in result.completion.values


def test_ping(gateway):
    async def go():
        async with Client(gateway.url, mode="legacy") as c:
            await c.send_ping()

    run(go())


def test_a_calls_log_lines_reach_only_its_own_client(procs):
    """Log lines an HTTP upstream sends on a call's own stream (the Python
    SDK's `ctx.log`) are that call's: another session at the same level does
    not get them, while a line the upstream sends to the whole connection
    reaches both."""
    script = Path(__file__).with_name("log_upstream.py")
    url = procs.listening("log-upstream", [sys.executable, str(script)])
    gw = procs.gateway({"upstreams": {"lg": {"http": {"url": url}, "protocol": "legacy"}}})
    gw.wait_up("lg")
    lines: dict[str, list[str]] = {"a": [], "b": []}
    heard = {"a": asyncio.Event(), "b": asyncio.Event()}

    def listener(who):
        async def on_log(params):
            lines[who].append(str(params.data))
            if params.data == "to everyone":
                heard[who].set()

        return on_log

    async def go():
        async with (
            Client(gw.url, mode="legacy", logging_callback=listener("a")) as a,
            Client(gw.url, mode="legacy", logging_callback=listener("b")) as b,
        ):
            await a.set_logging_level("info")
            await b.set_logging_level("info")
            assert (await a.call_tool("lg__log_lines", {})).content[0].text == "logged"
            # The connection-wide line comes after the call's lines (a full
            # round trip later); once B has it, B would have had theirs.
            assert (await a.call_tool("lg__log_to_connection", {"message": "to everyone"})).content[0].text == "logged"
            await asyncio.wait_for(asyncio.gather(heard["a"].wait(), heard["b"].wait()), 30)

    run(go())
    call_lines = ["call started", "call working", "call done"]
    # Sorted: the Python SDK hands each notification to a task of its own,
    # so its callbacks may run out of the order the lines arrived in.
    assert sorted(l for l in lines["a"] if l in call_lines) == sorted(call_lines), lines
    assert not [l for l in lines["b"] if l in call_lines], lines
    assert metric(gw, "portcullis_upstream_log_lines_total", upstream="lg", route="call") == 3
    assert metric(gw, "portcullis_upstream_log_lines_total", upstream="lg", route="connection") == 1


def test_a_stdio_calls_log_lines_are_never_guessed_across_sessions(procs):
    """A stdio upstream cannot say which call a log line is about (one
    pipe carries everything, in the server's order). With one session's
    calls in flight the line is that session's, and only its; while calls
    of several sessions are in flight it could be any of theirs, so it is
    withheld (counted) rather than shown to them all, which could show one
    user what another's call logged. The fixture's gates hold calls in
    flight."""
    gw = procs.gateway({"upstreams": {"fx": fixture_stdio()}})
    gw.wait_up("fx")
    lines: dict[str, list[str]] = {"a": [], "b": []}

    def listener(who):
        async def on_log(params):
            lines[who].append(str(params.data))

        return on_log

    async def go():
        async with (
            Client(gw.url, mode="legacy", logging_callback=listener("a")) as a,
            Client(gw.url, mode="legacy", logging_callback=listener("b")) as b,
            Client(gw.url, mode="legacy") as ctl,
        ):
            await a.set_logging_level("info")
            await b.set_logging_level("info")
            # Only A's session has calls in flight: A's line.
            await ctl.call_tool("fx__gate_open", {"gate": "g0"})
            assert await text(a.call_tool("fx__gate_log", {"gate": "g0"})) == "logged g0"
            # A's call logs while B's call is in flight too.
            mine = asyncio.create_task(text(a.call_tool("fx__gate_log", {"gate": "g1"})))
            await until_waiting(ctl, "g1")
            theirs = asyncio.create_task(text(b.call_tool("fx__gate_wait", {"gate": "g2"})))
            await until_waiting(ctl, "g2")
            await ctl.call_tool("fx__gate_open", {"gate": "g1"})
            assert await mine == "logged g1"
            await ctl.call_tool("fx__gate_open", {"gate": "g2"})
            assert await theirs == "passed g2"
            # B's own line, alone in flight, comes after anything the
            # gateway would have handed B of A's.
            await ctl.call_tool("fx__gate_open", {"gate": "g3"})
            assert await text(b.call_tool("fx__gate_log", {"gate": "g3"})) == "logged g3"

    run(go())
    assert lines["a"] == ["g0 logged"], lines
    assert lines["b"] == ["g3 logged"], lines
    assert metric(gw, "portcullis_upstream_log_lines_total", upstream="fx", route="withheld") == 1
    assert metric(gw, "portcullis_upstream_log_lines_total", upstream="fx", route="call") == 2
