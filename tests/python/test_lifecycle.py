"""Upstream lifecycle: transports, restarts with list_changed, per-client
sessions, and that no child process outlives its session or the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import mcp.types as types
import pytest
from mcp.shared.exceptions import MCPError
from mcp import Client, StdioServerParameters

from conftest import EVERYTHING, GATEWAY, everything_stdio, fixture_stdio, run, time_stdio, wait_for
from procutil import alive, cmdline, descendants, zombies


def test_streamable_http_upstream(procs):
    url = procs.everything_http("streamableHttp")
    gw = procs.gateway({"upstreams": {"remote": {"http": {"url": url}}}})
    gw.wait_up("remote")

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "remote__echo" in names
            echo = await c.call_tool("remote__echo", {"message": "over http"})
            assert echo.content[0].text == "Echo: over http"
            seen = []

            async def on_progress(progress, total, message):
                seen.append(progress)

            await c.call_tool(
                "remote__trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress
            )
            assert len(seen) >= 2

    run(go())


def test_legacy_sse_upstream(procs):
    """server-everything in its 2024-11-05 HTTP+SSE mode, through our own
    SSE client transport: calls, progress, and a server-to-client request
    (elicitation) travelling back over the event stream."""
    url = procs.everything_http("sse")
    gw = procs.gateway({"upstreams": {"old": {"sse": {"url": url}}}})
    gw.wait_up("old")

    async def go():
        asked = []

        async def on_elicit(ctx, params):
            asked.append(params.message)
            return types.ElicitResult(action="decline")

        async with Client(gw.url + "/old", mode="legacy", elicitation_callback=on_elicit) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"echo", "get-sum"} <= names
            echo = await c.call_tool("echo", {"message": "over sse"})
            assert echo.content[0].text == "Echo: over sse"
            total = await c.call_tool("get-sum", {"a": 2, "b": 40})
            assert "42" in total.content[0].text
            seen = []

            async def on_progress(progress, total, message):
                seen.append(progress)

            await c.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress)
            assert len(seen) >= 2
            await c.call_tool("trigger-elicitation-request", {})
            assert asked, "the elicitation request never reached the client"
            resources = (await c.list_resources()).resources
            assert resources, "no resources over SSE"
            read = await c.read_resource(resources[0].uri)
            assert read.contents

    run(go())


def test_stdio_mode_serves_one_session(procs, tmp_path):
    import yaml

    config = tmp_path / "stdio.yaml"
    config.write_text(yaml.safe_dump({"upstreams": {"time": time_stdio(), "everything": everything_stdio()}}))

    async def go():
        params = StdioServerParameters(command=str(GATEWAY), args=["stdio", "--config", str(config)])
        async with Client(params, mode="legacy") as c:
            async def tools():
                return {t.name for t in (await c.list_tools()).tools}

            names = await tools()
            # Upstreams connect in the background; the list grows to both.
            for _ in range(200):
                if {"time__get_current_time", "everything__echo"} <= names:
                    break
                await asyncio.sleep(0.05)
                names = await tools()
            assert {"time__get_current_time", "everything__echo"} <= names
            echo = await c.call_tool("everything__echo", {"message": "stdio"})
            assert echo.content[0].text == "Echo: stdio"

    run(go())


def upstream_children(gw) -> list[int]:
    return [p for p in alive(descendants(gw.proc.pid)) if str(EVERYTHING) in cmdline(p)]


def test_restarted_upstream_comes_back_with_list_changed(procs):
    gw = procs.gateway({"upstreams": {"everything": everything_stdio(), "time": time_stdio()}})
    gw.wait_up("everything", "time")

    async def go():
        changed = asyncio.Event()

        async def on_message(message):
            if isinstance(message, types.ToolListChangedNotification):
                changed.set()

        async with Client(gw.url, mode="legacy", message_handler=on_message) as c:
            assert "everything__echo" in {t.name for t in (await c.list_tools()).tools}
            [child] = upstream_children(gw)
            os.kill(child, signal.SIGKILL)
            await asyncio.wait_for(changed.wait(), 30)
            # While down or after coming back, lists stay consistent; wait for it back.
            for _ in range(400):
                names = {t.name for t in (await c.list_tools()).tools}
                if "everything__echo" in names and upstream_children(gw):
                    break
                await asyncio.sleep(0.05)
            assert "everything__echo" in names
            assert "time__get_current_time" in names
            echo = await c.call_tool("everything__echo", {"message": "back"})
            assert echo.content[0].text == "Echo: back"
            assert upstream_children(gw) != [child]

    run(go())
    assert not zombies(descendants(gw.proc.pid)), "the killed child must be reaped"


def test_dead_upstream_does_not_block_others(procs):
    gw = procs.gateway(
        {
            "upstreams": {
                "broken": {"stdio": {"command": "/nonexistent/mcp-server"}},
                "time": time_stdio(),
            }
        }
    )
    ready = gw.wait_up("time")
    assert ready["upstreams"]["broken"]["state"] == "down"
    assert "nonexistent" in ready["upstreams"]["broken"]["error"]

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names == {"time__get_current_time", "time__convert_time"}

    run(go())


def test_no_process_outlives_the_gateway(procs):
    gw = procs.gateway({"upstreams": {"everything": everything_stdio(), "time": time_stdio()}})
    gw.wait_up("everything", "time")
    children = descendants(gw.proc.pid)
    assert len(alive(children)) >= 2
    assert gw.stop() == 0
    wait_for(lambda: not alive(children), timeout=20, what=f"children {children} to exit")


def test_per_client_sessions_are_capped_and_reaped(procs):
    everything = everything_stdio()
    gw = procs.gateway(
        {"upstreams": {"everything": {**everything, "session": "per-client", "max_sessions": 2}}}
    )
    gw.wait_up("everything")
    baseline = len(upstream_children(gw))  # the catalogue connection

    async def go():
        async with Client(gw.url, mode="legacy") as a, Client(gw.url, mode="legacy") as b:
            await a.call_tool("everything__echo", {"message": "a"})
            await b.call_tool("everything__echo", {"message": "b"})
            assert len(upstream_children(gw)) == baseline + 2
            async with Client(gw.url, mode="legacy") as c:
                with pytest.raises(MCPError) as err:
                    await c.call_tool("everything__echo", {"message": "c"})
                assert err.value.error.code == -32002
                assert "limit of 2 client sessions" in err.value.error.message
        # All sessions are closed (DELETE) here: their upstream sessions go too.

    run(go())
    wait_for(lambda: len(upstream_children(gw)) == baseline, timeout=30, what="per-client children gone")
    # A killed child counts as gone from the moment it is a zombie, before
    # the gateway's wait on it returns: reaping is checked as it completes.
    wait_for(lambda: not zombies(descendants(gw.proc.pid)), timeout=10, what="per-client children reaped")


def test_http_upstream_that_restarts_is_reconnected(procs):
    from conftest import NODE, free_port, _connects

    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    argv = [str(NODE), str(EVERYTHING), "streamableHttp"]
    first = procs.spawn("everything-http-1", argv, env={"PORT": str(port)})
    wait_for(lambda: _connects(port), what="server-everything http")
    gw = procs.gateway(
        {"upstreams": {"remote": {"http": {"url": url}, "timeout": "3s", "health": {"timeout": "1s", "failures": 1}}}}
    )
    gw.wait_up("remote")

    async def call(c):
        return await c.call_tool("remote__echo", {"message": "again"})

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            assert (await call(c)).content[0].text == "Echo: again"
            first.stop()
            procs.spawn("everything-http-2", argv, env={"PORT": str(port)})
            wait_for(lambda: _connects(port), what="server-everything http restarted")
            # The old upstream session is gone; the gateway must re-initialize.
            for _ in range(300):
                try:
                    result = await call(c)
                    if not result.is_error:
                        return result
                except Exception:  # noqa: BLE001 - down while reconnecting
                    pass
                await asyncio.sleep(0.1)
            raise AssertionError("upstream never came back")

    result = run(go())
    assert result.content[0].text == "Echo: again"


def test_idle_per_client_sessions_are_reaped(procs):
    gw = procs.gateway(
        {"upstreams": {"everything": {**everything_stdio(), "session": "per-client", "idle_timeout": "1s"}}}
    )
    gw.wait_up("everything")
    baseline = len(upstream_children(gw))

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            await c.call_tool("everything__echo", {"message": "once"})
            assert len(upstream_children(gw)) == baseline + 1
            # The client session stays open; only its idle upstream session goes.
            await asyncio.to_thread(
                wait_for, lambda: len(upstream_children(gw)) == baseline, 30, "idle upstream session reaped"
            )
            # A later call opens a fresh one.
            echo = await c.call_tool("everything__echo", {"message": "again"})
            assert echo.content[0].text == "Echo: again"

    run(go())


@pytest.mark.parametrize("protocol", ["2026-07-28", "legacy"])
def test_liveness_probes_keep_a_healthy_upstream_of_either_era(procs, protocol):
    """2026-07-28 removed `ping`: the gateway probes such an upstream with
    `server/discover`, so a healthy one is never torn down (with `ping` it
    would answer -32601 and be reconnected after `failures` probes)."""
    from test_ratelimit import metric

    url = procs.fixture_http()
    health = {"interval": "100ms", "timeout": "2s", "failures": 1}
    gw = procs.gateway({"upstreams": {"fx": {"http": {"url": url}, "protocol": protocol, "health": health}}})
    gw.wait_up("fx")
    wait_for(lambda: metric(gw, "portcullis_upstream_probes_total", upstream="fx", outcome="ok") >= 5, what="probes")
    assert metric(gw, "portcullis_upstream_probes_total", upstream="fx", outcome="failed") == 0
    assert metric(gw, "portcullis_upstream_restarts_total", upstream="fx") == 0


@pytest.mark.parametrize("workers", [1, 3])
def test_runtime_worker_threads_sets_the_workers(procs, workers):
    """`runtime.worker_threads` is the number of async workers (one avoids
    cross-thread wakeups at low load; docs/benchmarks.md), and the gateway
    serves calls with it."""
    gw = procs.gateway({"upstreams": {"fx": fixture_stdio()}, "runtime": {"worker_threads": workers}})
    gw.wait_up("fx")
    names = [Path(f"/proc/{gw.proc.pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{gw.proc.pid}/task")]
    assert names.count("tokio-rt-worker") == workers, names

    async def call():
        async with Client(gw.url) as c:
            return await c.call_tool("fx__echo", {"message": "one worker"})

    assert run(call()).content[0].text.endswith("one worker")
