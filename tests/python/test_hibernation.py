"""Idle downstream sessions hibernate (their rmcp worker is closed, only the
`initialize` parameters are kept) and wake, unseen by the client, on their
next request. Sessions holding gateway state or an open stream stay awake."""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request

from conftest import mcp_session, metric, run, wait_for


class RawSession:
    """A 2025-11-25 client over plain HTTP POSTs, without the GET stream an
    SDK client opens: the kind of session that is idle between calls."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, session_id: str = ""):
        """Initializes a new session, or with `session_id` presents that one."""
        self.url = url
        self.extra = headers or {}
        self.session_id = session_id
        self.next_id = 1
        if session_id:
            return
        status, answer = self.request("initialize", {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "hibernation-test", "version": "1"},
        })
        assert status == 200 and "result" in answer, answer
        status, _ = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert status == 202, status

    def post(self, body: dict, method: str = "POST") -> tuple[int, bytes]:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream", **self.extra}
        if self.session_id:
            headers["mcp-session-id"] = self.session_id
            headers["mcp-protocol-version"] = "2025-11-25"
        data = json.dumps(body).encode() if method == "POST" else None
        req = urllib.request.Request(self.url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                self.session_id = resp.headers.get("mcp-session-id") or self.session_id
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def request(self, method: str, params: dict) -> tuple[int, dict]:
        rid = self.next_id
        self.next_id += 1
        status, body = self.post({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        for line in body.decode().splitlines():
            payload = line[len("data:"):].strip() if line.startswith("data:") else line.strip()
            if payload.startswith("{"):
                message = json.loads(payload)
                if message.get("id") == rid:
                    return status, message
        return status, {"raw": body.decode()}

    def echo(self, text: str) -> tuple[int, dict]:
        return self.request("tools/call", {"name": "fx__echo", "arguments": {"message": text}})


def gateway(procs, **extra):
    # An HTTP upstream: a stdio server in `auto` runs a second child for
    # legacy clients, whose list changes are not the listened ones.
    upstream = {"http": {"url": procs.fixture_http()}}
    gw = procs.gateway({"upstreams": {"fx": upstream}, "http": {"session_hibernate_after": "1s"}, **extra})
    gw.wait_up("fx")
    return gw


def test_an_idle_session_sleeps_and_wakes_where_it_was(procs):
    gw = gateway(procs)
    s = RawSession(gw.url)
    status, answer = s.echo("before")
    assert status == 200 and "before" in json.dumps(answer["result"]), answer

    wait_for(lambda: metric(gw, "portcullis_sessions_hibernated") == 1, what="the idle session to hibernate")
    assert metric(gw, "portcullis_sessions_open") == 0

    # The same session id, no new initialize: the gateway rebuilds it.
    status, answer = s.echo("after")
    assert status == 200 and "after" in json.dumps(answer["result"]), answer
    assert metric(gw, "portcullis_session_restores_total") == 1
    assert metric(gw, "portcullis_sessions_hibernated") == 0
    assert metric(gw, "portcullis_sessions_open") == 1

    # It is still one session: ending it ends it for good.
    status, _ = s.post({}, method="DELETE")
    assert status == 200
    status, _ = s.echo("gone")
    assert status == 404


def test_a_sleeping_session_can_be_ended(procs):
    gw = gateway(procs)
    s = RawSession(gw.url)
    wait_for(lambda: metric(gw, "portcullis_sessions_hibernated") == 1, what="the idle session to hibernate")
    status, _ = s.post({}, method="DELETE")
    assert status == 200
    assert metric(gw, "portcullis_sessions_hibernated") == 0
    status, _ = s.echo("gone")
    assert status == 404
    assert metric(gw, "portcullis_session_restores_total") == 0


def test_a_session_holding_state_stays_awake(procs):
    gw = gateway(procs)
    leveled = RawSession(gw.url)
    status, answer = leveled.request("logging/setLevel", {"level": "debug"})
    assert status == 200 and "result" in answer, answer
    plain = RawSession(gw.url)
    # `leveled` was idle longer than `plain`: the sweep that put `plain` to
    # sleep passed it over.
    wait_for(lambda: metric(gw, "portcullis_sessions_hibernated") == 1, what="the plain session to hibernate")
    status, answer = leveled.echo("leveled")
    assert status == 200 and "leveled" in json.dumps(answer["result"]), answer
    assert metric(gw, "portcullis_session_restores_total") == 0
    status, answer = plain.echo("plain")
    assert status == 200 and "plain" in json.dumps(answer["result"]), answer
    assert metric(gw, "portcullis_session_restores_total") == 1


def test_a_sleeping_sdk_session_keeps_its_get_stream_and_hears_list_changes(procs):
    """The SDK holds a GET stream open for the session's whole life. The
    stream outlives the sleeping worker, carries the list changes the
    gateway would have sent, and carries on from the rebuilt worker."""
    from mcp import types

    gw = gateway(procs)

    async def go():
        changes = asyncio.Queue()

        async def on_message(message):
            if isinstance(message, types.ToolListChangedNotification):
                changes.put_nowait(message)

        async with mcp_session(gw.url, message_handler=on_message) as sdk:
            await sdk.call_tool("fx__echo", {"message": "sdk"})
            await asyncio.to_thread(
                wait_for,
                lambda: metric(gw, "portcullis_sessions_hibernated") == 1,
                what="the SDK's session to hibernate",
            )
            # Another session makes the upstream announce a tools change.
            other = RawSession(gw.url)
            status, answer = await asyncio.to_thread(
                other.request, "tools/call", {"name": "fx__test_trigger_tool_change", "arguments": {}}
            )
            assert status == 200 and "result" in answer, answer
            await asyncio.wait_for(changes.get(), 30)
            assert metric(gw, "portcullis_session_restores_total") == 0, "hearing must not wake the session"
            assert metric(gw, "portcullis_session_relayed_notifications_total") == 1

            result = await sdk.call_tool("fx__echo", {"message": "awake"})
            assert "awake" in json.dumps(result.model_dump(mode="json"))
            assert metric(gw, "portcullis_session_restores_total") == 1
            # Awake again, the session's changes reach the same GET stream
            # through its rebuilt worker.
            status, answer = await asyncio.to_thread(
                other.request, "tools/call", {"name": "fx__test_trigger_tool_change", "arguments": {}}
            )
            assert status == 200 and "result" in answer, answer
            await asyncio.wait_for(changes.get(), 30)
            assert metric(gw, "portcullis_sessions_hibernated") == 0

    run(go())


def test_a_sleeping_session_stays_its_owners(procs):
    keys = {"alice": "key-alice-0001", "bob": "key-bob-0002"}
    api_keys = [{"id": who, "sha256": hashlib.sha256(k.encode()).hexdigest()} for who, k in keys.items()]
    gw = gateway(procs, auth={"api_keys": api_keys})
    alice = RawSession(gw.url, {"authorization": f"Bearer {keys['alice']}"})
    wait_for(lambda: metric(gw, "portcullis_sessions_hibernated") == 1, what="the idle session to hibernate")

    # Another identity presenting the session id is refused, and does not
    # wake the session for itself.
    bob = RawSession(gw.url, {"authorization": f"Bearer {keys['bob']}"}, session_id=alice.session_id)
    status, answer = bob.echo("stolen")
    assert status == 403, answer
    assert metric(gw, "portcullis_session_restores_total") == 0

    status, answer = alice.echo("mine")
    assert status == 200 and "mine" in json.dumps(answer["result"]), answer
    assert metric(gw, "portcullis_session_restores_total") == 1
