"""A 2026-07-28 client and an upstream of the 2025-11-25 task design,
through the gateway's shim: a tool the upstream runs only as a task
(`taskSupport: required`) becomes a 2026 task for a client that declared
the tasks extension, driven with the 2026 methods (`tasks/get` inlines the
result, `tasks/update` carries input, `tasks/cancel`).

The 2025 upstreams are real: `tasks2025_upstream.py` on the `mcp==1.30.0`
SDK (stdio), and server-everything's `simulate-research-query`."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from conftest import everything_stdio
from test_tasks_2025 import PYTHON1, UPSTREAM, json_upstream
from test_tasks_2026 import TASKS, Raw, shows_no_upstream_id

pytestmark = pytest.mark.skipif(not PYTHON1.exists(), reason="no venv-mcp1 (scripts/install-peers.sh)")

KEYS = {"alice": "key-alice-0001", "bob": "key-bob-0002"}


def shim_gateway(procs, upstream=None, **extra):
    auth = {"api_keys": [{"id": who, "sha256": hashlib.sha256(k.encode()).hexdigest()} for who, k in KEYS.items()]}
    up = upstream or {"stdio": {"command": str(PYTHON1), "args": [str(UPSTREAM)]}}
    gw = procs.gateway({"upstreams": {"up": up}, "auth": auth, **extra})
    gw.wait_up("up")
    return gw


def client(gw, who: str = "alice", tasks: bool = True) -> Raw:
    auth = {"authorization": f"Bearer {KEYS[who]}"}
    return Raw(gw.url, auth, tasks=tasks, capabilities={"elicitation": {"form": {}}})


def test_a_2025_task_asks_for_input_and_completes_as_a_2026_task(procs):
    gw = shim_gateway(procs)
    c = client(gw)
    assert TASKS in c.ok("server/discover", {})["capabilities"]["extensions"]
    created = c.call("up__ask")
    assert created["resultType"] == "task" and created["status"] in ("working", "input_required")
    task_id = created["taskId"]
    waiting = c.until(task_id, "input_required")
    ((key, request),) = waiting["inputRequests"].items()
    assert request["method"] == "elicitation/create" and request["params"]["message"] == "Which color?"
    # Keys stay: the same question is shown again until it is answered.
    assert list(c.get(task_id)["inputRequests"]) == [key]
    # A malformed answer is refused; the question keeps waiting.
    assert c.error("tasks/update", {"taskId": task_id, "inputResponses": {key: {"action": 7}}})["code"] == -32602
    answer = {key: {"action": "accept", "content": {"color": "blue"}}}
    assert c.ok("tasks/update", {"taskId": task_id, "inputResponses": answer}) == {"resultType": "complete"}
    done = c.until(task_id, "completed", "failed", "cancelled")
    assert done["status"] == "completed" and done["resultType"] == "complete", done
    assert done["result"]["content"][0]["text"] == "color blue"
    # The 2025 result's related-task mark is not carried into the 2026 one.
    assert "io.modelcontextprotocol/related-task" not in done["result"].get("_meta", {})
    assert done["taskId"] == task_id
    # The upstream's own task id (a UUID) never reaches the client.
    assert all(shows_no_upstream_id(raw) for raw in c.seen), c.seen


def test_a_2025_task_is_cancelled_and_refused_to_another_identity(procs):
    gw = shim_gateway(procs)
    alice, bob = client(gw), client(gw, "bob")
    task_id = alice.call("up__report")["taskId"]
    assert alice.get(task_id)["status"] == "working"
    assert bob.error("tasks/get", {"taskId": task_id})["code"] == -32602
    assert bob.error("tasks/cancel", {"taskId": task_id})["code"] == -32602
    assert alice.ok("tasks/cancel", {"taskId": task_id}) == {"resultType": "complete"}
    assert alice.until(task_id, "cancelled", "completed", "failed")["status"] == "cancelled"


def test_a_json_answering_http_upstreams_required_tool_runs_as_a_2026_task(procs):
    """Over streamable HTTP answered with JSON bodies, the tool's
    `taskSupport: required` is still seen, so its call is shimmed."""
    gw = shim_gateway(procs, json_upstream(procs))
    c = client(gw)
    created = c.call("up__report")
    assert created["resultType"] == "task" and created["status"] == "working", created
    task_id = created["taskId"]
    assert c.call("up__release")["content"][0]["text"] == "released"
    done = c.until(task_id, "completed", "failed", "cancelled")
    assert done["status"] == "completed" and done["result"]["content"][0]["text"] == "reported", done
    assert all(shows_no_upstream_id(raw) for raw in c.seen), c.seen


def test_a_client_without_the_extension_gets_the_upstreams_refusal(procs):
    """Without the extension there is no task to shim onto: the call goes
    to the upstream plainly, and the upstream refuses it as it would."""
    gw = shim_gateway(procs)
    answer = client(gw, tasks=False).rpc("tools/call", {"name": "up__ask", "arguments": {}})
    refused = answer.get("error") or (answer["result"].get("isError") and answer["result"])
    assert refused, answer


def test_server_everything_research_runs_as_a_2026_task_and_asks_for_clarification(procs):
    """The TypeScript SDK's 2025 tasks deliver a task's elicitation through
    `tasks/result`: through the shim it is the 2026 task's input request."""
    gw = shim_gateway(procs, everything_stdio())
    c = client(gw)
    created = c.call("up__simulate-research-query", {"topic": "tides", "ambiguous": False})
    assert created["resultType"] == "task"
    done = c.until(created["taskId"], "completed", "failed", "cancelled")
    assert done["status"] == "completed", done
    assert "tides" in json.dumps(done["result"])

    task_id = c.call("up__simulate-research-query", {"topic": "python", "ambiguous": True})["taskId"]
    ((key, request),) = c.until(task_id, "input_required")["inputRequests"].items()
    assert "python" in request["params"]["message"]
    choice = request["params"]["requestedSchema"]["properties"]["interpretation"]["oneOf"][0]["const"]
    answer = {key: {"action": "accept", "content": {"interpretation": choice}}}
    c.ok("tasks/update", {"taskId": task_id, "inputResponses": answer})
    done = c.until(task_id, "completed", "failed", "cancelled")
    assert done["status"] == "completed" and choice in json.dumps(done["result"]), done


def test_policy_audits_a_shimmed_task_and_guards_its_result(procs, tmp_path):
    """The shimmed task is one logical call: its `tasks/*` requests are
    audited under the creating call's id, and its inlined result passes the
    result guards like any call's."""
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    policies = tmp_path / "policies"
    policies.mkdir()
    rules = {
        "rules": [{"id": "all", "match": {"upstream": "up"}, "action": "allow"}],
        "guards": [
            {"id": "no-secrets-out", "detect": ["secrets"], "on": ["results"], "action": "redact"},
            {"id": "mask-emails-in", "detect": ["pii.email"], "on": ["arguments"], "action": "redact"},
        ],
    }
    (policies / "p.yaml").write_text(yaml.safe_dump(rules))
    audit = tmp_path / "audit.jsonl"
    gw = shim_gateway(procs, policies={"dir": str(policies), "audit": {"file": str(audit)}})
    c = client(gw)
    task_id = c.call("up__ask")["taskId"]
    ((key, _),) = c.until(task_id, "input_required")["inputRequests"].items()
    c.ok("tasks/update", {"taskId": task_id, "inputResponses": {key: {"action": "accept", "content": {"color": secret}}}})
    done = c.until(task_id, "completed", "failed", "cancelled")
    text = done["result"]["content"][0]["text"]
    assert secret not in text and "[REDACTED" in text, text
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    [created] = [r for r in lines if r["method"] == "tools/call"]
    later = [r for r in lines if r["method"].startswith("tasks/")]
    assert {r["method"] for r in later} >= {"tasks/get", "tasks/update"}
    assert all(r["call_id"] == created["call_id"] for r in later), later
    # What the user answers goes upstream through the argument guards.
    task_id = c.call("up__ask")["taskId"]
    ((key, _),) = c.until(task_id, "input_required")["inputRequests"].items()
    c.ok("tasks/update", {"taskId": task_id, "inputResponses": {key: {"action": "accept", "content": {"color": "ada@example.com"}}}})
    text = c.until(task_id, "completed", "failed", "cancelled")["result"]["content"][0]["text"]
    assert text.startswith("color [REDACTED") and "ada@example.com" not in text, text
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    hits = [(h["detector"], h["direction"]) for r in lines if r["event"] == "guard" for h in r["hits"]]
    assert ("pii.email", "arguments") in hits, hits
