"""The tasks extension of 2026-07-28 (`io.modelcontextprotocol/tasks`,
SEP-2663) through the gateway, in front of the fixture spoken to in
2026-07-28 (upstream `protocol: 2026-07-28`).

The installed `mcp` SDK has no task client, so these are raw JSON-RPC POSTs
in the 2026-07-28 wire format. The client's task ids are the gateway's:
sealed, bound to the identity that created the task, and never the
upstream's own id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest

from conftest import everything_stdio, fixture_stdio, http_get, wait_for
from test_eras import post_2026

TASKS = "io.modelcontextprotocol/tasks"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def meta(tasks: bool = True, capabilities: dict | None = None) -> dict:
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {
            **({"extensions": {TASKS: {}}} if tasks else {}),
            **(capabilities or {}),
        },
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    }


class Raw:
    """A sessionless 2026-07-28 client: every request is its own POST."""

    def __init__(
        self, url: str, headers: dict[str, str] | None = None, tasks: bool = True, capabilities: dict | None = None
    ):
        self.url = url
        self.headers = headers or {}
        self.tasks = tasks
        self.capabilities = capabilities
        self.next_id = 0
        self.seen: list[str] = []  # every answer, to look for upstream ids

    def rpc(self, method: str, params: dict) -> dict:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": {**params, "_meta": meta(self.tasks, self.capabilities)}}
        answer = post_2026(self.url, body, self.headers)
        self.seen.append(json.dumps(answer))
        return answer

    def ok(self, method: str, params: dict) -> dict:
        answer = self.rpc(method, params)
        assert "result" in answer, answer
        return answer["result"]

    def error(self, method: str, params: dict) -> dict:
        answer = self.rpc(method, params)
        assert "error" in answer, answer
        return answer["error"]

    def call(self, tool: str, arguments: dict | None = None) -> dict:
        return self.ok("tools/call", {"name": tool, "arguments": arguments or {}})

    def get(self, task_id: str) -> dict:
        return self.ok("tasks/get", {"taskId": task_id})

    def until(self, task_id: str, *statuses: str) -> dict:
        return wait_for(
            lambda: (t := self.get(task_id))["status"] in statuses and t,
            what=f"task status in {statuses}",
        )


def modern(procs, name: str = "gateway", protocol: str = "2026-07-28", **extra) -> tuple[str, object]:
    url = procs.fixture_http()
    gw = procs.gateway({"upstreams": {"fx": {"http": {"url": url}, "protocol": protocol}}, **extra}, name=name)
    gw.wait_up("fx")
    return url, gw


def shows_no_upstream_id(raw: str) -> bool:
    """The fixture's task ids are UUIDs: none may show, neither in clear nor
    inside a base64 part of a token."""
    if UUID.search(raw):
        return False
    for token in re.findall(r"[A-Za-z0-9_\-]{16,}", raw):
        padded = token + "=" * (-len(token) % 4)
        try:
            if UUID.search(base64.urlsafe_b64decode(padded).decode("latin-1")):
                return False
        except ValueError:
            pass
    return True


@pytest.mark.parametrize("protocol", ["2026-07-28", "auto"])
def test_a_task_outlives_its_request_and_the_client_never_sees_the_upstream_id(procs, protocol):
    fixture_url, gw = modern(procs, protocol=protocol)
    c = Raw(gw.endpoint("/mcp/fx"))
    created = c.call("slow_compute", {"seconds": 1, "label": "later"})
    assert created["resultType"] == "task" and created["status"] == "working"
    task_id = created["taskId"]
    # The request that created it is over; later, separate requests find it.
    # (The fixture refuses a tasks/get whose Mcp-Name is not its own id, so
    # each answer also shows the upstream request named the upstream's id.)
    done = c.until(task_id, "completed")
    assert done["taskId"] == task_id and done["resultType"] == "complete"
    assert "computed later" in done["result"]["content"][0]["text"]
    # The id is the gateway's: the upstream does not know it.
    direct = Raw(fixture_url)
    assert direct.error("tasks/get", {"taskId": task_id})["code"] == -32602
    assert all(shows_no_upstream_id(raw) for raw in c.seen), c.seen
    # On the aggregate endpoint too.
    agg = Raw(gw.url)
    created = agg.call("fx__slow_compute", {"seconds": 0, "label": "agg"})
    assert agg.until(created["taskId"], "completed")["result"]["content"][0]["text"].startswith("computed agg")
    assert all(shows_no_upstream_id(raw) for raw in agg.seen)


def test_a_cancelled_task_settles_cancelled(procs):
    _, gw = modern(procs)
    c = Raw(gw.url)
    task_id = c.call("fx__slow_compute", {"seconds": 60, "label": "never"})["taskId"]
    ack = c.ok("tasks/cancel", {"taskId": task_id})
    assert ack == {"resultType": "complete"}
    assert c.until(task_id, "cancelled", "completed", "failed")["status"] == "cancelled"
    # Cancelling a finished task is the same empty ack.
    assert c.ok("tasks/cancel", {"taskId": task_id}) == {"resultType": "complete"}


def test_a_task_asks_for_input_and_is_answered_with_tasks_update(procs):
    _, gw = modern(procs)
    c = Raw(gw.url)
    task_id = c.call("fx__confirm_delete", {"filename": "notes.txt"})["taskId"]
    waiting = c.until(task_id, "input_required")
    ((key, request),) = waiting["inputRequests"].items()
    assert request["method"] == "elicitation/create" and "notes.txt" in request["params"]["message"]
    ack = c.ok("tasks/update", {"taskId": task_id, "inputResponses": {key: {"action": "accept", "content": {"confirm": True}}}})
    assert ack == {"resultType": "complete"}
    done = c.until(task_id, "completed", "failed", "cancelled")
    assert done["status"] == "completed" and done["result"]["content"][0]["text"] == "deleted notes.txt"


def test_an_altered_task_id_is_refused(procs):
    _, gw = modern(procs)
    c = Raw(gw.url)
    task_id = c.call("fx__slow_compute", {"seconds": 60, "label": "x"})["taskId"]
    mid = len(task_id) // 2
    altered = task_id[:mid] + ("A" if task_id[mid] != "A" else "B") + task_id[mid + 1 :]
    unknown = c.error("tasks/get", {"taskId": "no-such-task"})
    assert unknown["code"] == -32602
    for method, params in [
        ("tasks/get", {"taskId": altered}),
        ("tasks/cancel", {"taskId": altered}),
        ("tasks/update", {"taskId": altered, "inputResponses": {}}),
    ]:
        err = c.error(method, params)
        assert (err["code"], err["message"]) == (unknown["code"], unknown["message"]), method
    # The real id still works, and the task was not cancelled by the forgery.
    assert c.get(task_id)["status"] == "working"
    c.ok("tasks/cancel", {"taskId": task_id})


def test_a_task_id_of_another_identity_is_refused(procs):
    keys = {"alice": "key-alice-0001", "bob": "key-bob-0002"}
    auth = {"api_keys": [{"id": who, "sha256": hashlib.sha256(k.encode()).hexdigest()} for who, k in keys.items()]}
    _, gw = modern(procs, auth=auth)
    alice = Raw(gw.url, {"authorization": f"Bearer {keys['alice']}"})
    bob = Raw(gw.url, {"authorization": f"Bearer {keys['bob']}"})
    task_id = alice.call("fx__slow_compute", {"seconds": 60, "label": "mine"})["taskId"]
    altered = bob.error("tasks/get", {"taskId": task_id[:-1] + ("A" if task_id[-1] != "A" else "B")})
    for method, params in [
        ("tasks/get", {"taskId": task_id}),
        ("tasks/cancel", {"taskId": task_id}),
        ("tasks/update", {"taskId": task_id, "inputResponses": {}}),
    ]:
        err = bob.error(method, params)
        # Refused exactly like a forgery: bob learns nothing about alice's task.
        assert (err["code"], err["message"]) == (altered["code"], altered["message"]), method
    assert alice.get(task_id)["status"] == "working"
    alice.ok("tasks/cancel", {"taskId": task_id})


def test_the_extension_is_gated_and_the_removed_methods_are_gone(procs):
    _, gw = modern(procs)
    plain = Raw(gw.url, tasks=False)
    # Without the extension: no task, and tasks/* need the capability.
    sync = plain.call("fx__slow_compute", {"seconds": 0, "label": "sync"})
    assert sync["resultType"] == "complete" and "taskId" not in sync
    err = plain.error("tasks/get", {"taskId": "whatever"})
    assert err["code"] == -32021 and TASKS in json.dumps(err["data"])
    # A task-required tool refuses such a client, as the upstream says.
    assert plain.error("tools/call", {"name": "fx__failing_job", "arguments": {}})["code"] == -32021
    c = Raw(gw.url)
    discovered = c.ok("server/discover", {})
    assert TASKS in discovered["capabilities"]["extensions"]
    # 2026-07-28 dropped tasks/result and tasks/list.
    assert c.error("tasks/result", {"taskId": "x"})["code"] == -32601
    assert c.error("tasks/list", {})["code"] == -32601
    # Nor are the gateway's private names for a legacy session's 2025 task
    # requests a way to them (nor to a 2025-design task).
    for private in ("portcullis/tasks-2025/list", "portcullis/tasks-2025/get", "portcullis/tasks-2025/tools/call"):
        params = {"name": "fx__slow_compute", "arguments": {}, "task": {}} if private.endswith("call") else {"taskId": "x"}
        assert c.error(private, params)["code"] == -32601, private


@pytest.mark.parametrize(
    "upstream",
    [
        # Spoken to in 2025-11-25 (explicit: the default `auto` speaks
        # 2026-07-28 to the fixture).
        {"protocol": "legacy"},
        # A per-client connection ends with its session (a 2026 client's is
        # one request), which a task must outlive: its tasks are not offered.
        {"protocol": "2026-07-28", "session": "per-client"},
    ],
    ids=["legacy", "per-client"],
)
def test_an_endpoint_without_the_extension_says_so(procs, upstream):
    gw = procs.gateway({"upstreams": {"fx": {**fixture_stdio(), **upstream}}})
    gw.wait_up("fx")
    c = Raw(gw.url)
    assert TASKS not in json.dumps(c.ok("server/discover", {}).get("capabilities", {}))
    assert c.error("tasks/get", {"taskId": "x"})["code"] == -32601
    # A task-capable call simply runs: the upstream was never offered tasks.
    r = c.call("fx__slow_compute", {"seconds": 0, "label": "legacy"})
    assert r["resultType"] == "complete" and r["content"][0]["text"].startswith("computed legacy")


SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def test_an_inlined_result_is_guarded_and_every_task_request_is_observed_and_audited(procs, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "r.yaml").write_text(
        json.dumps(
            {
                "rules": [{"id": "fx", "match": {"upstream": "fx"}, "action": "allow"}],
                "guards": [{"id": "no-secrets-out", "detect": ["secrets"], "on": ["results"], "action": "redact"}],
            }
        )
    )
    audit = tmp_path / "audit.jsonl"
    _, gw = modern(procs, policies={"dir": str(tmp_path / "p"), "audit": {"file": str(audit)}})
    c = Raw(gw.url)
    task_id = c.call("fx__slow_compute", {"seconds": 0, "label": SECRET})["taskId"]
    done = c.until(task_id, "completed")
    text = done["result"]["content"][0]["text"]
    assert SECRET not in text and "[REDACTED" in text
    c.ok("tasks/cancel", {"taskId": task_id})

    def audited():
        lines = [json.loads(l) for l in audit.read_text().splitlines()] if audit.exists() else []
        tasks = [l for l in lines if l["method"].startswith("tasks/")]
        return tasks if {"tasks/get", "tasks/cancel"} <= {l["method"] for l in tasks} else None

    lines = wait_for(audited, what="audit lines for tasks/*")
    assert all(l["upstream"] == "fx" and l["target"] == "slow_compute" for l in lines)
    # They are audited as part of the call that created the task.
    decision = next(
        json.loads(l) for l in audit.read_text().splitlines() if json.loads(l)["method"] == "tools/call"
    )
    assert decision["call_id"] and all(l["call_id"] == decision["call_id"] for l in lines)
    assert SECRET not in audit.read_text()
    metrics = http_get(gw.endpoint("/metrics"))[1].decode()
    for method in ("tasks/get", "tasks/cancel"):
        assert re.search(rf'portcullis_mcp_requests_total{{[^}}]*mcp_method_name="{method}"[^}}]*upstream="fx"', metrics), method
        assert f'mcp_client_operation_duration_seconds_count{{mcp_method_name="{method}"' in metrics or re.search(
            rf'mcp_client_operation_duration_seconds_count{{[^}}]*mcp_method_name="{method}"', metrics
        ), method


@pytest.mark.parametrize("tool", ["fx__multi_input"])
def test_a_task_with_two_questions_waits_for_both_answers(procs, tool):
    _, gw = modern(procs)
    c = Raw(gw.url)
    task_id = c.call(tool)["taskId"]
    waiting = wait_for(
        lambda: (t := c.get(task_id))["status"] == "input_required" and len(t["inputRequests"]) == 2 and t,
        what="two pending questions",
    )
    first, second = sorted(waiting["inputRequests"])
    answers = {"name": {"action": "accept", "content": {"name": "Ada"}}, "confirm": {"action": "accept", "content": {"confirm": True}}}
    c.ok("tasks/update", {"taskId": task_id, "inputResponses": {first: answers[first]}})
    still = c.get(task_id)
    assert still["status"] == "input_required" and list(still["inputRequests"]) == [second]
    c.ok("tasks/update", {"taskId": task_id, "inputResponses": {second: answers[second]}})
    assert c.until(task_id, "completed")["result"]["content"][0]["text"] == "name=Ada confirm=true"


def test_a_task_of_the_other_design_is_refused_clearly(procs):
    """One identity, both eras: a 2025-11-25 task (server-everything, driven
    by the 1.x SDK) cannot be driven with the 2026 methods, and a 2026 task
    is unknown to the 2025 ones."""
    from test_tasks_2025 import ALICE, PYTHON1, client

    if not PYTHON1.exists():
        pytest.skip("no venv-mcp1 (scripts/install-peers.sh)")
    fixture_url = procs.fixture_http()
    gw = procs.gateway(
        {
            "upstreams": {
                "everything": everything_stdio(),
                "fx": {"http": {"url": fixture_url}, "protocol": "2026-07-28"},
            },
            "auth": {"api_keys": [{"id": "alice", "sha256": hashlib.sha256(ALICE.encode()).hexdigest()}]},
        }
    )
    gw.wait_up("everything", "fx")
    old = client(gw, ALICE, "own")["task_id"]
    c = Raw(gw.url, {"authorization": f"Bearer {ALICE}"})
    err = c.error("tasks/get", {"taskId": old})
    assert err["code"] == -32602 and "does not offer the 2026-07-28 tasks extension" in err["message"], err
    assert err["data"] == {"upstream": "everything"}
    new = c.call("fx__slow_compute", {"seconds": 60, "label": "era"})["taskId"]
    seen = client(gw, ALICE, "foreign", new)
    assert seen["get"] == "unknown task id" and seen["cancel"] == "unknown task id"
    assert c.get(new)["status"] == "working"
    c.ok("tasks/cancel", {"taskId": new})


def test_a_task_id_is_refused_on_an_endpoint_that_does_not_show_its_upstream(procs):
    upstreams = {name: {"http": {"url": procs.fixture_http()}, "protocol": "2026-07-28"} for name in ("fx", "fy")}
    gw = procs.gateway({"upstreams": upstreams})
    gw.wait_up("fx", "fy")
    on_fx = Raw(gw.endpoint("/mcp/fx"))
    task_id = on_fx.call("slow_compute", {"seconds": 60, "label": "here"})["taskId"]
    unknown = on_fx.error("tasks/get", {"taskId": "no-such-task"})
    err = Raw(gw.endpoint("/mcp/fy")).error("tasks/get", {"taskId": task_id})
    assert (err["code"], err["message"]) == (unknown["code"], unknown["message"])
    # The aggregate endpoint shows both upstreams: the task is reachable there.
    assert Raw(gw.url).get(task_id)["status"] == "working"
    on_fx.ok("tasks/cancel", {"taskId": task_id})


def test_replicas_sharing_a_token_secret_open_each_others_task_ids_and_request_states(procs):
    """Behind a load balancer, the next request may reach another replica
    (or this one after a restart): with the same `tokens.secrets` it opens
    the task id and the wrapped `requestState` another replica issued;
    with another secret it refuses them like any forged token."""
    shared, other = "replica-secret-" + "s" * 32, "another-secret-" + "o" * 32
    fixture_url = procs.fixture_http()

    def replica(name: str, secret: str):
        config = {"upstreams": {"fx": {"http": {"url": fixture_url}, "protocol": "2026-07-28"}}, "tokens": {"secrets": [secret]}}
        gw = procs.gateway(config, name=name)
        gw.wait_up("fx")
        return gw

    a, b, c = replica("replica-a", shared), replica("replica-b", shared), replica("replica-c", other)
    task_id = Raw(a.url).call("fx__slow_compute", {"seconds": 0, "label": "shared"})["taskId"]
    assert Raw(b.url).until(task_id, "completed")["result"]["content"][0]["text"].startswith("computed shared")
    assert Raw(c.url).error("tasks/get", {"taskId": task_id})["code"] == -32602

    asked = Raw(a.url).call("fx__test_input_required_result_request_state")
    assert asked["resultType"] == "input_required", asked
    (key,) = asked["inputRequests"]
    retry = {"name": "fx__test_input_required_result_request_state", "arguments": {}, "requestState": asked["requestState"], "inputResponses": {key: {"action": "accept", "content": {"ok": True}}}}
    done = Raw(b.url).ok("tools/call", retry)
    assert done["content"][0]["text"] == "state-ok: confirmed", done
    assert Raw(c.url).error("tools/call", retry)["code"] == -32602


def test_answers_sent_with_tasks_update_pass_the_argument_guards(procs, tmp_path):
    """What the user answers a task's questions is data for the task's tool,
    like its arguments: redacted or refused by the argument guards before
    `tasks/update` carries it upstream."""
    (tmp_path / "p").mkdir()
    guards = [
        {"id": "no-keys-in", "detect": ["secret.aws_access_key"], "on": ["arguments"], "action": "block"},
        {"id": "mask-emails-in", "detect": ["pii.email"], "on": ["arguments"], "action": "redact"},
    ]
    (tmp_path / "p" / "g.yaml").write_text(json.dumps({"guards": guards}))
    _, gw = modern(procs, policies={"dir": str(tmp_path / "p"), "default": "allow"})
    c = Raw(gw.url)
    task_id = c.call("fx__multi_input")["taskId"]
    waiting = wait_for(
        lambda: (t := c.get(task_id))["status"] == "input_required" and len(t["inputRequests"]) == 2 and t,
        what="two pending questions",
    )
    assert sorted(waiting["inputRequests"]) == ["confirm", "name"]
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    refused = c.error("tasks/update", {"taskId": task_id, "inputResponses": {"name": {"action": "accept", "content": {"name": key}}}})
    assert refused["code"] == -32003 and refused["data"]["guard"] == "no-keys-in", refused
    assert key not in json.dumps(refused)
    # Refused whole: the question is still open.
    assert sorted(c.get(task_id)["inputRequests"]) == ["confirm", "name"]
    answers = {
        "name": {"action": "accept", "content": {"name": "ada@example.com"}},
        "confirm": {"action": "accept", "content": {"confirm": True}},
    }
    c.ok("tasks/update", {"taskId": task_id, "inputResponses": answers})
    text = c.until(task_id, "completed")["result"]["content"][0]["text"]
    assert text.startswith("name=[REDACTED") and "ada@example.com" not in text and text.endswith("confirm=true"), text
