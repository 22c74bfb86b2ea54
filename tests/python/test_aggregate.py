"""The aggregate endpoint in front of real reference servers, driven by the
official Python SDK client."""

from __future__ import annotations

import asyncio

import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conftest import everything_stdio, run, time_stdio


@pytest.fixture
def gateway(procs):
    gw = procs.gateway({"upstreams": {"everything": everything_stdio(), "time": time_stdio()}})
    gw.wait_up("everything", "time")
    return gw


async def elicit_accept(context, params):
    return types.ElicitResult(action="accept", content={"name": "Ada"} if False else {})


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
        return types.ElicitResult(action="accept", content={"color": "red"} | {})

    async def go():
        async with Client(gateway.url, mode="legacy", elicitation_callback=on_elicit) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert "everything__trigger-elicitation-request" in tools
            result = await c.call_tool("everything__trigger-elicitation-request", {})
            return result

    result = run(go())
    assert asked, "the elicitation request must reach this client"
    assert "accept" in str(result.content).lower() or not result.is_error


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
