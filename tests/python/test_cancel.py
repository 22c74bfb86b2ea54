"""Cancellation: a client's notifications/cancelled, or a dropped connection,
cancels the upstream call."""

from __future__ import annotations

import json
import socket
import urllib.parse
import urllib.request

import anyio
from mcp import Client

from conftest import everything_stdio, http_get, metric, run, wait_for


def upstream_cancellations(gw) -> float:
    _, body = http_get(gw.endpoint("/metrics"))
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("mcp_client_operation_duration_seconds_count") and 'outcome="cancelled"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_client_cancel_reaches_upstream(procs):
    gw = procs.gateway({"upstreams": {"everything": everything_stdio()}})
    gw.wait_up("everything")

    async def go():
        async with Client(gw.url, mode="legacy") as c:
            with anyio.move_on_after(1.0) as scope:
                await c.call_tool("everything__trigger-long-running-operation", {"duration": 30, "steps": 30})
            assert scope.cancelled_caught
            # The session stays usable after a cancelled call.
            echo = await c.call_tool("everything__echo", {"message": "after"})
            assert echo.content[0].text == "Echo: after"

    run(go())
    wait_for(lambda: upstream_cancellations(gw) >= 1, timeout=10, what="upstream call cancelled")


def test_closed_session_cancels_upstream_call(procs):
    """On 2025 revisions a dropped SSE stream is not a cancellation (the
    client may resume it, and the spec says so); ending the session is. The
    gateway cancels the call upstream when the session ends, rather than
    leaving it to rmcp, which lets a closed session's handlers run on for
    seconds (and would then count a plain cancellation)."""
    gw = procs.gateway({"upstreams": {"everything": everything_stdio()}})
    gw.wait_up("everything")
    host, port = urllib.parse.urlparse(gw.base).netloc.split(":")

    def post(sock_body: dict, session: str | None = None) -> socket.socket:
        body = json.dumps(sock_body).encode()
        headers = [
            "POST /mcp HTTP/1.1",
            f"Host: {host}:{port}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
            f"Content-Length: {len(body)}",
        ]
        if session:
            headers += [f"Mcp-Session-Id: {session}", "MCP-Protocol-Version: 2025-11-25"]
        s = socket.create_connection((host, int(port)))
        s.sendall(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        return s

    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    s = post(init)
    head = s.recv(65536).decode(errors="replace")
    session = next(line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("mcp-session-id"))
    s.close()
    post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session).close()
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "everything__trigger-long-running-operation", "arguments": {"duration": 30, "steps": 30}},
    }
    s = post(call, session)
    assert b"200" in s.recv(64)  # the SSE response has started
    s.close()  # the client goes away mid-call...
    delete = urllib.request.Request(gw.url, method="DELETE", headers={"Mcp-Session-Id": session})
    with urllib.request.urlopen(delete, timeout=10) as resp:  # ...and ends its session
        assert resp.status == 200
    ended = {"mcp_method_name": "tools/call", "upstream": "everything", "outcome": "session_ended"}
    wait_for(lambda: metric(gw, "mcp_client_operation_duration_seconds_count", **ended) == 1, timeout=15,
             what="upstream call cancelled as the session ended")
    assert upstream_cancellations(gw) == 0
