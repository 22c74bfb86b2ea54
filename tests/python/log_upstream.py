"""A 2025-11-25 MCP server (the Python SDK over streamable HTTP) that logs
during a call on the call's own response stream, as the SDK does for
`ctx.log`, and to the whole connection (its GET stream) on request. Prints
`listening on URL` once it accepts connections."""

from __future__ import annotations

import warnings

from mcp.server.mcpserver import Context, MCPServer
from sdk_http import serve

# The logging capability is deprecated in 2026-07-28; this server is 2025's.
warnings.simplefilter("ignore")

app = MCPServer("log-upstream")
LINES = ["call started", "call working", "call done"]


@app.tool()
async def log_lines(ctx: Context) -> str:
    """Logs three lines on the call's own stream."""
    for line in LINES:
        await ctx.log("info", line)
    return "logged"


@app.tool()
async def log_to_connection(message: str, ctx: Context) -> str:
    """Logs `message` to the whole connection, outside any call."""
    await ctx.session.send_log_message(level="info", data=message, logger=None, related_request_id=None)
    return "logged"


if __name__ == "__main__":
    serve(app)
