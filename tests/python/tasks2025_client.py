"""A 2025-11-25 tasks client, run by the venv with the 1.x `mcp` SDK (the
2.x SDK in the main venv dropped the experimental tasks client).

Usage: tasks2025_client.py URL API_KEY SCENARIO [ARG]
URL may be `stdio:BINARY:CONFIG`: the client starts `BINARY stdio --config
CONFIG` (the gateway's stdio front end) and speaks to it on its stdio.
Prints one JSON object with what the scenario saw; the pytest side
(test_tasks_2025.py) makes the assertions."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager

import anyio
from mcp import StdioServerParameters, types
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

TOOL = "everything__simulate-research-query"


async def elicit(context, params: types.ElicitRequestParams):
    """Answers the research tool's clarification question."""
    meta = params.meta.model_dump(by_alias=True) if params.meta else {}
    ELICITED.append({"message": params.message, "meta": meta})
    if "name" in params.message:
        return types.ElicitResult(action="accept", content={"name": "Ada"})
    if "color" in params.message:
        return types.ElicitResult(action="accept", content={"color": "teal"})
    return types.ElicitResult(action="accept", content={"interpretation": "programming"})


ELICITED: list[dict] = []
PROGRESS: list[list] = []
LOGS: list = []
STATUS: list[dict] = []


async def notified(message) -> None:
    """Records progress, task status and log notifications, whenever they come."""
    if not isinstance(message, types.ServerNotification):
        return
    n = message.root
    if isinstance(n, types.ProgressNotification):
        PROGRESS.append([n.params.progressToken, n.params.progress, n.params.message])
    elif isinstance(n, types.TaskStatusNotification):
        STATUS.append({"taskId": n.params.taskId, "status": n.params.status, "message": n.params.statusMessage})
    elif isinstance(n, types.LoggingMessageNotification):
        LOGS.append(n.params.data)


async def until(session: ClientSession, task_id: str, statuses: set[str]) -> types.GetTaskResult:
    """Polls tasks/get until the task is in one of `statuses`."""
    for _ in range(600):
        status = await session.experimental.get_task(task_id)
        if status.status in statuses:
            return status
        await asyncio.sleep(0.05)
    raise TimeoutError(f"task never reached {statuses}")


async def refused(coro) -> str | None:
    """The error message a request was refused with, or None if it was not."""
    try:
        await coro
    except McpError as e:
        return e.error.message
    return None


async def scenario(session: ClientSession, name: str, arg: str | None) -> dict:
    out: dict = {}
    if name == "lifecycle":
        created = await session.experimental.call_tool_as_task(TOOL, {"topic": "rust"}, ttl=60000)
        task_id = created.task.taskId
        out["created"] = created.task.model_dump(mode="json")
        # The call has returned; the task goes on and is fetched later.
        first = await session.experimental.get_task(task_id)
        out["first_status"] = first.status
        out["get_id"] = first.taskId
        done = await until(session, task_id, {"completed", "failed", "cancelled"})
        out["final_status"] = done.status
        result = await session.experimental.get_task_result(task_id, types.CallToolResult)
        out["result_text"] = result.content[0].text if result.content else ""
        out["result_meta"] = result.meta or {}
        cancel_me = await session.experimental.call_tool_as_task(TOOL, {"topic": "go"}, ttl=60000)
        cancelled = await session.experimental.cancel_task(cancel_me.task.taskId)
        out["cancel_status"] = cancelled.status
        out["cancel_id"] = cancelled.taskId
        out["after_cancel"] = (await session.experimental.get_task(cancel_me.task.taskId)).status
        out["ids"] = [task_id, cancel_me.task.taskId]
        listed = await session.experimental.list_tasks()
        out["listed"] = [t.taskId for t in listed.tasks]
        altered = task_id[:-6] + ("AAAAAA" if not task_id.endswith("AAAAAA") else "BBBBBB")
        out["altered"] = await refused(session.experimental.get_task(altered))
        out["garbage"] = await refused(session.experimental.get_task("not-a-task"))
    elif name == "input":
        created = await session.experimental.call_tool_as_task(
            TOOL, {"topic": "python", "ambiguous": True}, ttl=60000
        )
        task_id = created.task.taskId
        waiting = await until(session, task_id, {"input_required", "completed", "failed"})
        out["waiting_status"] = waiting.status
        # tasks/result carries the upstream's question, answered by `elicit`.
        result = await session.experimental.get_task_result(task_id, types.CallToolResult)
        out["result_text"] = result.content[0].text if result.content else ""
        out["elicited"] = ELICITED
        out["task_id"] = task_id
    elif name == "plain":
        # Raw task-augmented calls of tools whose upstreams do not do 2025
        # tasks: the gateway answers with a task of its own.
        for tool in (arg or "").split(","):
            request = types.CallToolRequest(
                params=types.CallToolRequestParams(
                    name=tool, arguments={"message": tool}, task=types.TaskMetadata(ttl=60000)
                )
            )
            created = await session.send_request(types.ClientRequest(request), types.CreateTaskResult)
            out[f"{tool}:status"] = created.task.status
            result = await session.experimental.get_task_result(created.task.taskId, types.CallToolResult)
            out[tool] = result.content[0].text if result.content else None
        out["listed"] = [t.taskId for t in (await session.experimental.list_tasks()).tasks]
    elif name == "notify":
        created = await session.experimental.call_tool_as_task(
            "up__report", {}, ttl=60000, meta={"progressToken": "tok-1"}
        )
        task_id = created.task.taskId
        out["task_id"] = task_id
        # Progress and status arrive after the call returned the task.
        for _ in range(400):
            if any(p[0] == "tok-1" for p in PROGRESS) and STATUS and LOGS:
                break
            await asyncio.sleep(0.05)
        await session.call_tool("up__release", {})
        result = await session.experimental.get_task_result(task_id, types.CallToolResult)
        out["result_text"] = result.content[0].text
        for _ in range(100):
            if len(PROGRESS) >= 2:
                break
            await asyncio.sleep(0.05)
        out["progress"] = PROGRESS
        out["status"] = STATUS
        out["logs"] = LOGS
    elif name == "guarded":
        # `arg` is a topic the report repeats; the policy denies this caller
        # the tool when the topic is "denied".
        out["denied"] = await refused(
            session.experimental.call_tool_as_task(TOOL, {"topic": "denied"}, ttl=60000)
        )
        created = await session.experimental.call_tool_as_task(TOOL, {"topic": arg}, ttl=60000)
        result = await session.experimental.get_task_result(created.task.taskId, types.CallToolResult)
        out["result_text"] = result.content[0].text
        out["listed"] = [t.taskId for t in (await session.experimental.list_tasks()).tasks]
        out["task_id"] = created.task.taskId
    elif name == "ask":
        created = await session.experimental.call_tool_as_task("up__ask", {}, ttl=60000)
        out["task_id"] = created.task.taskId
        waiting = await until(session, created.task.taskId, {"input_required", "completed", "failed"})
        out["waiting_status"] = waiting.status
        result = await session.experimental.get_task_result(created.task.taskId, types.CallToolResult)
        out["result_text"] = result.content[0].text
        out["elicited"] = ELICITED
    elif name == "local":
        # `arg` is an upstream that cannot make 2025 tasks: the gateway does.
        slow = f"{arg}__slow"
        created = await session.experimental.call_tool_as_task(
            slow, {"ms": 1500}, ttl=60000, meta={"progressToken": "tok-local"}
        )
        mine = lambda: [p for p in PROGRESS if p[0] == "tok-local"]  # noqa: E731
        out["progress_at_creation"] = len(mine())
        task_id = created.task.taskId
        out["created"] = created.task.model_dump(mode="json")
        out["first_status"] = (await session.experimental.get_task(task_id)).status
        done = await until(session, task_id, {"completed", "failed", "cancelled"})
        out["final_status"] = done.status
        result = await session.experimental.get_task_result(task_id, types.CallToolResult)
        out["result_text"] = result.content[0].text if result.content else ""
        out["result_meta"] = result.meta or {}
        for _ in range(100):
            if any(p[2] == "done" for p in mine()):
                break
            await asyncio.sleep(0.05)
        out["progress"] = mine()
        # A 2025 upstream answers before the task exists: nothing to cancel.
        ms = 30000 if arg == "modern" else 10
        cancel_me = await session.experimental.call_tool_as_task(slow, {"ms": ms}, ttl=60000)
        try:
            out["cancel_status"] = (await session.experimental.cancel_task(cancel_me.task.taskId)).status
        except McpError as e:
            out["cancel_status"] = e.error.message
        out["after_cancel"] = (await session.experimental.get_task(cancel_me.task.taskId)).status
        out["cancelled_result"] = await refused(
            session.experimental.get_task_result(cancel_me.task.taskId, types.CallToolResult)
        )
        out["ids"] = [task_id, cancel_me.task.taskId]
        listed = await session.experimental.list_tasks()
        out["listed"] = {t.taskId: t.status for t in listed.tasks}
        for _ in range(100):
            if {s["taskId"] for s in STATUS} >= set(out["ids"]):
                break
            await asyncio.sleep(0.05)
        out["status"] = STATUS
    elif name == "local-input":
        created = await session.experimental.call_tool_as_task(
            f"{arg}__test_input_required_result_elicitation", {}, ttl=60000
        )
        out["task_id"] = created.task.taskId
        waiting = await until(session, created.task.taskId, {"completed", "failed", "cancelled"})
        out["final_status"] = waiting.status
        result = await session.experimental.get_task_result(created.task.taskId, types.CallToolResult)
        out["result_text"] = result.content[0].text if result.content else ""
        out["elicited"] = ELICITED
        out["status"] = [s["status"] for s in STATUS if s["taskId"] == created.task.taskId]
    elif name == "denied":
        # `arg` is "denied tool|tool to echo with|message".
        denied, echo, message = (arg or "").split("|")
        out["denied"] = await refused(session.experimental.call_tool_as_task(denied, {"a": 1, "b": 2}, ttl=60000))
        created = await session.experimental.call_tool_as_task(echo, {"message": message}, ttl=60000)
        result = await session.experimental.get_task_result(created.task.taskId, types.CallToolResult)
        out["result_text"] = result.content[0].text
        out["task_id"] = created.task.taskId
        out["listed"] = [t.taskId for t in (await session.experimental.list_tasks()).tasks]
    elif name == "own":
        if arg:
            created = await session.experimental.call_tool_as_task(arg, {"ms": 30000}, ttl=60000)
        else:
            created = await session.experimental.call_tool_as_task(TOOL, {"topic": "own"}, ttl=60000)
        out["task_id"] = created.task.taskId
    elif name == "start-local":
        # A gateway-local task left running: the session ends (DELETE) on exit.
        created = await session.experimental.call_tool_as_task(f"{arg}__slow", {"ms": 1500}, ttl=60000)
        out["task_id"] = created.task.taskId
    elif name == "fetch":
        assert arg is not None
        done = await until(session, arg, {"completed", "failed", "cancelled"})
        out["final_status"] = done.status
        result = await session.experimental.get_task_result(arg, types.CallToolResult)
        out["result_text"] = result.content[0].text if result.content else ""
    elif name == "listing":
        # Every tool's `execution`, as the client's own types read it.
        out["execution"] = {}
        cursor = None
        while True:
            page = await session.list_tools(cursor=cursor) if cursor else await session.list_tools()
            for tool in page.tools:
                execution = tool.execution.model_dump(mode="json", exclude_none=True) if tool.execution else None
                out["execution"][tool.name] = execution
            cursor = page.nextCursor
            if not cursor:
                break
    elif name == "foreign":
        assert arg is not None
        out["get"] = await refused(session.experimental.get_task(arg))
        out["result"] = await refused(session.experimental.get_task_result(arg, types.CallToolResult))
        out["cancel"] = await refused(session.experimental.cancel_task(arg))
        out["listed"] = [t.taskId for t in (await session.experimental.list_tasks()).tasks]
    else:
        raise SystemExit(f"unknown scenario {name}")
    return out


@asynccontextmanager
async def connect(url: str, headers: dict):
    """Streamable HTTP to URL, or the gateway's stdio front end."""
    if url.startswith("stdio:"):
        _, binary, config = url.split(":", 2)
        server = StdioServerParameters(command=binary, args=["stdio", "--config", config])
        async with stdio_client(server) as (read, write):
            yield read, write
        return
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        yield read, write


async def main() -> None:
    url, key, name = sys.argv[1], sys.argv[2], sys.argv[3]
    arg = sys.argv[4] if len(sys.argv) > 4 else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    out: dict | None = None
    try:
        async with connect(url, headers) as (read, write):
            async with ClientSession(read, write, elicitation_callback=elicit, message_handler=notified) as session:
                init = await session.initialize()
                if url.startswith("stdio:"):
                    # The gateway started with this client: its upstream may
                    # still be connecting.
                    for _ in range(600):
                        if TOOL in {t.name for t in (await session.list_tools()).tools}:
                            break
                        await asyncio.sleep(0.05)
                result = await scenario(session, name, arg)
                result["protocol"] = init.protocolVersion
                tasks = init.capabilities.tasks
                caps = tasks.model_dump(mode="json", by_alias=True, exclude_none=True) if tasks else None
                result["tasks_capability"] = caps
                out = result
    except BaseExceptionGroup as e:
        # The 1.x client's stdio reader fails on a message (a late status
        # or list-changed notification) that arrives while it shuts down;
        # what the scenario saw is complete by then.
        _, rest = e.split(anyio.BrokenResourceError)
        if out is None or rest is not None:
            raise
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), timeout=90))
