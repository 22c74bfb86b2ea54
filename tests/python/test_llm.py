"""Model routing, driven with the official `openai` and `anthropic` SDKs
against the gateway, with `portcullis-fake-llm` processes as providers:
every strategy, fallback on each fault, cooldown and recovery, translation
between the formats both ways (streamed and not), streamed failures, and
token and cost metrics."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai
import pytest

from conftest import TARGET, Proc, free_port, http_get, wait_for

FAKE = TARGET / "debug" / "portcullis-fake-llm"
CLIENT_KEY = "client-secret-never-forwarded"
PROVIDER_KEY = "provider-key-from-env"


@dataclass
class Fake:
    base: str

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> None:
        req = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        urllib.request.urlopen(req, timeout=10).read()

    def calls(self, model: str) -> int:
        return self.get("/calls")["calls"].get(model, 0)

    def served(self, model: str) -> int:
        return self.get("/calls")["served"].get(model, 0)

    def requests(self) -> list[dict]:
        return self.get("/calls")["requests"]

    def fault(self, spec: str | None, times: int | None = None) -> None:
        self.post("/fault", {"fault": spec, "times": times})


def start_fake(procs, name: str, *args: str) -> Fake:
    log = procs.tmp / f"{name}.log"
    proc = subprocess.Popen(
        [str(FAKE), "--port", "0", *args], stdout=subprocess.PIPE, stderr=open(log, "wb"), stdin=subprocess.DEVNULL
    )
    procs.started.append(Proc(proc, log))
    line = proc.stdout.readline().decode() if proc.stdout else ""
    assert line.startswith("listening on "), line
    return Fake(line.split()[-1])


def provider(fake: Fake, kind: str = "openai", **extra) -> dict:
    base = fake.base + "/v1" if kind == "openai" else fake.base
    return {"kind": kind, "base_url": base, "api_key": "${FAKE_LLM_KEY}", **extra}


def target(provider: str, model: str, **extra) -> dict:
    return {"provider": provider, "model": model, **extra}


@pytest.fixture(autouse=True)
def provider_key(monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", PROVIDER_KEY)


def gateway(procs, providers: dict, models: dict, **extra):
    return procs.gateway({"providers": providers, "models": models, **extra})


def oai(gw, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.endpoint("/v1"), api_key=CLIENT_KEY, max_retries=0, timeout=30, **kw)


def ant(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.base, api_key=CLIENT_KEY, max_retries=0, timeout=30)


USER = [{"role": "user", "content": "hi there"}]


def chat(gw, model: str = "smart", **kw):
    """A chat completion; returns (completion, serving target header)."""
    raw = oai(gw).chat.completions.with_raw_response.create(model=model, messages=kw.pop("messages", USER), **kw)
    return raw.parse(), raw.headers.get("x-portcullis-target")


def metrics(gw) -> str:
    status, body = http_get(gw.endpoint("/metrics"))
    assert status == 200
    return body.decode()


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


# ---------------------------------------------------------------------------
# Both APIs, same format and translated
# ---------------------------------------------------------------------------


def test_openai_client_openai_provider_plain_and_streamed(procs):
    a = start_fake(procs, "a", "--api-key", PROVIDER_KEY)
    gw = gateway(procs, {"a": provider(a)}, {"smart": {"targets": [target("a", "gpt-a")]}})
    c, served_by = chat(gw, messages=[{"role": "system", "content": "be brief"}, *USER])
    assert c.choices[0].message.content == "Hello from gpt-a: hi there"
    assert c.choices[0].finish_reason == "stop"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (4, 5)
    assert c.usage.prompt_tokens_details.cached_tokens == 2
    assert served_by == "a/gpt-a"
    # The provider got the key from the environment, never the client's.
    sent = a.requests()[-1]
    assert sent["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert CLIENT_KEY not in json.dumps(a.requests())
    assert sent["body"]["model"] == "gpt-a"

    chunks = list(
        oai(gw).chat.completions.create(
            model="smart", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "Hello from gpt-a: hi there"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    # Without include_usage the client gets no usage chunk, though the
    # gateway asked the provider for one (see the metrics test).
    chunks = list(oai(gw).chat.completions.create(model="smart", messages=USER, stream=True))
    assert all(ch.usage is None for ch in chunks)
    assert a.requests()[-1]["body"]["stream_options"] == {"include_usage": True}


def test_anthropic_client_anthropic_provider_plain_and_streamed(procs):
    a = start_fake(procs, "a", "--api-key", PROVIDER_KEY)
    gw = gateway(procs, {"a": provider(a, "anthropic")}, {"smart": {"targets": [target("a", "claude-a")]}})
    m = ant(gw).messages.create(model="smart", max_tokens=100, system="be brief", messages=USER)
    assert m.content[0].text == "Hello from claude-a: hi there"
    assert m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == (2, 2, 5)
    sent = a.requests()[-1]
    assert sent["headers"]["x-api-key"] == PROVIDER_KEY
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["headers"]["authorization"] is None
    with ant(gw).messages.stream(model="smart", max_tokens=100, messages=USER) as s:
        assert "".join(s.text_stream) == "Hello from claude-a: hi there"
        final = s.get_final_message()
    assert final.usage.output_tokens == 5 and final.stop_reason == "end_turn"


TOOLS_OAI = [{"type": "function", "function": {"name": "lookup", "description": "d", "parameters": {"type": "object"}}}]
TOOLS_ANT = [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}]


def test_openai_client_served_by_anthropic_provider(procs):
    a = start_fake(procs, "a")
    gw = gateway(procs, {"a": provider(a, "anthropic")}, {"smart": {"targets": [target("a", "claude-a")]}})
    c, _ = chat(gw, messages=[{"role": "system", "content": "be brief"}, *USER], max_tokens=50)
    assert c.choices[0].message.content == "Hello from claude-a: hi there"
    assert c.choices[0].finish_reason == "stop"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.prompt_tokens_details.cached_tokens) == (4, 5, 2)
    body = a.requests()[-1]["body"]
    assert body["system"] == "be brief" and body["max_tokens"] == 50
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}]

    # Truncation maps to `length`.
    c, _ = chat(gw, max_tokens=2)
    assert c.choices[0].finish_reason == "length" and c.choices[0].message.content == "Hello from"

    # Tool calls, and the round trip with the tool's result.
    c, _ = chat(gw, tools=TOOLS_OAI)
    call = c.choices[0].message.tool_calls[0]
    assert c.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"query": "hi there"}
    history = [*USER, c.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    c, _ = chat(gw, tools=TOOLS_OAI, messages=history)
    assert c.choices[0].message.content == "Hello from claude-a: sunny"
    sent = a.requests()[-1]["body"]["messages"]
    assert sent[1]["content"][0]["type"] == "tool_use" and sent[1]["content"][0]["id"] == call.id
    assert sent[2]["content"] == [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]

    # Streamed, text and tool calls.
    chunks = list(oai(gw).chat.completions.create(model="smart", messages=USER, stream=True,
                                                  stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello from claude-a: hi there"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.prompt_tokens == 2 and chunks[-1].usage.completion_tokens == 5
    chunks = list(oai(gw).chat.completions.create(model="smart", messages=USER, stream=True, tools=TOOLS_OAI))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].id.startswith("toolu_") and calls[0].function.name == "lookup"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"query": "hi there"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_anthropic_client_served_by_openai_provider(procs):
    a = start_fake(procs, "a")
    gw = gateway(procs, {"a": provider(a)}, {"smart": {"targets": [target("a", "gpt-a")]}})
    m = ant(gw).messages.create(model="smart", max_tokens=100, system="be brief", messages=USER)
    assert m.content[0].text == "Hello from gpt-a: hi there" and m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == (2, 2, 5)
    body = a.requests()[-1]["body"]
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    assert body["max_tokens"] == 100

    m = ant(gw).messages.create(model="smart", max_tokens=100, messages=USER, tools=TOOLS_ANT)
    use = m.content[0]
    assert m.stop_reason == "tool_use" and use.type == "tool_use" and use.input == {"query": "hi there"}
    m = ant(gw).messages.create(model="smart", max_tokens=100, tools=TOOLS_ANT, messages=[
        *USER, {"role": "assistant", "content": [use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert m.content[0].text == "Hello from gpt-a: sunny"
    sent = a.requests()[-1]["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == use.id
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}

    with ant(gw).messages.stream(model="smart", max_tokens=100, messages=USER) as s:
        assert "".join(s.text_stream) == "Hello from gpt-a: hi there"
        final = s.get_final_message()
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 5)
    with ant(gw).messages.stream(model="smart", max_tokens=100, messages=USER, tools=TOOLS_ANT) as s:
        final = s.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == {"query": "hi there"}
    assert final.stop_reason == "tool_use"


def test_models_embeddings_and_unknown_alias(procs):
    a = start_fake(procs, "a")
    gw = gateway(procs, {"a": provider(a), "c": provider(a, "anthropic")}, {
        "smart": {"targets": [target("a", "gpt-a")]},
        "embed": {"targets": [target("c", "claude-cannot-embed"), target("a", "emb-a")]},
    })
    assert sorted(m.id for m in oai(gw).models.list()) == ["embed", "smart"]
    assert sorted(m.id for m in ant(gw).models.list()) == ["embed", "smart"]
    # The SDK asks for base64 by default and decodes it.
    e = oai(gw).embeddings.create(model="embed", input=["a b", "c"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 8 and e.usage.prompt_tokens == 3
    assert a.served("emb-a") == 1
    with pytest.raises(openai.NotFoundError, match="not configured"):
        chat(gw, model="nope")
    with pytest.raises(anthropic.NotFoundError):
        ant(gw).messages.create(model="nope", max_tokens=10, messages=USER)


# ---------------------------------------------------------------------------
# Fallback, retries, breaker
# ---------------------------------------------------------------------------

FAULTS = ["500", "503", "429", "401", "slow-first-byte=3000", "malformed-chunk=0", "cut-after=0", "connect"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fault", FAULTS)
def test_fallback_on_each_fault(procs, fault, stream):
    a, b = start_fake(procs, "a"), start_fake(procs, "b")
    bad_base = a if fault != "connect" else Fake(f"http://127.0.0.1:{free_port()}")
    bad_model = "gpt-a" if fault == "connect" else f"gpt-a@{fault}"
    gw = gateway(
        procs,
        {"a": provider(bad_base, first_byte_timeout="500ms"), "b": provider(b, "anthropic")},
        {"smart": {"strategy": "fallback", "retry": {"attempts": 1, "backoff": "10ms"},
                   "targets": [target("a", bad_model), target("b", "claude-b")]}},
    )
    if stream:
        chunks = list(oai(gw).chat.completions.create(model="smart", messages=USER, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        c, served_by = chat(gw)
        text = c.choices[0].message.content
        assert served_by == "b/claude-b"
    assert text == "Hello from claude-b: hi there"
    assert b.served("claude-b") == 1
    if fault != "connect":
        retried = fault not in ("401",)
        assert a.calls(bad_model) == (2 if retried else 1)
        assert a.served(bad_model) == 0
    wait_for(lambda: metric(metrics(gw), "portcullis_llm_requests_total", alias="smart", provider="b", outcome="ok") == 1,
             timeout=5, what="request counted")


def test_client_errors_are_not_retried_elsewhere(procs):
    a, b = start_fake(procs, "a"), start_fake(procs, "b")
    gw = gateway(procs, {"a": provider(a), "b": provider(b)},
                 {"smart": {"targets": [target("a", "gpt-a@400"), target("b", "gpt-b")]}})
    with pytest.raises(openai.BadRequestError, match="fake fault 400"):
        chat(gw)
    assert a.calls("gpt-a@400") == 1 and b.calls("gpt-b") == 0


def test_retry_after_is_honoured_on_the_last_target(procs):
    a = start_fake(procs, "a")
    gw = gateway(procs, {"a": provider(a)}, {"smart": {"targets": [target("a", "gpt-a")]}})
    a.fault("429:retry-after=1", times=1)
    t0 = time.monotonic()
    c, _ = chat(gw)
    assert c.choices[0].message.content.startswith("Hello from gpt-a")
    assert time.monotonic() - t0 >= 0.95
    assert a.calls("gpt-a") == 2
    # A longer wait than `max_retry_after` is the client's to make.
    a.fault("429:retry-after=30", times=1)
    with pytest.raises(openai.RateLimitError) as e:
        chat(gw)
    assert int(e.value.response.headers["retry-after"]) >= 29


def test_cooldown_and_recovery(procs):
    a, b = start_fake(procs, "a"), start_fake(procs, "b")
    gw = gateway(procs, {"a": provider(a), "b": provider(b)}, {"smart": {
        "retry": {"attempts": 0}, "breaker": {"failures": 2, "cooldown": "1s"},
        "targets": [target("a", "gpt-a"), target("b", "gpt-b")]}})
    a.fault("500")
    for _ in range(2):
        assert chat(gw)[1] == "b/gpt-b"
    assert a.calls("gpt-a") == 2
    assert metric(metrics(gw), "portcullis_llm_target_cooling_down", provider="a") == 1
    # Open: the target is not even tried.
    for _ in range(3):
        assert chat(gw)[1] == "b/gpt-b"
    assert a.calls("gpt-a") == 2
    # Healed: after the cooldown one probe goes through and closes the breaker.
    a.fault(None)
    wait_for(lambda: chat(gw)[1] == "a/gpt-a", timeout=10, interval=0.2, what="probe back to a")
    assert a.calls("gpt-a") == 3
    assert chat(gw)[1] == "a/gpt-a"
    assert metric(metrics(gw), "portcullis_llm_target_cooling_down", provider="a") == 0


def test_a_failed_probe_reopens_the_breaker(procs):
    a, b = start_fake(procs, "a"), start_fake(procs, "b")
    gw = gateway(procs, {"a": provider(a), "b": provider(b)}, {"smart": {
        "retry": {"attempts": 0}, "breaker": {"failures": 1, "cooldown": "500ms"},
        "targets": [target("a", "gpt-a"), target("b", "gpt-b")]}})
    a.fault("500")
    assert chat(gw)[1] == "b/gpt-b"
    wait_for(lambda: a.calls("gpt-a") == 2 or (chat(gw) and False), timeout=10, interval=0.1, what="probe")
    # The failed probe opened it again: the next request goes straight to b.
    assert chat(gw)[1] == "b/gpt-b"
    assert a.calls("gpt-a") == 2


def test_all_targets_cooling_down_is_503(procs):
    a = start_fake(procs, "a", "--fault", "500")
    gw = gateway(procs, {"a": provider(a)}, {"smart": {
        "retry": {"attempts": 0}, "breaker": {"failures": 1, "cooldown": "60s"}, "targets": [target("a", "gpt-a")]}})
    with pytest.raises(openai.InternalServerError):
        chat(gw)
    with pytest.raises(openai.APIStatusError, match="cooling down") as e:
        chat(gw)
    assert e.value.status_code == 503
    assert a.calls("gpt-a") == 1


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------


def test_weighted_strategy_follows_weights(procs):
    a, b = start_fake(procs, "a"), start_fake(procs, "b")
    gw = gateway(procs, {"a": provider(a), "b": provider(b)}, {"cheap": {
        "strategy": "weighted", "targets": [target("a", "llama", weight=3), target("b", "mini", weight=1)]}})
    client = oai(gw)
    for _ in range(120):
        client.chat.completions.create(model="cheap", messages=USER)
    share = a.served("llama") / 120
    assert 0.6 < share < 0.9, share
    assert a.served("llama") + b.served("mini") == 120


def test_latency_strategy_prefers_the_faster_target(procs):
    slow, fast = start_fake(procs, "slow"), start_fake(procs, "fast")
    gw = gateway(procs, {"slow": provider(slow), "fast": provider(fast)}, {"smart": {
        "strategy": "latency", "targets": [target("slow", "m@slow-first-byte=300"), target("fast", "m")]}})
    served = [chat(gw)[1] for _ in range(6)]
    # Each is measured once, then the faster one wins.
    assert sorted(served[:2]) == ["fast/m", "slow/m@slow-first-byte=300"]
    assert served[2:] == ["fast/m"] * 4
    assert metric(metrics(gw), "portcullis_llm_time_to_first_token_seconds_count", provider="slow") == 1


def test_cost_strategy_prefers_the_cheaper_target_and_falls_back(procs):
    a, b = start_fake(procs, "a"), start_fake(procs, "b")
    gw = gateway(procs, {"a": provider(a), "b": provider(b, prices={"cheap-m": {"input": 0.1, "output": 0.2}})},
                 {"smart": {"strategy": "cost", "targets": [
                     target("a", "dear-m", price={"input": 5, "output": 15}), target("b", "cheap-m")]}})
    assert [chat(gw)[1] for _ in range(3)] == ["b/cheap-m"] * 3
    b.fault("500")
    assert chat(gw)[1] == "a/dear-m"


def test_header_strategy_picks_the_named_target(procs):
    a, b = start_fake(procs, "a"), start_fake(procs, "b")
    gw = gateway(procs, {"a": provider(a), "b": provider(b)}, {"smart": {
        "strategy": "header", "targets": [target("a", "gpt-a"), target("b", "gpt-b")]}})
    assert chat(gw)[1] == "a/gpt-a"
    assert chat(gw, extra_headers={"x-portcullis-target": "b"})[1] == "b/gpt-b"
    assert chat(gw, extra_headers={"x-portcullis-target": "a/gpt-a"})[1] == "a/gpt-a"
    assert chat(gw, extra_body={"metadata": {"portcullis_target": "gpt-b"}})[1] == "b/gpt-b"
    assert "metadata" not in b.requests()[-1]["body"]


# ---------------------------------------------------------------------------
# Streaming behaviour
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["cut-after=3", "malformed-chunk=3"])
def test_failure_after_first_byte_is_an_error_event(procs, fault):
    a, b = start_fake(procs, "a"), start_fake(procs, "b")
    gw = gateway(procs, {"a": provider(a), "c": provider(a, "anthropic"), "b": provider(b)}, {
        "smart": {"targets": [target("a", f"gpt-a@{fault}"), target("b", "gpt-b")]},
        "claude": {"targets": [target("c", f"claude-a@{fault}"), target("b", "gpt-b")]},
    })
    received = []
    with pytest.raises(openai.APIError, match="stream failed"):
        for ch in oai(gw).chat.completions.create(model="smart", messages=[{"role": "user", "content": "a b c d e f"}],
                                                  stream=True):
            received.append(ch)
    assert received, "the first chunks reached the client before the failure"
    # Anthropic clients get `event: error`; a translated stream too.
    for model in ("claude", "smart"):
        with pytest.raises(anthropic.APIStatusError, match="stream failed"):
            with ant(gw).messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "a b c d e f"}]) as s:
                for _ in s.text_stream:
                    pass
    # No fallback after the first byte: b never served.
    assert b.calls("gpt-b") == 0
    wait_for(lambda: metric(metrics(gw), "portcullis_llm_requests_total", outcome="stream_error") == 3,
             timeout=5, what="stream errors counted")


def test_streams_pass_chunk_by_chunk(procs):
    a = start_fake(procs, "a")
    gw = gateway(procs, {"a": provider(a)}, {"smart": {"targets": [target("a", "gpt-a@chunk-delay=150")]}})
    words = " ".join(f"w{i}" for i in range(12))
    t0 = time.monotonic()
    arrivals = []
    for ch in oai(gw).chat.completions.create(model="smart", messages=[{"role": "user", "content": words}], stream=True):
        if ch.choices and ch.choices[0].delta.content:
            arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 15
    assert arrivals[0] < 0.8 and arrivals[-1] > 2.0, arrivals


# ---------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------


def test_usage_and_cost_metrics(procs):
    a, c = start_fake(procs, "a"), start_fake(procs, "c")
    gw = gateway(procs, {
        "a": provider(a, prices={"gpt-a": {"input": 2.0, "output": 10.0, "cached": 1.0}}),
        "c": provider(c, "anthropic"),
    }, {
        "smart": {"targets": [target("a", "gpt-a")]},
        "quirky": {"targets": [target("a", "gpt-a@usage-on-finish", price={"input": 1.0, "output": 1.0})]},
        "claude": {"targets": [target("c", "claude-c", price={"input": 3.0, "output": 15.0})]},
    })
    sys_user = [{"role": "system", "content": "be brief"}, *USER]  # 4 input tokens, 2 cached; 5 output
    chat(gw, messages=sys_user)
    list(oai(gw).chat.completions.create(model="smart", messages=sys_user, stream=True))
    # A provider that puts usage on the chunk with the finish reason.
    list(oai(gw).chat.completions.create(model="quirky", messages=USER, stream=True,
                                         stream_options={"include_usage": True}))
    ant(gw).messages.create(model="claude", max_tokens=100, system="be brief", messages=USER)
    with ant(gw).messages.stream(model="claude", max_tokens=100, messages=USER) as s:
        s.get_final_message()
    m = wait_for(lambda: (t := metrics(gw)) and metric(t, "portcullis_llm_requests_total", outcome="ok") == 5 and t,
                 timeout=5, what="requests counted")
    tok = lambda **kw: metric(m, "portcullis_llm_tokens_total", **kw)  # noqa: E731
    assert tok(alias="smart", provider="a", model="gpt-a", type="input", identity="anonymous") == 8
    assert tok(alias="smart", type="cached") == 4
    assert tok(alias="smart", type="output") == 10
    assert tok(alias="quirky", type="input") == 2 and tok(alias="quirky", type="output") == 5
    assert tok(alias="claude", type="input") == 6 and tok(alias="claude", type="cached") == 2
    assert tok(alias="claude", type="output") == 10
    # smart: 2x (2 uncached * 2.0 + 2 cached * 1.0 + 5 * 10.0) / 1e6
    assert metric(m, "portcullis_llm_cost_usd_total", alias="smart") == pytest.approx(2 * 56e-6)
    assert metric(m, "portcullis_llm_cost_usd_total", alias="quirky") == pytest.approx(7e-6)
    assert metric(m, "portcullis_llm_cost_usd_total", alias="claude") == pytest.approx((6 * 3 + 10 * 15) / 1e6)
    assert metric(m, "gen_ai_client_token_usage_sum", gen_ai_request_model="smart", gen_ai_token_type="input") == 8
    assert metric(m, "gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="claude") == 2
    assert metric(m, "portcullis_llm_gateway_overhead_seconds_count") == 5
    assert metric(m, "portcullis_llm_requests_total", outcome="ok") == 5
    # Every family passes Prometheus' own linter.
    check = subprocess.run(["promtool", "check", "metrics"], input=m.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


# ---------------------------------------------------------------------------
# MCP sampling through the router
# ---------------------------------------------------------------------------


def sampling_gateway(procs, mode: str | None, session: str = "shared"):
    from conftest import fixture_stdio

    a = start_fake(procs, "a")
    sampling = {"model": "smart", **({"mode": mode} if mode else {})}
    gw = gateway(
        procs, {"a": provider(a, "anthropic", prices={"claude-a": {"input": 1.0, "output": 1.0}})},
        {"smart": {"targets": [target("a", "claude-a")]}},
        upstreams={"fixture": {**fixture_stdio(), "session": session}}, sampling=sampling,
    )
    gw.wait_up("fixture")
    return gw, a


def call_sampling_tool(gw, callback=None, **args) -> str:
    import mcp.types as types
    from mcp import Client

    from conftest import run

    async def go():
        kw = {"sampling_callback": callback} if callback else {}
        async with Client(gw.url, mode="legacy", **kw) as c:
            r = await c.call_tool("fixture__test_sampling", {"prompt": "hi there", **args})
            return "".join(b.text for b in r.content if isinstance(b, types.TextContent))

    return run(go())


@pytest.mark.parametrize("session", ["shared", "per-client"])
def test_sampling_served_by_the_router_for_clients_that_cannot_sample(procs, session):
    gw, a = sampling_gateway(procs, None, session)
    assert call_sampling_tool(gw) == "LLM response: Hello from claude-a: hi there"
    assert a.served("claude-a") == 1
    sent = a.requests()[-1]["body"]
    assert sent["max_tokens"] == 100 and sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}]
    m = wait_for(lambda: (t := metrics(gw)) and metric(t, "portcullis_llm_requests_total", alias="smart", outcome="ok") == 1 and t,
                 timeout=5, what="sampling accounted")
    assert metric(m, "portcullis_llm_tokens_total", alias="smart", type="output", identity="anonymous") == 5
    assert metric(m, "portcullis_llm_cost_usd_total", alias="smart") == pytest.approx(7e-6)
    assert metric(m, "portcullis_server_to_client_requests_total", mcp_method_name="sampling/createMessage", outcome="router") == 1


def test_sampling_stays_with_a_client_that_can_unless_config_says_always(procs):
    import mcp.types as types

    async def on_sample(context, params):
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="from client"),
                                         model="client-model")

    gw, a = sampling_gateway(procs, None)
    assert call_sampling_tool(gw, on_sample) == "LLM response: from client"
    assert a.calls("claude-a") == 0
    gw2, a2 = sampling_gateway(procs, "always")
    assert call_sampling_tool(gw2, on_sample) == "LLM response: Hello from claude-a: hi there"
    assert a2.served("claude-a") == 1


def test_model_preferences_choose_among_the_configured_candidates(procs):
    from conftest import fixture_stdio

    a = start_fake(procs, "a")
    prices = {"claude-a": {"input": 1.0, "output": 1.0}, "claude-cheap": {"input": 0.1, "output": 0.1},
              "claude-secret": {"input": 0.01, "output": 0.01}}
    gw = gateway(
        procs, {"a": provider(a, "anthropic", prices=prices)},
        {"smart": {"targets": [target("a", "claude-a")]}, "fast": {"targets": [target("a", "claude-haiku-fast")]},
         "cheap": {"targets": [target("a", "claude-cheap")]}, "secret": {"targets": [target("a", "claude-secret")]}},
        upstreams={"fixture": fixture_stdio()}, sampling={"model": "smart", "candidates": ["fast", "cheap"]},
    )
    gw.wait_up("fixture")
    reply = "LLM response: Hello from {}: hi there".format
    # Hints in order; `secret` is configured but not a candidate, so its hint is passed over.
    hinted = {"hints": [{"name": "secret"}, {"name": "HAIKU"}], "costPriority": 1}
    assert call_sampling_tool(gw, modelPreferences=hinted) == reply("claude-haiku-fast")
    # No hint names a candidate: cost leads, and the cheapest candidate (not `secret`) serves.
    assert call_sampling_tool(gw, modelPreferences={"costPriority": 0.8, "intelligencePriority": 0.3}) == reply("claude-cheap")
    # Intelligence leads, or no preferences: the configured model.
    assert call_sampling_tool(gw, modelPreferences={"intelligencePriority": 1, "costPriority": 0.5}) == reply("claude-a")
    assert call_sampling_tool(gw) == reply("claude-a")
    assert a.calls("claude-secret") == 0
    m = wait_for(lambda: (t := metrics(gw)) and metric(t, "portcullis_llm_requests_total", alias="smart", outcome="ok") == 2 and t,
                 timeout=5, what="sampling accounted per alias")
    assert metric(m, "portcullis_llm_requests_total", alias="fast", outcome="ok") == 1
    assert metric(m, "portcullis_llm_requests_total", alias="cheap", outcome="ok") == 1


def test_without_candidates_model_preferences_change_nothing(procs):
    from conftest import fixture_stdio

    a = start_fake(procs, "a")
    gw = gateway(
        procs, {"a": provider(a, "anthropic", prices={"claude-cheap": {"input": 0.1, "output": 0.1}})},
        {"smart": {"targets": [target("a", "claude-a")]}, "cheap": {"targets": [target("a", "claude-cheap")]}},
        upstreams={"fixture": fixture_stdio()}, sampling={"model": "smart"},
    )
    gw.wait_up("fixture")
    prefs = {"hints": [{"name": "cheap"}], "costPriority": 1}
    assert call_sampling_tool(gw, modelPreferences=prefs) == "LLM response: Hello from claude-a: hi there"
    assert a.served("claude-a") == 1 and a.calls("claude-cheap") == 0


# ---------------------------------------------------------------------------
# Deadlines, provider errors, HTTP guards
# ---------------------------------------------------------------------------


def test_total_timeout_mid_stream_is_an_error_event(procs):
    a = start_fake(procs, "a")
    gw = gateway(procs, {"a": provider(a, timeout="1s")}, {"smart": {"targets": [target("a", "gpt-a@chunk-delay=400")]}})
    got = []
    with pytest.raises(openai.APIError, match="end of the stream"):
        for ch in oai(gw).chat.completions.create(model="smart", messages=[{"role": "user", "content": "a b c d e f"}],
                                                  stream=True):
            got.append(ch)
    assert 1 <= len(got) < 6


def test_a_provider_auth_failure_is_not_the_clients(procs):
    a = start_fake(procs, "a", "--api-key", "other-key")
    gw = gateway(procs, {"a": provider(a)}, {"smart": {"targets": [target("a", "gpt-a")]}})
    with pytest.raises(openai.APIStatusError, match="invalid api key") as e:
        chat(gw)
    assert e.value.status_code == 502


def test_model_api_has_the_http_guards(procs):
    a = start_fake(procs, "a")
    gw = gateway(procs, {"a": provider(a)}, {"smart": {"targets": [target("a", "gpt-a")]}})
    body = json.dumps({"model": "smart", "messages": USER}).encode()

    def post(headers):
        req = urllib.request.Request(gw.endpoint("/v1/chat/completions"), data=body,
                                     headers={"content-type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert post({"Host": "evil.example"}) == 403
    assert post({"Origin": "http://evil.example"}) == 403
    assert post({"Origin": "http://localhost:3000"}) == 200
    assert a.calls("gpt-a") == 1
    status, _ = http_get(gw.endpoint("/v1/chat/completions"))
    assert status == 405


def test_identities_from_api_keys_are_accounted_and_required(procs):
    import hashlib

    a = start_fake(procs, "a")
    keys = {"alice": "alice-key-123", "bob": "bob-key-456"}
    gw = gateway(procs, {"a": provider(a, prices={"gpt-a": {"input": 1.0, "output": 1.0}})},
                 {"smart": {"targets": [target("a", "gpt-a")]}},
                 auth={"api_keys": [{"id": who, "sha256": hashlib.sha256(k.encode()).hexdigest()}
                                    for who, k in keys.items()]})
    # OpenAI clients send `Authorization: Bearer`, Anthropic clients `x-api-key`.
    openai.OpenAI(base_url=gw.endpoint("/v1"), api_key=keys["alice"], max_retries=0).chat.completions.create(
        model="smart", messages=USER)
    anthropic.Anthropic(base_url=gw.base, api_key=keys["bob"], max_retries=0).messages.create(
        model="smart", max_tokens=10, messages=USER)
    with pytest.raises(openai.AuthenticationError):
        oai(gw).chat.completions.create(model="smart", messages=USER)
    with pytest.raises(anthropic.AuthenticationError):
        ant(gw).models.list()
    assert a.calls("gpt-a") == 2
    assert not any(k in json.dumps(a.requests()) for k in keys.values())
    m = wait_for(lambda: (t := metrics(gw)) and metric(t, "portcullis_llm_requests_total", outcome="ok") == 2 and t,
                 timeout=5, what="requests counted")
    for who in keys:
        assert metric(m, "portcullis_llm_tokens_total", identity=who, type="output") == 5
        assert metric(m, "portcullis_llm_cost_usd_total", identity=who) == pytest.approx(7e-6)


def test_check_reports_models_and_names_a_bad_target(tmp_path, monkeypatch):
    import yaml

    from conftest import GATEWAY

    config = {"providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1"}},
              "models": {"smart": {"targets": [{"provider": "p", "model": "m"}]}}}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([str(GATEWAY), "check", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "1 model aliases over 1 providers" in out.stdout, out
    config["models"]["smart"]["targets"][0]["provider"] = "nowhere"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([str(GATEWAY), "check", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "models.smart.targets.0.provider" in out.stderr and "nowhere" in out.stderr


def test_client_trace_context_reaches_the_provider(procs):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    a = start_fake(procs, "a")
    # Spans exist only with an exporter; this one points nowhere, which the
    # gateway tolerates (export errors are logged, requests are unaffected).
    gw = gateway(procs, {"a": provider(a)}, {"smart": {"targets": [target("a", "gpt-a")]}},
                 telemetry={"otlp_endpoint": f"http://127.0.0.1:{free_port()}"})
    chat(gw, extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    sent = a.requests()[-1]["headers"]["traceparent"]
    assert sent and sent.startswith(f"00-{trace_id}-") and not sent.endswith("00f067aa0ba902b7-01"), sent


def test_anthropic_beta_and_count_tokens(procs):
    a = start_fake(procs, "a")
    gw = gateway(procs, {"o": provider(a), "c": provider(a, "anthropic")}, {
        "claude": {"targets": [target("o", "gpt-a"), target("c", "claude-a")]},
        "gpt": {"targets": [target("o", "gpt-a")]},
    })
    beta = {"anthropic-beta": "prompt-caching-2024-07-31"}
    ant(gw).messages.create(model="claude", max_tokens=10, messages=USER, extra_headers=beta)
    # The OpenAI target served it and was not sent the Anthropic header...
    assert a.requests()[-1]["headers"]["anthropic-beta"] is None
    a.fault("500", times=2)
    ant(gw).messages.create(model="claude", max_tokens=10, messages=USER, extra_headers=beta)
    # ...the Anthropic one, after the fallback, was.
    assert a.requests()[-1]["headers"]["anthropic-beta"] == beta["anthropic-beta"]
    # Counted by the first Anthropic target, else estimated.
    raw = ant(gw).messages.with_raw_response.count_tokens(model="claude", system="be brief", messages=USER)
    assert raw.parse().input_tokens == 4 and raw.headers.get("x-portcullis-estimate") is None
    assert a.requests()[-1]["path"] == "/v1/messages/count_tokens" and a.requests()[-1]["model"] == "claude-a"
    raw = ant(gw).messages.with_raw_response.count_tokens(model="gpt", messages=USER)
    assert raw.parse().input_tokens > 0 and raw.headers.get("x-portcullis-estimate") == "true"


def test_policy_and_token_budgets_apply_to_model_requests(procs, tmp_path):
    import hashlib

    import yaml

    a = start_fake(procs, "a")
    keys = {"alice": "alice-key-123", "bob": "bob-key-456"}
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "models.yaml").write_text(yaml.safe_dump({"rules": [
        {"id": "bob-no-smart", "match": {"subject": "bob", "model": "smart"}, "action": "deny",
         "message": "bob may use only the cheap model"},
    ]}))
    gw = gateway(
        procs,
        {"a": provider(a)},
        {"smart": {"targets": [target("a", "gpt-a")]}, "cheap": {"targets": [target("a", "gpt-b")]}},
        auth={"api_keys": [{"id": who, "sha256": hashlib.sha256(k.encode()).hexdigest()} for who, k in keys.items()]},
        policies={"dir": str(policies), "default": "allow", "audit": {"file": str(tmp_path / "audit.jsonl")}},
        ratelimit={"tokens": [{"id": "tpm", "key": ["identity"], "model": "smart", "rate": 10, "per": "1m"}]},
    )

    def client(who):
        return openai.OpenAI(base_url=gw.endpoint("/v1"), api_key=keys[who], max_retries=0, timeout=30)

    # Policy: bob may not use `smart`, and the provider never sees the request.
    with pytest.raises(openai.PermissionDeniedError) as e:
        client("bob").chat.completions.create(model="smart", messages=USER)
    assert "only the cheap model" in str(e.value)
    assert a.calls("gpt-a") == 0
    assert client("bob").chat.completions.create(model="cheap", messages=USER).usage.total_tokens == 7
    # Token budget: 10 tokens a minute; each request uses 7. The second
    # overdraws (admitted with budget left, then drains it), the third waits.
    alice = client("alice")
    alice.chat.completions.create(model="smart", messages=USER)
    alice.chat.completions.create(model="smart", messages=USER)
    with pytest.raises(openai.RateLimitError) as e:
        alice.chat.completions.create(model="smart", messages=USER)
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert "tpm" in str(e.value)
    assert a.calls("gpt-a") == 2
    # Other aliases and identities are not charged.
    client("bob").chat.completions.create(model="cheap", messages=USER)
    audit = [json.loads(l) for l in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(l["identity"] == "bob" and l["rule"] == "bob-no-smart" and l["action"] == "deny" for l in audit)
    assert metric(metrics(gw), "portcullis_ratelimit_refusals_total", limit="tpm") == 1
