"""`notifications/tasks` on a `subscriptions/listen` stream (the tasks
extension of 2026-07-28, SEP-2663): a listener names task ids in
`notifications.taskIds`, the acknowledgement lists the ones the gateway
accepted (only this identity's, on this endpoint), and each accepted task's
full state arrives whenever it changes, up to its end.

No SDK speaks this yet (the Python SDK has no task client; rmcp's filter
has no `taskIds`), so the listener is raw HTTP in the 2026-07-28 wire
format, read event by event on a thread. The tasks come from real
upstreams: the fixture's 2026-07-28 task tools, and a 2025-11-25 upstream
on the `mcp==1.30.0` SDK whose task the gateway shims."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import queue
import signal
import socket
import subprocess
import threading
import urllib.parse

import pytest
import yaml

from conftest import GATEWAY, Proc, fixture_stdio, http_get, wait_for
from test_tasks_2026 import Raw, meta, modern

ALICE, BOB = "key-alice-0001", "key-bob-0002"
AUTH = {"api_keys": [{"id": who, "sha256": hashlib.sha256(k.encode()).hexdigest()} for who, k in (("alice", ALICE), ("bob", BOB))]}


class Listener:
    """One open listen stream; its JSON-RPC messages land in a queue."""

    def __init__(self, url: str, task_ids: list[str] | None, headers: dict[str, str] | None = None, tasks: bool = True, rid: int = 41):
        self.rid = rid
        body = {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "subscriptions/listen",
            "params": {
                "notifications": {"taskIds": task_ids} if task_ids is not None else {"toolsListChanged": True},
                "_meta": meta(tasks),
            },
        }
        self.messages: queue.Queue = queue.Queue()
        self.status: int | None = None
        self.opened = threading.Event()
        parsed = urllib.parse.urlsplit(url)
        self._conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
        self._conn.request(
            "POST",
            parsed.path,
            body=json.dumps(body),
            headers={
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "subscriptions/listen",
                **(headers or {}),
            },
        )
        threading.Thread(target=self._read, daemon=True).start()
        assert self.opened.wait(30), "the listen request was not answered"

    def _read(self) -> None:
        try:
            r = self._conn.getresponse()
            self.status = r.status
            self.opened.set()
            if not (r.getheader("content-type") or "").startswith("text/event-stream"):
                self.messages.put(json.loads(r.read()))
                return
            # A quiet stream is normal: no read timeout.
            self._conn.sock.settimeout(None)
            while line := r.readline():
                line = line.decode().rstrip("\r\n")
                if line.startswith("data:") and line[5:].strip():
                    self.messages.put(json.loads(line[5:]))
        # Closing the socket under a blocked read ends the loop one of these ways.
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            pass
        finally:
            self.opened.set()

    def next(self, timeout: float = 30) -> dict:
        return self.messages.get(timeout=timeout)

    def task_states(self, task_id: str, until: tuple[str, ...]) -> list[dict]:
        """The `notifications/tasks` for `task_id`, up to one in `until`."""
        states = []
        while True:
            message = self.next()
            if message.get("method") != "notifications/tasks":
                continue
            params = message["params"]
            assert params["_meta"]["io.modelcontextprotocol/subscriptionId"] == self.rid, message
            if params["taskId"] != task_id:
                continue
            states.append(params)
            if params["status"] in until:
                return states

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._conn.sock is not None:
                self._conn.sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()


def notifications_counted(gw, status: str) -> float:
    _, body = http_get(gw.endpoint("/metrics"))
    return sum(
        float(line.split()[-1])
        for line in body.decode().splitlines()
        if line.startswith("portcullis_task_notifications_total{") and f'status="{status}"' in line
    )


def test_a_listener_is_sent_its_tasks_states_and_only_its_own(procs):
    _, gw = modern(procs, auth=AUTH)
    alice = Raw(gw.url, {"authorization": f"Bearer {ALICE}"})
    bob = Raw(gw.url, {"authorization": f"Bearer {BOB}"})
    mine = alice.call("fx__slow_compute", {"seconds": 1, "label": "heard"})["taskId"]
    theirs = bob.call("fx__slow_compute", {"seconds": 0, "label": "theirs"})["taskId"]
    altered = mine[:-2] + ("AA" if not mine.endswith("AA") else "BB")

    listener = Listener(gw.url, [theirs, mine, altered, mine], {"authorization": f"Bearer {ALICE}"})
    try:
        assert listener.status == 200
        ack = listener.next()
        assert ack["method"] == "notifications/subscriptions/acknowledged", ack
        # Bob's id and the altered one are not accepted; nor is the repeat.
        assert ack["params"]["notifications"]["taskIds"] == [mine]
        states = listener.task_states(mine, until=("completed", "failed", "cancelled"))
        assert states[0]["status"] == "working"
        done = states[-1]
        assert done["status"] == "completed" and done["result"]["content"][0]["text"].startswith("computed heard")
        # What the stream said is what tasks/get says, under the same id.
        got = alice.get(mine)
        assert {k: v for k, v in got.items() if k != "resultType"} == {k: v for k, v in done.items() if k != "_meta"}
    finally:
        listener.close()
    assert notifications_counted(gw, "completed") >= 1


def test_a_task_asking_for_input_is_heard_asking_and_answered(procs):
    _, gw = modern(procs)
    c = Raw(gw.url)
    task_id = c.call("fx__confirm_delete", {"filename": "heard.txt"})["taskId"]
    listener = Listener(gw.url, [task_id])
    try:
        assert listener.next()["params"]["notifications"]["taskIds"] == [task_id]
        waiting = listener.task_states(task_id, until=("input_required",))[-1]
        ((key, request),) = waiting["inputRequests"].items()
        assert request["method"] == "elicitation/create" and "heard.txt" in request["params"]["message"]
        c.ok("tasks/update", {"taskId": task_id, "inputResponses": {key: {"action": "accept", "content": {"confirm": True}}}})
        done = listener.task_states(task_id, until=("completed", "failed", "cancelled"))[-1]
        assert done["status"] == "completed" and done["result"]["content"][0]["text"] == "deleted heard.txt"
    finally:
        listener.close()


def test_asking_for_tasks_without_the_extension_or_with_a_malformed_list_is_refused(procs):
    _, gw = modern(procs)
    task_id = Raw(gw.url).call("fx__slow_compute", {"seconds": 0, "label": "x"})["taskId"]
    listener = Listener(gw.url, [task_id], tasks=False)
    try:
        assert listener.status == 400
        error = listener.next()["error"]
        assert error["code"] == -32021
        assert error["data"]["requiredCapabilities"] == {"extensions": {"io.modelcontextprotocol/tasks": {}}}
    finally:
        listener.close()
    # A list of ids that is not one is refused in words, not dropped.
    for malformed in ("abc", [task_id, 7], {"id": task_id}):
        listener = Listener(gw.url, malformed)
        try:
            assert listener.status == 400, malformed
            error = listener.next()["error"]
            assert error["code"] == -32602 and "taskIds" in error["message"], error
        finally:
            listener.close()
    # A listen stream without taskIds needs no extension.
    plain = Listener(gw.url, None, tasks=False)
    try:
        assert plain.status == 200
        ack = plain.next()
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["notifications"] == {"toolsListChanged": True}
    finally:
        plain.close()


def test_a_shimmed_2025_task_is_heard_asking_and_completing(procs):
    """A task of the 2025-11-25 design (a real 1.x SDK upstream) that the
    gateway shims: it has no `notifications/tasks` of its own, yet the
    listener hears it ask and end, as its `tasks/get` would show it."""
    from test_task_shim import KEYS, client, shim_gateway
    from test_tasks_2025 import PYTHON1

    if not PYTHON1.exists():
        pytest.skip("no venv-mcp1 (scripts/install-peers.sh)")
    gw = shim_gateway(procs)
    c = client(gw)
    task_id = c.call("up__ask")["taskId"]
    listener = Listener(gw.url, [task_id], {"authorization": f"Bearer {KEYS['alice']}"})
    try:
        assert listener.next()["params"]["notifications"]["taskIds"] == [task_id]
        waiting = listener.task_states(task_id, until=("input_required",))[-1]
        ((key, request),) = waiting["inputRequests"].items()
        assert request["params"]["message"] == "Which color?"
        c.ok("tasks/update", {"taskId": task_id, "inputResponses": {key: {"action": "accept", "content": {"color": "red"}}}})
        done = listener.task_states(task_id, until=("completed", "failed", "cancelled"))[-1]
        assert done["status"] == "completed" and done["result"]["content"][0]["text"] == "color red", done
    finally:
        listener.close()


class StdioGateway:
    """`portcullis stdio` spoken to in 2026-07-28, a line per message."""

    def __init__(self, procs, config: dict):
        path = procs.tmp / "stdio.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [str(GATEWAY), "stdio", "--config", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(procs.tmp / "stdio.log", "wb"),
        )
        procs.started.append(Proc(self.proc, procs.tmp / "stdio.log"))
        self.messages: queue.Queue = queue.Queue()
        self.next_id = 100
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.messages.put(json.loads(line))

    def send(self, method: str, params: dict, tasks: bool = True) -> int:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": {**params, "_meta": meta(tasks)}}
        self.proc.stdin.write((json.dumps(body) + "\n").encode())
        self.proc.stdin.flush()
        return self.next_id

    def next(self, timeout: float = 30) -> dict:
        return self.messages.get(timeout=timeout)

    def answer(self, rid: int, seen: list | None = None) -> dict:
        while True:
            message = self.next()
            if message.get("id") == rid and "method" not in message:
                return message
            if seen is not None:
                seen.append(message)


def test_the_stdio_front_end_sends_task_states_too(procs):
    """The same on `portcullis stdio`, which has no HTTP request to carry
    the accepted ids: the pump settles them, refuses a listener without
    the extension, and completes the acknowledgement."""
    gw = StdioGateway(procs, {"upstreams": {"fx": {**fixture_stdio(), "protocol": "2026-07-28"}}})

    def slow_compute_listed() -> bool:
        tools = gw.answer(gw.send("tools/list", {}))["result"]["tools"]
        return any(t["name"] == "fx__slow_compute" for t in tools)

    wait_for(slow_compute_listed, what="fx up behind portcullis stdio")
    created = gw.answer(gw.send("tools/call", {"name": "fx__slow_compute", "arguments": {"seconds": 1, "label": "stdio"}}))
    task_id = created["result"]["taskId"]

    refused = gw.answer(gw.send("subscriptions/listen", {"notifications": {"taskIds": [task_id]}}, tasks=False))
    assert refused["error"]["code"] == -32021

    rid = gw.send("subscriptions/listen", {"notifications": {"taskIds": [task_id, "forged"]}})
    ack = gw.next()
    assert ack["method"] == "notifications/subscriptions/acknowledged", ack
    assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == rid
    assert ack["params"]["notifications"]["taskIds"] == [task_id]
    states = []
    while not states or states[-1]["status"] not in ("completed", "failed", "cancelled"):
        message = gw.next()
        if message.get("method") == "notifications/tasks":
            assert message["params"]["taskId"] == task_id
            states.append(message["params"])
    assert states[0]["status"] == "working"
    assert states[-1]["status"] == "completed" and states[-1]["result"]["content"][0]["text"].startswith("computed stdio")
    # A signal ends the gateway while its client keeps stdin open and the
    # listen stream runs (it used to wait for the client's next line).
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=15) == 0
