"""`subscriptions/listen` (2026-07-28) through the gateway: the Python SDK's
`Client.listen` in `mode="2026-07-28"` against `/mcp` and `/mcp/{upstream}`.
List changes reach the listeners whose endpoint shows the upstream that
changed, and only the kinds they asked for; resource updates reach the
streams listening to that URI, named as the client knows it, whether the
upstream is legacy (fed by `resources/subscribe`) or 2026-07-28 (fed by the
gateway's own listen stream upstream). A legacy client's
`resources/subscribe` on a 2026-07-28 upstream is bridged onto that stream.

Absence is shown with a sentinel, never a sleep: one stream's events are
ordered, and the gateway fans each upstream event out to every listener
before the next, so a stream whose first event is the later change never
got the earlier one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.client.subscriptions import PromptsListChanged, ResourceUpdated, ToolsListChanged

from conftest import FIXTURE, fixture_stdio, http_get, run, wait_for
from procutil import alive, cmdline, descendants

WATCHED = "test://watched-resource"
PROTOCOLS = ["legacy", "2026-07-28"]


def two_fixtures(procs, protocol: str):
    gw = procs.gateway(
        {
            "upstreams": {
                "fx": {"http": {"url": procs.fixture_http()}, "protocol": protocol},
                "fy": {"http": {"url": procs.fixture_http()}, "protocol": protocol},
            },
            "virtual_servers": {"vx": {"tools": ["fx__*"]}},
        }
    )
    gw.wait_up("fx", "fy")
    return gw


def listening(gw, n: int) -> None:
    """Waits until the gateway has `n` listen streams registered, which it
    does once their upstream watches are established."""

    def count():
        status, body = http_get(gw.endpoint("/metrics"))
        for line in body.decode().splitlines():
            if line.startswith("portcullis_listen_streams_open "):
                return float(line.split()[1]) == n
        return False

    wait_for(count, timeout=20, what=f"{n} listen streams")


async def registered(gw, n: int) -> None:
    await asyncio.to_thread(listening, gw, n)


async def next_event(sub, timeout: float = 20):
    return await asyncio.wait_for(sub.__anext__(), timeout)


async def settled(gw, c) -> None:
    """Returns once the gateway has fanned out every upstream event so far
    (the list changes of upstreams coming up): events are fanned out in
    order, and a resource update only the trigger causes comes after them."""
    uri = next(str(r.uri) for r in (await c.list_resources()).resources if WATCHED in str(r.uri) and "fx" in str(r.uri))
    async with c.listen(resource_subscriptions=[uri]) as probe:
        await registered(gw, 1)
        await c.call_tool("fx__trigger_resource_update", {})
        assert await next_event(probe) == ResourceUpdated(uri=uri)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_list_changes_reach_listeners_of_endpoints_that_show_the_upstream(procs, protocol):
    gw = two_fixtures(procs, protocol)

    async def go():
        async with contextlib.AsyncExitStack() as stack:
            c = await stack.enter_async_context(Client(gw.url, mode="2026-07-28"))
            fx = await stack.enter_async_context(Client(gw.endpoint("/mcp/fx"), mode="2026-07-28"))
            fy = await stack.enter_async_context(Client(gw.endpoint("/mcp/fy"), mode="2026-07-28"))
            vx = await stack.enter_async_context(Client(gw.endpoint("/mcp/v/vx"), mode="2026-07-28"))
            await settled(gw, c)
            on_vx = await stack.enter_async_context(vx.listen(tools_list_changed=True, prompts_list_changed=True))
            everything = await stack.enter_async_context(
                c.listen(tools_list_changed=True, prompts_list_changed=True)
            )
            prompts_only = await stack.enter_async_context(c.listen(prompts_list_changed=True))
            on_fx = await stack.enter_async_context(fx.listen(tools_list_changed=True))
            on_fy = await stack.enter_async_context(
                fy.listen(tools_list_changed=True, prompts_list_changed=True)
            )
            assert everything.honored.tools_list_changed and everything.honored.prompts_list_changed
            await registered(gw, 5)

            await c.call_tool("fx__test_trigger_tool_change", {})
            assert await next_event(everything) == ToolsListChanged()
            assert await next_event(on_fx) == ToolsListChanged()
            assert await next_event(on_vx) == ToolsListChanged()

            # The sentinel: a prompt change of fy, after fx's tool change was fanned out.
            await c.call_tool("fy__test_trigger_prompt_change", {})
            assert await next_event(on_fy) == PromptsListChanged()  # not fx's tool change
            assert await next_event(prompts_only) == PromptsListChanged()  # not a tool change
            assert await next_event(everything) == PromptsListChanged()

            # A virtual server shows some upstreams' tools and no prompts:
            # fy's prompt change is not its business (sentinel: fx's next tool change).
            await c.call_tool("fx__test_trigger_tool_change", {})
            assert await next_event(on_vx) == ToolsListChanged()

            # The listener's view is current after the event.
            assert "fx__echo" in {t.name for t in (await c.list_tools()).tools}

    run(go())
    assert gw.ready()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_resource_updates_reach_listeners_under_the_uri_they_know(procs, protocol):
    gw = two_fixtures(procs, protocol)

    async def go():
        async with contextlib.AsyncExitStack() as stack:
            c = await stack.enter_async_context(Client(gw.url, mode="2026-07-28"))
            fy = await stack.enter_async_context(Client(gw.endpoint("/mcp/fy"), mode="2026-07-28"))
            # Both upstreams have the URI, so the aggregate endpoint renames them.
            exposed = sorted(str(r.uri) for r in (await c.list_resources()).resources if WATCHED in str(r.uri))
            assert len(exposed) == 2 and WATCHED not in exposed, exposed
            fy_uri = next(u for u in exposed if "fy" in u)
            fx_uri = next(u for u in exposed if "fx" in u)
            on_fy_agg = await stack.enter_async_context(c.listen(resource_subscriptions=[fy_uri]))
            on_fy = await stack.enter_async_context(fy.listen(resource_subscriptions=[WATCHED]))
            on_both = await stack.enter_async_context(c.listen(resource_subscriptions=[fx_uri, fy_uri]))
            assert on_fy_agg.honored.resource_subscriptions == [fy_uri]
            await registered(gw, 3)

            await c.call_tool("fx__trigger_resource_update", {})
            assert await next_event(on_both) == ResourceUpdated(uri=fx_uri)

            await c.call_tool("fy__trigger_resource_update", {})
            assert await next_event(on_fy_agg) == ResourceUpdated(uri=fy_uri)  # not fx's update
            assert await next_event(on_fy) == ResourceUpdated(uri=WATCHED)
            assert await next_event(on_both) == ResourceUpdated(uri=fy_uri)

    run(go())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_legacy_subscriber_and_a_listener_share_one_upstream_subscription(procs, protocol):
    """A legacy client's resources/subscribe is served by the same counted
    upstream watch as a listener's: on a 2026-07-28 upstream it is bridged
    onto the gateway's listen stream. Unsubscribing one leaves the other's."""
    url = procs.fixture_http()
    gw = procs.gateway({"upstreams": {"fx": {"http": {"url": url}, "protocol": protocol}}})
    gw.wait_up("fx")

    async def go():
        updates: asyncio.Queue[str] = asyncio.Queue()

        async def on_message(message):
            if isinstance(message, types.ResourceUpdatedNotification):
                await updates.put(str(message.params.uri))

        async with contextlib.AsyncExitStack() as stack:
            legacy = await stack.enter_async_context(
                Client(gw.endpoint("/mcp/fx"), mode="legacy", message_handler=on_message)
            )
            modern = await stack.enter_async_context(Client(gw.endpoint("/mcp/fx"), mode="2026-07-28"))
            await legacy.subscribe_resource(WATCHED)
            sub = await stack.enter_async_context(modern.listen(resource_subscriptions=[WATCHED]))
            await registered(gw, 1)

            await modern.call_tool("trigger_resource_update", {})
            assert await asyncio.wait_for(updates.get(), 20) == WATCHED
            assert await next_event(sub) == ResourceUpdated(uri=WATCHED)

            # The listener's interest keeps the upstream subscription alive.
            await legacy.unsubscribe_resource(WATCHED)
            await modern.call_tool("trigger_resource_update", {})
            assert await next_event(sub) == ResourceUpdated(uri=WATCHED)

    run(go())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_restarted_upstream_is_watched_again(procs, protocol):
    """An upstream that dies and is restarted is asked again for what the
    open listen streams want (resources/subscribe, or a new listen stream);
    the listener hears the upstream go and come back as list changes."""
    gw = procs.gateway({"upstreams": {"fx": {**fixture_stdio(), "protocol": protocol}}})
    gw.wait_up("fx")

    def children() -> list[int]:
        return [p for p in alive(descendants(gw.proc.pid)) if str(FIXTURE) in cmdline(p)]

    async def go():
        async with Client(gw.endpoint("/mcp/fx"), mode="2026-07-28") as c:
            async with c.listen(tools_list_changed=True, resource_subscriptions=[WATCHED]) as sub:
                await registered(gw, 1)
                [child] = children()
                os.kill(child, signal.SIGKILL)
                assert await next_event(sub) == ToolsListChanged()
                await asyncio.to_thread(gw.wait_up, "fx")
                # The watch is re-established in the background: trigger until it is.
                for _ in range(60):
                    try:
                        await c.call_tool("trigger_resource_update", {})
                        while (event := await next_event(sub, timeout=0.5)) != ResourceUpdated(uri=WATCHED):
                            assert event == ToolsListChanged()
                        return children() != [child]
                    except (TimeoutError, MCPError):
                        continue
                return False

    assert run(go())
