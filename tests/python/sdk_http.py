"""Serves a Python SDK `MCPServer` over streamable HTTP on a loopback port
the OS chooses, printing `listening on URL` once it accepts connections:
the upstream scripts' shared start-up."""

from __future__ import annotations

import socket

import anyio
import uvicorn


def serve(app) -> None:
    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app.streamable_http_app(), log_level="warning"))
        print(f"listening on http://127.0.0.1:{port}/mcp", flush=True)
        await server.serve(sockets=[sock])

    anyio.run(main)
