"""2025-11-25 tasks through the gateway: a 2025 client (the 1.x `mcp` SDK,
in its own venv) creates, polls, fetches, cancels and lists tasks of
server-everything's `simulate-research-query`, which answers mid-task
questions by elicitation. The client only ever holds the gateway's sealed
task ids, which open for no other identity."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mcp import Client

from conftest import PEERS, everything_stdio, fixture_stdio, http_get, legacy_initialize, run, wait_for
from conftest import metric as gateway_metric
from test_cancel import upstream_cancellations

PYTHON1 = PEERS / "venv-mcp1" / "bin" / "python"
CLIENT = Path(__file__).with_name("tasks2025_client.py")
UPSTREAM = Path(__file__).with_name("tasks2025_upstream.py")
ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"

pytestmark = pytest.mark.skipif(not PYTHON1.exists(), reason="no venv-mcp1 (scripts/install-peers.sh)")


def tasks_gateway(procs, upstream=None):
    keys = [
        {"id": who, "sha256": hashlib.sha256(key.encode()).hexdigest()}
        for who, key in (("alice", ALICE), ("bob", BOB))
    ]
    gw = procs.gateway({"upstreams": {"everything": upstream or everything_stdio()}, "auth": {"api_keys": keys}})
    gw.wait_up("everything")
    return gw


def client(gw, key: str, scenario: str, *args: str) -> dict:
    done = subprocess.run(
        [str(PYTHON1), str(CLIENT), gw.url, key, scenario, *args],
        capture_output=True,
        timeout=100,
    )
    assert done.returncode == 0, f"{done.stderr.decode()}\ngateway log:\n{gw.output()[-4000:]}"
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def shows_an_upstream_id(task_id: str) -> bool:
    """Whether the id, or any base64url piece of it decoded, holds something
    shaped like server-everything's own ids (32 hex digits)."""
    texts = [task_id]
    for piece in task_id.split("."):
        with contextlib.suppress(ValueError):
            texts.append(base64.urlsafe_b64decode(piece + "=" * (-len(piece) % 4)).decode("latin-1"))
    return any(re.search(r"[0-9a-f]{32}", t) for t in texts)


def metric(text: str, method: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("portcullis_mcp_requests_total{") and f'mcp_method_name="{method}"' in line:
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[-1])
    return total


def test_a_task_outlives_its_call_is_fetched_cancelled_and_listed(procs):
    gw = tasks_gateway(procs)
    seen = client(gw, ALICE, "lifecycle")
    assert seen["protocol"] == "2025-11-25"
    task_id, cancelled_id = seen["ids"]
    # The client holds the gateway's sealed id, never the upstream's.
    assert not shows_an_upstream_id(task_id) and not shows_an_upstream_id(cancelled_id), task_id
    assert seen["created"]["status"] == "working"
    assert seen["created"]["ttl"] == 300000 and seen["created"]["pollInterval"] == 1000
    assert seen["get_id"] == task_id and seen["first_status"] == "working"
    assert seen["final_status"] == "completed"
    assert "Research Report: rust" in seen["result_text"]
    related = seen["result_meta"].get("io.modelcontextprotocol/related-task", {}).get("taskId")
    assert related in (None, task_id), related
    assert seen["cancel_status"] == "cancelled" and seen["cancel_id"] == cancelled_id
    assert seen["after_cancel"] == "cancelled"
    assert sorted(seen["listed"]) == sorted(seen["ids"])
    # An altered id and a made-up one are refused alike.
    assert seen["altered"] == "unknown task id"
    assert seen["garbage"] == "unknown task id"

    status, body = http_get(gw.endpoint("/metrics"))
    assert status == 200
    text = body.decode()
    assert metric(text, "tools/call", gen_ai_tool_name="simulate-research-query", outcome="ok") == 2, text
    assert metric(text, "tasks/get", outcome="ok") >= 3
    assert metric(text, "tasks/get", outcome="invalid_params") == 2
    assert metric(text, "tasks/result", outcome="ok") == 1
    assert metric(text, "tasks/cancel", outcome="ok") == 1
    assert metric(text, "tasks/list", outcome="ok") == 1
    assert task_id not in text


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_input_mid_task_reaches_the_owning_client(procs, transport):
    # Over stdio the upstream's question cannot say which call it belongs
    # to; over HTTP it arrives on the stream of the client's tasks/result.
    upstream = everything_stdio() if transport == "stdio" else {"http": {"url": procs.everything_http()}}
    gw = tasks_gateway(procs, upstream)
    seen = client(gw, ALICE, "input")
    assert seen["waiting_status"] == "input_required", seen
    assert len(seen["elicited"]) == 1, seen
    question = seen["elicited"][0]
    assert "python" in question["message"]
    related = question["meta"].get("io.modelcontextprotocol/related-task", {}).get("taskId")
    assert related in (None, seen["task_id"]), related
    assert "programming" in seen["result_text"], seen["result_text"]


@pytest.mark.parametrize("transport", ["stdio", "streamableHttp", "sse"])
def test_a_2025_client_sees_the_tasks_capability_and_each_tools_task_support(procs, transport):
    # rmcp keeps neither the `tasks` capability nor a tool's `execution`:
    # the gateway reads them off the upstream's bytes and completes its own
    # answers to 2025-11-25 clients.
    # The client itself speaks streamable HTTP only.
    direct_url = procs.everything_http()
    if transport == "stdio":
        upstream = everything_stdio()
    elif transport == "streamableHttp":
        upstream = {"http": {"url": direct_url}}
    else:
        upstream = {"sse": {"url": procs.everything_http("sse")}}
    gw = tasks_gateway(procs, upstream)
    seen = client(gw, ALICE, "listing")
    direct = client(Direct(direct_url), "", "listing")
    assert direct["execution"]["simulate-research-query"] == {"taskSupport": "required"}, direct
    assert seen["execution"]["everything__simulate-research-query"] == {"taskSupport": "required"}, seen
    # Every tool as server-everything itself lists it, under the gateway's
    # names (the gateway's connection can route roots and sampling, so it is
    # shown a few more tools than this client).
    assert {f"everything__{name}": e for name, e in direct["execution"].items()}.items() <= seen["execution"].items()
    assert seen["protocol"] == "2025-11-25"
    assert seen["tasks_capability"]["requests"]["tools"]["call"] == {}, seen["tasks_capability"]
    assert "list" in seen["tasks_capability"] and "cancel" in seen["tasks_capability"]
    # What server-everything declared at initialize is kept too.
    status, body = http_get(gw.endpoint("/admin/api/upstreams"))
    [everything] = [u for u in json.loads(body)["upstreams"] if u["name"] == "everything"]
    assert everything["tasks_2025"]["requests"]["tools"]["call"] == {}, everything


def test_tools_of_a_2026_upstream_with_the_tasks_extension_are_optional_tasks(procs):
    gw = local_gateway(procs)
    seen = client(gw, ALICE, "listing")
    # The fixture offers the tasks extension in 2026-07-28; the 2025 fixture
    # declares no `execution`, so none is invented.
    assert seen["execution"]["modern__slow"] == {"taskSupport": "optional"}, seen
    assert seen["execution"]["legacy__slow"] is None, seen


def test_a_2026_client_is_told_nothing_of_2025_task_support(procs):
    # 2026-07-28 has neither field (tasks there are an extension).
    from test_eras import post_2026

    gw = tasks_gateway(procs)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    }
    auth = {"authorization": f"Bearer {ALICE}"}
    listed = post_2026(gw.url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}, auth)
    tools = {t["name"]: t for t in listed["result"]["tools"]}
    assert "execution" not in tools["everything__simulate-research-query"], tools
    discovered = post_2026(gw.url, {"jsonrpc": "2.0", "id": 2, "method": "server/discover", "params": {"_meta": meta}}, auth)
    assert "tools" in discovered["result"]["capabilities"], discovered
    assert "tasks" not in discovered["result"]["capabilities"], discovered
    # The same gateway tells a 2025 client.
    assert client(gw, ALICE, "listing")["execution"]["everything__simulate-research-query"]


class Direct:
    """A server reached without the gateway, for `client`."""

    def __init__(self, url: str):
        self.url = url

    def output(self) -> str:
        return ""


@pytest.mark.parametrize("kind", ["forwarded", "local"])
def test_another_identitys_task_is_refused_and_not_listed(procs, kind):
    # A task server-everything holds, and one the gateway holds for a
    # 2026-07-28 upstream's call.
    if kind == "forwarded":
        gw, tool = tasks_gateway(procs), ()
    else:
        gw, tool = local_gateway(procs), ("modern__slow",)
    alices = client(gw, ALICE, "own", *tool)["task_id"]
    bobs_view = client(gw, BOB, "foreign", alices)
    assert bobs_view["get"] == "unknown task id"
    assert bobs_view["result"] == "unknown task id"
    assert bobs_view["cancel"] == "unknown task id"
    assert alices not in bobs_view["listed"]
    # Alice still reaches it from a new session.
    assert client(gw, ALICE, "foreign", alices)["get"] is None


def local_gateway(procs, policies=None):
    """A 2026-07-28 upstream over HTTP (`modern`) and a 2025 one without
    tasks (`legacy`): neither can hold a 2025 task, so the gateway does."""
    keys = [
        {"id": who, "sha256": hashlib.sha256(key.encode()).hexdigest()}
        for who, key in (("alice", ALICE), ("bob", BOB))
    ]
    config = {
        "upstreams": {
            "modern": {"http": {"url": procs.fixture_http()}, "protocol": "2026-07-28"},
            "legacy": {**fixture_stdio(), "protocol": "legacy"},
        },
        "auth": {"api_keys": keys},
    }
    if policies:
        config["policies"] = policies
    gw = procs.gateway(config)
    gw.wait_up("modern", "legacy")
    return gw


def test_a_plain_answer_to_a_task_augmented_call_is_a_completed_task(procs):
    # `modern` negotiates 2026-07-28 (the other task design); `legacy`
    # speaks 2025-11-25 without tasks. The client asked for a task, so it
    # gets one either way (the SDK's call_tool_as_task needs one).
    gw = local_gateway(procs)
    seen = client(gw, ALICE, "plain", "modern__echo,legacy__echo")
    assert seen["modern__echo"] == "modern__echo"
    assert seen["legacy__echo"] == "legacy__echo"
    assert seen["modern__echo:status"] == "working"
    assert seen["legacy__echo:status"] == "completed"
    assert len(seen["listed"]) == 2


@pytest.mark.parametrize("upstream", ["modern", "legacy"])
def test_a_gateway_local_task_runs_is_fetched_cancelled_and_listed(procs, upstream):
    gw = local_gateway(procs)
    seen = client(gw, ALICE, "local", upstream)
    task_id, cancelled_id = seen["ids"]
    assert seen["created"]["ttl"] == 60000 and seen["created"]["pollInterval"], seen["created"]
    assert seen["final_status"] == "completed"
    assert seen["result_text"] == "slept 1500 ms"
    assert seen["result_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == task_id
    # Progress under the client's token: all eleven steps arrive.
    assert [p[2] for p in seen["progress"]][-1] == "done" and len(seen["progress"]) == 11, seen["progress"]
    if upstream == "modern":
        # The call runs on after the task was handed out.
        assert seen["created"]["status"] == "working" and seen["first_status"] in ("working", "completed")
        assert seen["progress_at_creation"] < 11, seen
        assert seen["cancel_status"] == "cancelled" and seen["after_cancel"] == "cancelled"
        assert seen["cancelled_result"], seen
        assert seen["listed"] == {task_id: "completed", cancelled_id: "cancelled"}
        statuses = {(s["taskId"], s["status"]) for s in seen["status"]}
        assert (task_id, "completed") in statuses and (cancelled_id, "cancelled") in statuses, seen["status"]
        # The upstream saw the cancellation.
        wait_for(lambda: upstream_cancellations(gw) >= 1, timeout=10, what="upstream call cancelled")
    else:
        # A 2025 upstream without tasks answers the call: a completed task.
        assert seen["created"]["status"] == "completed"
        assert seen["cancel_status"] == "the task has already ended"
        assert seen["after_cancel"] == "completed" and seen["cancelled_result"] is None
        assert seen["listed"] == {task_id: "completed", cancelled_id: "completed"}


def test_a_gateway_local_task_outlives_the_session_that_made_it(procs):
    """Ending a session cancels its calls upstream, but not a task it made:
    the task is the caller's, fetched later from another session."""
    gw = local_gateway(procs)
    started = client(gw, ALICE, "start-local", "modern")
    wait_for(lambda: gateway_metric(gw, "portcullis_sessions_open") == 0, timeout=10, what="the first session ended")
    fetched = client(gw, ALICE, "fetch", started["task_id"])
    assert fetched == {**fetched, "final_status": "completed", "result_text": "slept 1500 ms"}, fetched
    assert gateway_metric(gw, "mcp_client_operation_duration_seconds_count", mcp_method_name="tools/call",
                          upstream="modern", outcome="session_ended") == 0


def test_a_gateway_local_task_asks_its_client_for_input(procs):
    gw = local_gateway(procs)
    seen = client(gw, ALICE, "local-input", "modern")
    assert seen["final_status"] == "completed"
    assert seen["result_text"] == "Hello, Ada!"
    [question] = seen["elicited"]
    assert question["meta"]["io.modelcontextprotocol/related-task"]["taskId"] == seen["task_id"]
    assert "input_required" in seen["status"], seen["status"]


def test_policy_refuses_before_a_gateway_local_task_exists_and_guards_its_result(procs, tmp_path):
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    policies = tmp_path / "policies"
    policies.mkdir()
    rules = {
        "rules": [{"id": "no-add", "match": {"tool": "modern__add"}, "action": "deny"}],
        "guards": [{"id": "no-secrets-out", "detect": ["secrets"], "on": ["results"], "action": "redact"}],
    }
    (policies / "p.yaml").write_text(yaml.safe_dump(rules))
    gw = local_gateway(procs, {"dir": str(policies), "default": "allow"})
    seen = client(gw, ALICE, "denied", f"modern__add|modern__echo|leak {secret}")
    assert seen["denied"], seen
    # The refused call made no task: only the echo's is listed.
    assert seen["listed"] == [seen["task_id"]]
    assert secret not in seen["result_text"] and "[REDACTED" in seen["result_text"], seen["result_text"]


def test_progress_and_status_after_the_call_reach_the_owner_under_its_ids(procs):
    upstream = {"stdio": {"command": str(PYTHON1), "args": [str(UPSTREAM)]}}
    gw = procs.gateway({"upstreams": {"up": upstream}})
    gw.wait_up("up")
    seen = client(gw, "", "notify")
    task_id = seen["task_id"]
    assert seen["result_text"] == "reported"
    # The client's own progress token stays valid for the task's life.
    assert [p[0] for p in seen["progress"]] == ["tok-1", "tok-1"], seen
    assert [p[2] for p in seen["progress"]] == ["half", "done"]
    statuses = [s for s in seen["status"] if s["message"] == "halfway"]
    assert statuses and all(s["taskId"] == task_id for s in seen["status"]), seen["status"]


def test_a_log_line_marked_with_its_task_reaches_only_the_owner(procs):
    """A stdio upstream's log line with the related-task `_meta`, sent while
    no call is in flight, is the task's: it reaches the session that owns
    the task and no other session, though that one listens at the same
    level (it would reach every session as the connection's)."""
    upstream = {"stdio": {"command": str(PYTHON1), "args": [str(UPSTREAM)]}}
    gw = procs.gateway({"upstreams": {"up": upstream}})
    gw.wait_up("up")
    other: list[str] = []

    async def on_log(params):
        other.append(str(params.data))

    async def go():
        async with Client(gw.url, mode="legacy", logging_callback=on_log) as bystander:
            await bystander.set_logging_level("info")
            # The owner's scenario runs on well after the line (it releases
            # the task and fetches its result), time for a line handed to
            # every session to have reached this one too.
            return await asyncio.to_thread(client, gw, "", "notify")

    seen = run(go())
    assert seen["logs"] == ["task halfway"], seen
    assert "task halfway" not in other, other
    assert gateway_metric(gw, "portcullis_upstream_log_lines_total", upstream="up", route="call") == 1


def test_a_question_marked_with_its_task_reaches_the_owner_under_its_id(procs):
    upstream = {"stdio": {"command": str(PYTHON1), "args": [str(UPSTREAM)]}}
    gw = procs.gateway({"upstreams": {"up": upstream}})
    gw.wait_up("up")
    seen = client(gw, "", "ask")
    assert seen["waiting_status"] == "input_required"
    assert seen["result_text"] == "color teal"
    [question] = seen["elicited"]
    related = question["meta"]["io.modelcontextprotocol/related-task"]["taskId"]
    assert related == seen["task_id"]


def json_upstream(procs) -> dict:
    """`tasks2025_upstream.py` over streamable HTTP, answering each POST
    with a JSON body (which rmcp parses before the gateway sees it)."""
    url = procs.listening("tasks2025-http", [str(PYTHON1), str(UPSTREAM), "http"])
    # It does answer with JSON, not SSE, or the tests using it prove nothing.
    status, content_type, answer = legacy_initialize(url)
    assert (status, content_type) == (200, "application/json"), (status, content_type)
    assert "tasks" in answer["result"]["capabilities"]
    return {"http": {"url": url}}


def test_a_json_answering_http_upstreams_task_support_reaches_a_2025_client(procs):
    # What rmcp drops from a JSON answer is read off its bytes, as from an
    # SSE event's.
    gw = procs.gateway({"upstreams": {"up": json_upstream(procs)}})
    gw.wait_up("up")
    seen = client(gw, "", "listing")
    assert seen["execution"]["up__report"] == {"taskSupport": "required"}, seen
    assert seen["execution"]["up__ask"] == {"taskSupport": "required"}, seen
    assert seen["execution"]["up__release"] is None, seen
    assert seen["tasks_capability"]["requests"]["tools"]["call"] == {}, seen
    # The `tasks` capability the upstream declared at initialize is kept.
    status, body = http_get(gw.endpoint("/admin/api/upstreams"))
    [up] = [u for u in json.loads(body)["upstreams"] if u["name"] == "up"]
    assert up["tasks_2025"]["requests"]["tools"]["call"] == {}, up


def test_policy_refuses_before_a_task_exists_and_guards_the_result(procs, tmp_path):
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    policies = tmp_path / "policies"
    policies.mkdir()
    rules = {
        "rules": [
            {"id": "no-denied-topic", "match": {"tool": "everything__simulate-research-query",
                                                "args": {"/topic": {"equals": "denied"}}}, "action": "deny"},
            {"id": "everything", "match": {"upstream": "everything"}, "action": "allow"},
        ],
        "guards": [{"id": "no-secrets-out", "detect": ["secrets"], "on": ["results"], "action": "redact"}],
    }
    (policies / "tasks.yaml").write_text(yaml.safe_dump(rules))
    audit = tmp_path / "audit.jsonl"
    gw = procs.gateway(
        {
            "upstreams": {"everything": everything_stdio()},
            "policies": {"dir": str(policies), "default": "deny", "audit": {"file": str(audit)}},
        }
    )
    gw.wait_up("everything")
    seen = client(gw, "", "guarded", f"leak {secret}")
    assert seen["denied"], seen
    # The refused call made no task: only the allowed one is listed.
    assert seen["listed"] == [seen["task_id"]]
    assert secret not in seen["result_text"] and "[REDACTED" in seen["result_text"], seen["result_text"]

    def audited():
        lines = [json.loads(l) for l in audit.read_text().splitlines() if l.strip()] if audit.exists() else []
        return lines if any(l["event"] == "guard" and l["method"] == "tasks/result" for l in lines) else None

    lines = wait_for(audited, what="the guard's audit line for tasks/result")
    assert any(l.get("rule") == "no-denied-topic" and l["action"] == "deny" for l in lines), lines
    # Requests about the task are audited as part of the call that created it.
    allowed = next(l for l in lines if l["method"] == "tools/call" and l["action"] == "allow")
    about_task = [l for l in lines if l["method"].startswith("tasks/")]
    assert about_task and all(l.get("call_id") == allowed["call_id"] for l in about_task), lines


def test_the_stdio_front_end_serves_2025_tasks(tmp_path):
    """`portcullis stdio`, as a desktop client launches it: the 1.x client
    sees the tasks capability and each tool's `execution`, and drives a
    task through its life, including a question mid-task (on stdio the
    gateway renames the task requests and completes the answers itself,
    as its HTTP face does)."""
    from conftest import GATEWAY

    config = tmp_path / "stdio.yaml"
    config.write_text(yaml.safe_dump({"upstreams": {"everything": everything_stdio()}}))
    url = f"stdio:{GATEWAY}:{config}"
    listing = client(Direct(url), "", "listing")
    assert listing["protocol"] == "2025-11-25"
    assert listing["tasks_capability"]["requests"]["tools"]["call"] == {}, listing
    assert listing["execution"]["everything__simulate-research-query"] == {"taskSupport": "required"}, listing
    seen = client(Direct(url), "", "lifecycle")
    assert seen["final_status"] == "completed" and "Research Report: rust" in seen["result_text"], seen
    assert seen["cancel_status"] == "cancelled" and seen["after_cancel"] == "cancelled", seen
    assert not shows_an_upstream_id(seen["ids"][0])
    asked = client(Direct(url), "", "input")
    assert asked["waiting_status"] == "input_required" and "programming" in asked["result_text"], asked


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
