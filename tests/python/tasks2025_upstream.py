"""A 2025-11-25 MCP server with task tools, run by the venv with the 1.x
`mcp` SDK: over stdio, or with the argument `http` over streamable HTTP
answering every POST with a JSON body, never an SSE stream (it prints
`listening on URL` first, on a port the OS chose). `report` creates a task
that, after the task was handed back, reports progress under the call's
progress token, sends `notifications/tasks/status` and a log line marked
with the task's related-task `_meta`, then completes once
the test says so (by calling `release`); `ask` creates a task that asks the
client a question (elicitation marked with the task's related-task
`_meta`) and answers with the reply."""

from __future__ import annotations

import socket
import sys

import anyio

from mcp import types
from mcp.server.experimental.task_context import ServerTaskContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

server = Server("tasks2025-upstream")
server.experimental.enable_tasks()
RELEASE = anyio.Event()


@server.list_tools()
async def list_tools() -> list[types.Tool]:
    schema = {"type": "object", "properties": {}}
    return [
        types.Tool(
            name="report",
            inputSchema=schema,
            execution=types.ToolExecution(taskSupport="required"),
        ),
        types.Tool(name="release", inputSchema=schema),
        types.Tool(name="ask", inputSchema=schema, execution=types.ToolExecution(taskSupport="required")),
    ]


@server.call_tool()
async def call_tool(name: str, arguments: dict) -> types.CallToolResult | types.CreateTaskResult:
    ctx = server.request_context
    if name == "release":
        RELEASE.set()
        return types.CallToolResult(content=[types.TextContent(type="text", text="released")])
    if name == "ask":

        async def ask(task: ServerTaskContext) -> types.CallToolResult:
            schema = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
            reply = await task.elicit(message="Which color?", requestedSchema=schema)
            color = (reply.content or {}).get("color", "none")
            return types.CallToolResult(content=[types.TextContent(type="text", text=f"color {color}")])

        return await ctx.experimental.run_task(ask)
    token = ctx.meta.progressToken if ctx.meta else None
    session = ctx.session

    async def work(task: ServerTaskContext) -> types.CallToolResult:
        # The task was handed back before any of this.
        await anyio.sleep(0.2)
        if token is not None:
            await session.send_progress_notification(token, 1, 2, "half")
        await task.update_status("halfway")
        # A log line about the task, marked as the task's.
        await session.send_notification(
            types.ServerNotification(
                types.LoggingMessageNotification(
                    params=types.LoggingMessageNotificationParams(
                        level="info",
                        data="task halfway",
                        _meta={"io.modelcontextprotocol/related-task": {"taskId": task.task_id}},
                    )
                )
            )
        )
        await RELEASE.wait()
        if token is not None:
            await session.send_progress_notification(token, 2, 2, "done")
        return types.CallToolResult(content=[types.TextContent(type="text", text="reported")])

    return await ctx.experimental.run_task(work)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def main_http() -> None:
    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    manager = StreamableHTTPSessionManager(app=server, json_response=True)

    async def app(scope, receive, send) -> None:
        await manager.handle_request(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # Listening before the URL is printed, so whoever reads it can connect.
    sock.listen()
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    async with manager.run():
        await uvicorn.Server(config).serve(sockets=[sock])


if __name__ == "__main__":
    anyio.run(main_http if sys.argv[1:] == ["http"] else main)
