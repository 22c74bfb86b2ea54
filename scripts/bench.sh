#!/usr/bin/env bash
# Benchmarks: what the gateway costs compared with a direct connection.
#
#   scripts/bench.sh [SCENARIO...]      # default: all scenarios
#
# Scenarios: echo policy list idle setup llm (see docs/benchmarks.md).
# Builds release binaries, starts the fixture MCP server over HTTP and the
# gateway in front of it (both on OS-chosen ports), and runs the same load
# with portcullis-loadgen straight at the fixture, through portcullis and,
# when installed, through the peers a user would pick instead, in the same
# run: mcp-gateway (crates.io) and IBM ContextForge (PyPI) on the MCP path,
# the LiteLLM proxy (PyPI) on the model path; and in echo, nginx (Debian's
# package) as a plain HTTP reverse proxy in front of the fixture: the floor
# of what any proxy adds per call. Prints each result, the ratios,
# each process's CPU time per call (/proc/PID/stat over the measured window)
# and peak memory (VmHWM). ContextForge runs in echo and setup (one instance
# in front of the fixture), list (an instance of its own in front of the
# same 50 upstreams as portcullis, its paged list read whole with
# --all-pages, in pages of 1,000 at c=1 and 32; then another at its default
# 100 a page, c=1) and idle (an instance of its own, fewer sessions; then
# another with each session holding a GET stream, if it serves them).
# mcp-gateway runs in echo, idle and setup in front of the fixture, and in
# list in front of the same 50 upstreams, listed with its gateway_list_tools
# meta-tool: once for all backends (names and descriptions), and once per
# backend (full definitions, --mcp-gateway-list), at c=1 and 32; then the
# latter on another instance without its tool cache (meta_mcp.cache_ttl: 0s).
#
# Environment:
#   BENCH_DURATION=10s BENCH_WARMUP=2s    measured time and warm-up per run
#   BENCH_IDLE_SESSIONS=10000             sessions held open in `idle`
#   BENCH_CF_IDLE_SESSIONS=1000           the same for ContextForge (it opens ~20-30 a second)
#   BENCH_CF_REGISTER_LIMIT=600           seconds ContextForge may take to register the 50 upstreams of `list`
#   BENCH_OUT=target/bench                configs, logs and results.jsonl
#   BENCH_MCP_GATEWAY=auto|skip           auto: install mcp-gateway if missing
#   BENCH_CONTEXTFORGE=auto|skip          auto: pip-install ContextForge if missing
#   BENCH_LITELLM=auto|skip               auto: pip-install the LiteLLM proxy if missing
#   BENCH_NGINX=auto|skip                 auto: apt-get install nginx if missing (as root or with sudo)
#   BENCH_PYTHON=python3.12               the Python for their venvs (3.12 or 3.13;
#                                         default: the first found on PATH or in pyenv)
#   PEERS_DIR=.peers                      where the peers are installed
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
IDLE_SESSIONS=${BENCH_IDLE_SESSIONS:-10000}
CF_IDLE_SESSIONS=${BENCH_CF_IDLE_SESSIONS:-1000}
OUT=${BENCH_OUT:-$ROOT/target/bench}
PEERS=${PEERS_DIR:-$ROOT/.peers}
MCPGW_ROOT=$PEERS/mcp-gateway
MCPGW=$MCPGW_ROOT/bin/mcp-gateway
CF_ROOT=$PEERS/contextforge
LITELLM_ROOT=$PEERS/litellm
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(echo policy list idle setup llm)

BIN=$ROOT/target/release
RESULTS=$OUT/results.jsonl
mkdir -p "$OUT"
: >"$RESULTS"

log() { printf '\n== %s\n' "$*" >&2; }
want() { local s; for s in "${SCENARIOS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

# --- processes --------------------------------------------------------------

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# start NAME CMD...: starts CMD in the background with output in $OUT/NAME.*;
# sets STARTED_PID and STARTED_LINE (the first line it prints on stdout).
start() {
    local name=$1
    shift
    # Emptied here, not only by the child's redirection, which happens after
    # the fork: the loop below could otherwise see a previous run's line, or
    # read the file just as the child empties it (an empty STARTED_LINE).
    : >"$OUT/$name.out"
    "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    local i
    for i in $(seq 1 600); do
        if [ -s "$OUT/$name.out" ]; then
            STARTED_LINE=$(head -n1 "$OUT/$name.out")
            return 0
        fi
        if ! kill -0 "$STARTED_PID" 2>/dev/null; then
            echo "$name exited early:" >&2
            cat "$OUT/$name.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$name printed nothing within 60s" >&2
    exit 1
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_http URL [PID]: polls until URL answers 2xx; gives up at once if the
# process PID (the server being waited for) has exited.
wait_http() {
    local i
    for i in $(seq 1 1200); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
            echo "the server for $1 (pid $2) exited before answering" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "no answer from $1 within 120s: $(curl -sS "$1" 2>&1 | head -c 300)" >&2
    return 1
}

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# children_pss_kb PID: the proportional share (Pss) of memory held by PID's
# child processes (forks sharing pages with it), in KB.
children_pss_kb() {
    local p
    # shellcheck disable=SC2013 # the file is one line of pids
    for p in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        awk '$1 == "Pss:" { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null
    done | awk '{ s += $1 } END { print s + 0 }'
}

# note SCENARIO KEY VALUE...: an extra fact for the summary (memory etc.).
note() {
    python3 - "$@" >>"$RESULTS" <<'EOF'
import json, sys
_, scenario, target, *kv = sys.argv
d = {"kind": "note", "scenario": scenario, "target": target}
for i in range(0, len(kv), 2):
    v = kv[i + 1]
    try:
        v = float(v)
    except ValueError:
        pass
    d[kv[i]] = v
print(json.dumps(d))
EOF
}

# load SCENARIO TARGET URL CONCURRENCY [loadgen args...]: one measured run,
# appended to results.jsonl; --watch-pid args choose whose CPU is reported.
# LOAD_DURATION, LOAD_WARMUP and LOAD_TIMEOUT override the defaults for one run.
load() {
    local scenario=$1 target=$2 url=$3 c=$4
    shift 4
    local line arg pid watch=
    line=$("$BIN/portcullis-loadgen" "$url" --json -c "$c" --duration "${LOAD_DURATION:-$DURATION}" \
        --warmup "${LOAD_WARMUP:-$WARMUP}" --timeout "${LOAD_TIMEOUT:-30s}" \
        --label "$scenario|$target" "$@") || {
        echo "loadgen failed for $scenario/$target" >&2
        return 0
    }
    echo "$line" >>"$RESULTS"
    python3 "$ROOT/scripts/bench_summary.py" --line "$line" >&2
    # A watched process that died during the run makes its numbers meaningless.
    # (A --watch-pid value may be several pids, comma-separated.)
    for arg in "$@"; do
        if [ "$watch" = 1 ]; then
            for pid in ${arg//,/ }; do
                if ! kill -0 "$pid" 2>/dev/null; then
                    echo "  warning: process $pid (watched) is gone: $scenario/$target and later runs on it are void" >&2
                fi
            done
        fi
        if [ "$arg" = --watch-pid ]; then watch=1; else watch=; fi
    done
}

# --- build ------------------------------------------------------------------

log "building release binaries"
# BENCH_FEATURES: cargo features to build the gateway with (e.g. mimalloc).
if ! cargo build --release --bins ${BENCH_FEATURES:+--features "$BENCH_FEATURES"} >"$OUT/build.log" 2>&1; then
    tail -n 30 "$OUT/build.log" >&2
    echo "release build failed (log: $OUT/build.log)" >&2
    exit 1
fi

# --- peers --------------------------------------------------------------------

HAVE_MCPGW=0
if [ "${BENCH_MCP_GATEWAY:-auto}" != skip ]; then
    if [ ! -x "$MCPGW" ]; then
        log "mcp-gateway not installed: cargo install mcp-gateway --root $MCPGW_ROOT (about 15 minutes on 2 cores)"
        if ! cargo install mcp-gateway --root "$MCPGW_ROOT" >"$OUT/mcp-gateway-install.log" 2>&1; then
            echo "mcp-gateway install failed (see $OUT/mcp-gateway-install.log); skipping it" >&2
        fi
    fi
    if [ -x "$MCPGW" ]; then HAVE_MCPGW=1; fi
fi
if [ $HAVE_MCPGW = 0 ]; then echo "mcp-gateway: not available; its rows are skipped" >&2; fi

# python_for_peers: prints a Python 3.12 or 3.13 interpreter (ContextForge
# needs one of them), or fails.
python_for_peers() {
    local py
    for py in "${BENCH_PYTHON:-}" python3.12 python3.13 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3; do
        { [ -n "$py" ] && command -v "$py" >/dev/null 2>&1; } || continue
        if "$py" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 12), (3, 13)))' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

# pip_peer NAME SWITCH SPEC EXE: 0 when peer NAME is wanted (SWITCH is not
# `skip`) and $PEERS/NAME/bin/EXE exists, pip-installing SPEC into the venv
# $PEERS/NAME first if it is missing; otherwise says why and returns 1.
pip_peer() {
    local name=$1 switch=$2 spec=$3 exe=$4 dir=$PEERS/$1 py
    if [ "$switch" = skip ]; then
        echo "$name: skipped by request; its rows are skipped" >&2
        return 1
    fi
    if [ ! -x "$dir/bin/$exe" ]; then
        if ! py=$(python_for_peers); then
            echo "$name: no Python 3.12 or 3.13 found (set BENCH_PYTHON); its rows are skipped" >&2
            return 1
        fi
        log "$name not installed: pip install '$spec' into $dir ($py)"
        if ! { "$py" -m venv "$dir" && "$dir/bin/pip" install "$spec"; } >"$OUT/$name-install.log" 2>&1; then
            echo "$name install failed (see $OUT/$name-install.log); its rows are skipped" >&2
            return 1
        fi
    fi
    [ -x "$dir/bin/$exe" ] && return 0
    echo "$name: no $dir/bin/$exe after install (see $OUT/$name-install.log); its rows are skipped" >&2
    return 1
}

HAVE_CF=0 HAVE_LITELLM=0
if { want echo || want setup || want list || want idle; } &&
    pip_peer contextforge "${BENCH_CONTEXTFORGE:-auto}" mcp-contextforge-gateway mcpgateway; then
    HAVE_CF=1
fi
if want llm && pip_peer litellm "${BENCH_LITELLM:-auto}" 'litellm[proxy]' litellm; then
    HAVE_LITELLM=1
fi

# nginx_peer: 0 when nginx is wanted (for echo; BENCH_NGINX is not `skip`)
# and found on PATH or in /usr/sbin, apt-get installing Debian's package
# first if it is missing and we are root or sudo works without a password;
# otherwise says why and returns 1. Sets NGINX.
NGINX=
# find_nginx: sets NGINX to nginx on PATH or in /usr/sbin (root's PATH), or empty.
find_nginx() {
    NGINX=$(command -v nginx 2>/dev/null || true)
    if [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ]; then NGINX=/usr/sbin/nginx; fi
}
nginx_peer() {
    local as_root=()
    if [ "${BENCH_NGINX:-auto}" = skip ]; then
        echo "nginx: skipped by request; its rows are skipped" >&2
        return 1
    fi
    find_nginx
    if [ -z "$NGINX" ]; then
        if [ "$(id -u)" != 0 ]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
                as_root=(sudo -n)
            else
                echo "nginx: not installed, and neither root nor sudo without a password to install it; its rows are skipped" >&2
                return 1
            fi
        fi
        log "nginx not installed: apt-get install -y --no-install-recommends nginx"
        # Once more after apt-get update when the package lists are stale or absent.
        if ! { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx ||
            { "${as_root[@]}" apt-get update &&
                "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx; }; } \
            >"$OUT/nginx-install.log" 2>&1; then
            echo "nginx install failed (see $OUT/nginx-install.log); its rows are skipped" >&2
            return 1
        fi
        find_nginx
    fi
    [ -n "$NGINX" ] && return 0
    echo "nginx: no nginx binary after install (see $OUT/nginx-install.log); its rows are skipped" >&2
    return 1
}
HAVE_NGINX=0
if want echo && nginx_peer; then HAVE_NGINX=1; fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_mcpgw NAME FIXTURE_URL [N [META]]: mcp-gateway with one streamable-HTTP
# backend `fx`, or with N, N of them (up00, up01, ...) all at FIXTURE_URL;
# META: more `meta_mcp` settings (`key: value, ...`). Configured for a fair
# proxy comparison (no response cache, no rate limit, retry or circuit
# breaker). Sets MCPGW_PID and MCPGW_URL.
start_mcpgw() {
    local name=$1 upstream=$2 n=${3:-} meta=${4:-} port i
    port=$(free_port)
    {
        cat <<EOF
server: { host: 127.0.0.1, port: $port }
meta_mcp: { enabled: true${meta:+, $meta} }
capabilities: { enabled: false }
cache: { enabled: false }
failsafe:
  rate_limit: { enabled: false }
  circuit_breaker: { enabled: false }
  retry: { enabled: false }
backends:
EOF
        if [ -z "$n" ]; then
            echo "  fx: { http_url: \"$upstream\", streamable_http: true }"
        else
            for i in $(seq -w 0 $((n - 1))); do
                echo "  up$i: { http_url: \"$upstream\", streamable_http: true }"
            done
        fi
    } >"$OUT/$name.yaml"
    # error, not warn: it logs two warnings per call without an attestation token.
    RUST_LOG=error "$MCPGW" --config "$OUT/$name.yaml" >"$OUT/$name.out" 2>"$OUT/$name.err" &
    MCPGW_PID=$!
    PIDS+=("$MCPGW_PID")
    MCPGW_URL=http://127.0.0.1:$port/mcp
    wait_http "http://127.0.0.1:$port/health" "$MCPGW_PID"
}

# start_nginx NAME UPSTREAM_URL: nginx as a plain reverse proxy in front of
# UPSTREAM_URL (http://HOST:PORT/PATH), set up for MCP streamable HTTP:
# HTTP/1.1 with connections to the upstream kept alive (`keepalive`, and
# no `Connection` header passed on), no response buffering (SSE answers),
# the client's Host passed on (rmcp checks it), other headers
# (Mcp-Session-Id, MCP-Protocol-Version) passed both ways as nginx does by
# default; no access log, and up to a million requests per connection on
# either side (after the default 1,000 both sides would reconnect). In the
# foreground, as the current user, with its prefix, config, pid file, temp
# paths and error log under $OUT/NAME*; `worker_processes auto` as in
# Debian's own config (one worker per CPU). Sets NGINX_PID (the master),
# NGINX_WORKERS (the workers' pids, comma-separated, for one --watch-pid:
# they do the work) and NGINX_URL; fails (returns 1) with the reason.
start_nginx() {
    local name=$1 upstream=$2 port dir hostport path user='' i
    port=$(free_port)
    dir=$OUT/$name
    hostport=${upstream#http://}
    path=/${hostport#*/}
    hostport=${hostport%%/*}
    mkdir -p "$dir"
    # A master running as root would hand its workers to nobody (or www-data).
    if [ "$(id -u)" = 0 ]; then user="user $(id -un) $(id -gn);"; fi
    cat >"$dir/nginx.conf" <<NGINX_CONF
daemon off;
master_process on;
worker_processes auto;
$user
pid $dir/nginx.pid;
error_log $OUT/$name-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    upstream mcp_upstream {
        server $hostport;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://mcp_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_buffering off;
            proxy_read_timeout 1h;
        }
    }
}
NGINX_CONF
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$OUT/$name-error.log" >"$OUT/$name.out" 2>"$OUT/$name.err" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    NGINX_URL=http://127.0.0.1:$port$path
    # Up once it answers anything (the fixture has no 2xx for a GET on `/`).
    for i in $(seq 1 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null)" != 000 ] && break
        if ! kill -0 "$NGINX_PID" 2>/dev/null; then
            echo "$name exited early: $(cat "$OUT/$name.err" "$OUT/$name-error.log" 2>/dev/null | tail -n 3)" >&2
            return 1
        fi
        sleep 0.1
    done
    NGINX_WORKERS=$(cat /proc/"$NGINX_PID"/task/*/children 2>/dev/null | xargs | tr ' ' ,)
    if [ -z "$NGINX_WORKERS" ]; then
        echo "$name: no worker processes (see $OUT/$name.err, $OUT/$name-error.log)" >&2
        return 1
    fi
    echo "  $name: $NGINX_URL, master $NGINX_PID, workers $NGINX_WORKERS" >&2
}

# cf_start NAME [SETTING=VALUE...]: one ContextForge (one uvicorn process; its
# child processes are sandbox pools for jq and JSON-schema checks that a
# proxied call does not use) with a fresh SQLite database in $OUT and extra
# settings. Stateful sessions on, so that it hands out session ids as the
# fixture and portcullis do; its rate limiter off; no response cache exists
# to turn off (its caches hold catalogue lookups, as portcullis' does);
# plugins and observability off (its defaults). Every instance of a run
# shares one JWT secret, so one token (CF_AUTH, minted by its CLI) serves
# them all. Sets CF_STARTED_PID and CF_STARTED_BASE; fails (returns 1) with
# the reason on stderr.
CF_SECRETS=$OUT/contextforge-secrets.env
CF_AUTH=
cf_start() {
    local name=$1 port envfile token
    shift
    CF_STARTED_PID=
    port=$(free_port)
    CF_STARTED_BASE=http://127.0.0.1:$port
    envfile=$OUT/$name.env
    rm -f "$OUT/$name.db"
    if [ ! -s "$CF_SECRETS" ]; then
        python3 - >"$CF_SECRETS" <<'EOF'
import secrets
password = "Bench-" + secrets.token_urlsafe(18)
for k, v in {
    "JWT_SECRET_KEY": secrets.token_urlsafe(48),
    "AUTH_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
    "PLATFORM_ADMIN_PASSWORD": password,
    "DEFAULT_USER_PASSWORD": password,
    "BASIC_AUTH_PASSWORD": password,
}.items():
    print(f"{k}={v}")
EOF
    fi
    {
        cat "$CF_SECRETS"
        echo "DATABASE_URL=sqlite:///$OUT/$name.db"
        echo "PLATFORM_ADMIN_EMAIL=bench@example.com"
        echo "USE_STATEFUL_SESSIONS=true"
        echo "RATE_LIMITING_ENABLED=false"
        echo "SSRF_ALLOW_LOCALHOST=true"
        echo "LOG_LEVEL=ERROR"
        if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi
    } >"$envfile"
    # Its CLI and its token minter both read their settings from the environment.
    # shellcheck source=/dev/null
    (set -a && . "$envfile" && exec "$CF_ROOT/bin/mcpgateway" --host 127.0.0.1 --port "$port") \
        >"$OUT/$name.out" 2>"$OUT/$name.err" &
    CF_STARTED_PID=$!
    PIDS+=("$CF_STARTED_PID")
    local i
    for i in $(seq 1 1200); do
        curl -fsS -o /dev/null "$CF_STARTED_BASE/health" 2>/dev/null && break
        if ! kill -0 "$CF_STARTED_PID" 2>/dev/null; then
            echo "$name exited early: $(tail -n 3 "$OUT/$name.err")" >&2
            return 1
        fi
        sleep 0.1
    done
    wait_http "$CF_STARTED_BASE/health" "$CF_STARTED_PID" || return 1
    if [ -z "$CF_AUTH" ]; then
        # shellcheck source=/dev/null
        token=$(set -a && . "$envfile" &&
            "$CF_ROOT/bin/python" -m mcpgateway.utils.create_jwt_token -u bench@example.com --admin -e 600 2>>"$OUT/$name.err") ||
            { echo "$name: could not mint a JWT (see $OUT/$name.err)" >&2; return 1; }
        CF_AUTH="Authorization: Bearer $token"
    fi
}

# cf_register NAME BASE GATEWAY URL: registers URL as gateway GATEWAY over
# streamable HTTP (it lists the upstream's tools during the request).
cf_register() {
    local name=$1 base=$2 gateway=$3 url=$4
    curl -fsS --max-time 120 -X POST "$base/v1/gateways" -H "$CF_AUTH" -H 'Content-Type: application/json' \
        -d "{\"name\": \"$gateway\", \"url\": \"$url\", \"transport\": \"STREAMABLEHTTP\"}" >"$OUT/$name-gateway.json" ||
        { echo "$name: registering $url as $gateway failed: $(head -c 300 "$OUT/$name-gateway.json")" >&2; return 1; }
}

# cf_server BASE SERVER_NAME TOOL_IDS_FILE: creates a virtual server holding
# the tools whose ids are in the file (one a line); prints its id.
cf_server() {
    local base=$1 server=$2 ids=$3
    python3 -c '
import json, sys
ids = [l.strip() for l in open(sys.argv[2]) if l.strip()]
print(json.dumps({"server": {"name": sys.argv[1], "associated_tools": ids}}))
' "$server" "$ids" |
        curl -fsS --max-time 300 -X POST "$base/v1/servers" -H "$CF_AUTH" -H 'Content-Type: application/json' -d @- |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}

# start_contextforge NAME FIXTURE_URL: ContextForge (cf_start) with the
# fixture registered as gateway `fx` and a virtual server holding its echo
# tool. Sets CF_STARTED_PID, CF_STARTED_URL (the virtual server's MCP
# endpoint) and CF_TOOL (the echo tool's name there). Fails (returns 1)
# with the reason on stderr.
start_contextforge() {
    local name=$1 upstream=$2 base tool_id server_id
    cf_start "$name" || return 1
    base=$CF_STARTED_BASE
    cf_register "$name" "$base" fx "$upstream" || return 1
    # The tool whose upstream name is `echo`: its id, and the name it exposes.
    read -r tool_id CF_TOOL < <(curl -fsS "$base/v1/tools" -H "$CF_AUTH" | python3 -c '
import json, sys
tools = json.load(sys.stdin)
tools = tools if isinstance(tools, list) else tools.get("items", [])
tool = next(t for t in tools if t.get("originalName") == "echo" and t.get("gatewaySlug") == "fx")
print(tool["id"], tool["name"])
' 2>>"$OUT/$name.err") ||
        { echo "$name: the fixture's echo tool is not in its catalogue" >&2; return 1; }
    echo "$tool_id" >"$OUT/$name-tools.txt"
    server_id=$(cf_server "$base" bench "$OUT/$name-tools.txt") ||
        { echo "$name: creating the virtual server failed" >&2; return 1; }
    CF_STARTED_URL=$base/v1/virtual-servers/$server_id/mcp
    echo "  $name: $CF_STARTED_URL, tool $CF_TOOL" >&2
}

# start_contextforge_list NAME UPSTREAM [SETTING=VALUE...]: ContextForge
# (cf_start with the settings, e.g. MCP_LIST_PAGE_SIZE=1000, its largest
# page; without one its pages are of 100 tools) in front of 50 upstreams,
# all UPSTREAM, and a virtual server holding all their tools. It refuses a
# second gateway with the same URL (HTTP 409 "Gateway already exists";
# 127.0.0.1 and localhost count as one), so each is registered with a query
# string of its own (?u=NN), which the fixture ignores. Registration is bounded by
# BENCH_CF_REGISTER_LIMIT seconds (default 600). Sets CF_STARTED_PID,
# CF_STARTED_URL, CF_REGISTER_S and CF_SERVER_S (seconds taken to register
# the 50 and to create the server).
start_contextforge_list() {
    local name=$1 upstream=$2 base i t0 server_id limit=${BENCH_CF_REGISTER_LIMIT:-600}
    shift 2
    cf_start "$name" "$@" || return 1
    base=$CF_STARTED_BASE
    t0=$(date +%s.%N)
    for i in $(seq -w 0 49); do
        cf_register "$name" "$base" "up$i" "$upstream?u=$i" || return 1
        if python3 -c 'import sys, time; sys.exit(time.time() - float(sys.argv[1]) < float(sys.argv[2]))' "$t0" "$limit"; then
            echo "$name: registering took over ${limit}s; gave up after up$i" >&2
            return 1
        fi
    done
    CF_REGISTER_S=$(python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "$t0")
    curl -fsS --max-time 300 "$base/v1/tools?limit=0" -H "$CF_AUTH" | python3 -c '
import json, sys
tools = json.load(sys.stdin)
tools = tools if isinstance(tools, list) else tools.get("items", [])
for t in tools:
    print(t["id"])
' >"$OUT/$name-tools.txt" || { echo "$name: listing its tools failed" >&2; return 1; }
    t0=$(date +%s.%N)
    server_id=$(cf_server "$base" bench-list "$OUT/$name-tools.txt") ||
        { echo "$name: creating the virtual server failed" >&2; return 1; }
    CF_SERVER_S=$(python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "$t0")
    CF_STARTED_URL=$base/v1/virtual-servers/$server_id/mcp
    echo "  $name: 50 gateways registered in ${CF_REGISTER_S}s, a server with their $(wc -l <"$OUT/$name-tools.txt") tools created in ${CF_SERVER_S}s: $CF_STARTED_URL" >&2
}

# mcp_probe MODE URL [HEADER]: one session (initialize, initialized) on URL,
# HEADER ("Name: value") on every request, then
#   list: one tools/list followed page by page; prints "TOOLS PAGES FIRST_PAGE".
#   get:  asks for the session's GET stream as the load generator's --listen
#         does, then ends the session; prints what the GET was answered
#         (status, content type, the body's start when refused); exits 0 for
#         an SSE stream (200, text/event-stream), 1 when refused.
#   mcpgw: mcp-gateway's listing meta-tools: gateway_list_servers, then
#         gateway_list_tools with no server (every backend's tools, by name
#         and description), then once per backend (their full definitions);
#         prints "ALL_TOOLS ALL_SERVERS EACH_TOOLS EACH_WITH_SCHEMA SERVERS
#         META_TOOLS" (the last: what its tools/list holds) and on stderr
#         the backends' names, comma-separated.
# Exits 2 when no session could be opened.
mcp_probe() {
    python3 - "$@" <<'EOF'
import json, sys, urllib.error, urllib.request

mode, url, auth = sys.argv[1], sys.argv[2], sys.argv[3:]

def headers(sid=None):
    h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if auth:
        name, value = auth[0].split(":", 1)
        h[name] = value.strip()
    if sid:
        h["Mcp-Session-Id"] = sid
        h["MCP-Protocol-Version"] = "2025-11-25"
    return h

def post(body, sid=None):
    """The answer to `body` (None for a notification) and the session id."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers(sid))
    with urllib.request.urlopen(req, timeout=300) as r:
        sid = r.headers.get("Mcp-Session-Id") or sid
        text = r.read().decode()
    if text.lstrip().startswith("{"):
        return json.loads(text), sid
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            msg = json.loads(line[5:])
            if "id" in msg:
                return msg, sid
    return None, sid

try:
    _, sid = post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
    post({"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
except Exception as e:
    print(f"no session: {e}")
    sys.exit(2)

if mode == "list":
    pages, tools, first, cursor = 0, 0, 0, None
    while pages < 10000:
        msg, _ = post({"jsonrpc": "2.0", "id": pages + 1, "method": "tools/list",
                       "params": {"cursor": cursor} if cursor else {}}, sid)
        if not msg or "result" not in msg:
            sys.exit(f"tools/list failed: {json.dumps(msg)[:300]}")
        pages += 1
        tools += len(msg["result"]["tools"])
        first = first or tools
        cursor = msg["result"].get("nextCursor")
        if not cursor:
            break
    print(tools, pages, first)
    sys.exit(0)

def call(n, name, arguments):
    """The parsed JSON of meta-tool `name`'s text result."""
    msg, _ = post({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                   "params": {"name": name, "arguments": arguments}}, sid)
    if not msg or "result" not in msg or msg["result"].get("isError"):
        sys.exit(f"{name} failed: {json.dumps(msg)[:300]}")
    return json.loads(msg["result"]["content"][0]["text"])

if mode == "mcpgw":
    msg, _ = post({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}, sid)
    meta = len(msg["result"]["tools"]) if msg and "result" in msg else 0
    servers = [s["name"] for s in call(2, "gateway_list_servers", {})["servers"]]
    every = call(3, "gateway_list_tools", {})
    named = {t["server"] for t in every["tools"]}
    each = schemas = 0
    for i, server in enumerate(servers):
        tools = call(4 + i, "gateway_list_tools", {"server": server})["tools"]
        each += len(tools)
        schemas += sum(1 for t in tools if isinstance(t.get("inputSchema"), dict))
    print(every["total"], len(named), each, schemas, len(servers), meta)
    print(",".join(servers), file=sys.stderr)
    sys.exit(0)

detail = ""
try:
    # urlopen returns once the head has arrived; the stream is closed unread.
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers(sid), method="GET"), timeout=60) as r:
        status, ctype = r.status, r.headers.get("Content-Type", "")
except urllib.error.HTTPError as e:
    status, ctype = e.code, e.headers.get("Content-Type", "")
    detail = e.read(300).decode(errors="replace").strip()
except Exception as e:
    status, ctype, detail = 0, "", str(e)
finally:
    try:
        urllib.request.urlopen(urllib.request.Request(url, headers=headers(sid), method="DELETE"), timeout=60).read()
    except Exception:
        pass
print(f"GET answered HTTP {status} {ctype}".rstrip() + (f": {detail}" if detail else ""))
sys.exit(0 if status == 200 and ctype.startswith("text/event-stream") else 1)
EOF
}

# list_counted TARGET URL [HEADER]: mcp_probe list, said and noted for `list`;
# sets LISTED to the number of tools (empty when counting failed).
list_counted() {
    local target=$1 counted n pages first
    shift
    LISTED=
    if counted=$(mcp_probe list "$@"); then
        read -r n pages first <<<"$counted"
        echo "  $target: $n tools in $pages page(s) of up to $first" >&2
        note list "$target" tools "$n" pages "$pages"
        LISTED=$n
    else
        echo "  $target: counting its tools failed" >&2
    fi
}

# mcpgw_listed TARGET URL EXPECTED: waits (up to 120 s) until mcp-gateway at
# URL lists EXPECTED tools both ways its gateway_list_tools does (all
# backends at once, by name and description; each backend's, full
# definitions): it fetches its backends' lists in the background after
# start-up, and the all-at-once list leaves out a backend not fetched yet.
# Says and notes the counts; sets MCPGW_SERVERS (its backends, comma-separated).
# Fails (returns 1) with the last counts when they never reach EXPECTED.
mcpgw_listed() {
    local target=$1 url=$2 expected=$3 counted='' all=0 named=0 each=0 schemas=0 servers=0 meta=0 complete='' i
    for i in $(seq 1 240); do
        if counted=$(mcp_probe mcpgw "$url" 2>"$OUT/mcpgw-servers.txt"); then
            read -r all named each schemas servers meta <<<"$counted"
            if [ "$all" = "$expected" ] && [ "$each" = "$expected" ] && [ "$schemas" = "$expected" ]; then
                complete=1
                break
            fi
        fi
        sleep 0.5
    done
    MCPGW_SERVERS=$(tail -n 1 "$OUT/mcpgw-servers.txt")
    echo "  $target: its tools/list holds $meta (meta-)tools; gateway_list_tools lists $all tools from $named backends at once, and $each ($schemas with an inputSchema) called once for each of its $servers backends" >&2
    note list "$target" meta_tools "$meta" all_at_once_tools "$all" all_at_once_backends "$named" \
        per_backend_tools "$each" per_backend_with_schema "$schemas" backends "$servers"
    if [ -z "$complete" ]; then
        echo "  $target: expected $expected tools each way; its list rows are skipped (see $OUT/mcpgw-servers.txt)" >&2
        return 1
    fi
}

# mcpgw_list_all C [SUFFIX] and mcpgw_list_each C [SUFFIX [LOADGEN_ARGS...]]:
# mcp-gateway's `list` rows at concurrency C on the instance at MCPGWL_URL
# (pid MCPGWL_PID, backends MCPGW_SERVERS, each with PER_UPSTREAM tools):
# gateway_list_tools once for all backends, and once per backend. SUFFIX
# goes after "mcp-gateway" in the target's name.
mcpgw_list_all() {
    # --expect: the whole count, as its (pretty-printed) JSON text has it.
    load list "mcp-gateway${2:-} (50 upstreams, gateway_list_tools: names and descriptions)" \
        "$MCPGWL_URL" "$1" --tool gateway_list_tools --args '{}' \
        --expect "\\\"total\\\": $((50 * PER_UPSTREAM))" --watch-pid "$MCPGWL_PID" --watch-pid "$FX100_PID"
}
mcpgw_list_each() {
    local c=$1 suffix=${2:-}
    shift 2 2>/dev/null || shift $#
    load list "mcp-gateway$suffix (50 upstreams, gateway_list_tools per upstream: definitions)" \
        "$MCPGWL_URL" "$c" --mcp-gateway-list "$MCPGW_SERVERS" \
        --expect inputSchema --watch-pid "$MCPGWL_PID" --watch-pid "$FX100_PID" "$@"
}

# start_litellm NAME PROVIDER_BASE: the LiteLLM proxy with one model `bench`
# on the OpenAI-compatible provider, no database (so no spend logs), its
# default settings otherwise. Sets LITELLM_PID and LITELLM_BASE.
start_litellm() {
    local name=$1 provider=$2 port
    port=$(free_port)
    cat >"$OUT/$name.yaml" <<EOF
model_list:
  - model_name: bench
    litellm_params: { model: openai/fake-model, api_base: "$provider/v1", api_key: bench }
EOF
    LITELLM_MASTER_KEY=sk-bench "$LITELLM_ROOT/bin/litellm" --config "$OUT/$name.yaml" \
        --host 127.0.0.1 --port "$port" >"$OUT/$name.out" 2>"$OUT/$name.err" &
    LITELLM_PID=$!
    PIDS+=("$LITELLM_PID")
    LITELLM_BASE=http://127.0.0.1:$port
    wait_http "$LITELLM_BASE/health/liveliness" "$LITELLM_PID"
}

# --- the fixture and the plain gateway -------------------------------------------

# No SSE priming events: mcp-gateway's client cannot parse an event with
# empty data, and every target must see the same upstream.
start fixture "$BIN/portcullis-fixture" http --listen 127.0.0.1:0 --no-sse-priming
FX_PID=$STARTED_PID
FX_URL=$(awk '{print $3}' <<<"$STARTED_LINE")

# contextforge_up: starts ContextForge in front of the fixture the first time
# a scenario asks (it takes tens of seconds), for echo and setup; 0 when up.
CF_UP=
contextforge_up() {
    [ $HAVE_CF = 1 ] || return 1
    if [ -z "$CF_UP" ]; then
        log "starting ContextForge"
        if start_contextforge contextforge "$FX_URL"; then
            CF_UP=1 CF_PID=$CF_STARTED_PID CF_URL=$CF_STARTED_URL
        else
            echo "contextforge: did not start (see $OUT/contextforge.err); its rows are skipped" >&2
            stop "${CF_STARTED_PID:-}"
            CF_UP=0
        fi
    fi
    [ "$CF_UP" = 1 ]
}

# cf_load SCENARIO C [loadgen args...]: one run through ContextForge.
cf_load() {
    local scenario=$1 c=$2
    shift 2
    load "$scenario" contextforge "$CF_URL" "$c" -H "$CF_AUTH" --watch-pid "$CF_PID" "$@"
}

# gateway_config FILE [extra yaml]: one upstream `fx` over HTTP.
gateway_config() {
    cat >"$1" <<EOF
listen: 127.0.0.1:0
upstreams:
  fx: { http: { url: "$FX_URL" } }
log: { level: warn }
${2:-}
EOF
}

# start_gateway NAME CONFIG: sets GW_PID and GW_URL, waits for /readyz.
start_gateway() {
    start "$1" "$BIN/portcullis" serve -c "$2"
    GW_PID=$STARTED_PID
    local base
    base=$(awk '{print $4}' <<<"$STARTED_LINE")
    GW_URL=$base/mcp
    wait_http "$base/readyz" "$GW_PID"
}

NGINX_TARGET="nginx (plain HTTP proxy, floor)"
# --expect: mcp-gateway wraps upstream failures in a successful result.
ECHO_ARGS=(--tool echo --args '{"message":"hello"}' --expect hello)
GW_ECHO_ARGS=(--tool fx__echo --args '{"message":"hello"}' --expect hello)

if want echo; then
    log "echo: one upstream, tiny echo call"
    gateway_config "$OUT/gateway.yaml"
    start_gateway gateway "$OUT/gateway.yaml"
    GW_DEFAULT_PID=$GW_PID GW_DEFAULT_URL=$GW_URL
    # The same gateway with one tokio worker thread: at low load two workers
    # wake each other several times per call (see docs/benchmarks.md).
    TOKIO_WORKER_THREADS=1 start_gateway gateway-1w "$OUT/gateway.yaml"
    GW1_PID=$GW_PID GW1_URL=$GW_URL
    GW_PID=$GW_DEFAULT_PID GW_URL=$GW_DEFAULT_URL
    if [ $HAVE_MCPGW = 1 ]; then start_mcpgw mcp-gateway "$FX_URL"; fi
    NGINX_UP=0
    if [ $HAVE_NGINX = 1 ]; then
        if start_nginx nginx "$FX_URL"; then
            NGINX_UP=1
        else
            echo "nginx: did not start; its rows are skipped" >&2
            stop "${NGINX_PID:-}"
        fi
    fi
    contextforge_up || true
    for c in 1 32; do
        load echo direct "$FX_URL" $c "${ECHO_ARGS[@]}" --watch-pid "$FX_PID"
        if [ $NGINX_UP = 1 ]; then
            load echo "$NGINX_TARGET" "$NGINX_URL" $c "${ECHO_ARGS[@]}" --watch-pid "$NGINX_WORKERS" --watch-pid "$FX_PID"
        fi
        load echo portcullis "$GW_URL" $c "${GW_ECHO_ARGS[@]}" --watch-pid "$GW_PID" --watch-pid "$FX_PID"
        load echo "portcullis (1 worker)" "$GW1_URL" $c "${GW_ECHO_ARGS[@]}" --watch-pid "$GW1_PID" --watch-pid "$FX_PID"
        if [ $HAVE_MCPGW = 1 ]; then
            load echo mcp-gateway "$MCPGW_URL" $c "${ECHO_ARGS[@]}" \
                --mcp-gateway-invoke fx --watch-pid "$MCPGW_PID" --watch-pid "$FX_PID"
        fi
        if [ "$CF_UP" = 1 ]; then
            cf_load echo $c --tool "$CF_TOOL" --args '{"message":"hello"}' --expect hello --watch-pid "$FX_PID"
        fi
    done
    note echo portcullis peak_rss_kb "$(status_kb "$GW_PID" VmHWM)"
    note echo direct peak_rss_kb "$(status_kb "$FX_PID" VmHWM)"
    stop "$GW_PID"
    stop "$GW1_PID"
    if [ $HAVE_MCPGW = 1 ]; then
        note echo mcp-gateway peak_rss_kb "$(status_kb "$MCPGW_PID" VmHWM)"
        stop "$MCPGW_PID"
    fi
    if [ $NGINX_UP = 1 ]; then
        # Each process's peak (forks: shared pages count in each), and the
        # proportional share (Pss) of all of them together now.
        nginx_hwm=()
        for pid in ${NGINX_WORKERS//,/ }; do nginx_hwm+=("$(status_kb "$pid" VmHWM)"); done
        nginx_pss=$(for pid in "$NGINX_PID" ${NGINX_WORKERS//,/ }; do
            awk '$1 == "Pss:" { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null
        done | awk '{ s += $1 } END { print s + 0 }')
        note echo "$NGINX_TARGET" workers "${#nginx_hwm[@]}" master_peak_rss_kb "$(status_kb "$NGINX_PID" VmHWM)" \
            worker_peak_rss_kb "$(IFS=+ && echo "${nginx_hwm[*]}")" pss_kb "$nginx_pss"
        if [ -s "$OUT/nginx-error.log" ]; then
            echo "  nginx logged (see $OUT/nginx-error.log): $(tail -n 3 "$OUT/nginx-error.log")" >&2
        fi
        stop "$NGINX_PID"
    fi
fi

if want policy; then
    log "policy: the echo call with ~20 policy rules, guards, rate limits and metrics"
    mkdir -p "$OUT/policies"
    cat >"$OUT/policies/bench.yaml" <<'EOF'
# A realistic policy set: most rules are about other upstreams and tools
# (they must still be evaluated), a few match the benchmark's calls.
rules:
  - { id: block-print-env, match: { tool: printEnv }, action: deny, message: "printEnv is disabled" }
  - { id: block-shell, match: { upstream: shell }, action: deny, message: "no shell" }
  - { id: readers-read-only, match: { groups: [readers], annotations: { readOnlyHint: false } }, action: deny }
  - { id: contractors-no-write, match: { claims: { employment: contractor }, tool: "*write*" }, action: deny }
  - { id: fs-confined, match: { tool: "fs__*", args: { /path: { glob: "/srv/shared/**" } } }, action: allow }
  - id: fs-move-confined
    match: { tool: fs__move_file, args: { /source: { glob: "/srv/shared/**" }, /destination: { glob: "/srv/shared/**" } } }
    action: allow
  - { id: fs-no-etc, match: { tool: "fs__*", args: { /path: { glob: "/etc/**" } } }, action: deny }
  - { id: git-main-protected, match: { tool: "git__git_push", args: { /branch: { one_of: [main, master] } } }, action: deny }
  - { id: deploy-prod-approve, match: { tool: "*__deploy", args: { /env: { equals: prod } } }, action: approve }
  - { id: deploy-replicas, match: { tool: "*__deploy", args: { /replicas: { range: { max: 50 } } } }, action: allow }
  - { id: ticket-format, match: { tool: "*__deploy", args: { /ticket: { regex: "^[A-Z]+-[0-9]+$" } } }, action: allow }
  - { id: everything-destructive, match: { upstream: everything, annotations: { destructiveHint: true } }, action: approve }
  - { id: time-allowed, match: { upstream: time }, action: allow }
  - { id: search-allowed, match: { tool: "search__*" }, action: allow }
  - { id: ops-everything, match: { groups: [ops], claims: { department: [platform, sre] } }, action: allow }
  - { id: no-open-world-contractors, match: { claims: { employment: contractor }, annotations: { openWorldHint: true } }, action: deny, mode: audit }
  - { id: fx-add-small, match: { tool: fx__add, args: { /a: { range: { min: 0, max: 1000 } } } }, action: allow }
  - { id: fx-echo-text, match: { tool: "fx__*", args: { /message: { glob: "*" } } }, action: allow }
  - { id: fx-echo-not-secret, match: { tool: fx__echo, args: { /message: { regex: "(?i)password" } } }, action: deny }
  - { id: fx-slow-bounded, match: { tool: fx__slow, args: { /ms: { range: { max: 5000 } } } }, action: allow }
guards:
  - { id: no-secrets-upstream, detect: [secrets], on: [arguments], action: block, message: "remove the credential" }
  - { id: no-secrets-out, detect: [secrets, pii], on: [results], action: redact }
  - { id: flag-injection, detect: [injection], on: [results], action: flag }
EOF
    POLICY_YAML="policies: { dir: \"$OUT/policies\", default: allow, audit: { file: \"$OUT/audit.jsonl\" } }"
    RL_YAML='ratelimit:
  limits:
    - { id: per-identity-tool, key: [identity, tool], rate: 1000000, per: 1s }
    - { id: per-upstream, key: [upstream], upstream: fx, rate: 1000000, per: 1s }
  concurrency:
    - { id: fx-slots, key: [upstream], upstream: fx, max: 1000 }'
    gateway_config "$OUT/gateway-policy.yaml" "$POLICY_YAML
$RL_YAML"
    if "$BIN/portcullis" check -c "$OUT/gateway-policy.yaml" >"$OUT/check.log" 2>&1; then
        POLICY_TARGET=portcullis+policy+rl
    else
        echo "rate limits not in this build ($(tail -n1 "$OUT/check.log")); policy only" >&2
        gateway_config "$OUT/gateway-policy.yaml" "$POLICY_YAML"
        "$BIN/portcullis" check -c "$OUT/gateway-policy.yaml" >&2
        POLICY_TARGET=portcullis+policy
    fi
    start_gateway gateway-policy "$OUT/gateway-policy.yaml"
    for c in 1 32; do
        load policy direct "$FX_URL" $c "${ECHO_ARGS[@]}" --watch-pid "$FX_PID"
        load policy "$POLICY_TARGET" "$GW_URL" $c "${GW_ECHO_ARGS[@]}" --watch-pid "$GW_PID" --watch-pid "$FX_PID"
    done
    # Metrics were recorded for every call: make sure they are there.
    curl -fsS "${GW_URL%/mcp}/metrics" | grep -c '^portcullis_mcp_requests_total' >/dev/null ||
        echo "warning: no request metrics on /metrics" >&2
    note policy "$POLICY_TARGET" peak_rss_kb "$(status_kb "$GW_PID" VmHWM)"
    stop "$GW_PID"
fi

if want list; then
    log "list: tools/list over 50 upstreams of 100 generated tools (and the built-in ones) each"
    # No SSE priming events, as for the fixture above: mcp-gateway is a client of it here.
    start fixture-100 "$BIN/portcullis-fixture" http --listen 127.0.0.1:0 --tools 100 --no-sse-priming
    FX100_PID=$STARTED_PID
    FX100_URL=$(awk '{print $3}' <<<"$STARTED_LINE")
    {
        echo "listen: 127.0.0.1:0"
        echo "http: { page_size: 100000 }"
        echo "log: { level: warn }"
        echo "upstreams:"
        for i in $(seq -w 0 49); do echo "  up$i: { http: { url: \"$FX100_URL\" } }"; done
    } >"$OUT/gateway-list.yaml"
    start_gateway gateway-list "$OUT/gateway-list.yaml"
    tools=$(curl -fsS "${GW_URL%/mcp}/readyz" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for u in d["upstreams"].values()))')
    echo "  gateway has $tools upstreams" >&2
    CF_LIST=
    # Its pages of 1,000 here; of 100 (its default) on a second instance below.
    CFL_TARGET="contextforge (50 upstreams, 1000 per page)"
    CFL100_TARGET="contextforge (50 upstreams, 100 per page)"
    if [ $HAVE_CF = 1 ]; then
        log "starting ContextForge in front of the 50 upstreams, pages of 1,000"
        if start_contextforge_list contextforge-list "$FX100_URL" MCP_LIST_PAGE_SIZE=1000; then
            CF_LIST=1 CFL_PID=$CF_STARTED_PID CFL_URL=$CF_STARTED_URL
        else
            echo "contextforge: not set up for list (see $OUT/contextforge-list.err); its list rows are skipped" >&2
            stop "${CF_STARTED_PID:-}"
        fi
    fi
    # What each answers, page by page (--all-pages below reads every page).
    list_counted "direct (1 upstream)" "$FX100_URL"
    PER_UPSTREAM=$LISTED
    list_counted "portcullis (50 upstreams)" "$GW_URL"
    if [ -n "$CF_LIST" ]; then list_counted "$CFL_TARGET" "$CFL_URL" "$CF_AUTH"; fi
    # mcp-gateway in front of the same 50, as configured for echo. Its
    # tools/list holds only its meta-tools; a client lists the backends'
    # tools with its gateway_list_tools meta-tool: with no server, every
    # backend's tools by name and description (no schemas) in one answer;
    # with a server, that backend's full definitions. Both are measured:
    # one call per list, and one call per backend (50) per list. Both answer
    # from its per-backend tool cache (meta_mcp.cache_ttl, 5 minutes by
    # default), as portcullis answers from its catalogue.
    MCPGWL=
    if [ $HAVE_MCPGW = 1 ]; then
        log "starting mcp-gateway in front of the 50 upstreams"
        start_mcpgw mcp-gateway-list "$FX100_URL" 50
        MCPGWL_PID=$MCPGW_PID MCPGWL_URL=$MCPGW_URL
        if [ -z "$PER_UPSTREAM" ]; then
            echo "  mcp-gateway: no tool count for the fixture; its list rows are skipped" >&2
        elif mcpgw_listed mcp-gateway "$MCPGWL_URL" $((50 * PER_UPSTREAM)); then
            MCPGWL=1
        fi
    fi
    for c in 1 32; do
        load list "direct (1 upstream)" "$FX100_URL" $c --list --all-pages --watch-pid "$FX100_PID"
        load list "portcullis (50 upstreams)" "$GW_URL" $c --list --all-pages --watch-pid "$GW_PID" --watch-pid "$FX100_PID"
        if [ -n "$MCPGWL" ]; then
            mcpgw_list_all $c
            mcpgw_list_each $c
        fi
        if [ -n "$CF_LIST" ]; then
            # A whole list takes it seconds, and at c=32 the lists' pages
            # interleave, so the 32 end close together, a minute or so
            # later. There, no warm-up and --drain: the first 32 lists are
            # the run, timed (and their CPU counted) until the last has ended.
            if [ $c = 32 ]; then
                LOAD_WARMUP=0s LOAD_TIMEOUT=600s load list "$CFL_TARGET" \
                    "$CFL_URL" $c --list --all-pages --drain -H "$CF_AUTH" --watch-pid "$CFL_PID" --watch-pid "$FX100_PID"
            else
                LOAD_TIMEOUT=600s load list "$CFL_TARGET" \
                    "$CFL_URL" $c --list --all-pages -H "$CF_AUTH" --watch-pid "$CFL_PID" --watch-pid "$FX100_PID"
            fi
        fi
    done
    note list "portcullis (50 upstreams)" peak_rss_kb "$(status_kb "$GW_PID" VmHWM)"
    stop "$GW_PID"
    if [ $HAVE_MCPGW = 1 ]; then
        if [ -n "$MCPGWL" ]; then note list mcp-gateway peak_rss_kb "$(status_kb "$MCPGWL_PID" VmHWM)"; fi
        stop "$MCPGWL_PID"
    fi
    # mcp-gateway again without its tool cache (cache_ttl 0s), once the first
    # is gone: a per-upstream call then asks the upstream each time, so only
    # that row is measured. (The all-at-once call never waits for a backend:
    # it still answers from the lists it holds, and sets off a refresh of
    # each in the background, whose CPU would fall partly outside the run.)
    # At c=32 a list takes it over 10 s: no warm-up and --drain, as for
    # ContextForge above.
    if [ $HAVE_MCPGW = 1 ] && [ -n "$PER_UPSTREAM" ]; then
        log "starting mcp-gateway in front of the 50 upstreams, without its tool cache (meta_mcp.cache_ttl: 0s)"
        start_mcpgw mcp-gateway-list-nocache "$FX100_URL" 50 "cache_ttl: 0s"
        MCPGWL_PID=$MCPGW_PID MCPGWL_URL=$MCPGW_URL
        if mcpgw_listed "mcp-gateway, no tool cache" "$MCPGWL_URL" $((50 * PER_UPSTREAM)); then
            mcpgw_list_each 1 ", no tool cache"
            LOAD_WARMUP=0s LOAD_TIMEOUT=600s mcpgw_list_each 32 ", no tool cache" --drain
            note list "mcp-gateway, no tool cache" peak_rss_kb "$(status_kb "$MCPGWL_PID" VmHWM)"
        fi
        stop "$MCPGWL_PID"
    fi
    if [ -n "$CF_LIST" ]; then
        note list "$CFL_TARGET" peak_rss_kb "$(status_kb "$CFL_PID" VmHWM)" \
            sandbox_children_pss_kb "$(children_pss_kb "$CFL_PID")" \
            register_50_s "$CF_REGISTER_S" create_server_s "$CF_SERVER_S"
        stop "$CFL_PID"
    fi
    # Its default page size, 100 tools (73 pages for 7,250), on an instance
    # of its own started without MCP_LIST_PAGE_SIZE, once the first is gone;
    # c=1 only (at c=32 one list takes over a minute even at 1,000 a page).
    if [ $HAVE_CF = 1 ]; then
        log "starting ContextForge in front of the 50 upstreams, its default page size"
        if start_contextforge_list contextforge-list-100 "$FX100_URL"; then
            CFL_PID=$CF_STARTED_PID CFL_URL=$CF_STARTED_URL
            list_counted "$CFL100_TARGET" "$CFL_URL" "$CF_AUTH"
            # A list takes it 4-6 s here, so a 10 s window would hold two,
            # with the CPU of one begun in the warm-up counted against them.
            # So a 30 s window, no warm-up (the count above has just read it
            # whole) and --drain: every list counted is whole inside the time
            # and CPU measured.
            LOAD_WARMUP=0s LOAD_DURATION=30s LOAD_TIMEOUT=600s load list "$CFL100_TARGET" \
                "$CFL_URL" 1 --list --all-pages --drain -H "$CF_AUTH" --watch-pid "$CFL_PID" --watch-pid "$FX100_PID"
            note list "$CFL100_TARGET" peak_rss_kb "$(status_kb "$CFL_PID" VmHWM)" \
                sandbox_children_pss_kb "$(children_pss_kb "$CFL_PID")" \
                register_50_s "$CF_REGISTER_S" create_server_s "$CF_SERVER_S"
        else
            echo "contextforge: not set up for list at its default page size (see $OUT/contextforge-list-100.err); that row is skipped" >&2
        fi
        stop "${CF_STARTED_PID:-}"
    fi
    stop "$FX100_PID"
fi

# idle_run TARGET PID URL [METRICS_URL [LOADGEN_ARGS...]]: holds
# IDLE_COUNT sessions (default IDLE_SESSIONS) open and notes the resident
# memory they cost the process at PID; with METRICS_URL, again once all have
# hibernated. With IDLE_CHILDREN set, also the Pss of PID's child processes
# before and after.
idle_run() {
    local target=$1 pid=$2 url=$3 metrics=${4:-} before after fifo n=${IDLE_COUNT:-$IDLE_SESSIONS}
    local kids_before='' kids_after='' kids=()
    shift 4 2>/dev/null || shift $#
    before=$(status_kb "$pid" VmRSS)
    if [ -n "${IDLE_CHILDREN:-}" ]; then kids_before=$(children_pss_kb "$pid"); fi
    fifo=$OUT/idle-$$.out
    : >"$fifo"
    "$BIN/portcullis-loadgen" "$url" --idle-sessions "$n" -c 32 --hold 600s "$@" >"$fifo" 2>"$OUT/idle.err" &
    local lg=$!
    local i
    # 300 s, and 0.1 s more per session for the slow openers.
    for i in $(seq 1 $((3000 + n))); do
        grep -q '^ready' "$fifo" && break
        kill -0 $lg 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q '^ready' "$fifo"; then
        echo "  $target: sessions were not opened: $(tail -n2 "$OUT/idle.err")" >&2
        kill $lg 2>/dev/null || true
        wait $lg 2>/dev/null || true
        return 0
    fi
    sleep 2 # let allocations settle (per-session tasks run their first poll)
    after=$(status_kb "$pid" VmRSS)
    local per=$(((after - before) * 1024 / n))
    local open_s
    open_s=$(awk '/^ready/ { print $(NF) }' "$fifo" | tr -d s)
    if [ -n "${IDLE_CHILDREN:-}" ]; then
        kids_after=$(children_pss_kb "$pid")
        kids=(children_pss_before_kb "$kids_before" children_pss_after_kb "$kids_after")
    fi
    echo "  $target: $(cat "$fifo"); RSS $before KB -> $after KB = $per bytes per session${kids_after:+; Pss of its child processes $kids_before KB -> $kids_after KB}" >&2
    note idle "$target" sessions "$n" open_s "${open_s:-0}" rss_before_kb "$before" rss_after_kb "$after" \
        bytes_per_session "$per" "${kids[@]}"
    # A gateway that hibernates idle sessions: measured again once all are asleep.
    if [ -n "$metrics" ]; then
        local asleep=0
        for i in $(seq 1 600); do
            asleep=$(curl -s "$metrics" | awk '/^portcullis_sessions_hibernated /{print int($2)}')
            [ "${asleep:-0}" -ge "$n" ] && break
            sleep 0.1
        done
        sleep 1 # the sweep that hibernated the last ones hands their pages back
        after=$(status_kb "$pid" VmRSS)
        per=$(((after - before) * 1024 / n))
        echo "  $target, $asleep hibernated: RSS $before KB -> $after KB = $per bytes per session" >&2
        note idle "$target (hibernated)" sessions "$n" hibernated "$asleep" rss_before_kb "$before" rss_after_kb "$after" bytes_per_session "$per"
    fi
    kill $lg 2>/dev/null || true
    wait $lg 2>/dev/null || true
}

if want idle; then
    log "idle: $IDLE_SESSIONS sessions held open (memory per session)"
    # Sessions hibernate after 10 s idle here (60 s by default), so the run
    # sees both costs: a session awake, and one asleep.
    gateway_config "$OUT/gateway-idle.yaml" "http: { session_hibernate_after: 10s }"
    start_gateway gateway-idle "$OUT/gateway-idle.yaml"
    idle_run portcullis "$GW_PID" "$GW_URL" "${GW_URL%/mcp}/metrics"
    stop "$GW_PID"
    # As SDK clients hold them: each session with a GET stream open, on a
    # connection of its own.
    start_gateway gateway-idle-get "$OUT/gateway-idle.yaml"
    idle_run "portcullis, GET streams" "$GW_PID" "$GW_URL" "${GW_URL%/mcp}/metrics" --listen
    stop "$GW_PID"
    # The fixture alone, for reference: rmcp's own per-session cost.
    start fixture-idle "$BIN/portcullis-fixture" http --listen 127.0.0.1:0 --no-sse-priming
    idle_run "direct (fixture)" "$STARTED_PID" "$(awk '{print $3}' <<<"$STARTED_LINE")"
    stop "$STARTED_PID"
    start fixture-idle-get "$BIN/portcullis-fixture" http --listen 127.0.0.1:0 --no-sse-priming
    idle_run "direct (fixture), GET streams" "$STARTED_PID" "$(awk '{print $3}' <<<"$STARTED_LINE")" "" --listen
    stop "$STARTED_PID"
    if [ $HAVE_MCPGW = 1 ]; then
        start_mcpgw mcp-gateway-idle "$FX_URL"
        idle_run mcp-gateway "$MCPGW_PID" "$MCPGW_URL"
        stop "$MCPGW_PID"
    fi
    # ContextForge opens 20-30 sessions a second: fewer of them, on an
    # instance of its own (the echo one's memory stays the echo run's).
    if [ $HAVE_CF = 1 ]; then
        log "idle: $CF_IDLE_SESSIONS sessions held open by ContextForge"
        CF_GET=
        if start_contextforge contextforge-idle "$FX_URL"; then
            IDLE_COUNT=$CF_IDLE_SESSIONS IDLE_CHILDREN=1 \
                idle_run contextforge "$CF_STARTED_PID" "$CF_STARTED_URL" "" -H "$CF_AUTH"
            # Does it serve a session's GET stream? Asked with one session
            # here, so that the instance measured with them starts as cold
            # as this one did.
            if got=$(mcp_probe get "$CF_STARTED_URL" "$CF_AUTH"); then
                CF_GET=1
                echo "  contextforge: a session's $got" >&2
            elif [ -n "$got" ] && [ "${got#no session}" = "$got" ]; then
                echo "  contextforge, GET streams: not measured: it does not serve a session's GET stream ($got)" >&2
                note idle "contextforge, GET streams" get_stream "not served: $got"
            else
                echo "  contextforge, GET streams: not measured: could not ask for a GET stream (${got:-no answer})" >&2
            fi
        else
            echo "contextforge: did not start (see $OUT/contextforge-idle.err); its idle rows are skipped" >&2
        fi
        stop "${CF_STARTED_PID:-}"
        # Each session with a GET stream open too, as SDK clients hold them:
        # on a fresh instance, like the portcullis and fixture rows.
        if [ -n "$CF_GET" ]; then
            log "idle: $CF_IDLE_SESSIONS sessions held open by ContextForge, each with a GET stream"
            if start_contextforge contextforge-idle-get "$FX_URL"; then
                IDLE_COUNT=$CF_IDLE_SESSIONS IDLE_CHILDREN=1 idle_run "contextforge, GET streams" \
                    "$CF_STARTED_PID" "$CF_STARTED_URL" "" -H "$CF_AUTH" --listen
            else
                echo "contextforge: did not start (see $OUT/contextforge-idle-get.err); its GET-stream idle row is skipped" >&2
            fi
            stop "${CF_STARTED_PID:-}"
        fi
    fi
fi

if want setup; then
    log "setup: sessions created per second (initialize + initialized + DELETE)"
    gateway_config "$OUT/gateway-setup.yaml"
    start_gateway gateway-setup "$OUT/gateway-setup.yaml"
    if [ $HAVE_MCPGW = 1 ]; then start_mcpgw mcp-gateway-setup "$FX_URL"; fi
    contextforge_up || true
    for c in 1 32; do
        load setup direct "$FX_URL" $c --setup-rate --watch-pid "$FX_PID"
        load setup portcullis "$GW_URL" $c --setup-rate --watch-pid "$GW_PID"
        if [ $HAVE_MCPGW = 1 ]; then
            load setup mcp-gateway "$MCPGW_URL" $c --setup-rate --watch-pid "$MCPGW_PID"
        fi
        if [ "$CF_UP" = 1 ]; then cf_load setup $c --setup-rate; fi
    done
    stop "$GW_PID"
    if [ $HAVE_MCPGW = 1 ]; then stop "$MCPGW_PID"; fi
fi

if want llm; then
    log "llm: model traffic through the router against the fake provider"
    if [ ! -x "$BIN/portcullis-fake-llm" ]; then
        echo "  skipped: no portcullis-fake-llm in this build (model routing not merged yet)" >&2
    else
        start fake-llm "$BIN/portcullis-fake-llm" --port 0
        LLM_PID=$STARTED_PID
        LLM_BASE=$(awk '{print $3}' <<<"$STARTED_LINE")
        gateway_config "$OUT/gateway-llm.yaml" "providers:
  fake: { kind: openai, base_url: \"$LLM_BASE/v1\", api_key: bench }
models:
  bench: { targets: [ { provider: fake, model: fake-model } ] }"
        start_gateway gateway-llm "$OUT/gateway-llm.yaml"
        GW_BASE=${GW_URL%/mcp}
        if [ $HAVE_LITELLM = 1 ] && ! start_litellm litellm "$LLM_BASE"; then
            echo "litellm: did not start (see $OUT/litellm.err); its rows are skipped" >&2
            stop "$LITELLM_PID"
            HAVE_LITELLM=0
        fi
        LITELLM_ARGS=(-H "Authorization: Bearer sk-bench" --watch-pid "${LITELLM_PID:-}" --watch-pid "$LLM_PID")
        for c in 1 32; do
            load llm direct "$LLM_BASE/v1/chat/completions" $c --chat fake-model --watch-pid "$LLM_PID"
            load llm portcullis "$GW_BASE/v1/chat/completions" $c --chat bench --watch-pid "$GW_PID" --watch-pid "$LLM_PID"
            if [ $HAVE_LITELLM = 1 ]; then
                load llm litellm "$LITELLM_BASE/v1/chat/completions" $c --chat bench "${LITELLM_ARGS[@]}"
            fi
        done
        load llm-stream direct "$LLM_BASE/v1/chat/completions" 1 --chat fake-model --stream --watch-pid "$LLM_PID"
        load llm-stream portcullis "$GW_BASE/v1/chat/completions" 1 --chat bench --stream --watch-pid "$GW_PID" --watch-pid "$LLM_PID"
        if [ $HAVE_LITELLM = 1 ]; then
            load llm-stream litellm "$LITELLM_BASE/v1/chat/completions" 1 --chat bench --stream "${LITELLM_ARGS[@]}"
            note llm litellm peak_rss_kb "$(status_kb "$LITELLM_PID" VmHWM)"
            stop "$LITELLM_PID"
        fi
        note llm portcullis peak_rss_kb "$(status_kb "$GW_PID" VmHWM)"
        note llm direct peak_rss_kb "$(status_kb "$LLM_PID" VmHWM)"
        stop "$GW_PID"
        stop "$LLM_PID"
    fi
fi

if [ "$CF_UP" = 1 ]; then
    # Its sandbox pools' processes hold memory too, though no call uses them:
    # their proportional share (Pss; they are forks sharing pages).
    note echo+setup contextforge peak_rss_kb "$(status_kb "$CF_PID" VmHWM)" \
        sandbox_children_pss_kb "$(children_pss_kb "$CF_PID")"
    stop "$CF_PID"
fi
stop "$FX_PID"

# --- summary --------------------------------------------------------------------

log "summary ($(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg))"
python3 "$ROOT/scripts/bench_summary.py" "$RESULTS"
echo "results: $RESULTS" >&2
