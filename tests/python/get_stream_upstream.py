"""A 2025-11-25 MCP server (the Python SDK over streamable HTTP) that sends
a call's elicitation on its standalone GET stream instead of the call's own
response stream, as a server before 2026-07-28 may. Prints `listening on
URL` once it accepts connections."""

from __future__ import annotations


from mcp.server.mcpserver import Context, MCPServer
from sdk_http import serve

app = MCPServer("get-stream-upstream")
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@app.tool()
async def ask_on_get(ctx: Context) -> str:
    """Asks the client for a name, outside the call's stream."""
    # No related_request_id: the SDK sends the request on the GET stream.
    reply = await ctx.session.elicit("What is your name?", SCHEMA)
    return f"Hello, {(reply.content or {}).get('name', 'nobody')}!"


if __name__ == "__main__":
    serve(app)
