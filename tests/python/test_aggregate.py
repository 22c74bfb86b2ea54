"""The aggregate endpoint in front of real reference servers, driven by the
official Python SDK client."""

from __future__ import annotations

import asyncio

import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conftest import everything_stdio, fixture_stdio, metric, run, text, time_stdio, until_waiting


@pytest.fixture
def gateway(procs):
    gw = procs.gateway({"upstreams": {"everything": everything_stdio(), "time": time_stdio()}})
    gw.wait_up("everything", "time")
    return gw


def test_lists_and_calls_through_aggregate(gateway):
    async def go():
        async with Client(gateway.url, mode="legacy") as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert "everything__echo" in tools and "time__get_current_time" in tools
            structured = tools["everything__get-structured-content"]
            assert structured.output_schema, "outputSchema must pass through"
            echo = await c.call_tool("everything__echo", {"message": "hello"})
            assert echo.content[0].text == "Echo: hello"
            result = await c.call_tool("everything__get-structured-content", {"location": "New York"})
            assert result.structured_content and "temperature" in result.structured_content
            now = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert now.structured_content["timezone"] == "UTC"
            image = await c.call_tool("everything__get-tiny-image", {})
            assert any(block.type == "image" and block.data for block in image.content)

    run(go())


def test_progress_is_forwarded_with_the_clients_token(gateway):
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async def go():
        async with Client(gateway.url, mode="legacy") as c:
            result = await c.call_tool(
                "everything__trigger-long-running-operation",
                {"duration": 1, "steps": 4},
                progress_callback=on_progress,
            )
            assert not result.is_error

    run(go())
    assert len(seen) >= 3, seen
    assert seen[-1][1] == 4


def test_resources_and_prompts(gateway):
    async def go():
        async with Client(gateway.url, mode="legacy") as c:
            resources = (await c.list_resources()).resources
            assert resources, "server-everything lists resources"
            first = resources[0]
            read = await c.read_resource(first.uri)
            assert read.contents and str(read.contents[0].uri) == str(first.uri)
            templates = (await c.list_resource_templates()).resource_templates
            assert templates
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            assert "everything__simple-prompt" in prompts, prompts
            prompt = await c.get_prompt("everything__simple-prompt")
            assert prompt.messages
            args_prompt = await c.get_prompt("everything__args-prompt", {"city": "Paris", "state": "TX"})
            assert "Paris" in str(args_prompt.messages[0].content)

    run(go())


def test_elicitation_round_trip_reaches_the_calling_client(gateway):
    asked: list[str] = []

    async def on_elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace"})

    async def go():
        async with Client(gateway.url, mode="legacy", elicitation_callback=on_elicit) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert "everything__trigger-elicitation-request" in tools
            result = await c.call_tool("everything__trigger-elicitation-request", {})
            return result

    result = run(go())
    assert asked, "the elicitation request must reach this client"
    text = " ".join(block.text for block in result.content if block.type == "text")
    assert "User provided the requested information" in text, text
    assert "Ada Lovelace" in text, text


def test_elicitation_decline_reaches_the_upstream(gateway):
    async def on_elicit(context, params):
        return types.ElicitResult(action="decline")

    async def go():
        async with Client(gateway.url, mode="legacy", elicitation_callback=on_elicit) as c:
            return await c.call_tool("everything__trigger-elicitation-request", {})

    result = run(go())
    assert "declined" in result.content[0].text


def test_client_without_elicitation_does_not_see_or_answer_it(gateway):
    async def go():
        async with Client(gateway.url, mode="legacy") as c:
            # Shared upstream: the tool is listed (the gateway can route elicitation),
            # but this client never declared it, so the upstream hears a clear refusal.
            result = await c.call_tool("everything__trigger-elicitation-request", {})
            return result

    result = run(go())
    assert result.is_error
    assert "did not declare support for elicitation/create" in str(result.content)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_question_goes_to_its_call_and_is_never_guessed_across_sessions(procs, transport):
    """Over streamable HTTP the upstream's question arrives on its call's
    own stream and reaches that call's client, whichever call is the
    latest. A stdio upstream cannot say which call its question belongs
    to: with only one session's calls in flight it goes to that session;
    while calls of several sessions are in flight it is refused rather than
    guessed, so no user is asked (and answers) another's question. The
    fixture's gates hold each call in flight until opened."""
    upstream = fixture_stdio() if transport == "stdio" else {"http": {"url": procs.fixture_http()}}
    gw = procs.gateway({"upstreams": {"fx": upstream}})
    gw.wait_up("fx")
    asked: dict[str, int] = {"a": 0, "b": 0}

    def answers_as(who):
        async def elicit(context, params):
            asked[who] += 1
            return types.ElicitResult(action="accept", content={"name": who})

        return elicit

    async def go():
        async with (
            Client(gw.url, mode="legacy", elicitation_callback=answers_as("a")) as a,
            Client(gw.url, mode="legacy", elicitation_callback=answers_as("b")) as b,
            Client(gw.url, mode="legacy") as ctl,
        ):
            # One session in flight (its own gate_open too): asked.
            alone = asyncio.create_task(text(a.call_tool("fx__gate_elicit", {"gate": "g0"})))
            await until_waiting(a, "g0")
            await a.call_tool("fx__gate_open", {"gate": "g0"})
            answered = await alone
            assert "action=accept" in answered and '"name":"a"' in answered, answered
            # A's question while B's call is in flight too (and B's is the
            # later one): over HTTP it is A's; over stdio nobody is asked,
            # and A's upstream hears why.
            mine = asyncio.create_task(text(a.call_tool("fx__gate_elicit", {"gate": "g1"})))
            await until_waiting(a, "g1")
            theirs = asyncio.create_task(text(b.call_tool("fx__gate_wait", {"gate": "g2"})))
            await until_waiting(a, "g2")
            await ctl.call_tool("fx__gate_open", {"gate": "g1"})
            outcome = await mine
            if transport == "http":
                assert '"name":"a"' in outcome, outcome
            else:
                assert "refused rather than guessed" in outcome, outcome
            await ctl.call_tool("fx__gate_open", {"gate": "g2"})
            assert await theirs == "passed g2"

    run(go())
    assert asked == {"a": 2 if transport == "http" else 1, "b": 0}
    ambiguous = metric(gw, "portcullis_server_to_client_requests_total", mcp_method_name="elicitation/create", outcome="ambiguous")
    assert ambiguous == (0 if transport == "http" else 1)


def test_virtual_server_shows_only_its_tools(procs):
    gw = procs.gateway(
        {
            "upstreams": {"everything": everything_stdio(), "time": time_stdio()},
            "virtual_servers": {"clock": {"tools": ["time__*", "everything__echo"], "description": "clock only"}},
        }
    )
    gw.wait_up("everything", "time")

    async def go():
        async with Client(gw.endpoint("/mcp/v/clock"), mode="legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names == {"time__get_current_time", "time__convert_time", "everything__echo"}
            assert c.instructions == "clock only"
            echo = await c.call_tool("everything__echo", {"message": "v"})
            assert echo.content[0].text == "Echo: v"
            with pytest.raises(MCPError):
                await c.call_tool("everything__get-sum", {"a": 1, "b": 2})

    run(go())


def test_sampling_round_trip(gateway):
    async def on_sample(context, params):
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled-by-test"),
            model="test-model",
        )

    async def go():
        async with Client(gateway.url, mode="legacy", sampling_callback=on_sample) as c:
            return await c.call_tool("everything__trigger-sampling-request", {"prompt": "hi", "maxTokens": 10})

    result = run(go())
    assert "sampled-by-test" in str(result.content)


def test_unknown_tool_is_invalid_params_naming_it(gateway):
    async def go():
        async with Client(gateway.url, mode="legacy") as c:
            with pytest.raises(MCPError) as err:
                await c.call_tool("nope__missing", {})
            assert err.value.error.code == types.INVALID_PARAMS
            assert "nope__missing" in err.value.error.message

    run(go())


def test_single_upstream_endpoint_is_unprefixed(gateway):
    async def go():
        async with Client(gateway.endpoint("/mcp/time"), mode="legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names == {"get_current_time", "convert_time"}
            now = await c.call_tool("get_current_time", {"timezone": "UTC"})
            assert not now.is_error

    run(go())


def test_default_auto_client_falls_back_cleanly(gateway):
    async def go():
        async with Client(gateway.url) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "everything__echo" in names
            echo = await c.call_tool("everything__echo", {"message": "auto"})
            assert echo.content[0].text == "Echo: auto"

    run(go())


def test_lists_are_paginated_with_gateway_cursors(procs):
    gw = procs.gateway({"upstreams": {"everything": everything_stdio(), "time": time_stdio()}, "http": {"page_size": 5}})
    gw.wait_up("everything", "time")

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            names, cursor, pages = [], None, 0
            while True:
                page = await c.list_tools(cursor=cursor)
                assert len(page.tools) <= 5
                names += [t.name for t in page.tools]
                pages += 1
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert pages >= 3
            assert len(names) == len(set(names))
            assert {"everything__echo", "time__convert_time"} <= set(names)
            with pytest.raises(MCPError) as err:
                await c.list_tools(cursor="not-a-cursor")
            assert err.value.error.code == types.INVALID_PARAMS

    run(go())
