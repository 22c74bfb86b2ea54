#!/usr/bin/env bash
# Runs the gateway on config/portcullis.yaml: installs the example's
# upstream servers (npm and PyPI) into .peers/, builds, and serves on
# http://127.0.0.1:8080/mcp until interrupted.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-peers.sh"
peers=${PEERS_DIR:-$root/.peers}
# `python3` must find mcp_server_time; `npx` fetches server-everything.
export PATH="$peers/venv/bin:$PATH"
cd "$root"
cargo build --release --bin portcullis
exec "$root/target/release/portcullis" serve --config "${1:-config/portcullis.yaml}"
