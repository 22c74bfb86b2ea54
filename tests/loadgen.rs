//! `portcullis-loadgen` run as a process against the real fixture, the fake
//! model provider and the gateway. `scripts/bench.sh` publishes whatever the
//! load generator reports, so these tests check its report against what the
//! servers saw (their own counters) or against bounds that any honest count
//! must meet; none of them asserts how fast anything is.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any process may take before the test calls it hung: generous,
/// as the suite shares two cores with other builds.
const DEADLINE: Duration = Duration::from_secs(60);

/// Measured time of every load run; `--warmup 0s` makes every request the
/// generator starts count, which the exact checks below rely on.
const WINDOW: [&str; 4] = ["--duration", "1s", "--warmup", "0s"];

/// Runs `work` on its own thread and waits at most [`DEADLINE`] for it.
fn within<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
}

/// A server process (fixture, fake LLM, gateway), killed when dropped.
struct Server {
    child: Child,
    /// The last word of its first stdout line: `listening on URL`.
    url: String,
}

impl Server {
    /// Starts `bin args` and learns where it listens from its first line.
    fn start(bin: &str, args: &[&str]) -> Server {
        Server::start_with(&[], bin, args)
    }

    /// [`Server::start`] with extra environment variables.
    fn start_with(env: &[(&str, &str)], bin: &str, args: &[&str]) -> Server {
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = Server {
            child,
            url: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        // The reader keeps draining so a later line cannot hit a closed pipe.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("{bin} printed no line within {DEADLINE:?}"));
        server.url = line
            .split_whitespace()
            .last()
            .filter(|url| url.starts_with("http://"))
            .unwrap_or_else(|| panic!("{bin} did not say where it listens: {line:?}"))
            .to_owned();
        server
    }

    /// The MCP fixture over streamable HTTP; `url` is its `/mcp` endpoint.
    fn fixture() -> Server {
        Server::start_with(
            // Quiet: the error tests make it warn about every call.
            &[("RUST_LOG", "error")],
            env!("CARGO_BIN_EXE_portcullis-fixture"),
            &["http", "--listen", "127.0.0.1:0"],
        )
    }

    /// The fake OpenAI-compatible provider; `url` is its base.
    fn fake_llm() -> Server {
        Server::start(env!("CARGO_BIN_EXE_portcullis-fake-llm"), &["--port", "0"])
    }

    /// The gateway without upstreams (nothing to wait for before it serves
    /// sessions); `url` is its base, `/mcp` and `/metrics` below it.
    fn gateway(dir: &tempfile::TempDir) -> Server {
        let config = dir.path().join("gateway.yaml");
        // Sessions end only when deleted: none hibernates or times out
        // while a test watches the session gauge.
        let yaml = "listen: 127.0.0.1:0\nlog: { level: warn }\n\
                    http: { session_hibernate_after: 1h, session_idle_timeout: 1h }\n";
        std::fs::write(&config, yaml).expect("write config");
        let config = config.to_str().expect("utf-8 path").to_owned();
        Server::start(env!("CARGO_BIN_EXE_portcullis"), &["serve", "-c", &config])
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the load generator with `args`, output captured.
fn spawn_loadgen(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_portcullis-loadgen"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis-loadgen")
}

/// Waits for a child to exit and collects its output (what is left of it:
/// a test may have read stdout already); kills it and fails the test if it
/// is still running after [`DEADLINE`].
fn finish(mut child: Child) -> Output {
    let stdout = child.stdout.take();
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let err = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let mut out = Vec::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_end(&mut out);
        }
        let _ = tx.send((out, err.join().unwrap_or_default()));
    });
    // The pipes reach their end when the process exits.
    let Ok((stdout, stderr)) = rx.recv_timeout(DEADLINE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("portcullis-loadgen still running after {DEADLINE:?}");
    };
    let status = child.wait().expect("wait for portcullis-loadgen");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs a one-second measured load and returns its `--json` report, after
/// the checks every report must pass.
fn report(url: &str, args: &[&str]) -> Value {
    let mut all = vec![url, "--json"];
    all.extend(WINDOW);
    all.extend(args);
    let out = finish(spawn_loadgen(&all));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not one JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_consistent(&report);
    report
}

/// What holds in every report, whatever the load: ordered percentiles,
/// throughput derived from the count, the window as asked.
fn assert_consistent(r: &Value) {
    let n = |key: &str| num(r, key);
    let lat = &r["latency_us"];
    let (p50, p90, p99, max, mean) = (
        num(lat, "p50"),
        num(lat, "p90"),
        num(lat, "p99"),
        num(lat, "max"),
        num(lat, "mean"),
    );
    assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "percentiles: {r}");
    assert!(mean <= max, "mean above max: {r}");
    if n("ok") > 0.0 {
        assert!(p50 > 0.0, "answers in no time: {r}");
    } else {
        assert_eq!(max, 0.0, "latencies without answers: {r}");
    }
    assert_eq!(n("duration_s"), 1.0, "{r}");
    assert!(
        (n("throughput") - n("ok") / n("duration_s")).abs() < 1e-9,
        "throughput is not ok / duration_s: {r}"
    );
}

/// [`report`] of a load on a fixture of its own.
fn fixture_report(args: &[&str]) -> Value {
    let fx = Server::fixture();
    report(&fx.url, args)
}

/// Bounds on a closed-loop count that hold however slow the machine is:
/// with no warm-up each worker's first request is measured, and a worker's
/// requests follow one another, so their latencies add up to at most the
/// window plus the one that ran past its end. A count of 1, or one inflated
/// several times, fails.
fn assert_closed_loop_count(r: &Value, concurrency: f64) {
    let ok = num(r, "ok");
    assert!(ok >= concurrency, "fewer requests than workers: {r}");
    let lat = &r["latency_us"];
    assert!(
        ok * num(lat, "mean") <= concurrency * (1e6 + num(lat, "max")),
        "more requests than fit in the window: {r}"
    );
}

/// A number in a report; fails the test when it is missing.
fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// The report's error samples, joined for `contains` checks.
fn samples(r: &Value) -> String {
    r["error_samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// `GET base+path` over a fresh connection; returns the body of a 200.
fn http_get(base: &str, path: &str) -> String {
    let authority = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let mut stream = TcpStream::connect(authority).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {response}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "GET {path}: chunked bodies are not decoded here"
    );
    body.to_owned()
}

/// Sum of the Prometheus series `name` whose labels contain `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let labels = series.strip_prefix(name);
            labels.is_some_and(|l| (l.is_empty() || l.starts_with('{')) && l.contains(label))
        })
        .map(|(_, value)| value.parse::<f64>().expect("metric value"))
        .sum()
}

/// Waits until the gateway has no session open. It counts a session closed
/// when its worker has ended, just after answering the DELETE; a session
/// never deleted stays open (the test config keeps them for an hour), so
/// this fails after [`DEADLINE`].
fn assert_sessions_all_closed(gw: &Server) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let metrics = http_get(&gw.url, "/metrics");
        let open = metric(&metrics, "portcullis_sessions_open", "");
        if open == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} sessions left open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nothing listens on: bound by the OS, then released.
fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// Closed-loop `tools/call`: counts, the echoed settings and the
/// percentiles are those of the calls made.
mod closed_loop {
    use super::*;

    #[test]
    fn echo_calls_are_counted_at_the_asked_concurrency() {
        let r = fixture_report(&[
            "-c",
            "4",
            "--sessions",
            "2",
            "--tool",
            "echo",
            "--args",
            r#"{"message":"hello"}"#,
            "--expect",
            "hello",
        ]);
        assert_eq!(r["mode"], "tools/call echo");
        assert_eq!(r["concurrency"], 4);
        assert_eq!(r["sessions"], 2);
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["tool_errors"], 0, "{r}");
        assert_eq!(r["error_samples"], serde_json::json!([]));
        assert_closed_loop_count(&r, 4.0);
    }

    #[test]
    fn latency_spans_the_whole_call() {
        // Four workers on one session: their requests are in flight together.
        let r = fixture_report(&[
            "-c",
            "4",
            "--sessions",
            "1",
            "--tool",
            "slow",
            "--args",
            r#"{"ms":50}"#,
            "--expect",
            "slept 50 ms",
        ]);
        assert_eq!(r["sessions"], 1);
        assert_eq!(r["errors"], 0, "{r}");
        assert_closed_loop_count(&r, 4.0);
        let ok = num(&r, "ok");
        // No call can answer before the fixture's 50 ms sleep is over.
        assert!(num(&r["latency_us"], "p50") >= 50_000.0, "{r}");
        assert!(num(&r["latency_us"], "mean") >= 50_000.0, "{r}");
        // Four workers, each one call at a time, each call 50 ms or more.
        assert!(ok <= 4.0 * (1000.0 / 50.0 + 1.0), "{r}");
    }

    #[test]
    fn an_answer_past_the_timeout_is_an_error_and_the_run_goes_on() {
        // Each call sleeps far past both the timeout and the window: without
        // the timeout the worker would wait out its first call and the run
        // would end with that one answer counted as ok.
        let r = fixture_report(&[
            "--tool",
            "slow",
            "--args",
            r#"{"ms":5000}"#,
            "--timeout",
            "200ms",
        ]);
        assert_eq!(r["ok"], 0, "{r}");
        // A one-second window holds several 200 ms timeouts, each followed
        // by a new connection and a new call.
        assert!(num(&r, "errors") >= 2.0, "{r}");
        assert!(samples(&r).contains("no answer within 200ms"), "{r}");
    }

    #[test]
    fn list_mode_sends_tools_list() {
        // Only a tools/list answer names the fixture's tools.
        let r = fixture_report(&["-c", "2", "--list", "--expect", "test_simple_text"]);
        assert_eq!(r["mode"], "tools/list");
        assert_eq!(r["errors"], 0, "{r}");
        assert_closed_loop_count(&r, 2.0);
    }

    /// The gateway counts the requests it serves: `ok` must be that count,
    /// exactly (nothing unmeasured, as there is no warm-up).
    #[test]
    fn ok_is_the_count_the_server_served() {
        let dir = tempfile::tempdir().expect("temp dir");
        let gw = Server::gateway(&dir);
        let mcp = format!("{}/mcp", gw.url);
        let r = report(&mcp, &["-c", "3", "--sessions", "2", "--list"]);
        assert_eq!(r["errors"], 0, "{r}");
        let metrics = http_get(&gw.url, "/metrics");
        let listed = metric(
            &metrics,
            "portcullis_mcp_requests_total",
            r#"mcp_method_name="tools/list""#,
        );
        assert_eq!(listed, num(&r, "ok"), "{r}\n{metrics}");
    }
}

/// What counts as an error and what as a tool error.
mod failures {
    use super::*;

    #[test]
    fn expect_turns_an_answer_without_the_text_into_an_error() {
        let r = fixture_report(&[
            "-c",
            "2",
            "--args",
            r#"{"message":"hello"}"#,
            "--expect",
            "not-in-the-echo",
        ]);
        assert_eq!(r["ok"], 0, "{r}");
        assert!(num(&r, "errors") >= 2.0, "{r}");
        let s = samples(&r);
        assert!(s.contains(r#"response lacks "not-in-the-echo""#), "{s}");
        // The sample shows what did come back.
        assert!(s.contains("hello"), "{s}");
    }

    #[test]
    fn unknown_tool_is_an_error() {
        let r = fixture_report(&["-c", "2", "--tool", "no_such_tool"]);
        assert_eq!(r["ok"], 0, "{r}");
        assert_eq!(r["tool_errors"], 0, "{r}");
        assert!(num(&r, "errors") >= 2.0, "{r}");
        let s = samples(&r);
        assert!(
            s.contains("JSON-RPC error -32602: Unknown tool: no_such_tool"),
            "{s}"
        );
    }

    /// A tool that runs and refuses (`isError: true`) answered the request:
    /// it is counted in `ok` and again in `tool_errors`, not in `errors`
    /// (bench.sh adds `--expect` where that must fail the run).
    #[test]
    fn refused_call_is_a_tool_error() {
        let r = fixture_report(&["-c", "2", "--tool", "echo", "--args", "{}"]);
        assert_eq!(r["errors"], 0, "{r}");
        assert!(num(&r, "ok") >= 2.0, "{r}");
        assert_eq!(r["tool_errors"], r["ok"], "{r}");
    }

    #[test]
    fn dead_url_fails_at_once() {
        let port = dead_port();
        let url = format!("http://127.0.0.1:{port}/mcp");
        let out = finish(spawn_loadgen(&[&url, "--json", "--duration", "1s"]));
        assert!(!out.status.success(), "a dead URL succeeded");
        assert!(out.stdout.is_empty(), "a report for a dead URL");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("initialize: connecting to 127.0.0.1:{port}")),
            "{stderr}"
        );
    }

    /// `--chat` opens no session first, so a dead provider shows as errors
    /// in the report rather than as a failed run.
    #[test]
    fn dead_chat_url_counts_errors() {
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", dead_port());
        let r = report(&url, &["--chat", "m"]);
        assert_eq!(r["ok"], 0, "{r}");
        assert!(num(&r, "errors") >= 1.0, "{r}");
        assert!(samples(&r).contains("connecting to 127.0.0.1"), "{r}");
    }
}

/// `--rate`: open loop, one request per 1/R s whatever the answers take.
mod open_loop {
    use super::*;

    /// Request k is due at k/R and is sent even when late, so the count is
    /// fixed by the schedule, not by the machine's speed.
    #[test]
    fn rate_fixes_the_request_count() {
        // 30/s: 1/30 s is not a whole number of nanoseconds.
        let r = fixture_report(&["-c", "4", "--rate", "30"]);
        assert_eq!(r["rate"], 30.0);
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["ok"], 30, "requests due in 1 s at 30/s: {r}");
    }
}

/// `--watch-pid`: the CPU of the named processes over the window.
mod cpu {
    use super::*;

    #[test]
    fn watch_pid_reports_each_named_process() {
        let fx = Server::fixture();
        let idle = Server::fake_llm();
        let (fx_pid, idle_pid) = (fx.pid().to_string(), idle.pid().to_string());
        let r = report(
            &fx.url,
            &["-c", "2", "--watch-pid", &fx_pid, "--watch-pid", &idle_pid],
        );
        let cpu = r["cpu"].as_array().expect("cpu list");
        assert_eq!(cpu.len(), 2, "{r}");
        assert_eq!(cpu[0]["pid"], fx.pid());
        assert_eq!(cpu[1]["pid"], idle.pid());
        // The fixture served every call; the idle provider did nothing.
        let busy = num(&cpu[0], "cpu_s");
        assert!(busy > 0.0, "{r}");
        assert!(
            (num(&cpu[0], "us_per_request") - busy * 1e6 / num(&r, "ok")).abs() < 1e-6,
            "{r}"
        );
        assert_eq!(num(&cpu[1], "cpu_s"), 0.0, "{r}");
    }
}

/// Session modes, checked against the gateway's own session gauge and
/// request counter.
mod sessions {
    use super::*;

    /// Starts `--idle-sessions 20` with `extra` arguments and returns it
    /// once it has said `ready`, with that line.
    fn hold_sessions(mcp: &str, extra: &[&str]) -> (Child, Value) {
        let mut args = vec![mcp, "--idle-sessions", "20", "--json"];
        args.extend(extra);
        let mut lg = spawn_loadgen(&args);
        let mut stdout = BufReader::new(lg.stdout.take().expect("piped stdout"));
        let line = within("the ready line", move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            line
        });
        match serde_json::from_str(&line) {
            Ok(ready) => (lg, ready),
            Err(e) => {
                let out = finish(lg);
                panic!(
                    "not a ready line ({e}): {line:?}; {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            }
        }
    }

    /// Sockets a process has open, from `/proc/PID/fd`.
    fn sockets(pid: u32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read /proc/PID/fd")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    }

    #[test]
    fn idle_sessions_are_held_then_ended() {
        let dir = tempfile::tempdir().expect("temp dir");
        let gw = Server::gateway(&dir);
        let mcp = format!("{}/mcp", gw.url);

        let (lg, ready) = hold_sessions(&mcp, &["--listen", "--hold", "600s"]);
        assert_eq!(ready["ready"], 20, "{ready}");
        let metrics = http_get(&gw.url, "/metrics");
        assert_eq!(metric(&metrics, "portcullis_sessions_open", ""), 20.0);
        // `--listen`: each session's GET stream on a connection of its own.
        let held = sockets(lg.id());
        assert!(held >= 20, "{held} sockets for 20 GET streams");
        // SIGTERM ends the hold early; the sessions must be ended with it.
        let term = Command::new("kill")
            .args(["-TERM", &lg.id().to_string()])
            .status()
            .expect("kill");
        assert!(term.success());
        let out = finish(lg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_sessions_all_closed(&gw);

        // A short `--hold` ends the run by itself.
        let (lg, ready) = hold_sessions(&mcp, &["--hold", "100ms"]);
        assert_eq!(ready["ready"], 20, "{ready}");
        let out = finish(lg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_sessions_all_closed(&gw);
    }

    #[test]
    fn setup_rate_counts_each_session_it_opens_and_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let gw = Server::gateway(&dir);
        let r = report(&format!("{}/mcp", gw.url), &["-c", "2", "--setup-rate"]);
        assert_eq!(r["mode"], "session setup (initialize+initialized+DELETE)");
        assert_eq!(r["sessions"], 0);
        assert_eq!(r["errors"], 0, "{r}");
        assert_closed_loop_count(&r, 2.0);
        // Each setup ends its session (the gateway does not count
        // `initialize` itself, so this is the check it leaves).
        assert_sessions_all_closed(&gw);
    }
}

/// `--chat`: Chat Completions against the fake provider, which counts the
/// requests it gets.
mod chat {
    use super::*;

    /// The provider's `/calls` record: requests per model, and the bodies.
    fn calls(llm: &Server) -> Value {
        serde_json::from_str(&http_get(&llm.url, "/calls")).expect("calls JSON")
    }

    #[test]
    fn completions_are_counted_as_the_provider_saw_them() {
        let llm = Server::fake_llm();
        let url = format!("{}/v1/chat/completions", llm.url);
        let r = report(&url, &["-c", "2", "--chat", "fake-model"]);
        assert_eq!(r["mode"], "chat/completions fake-model (not streamed)");
        assert_eq!(r["sessions"], 0);
        assert_eq!(r["errors"], 0, "{r}");
        assert!(num(&r, "ok") >= 2.0, "{r}");
        let seen = calls(&llm);
        assert_eq!(seen["calls"]["fake-model"], r["ok"], "{seen}");
    }

    #[test]
    fn streamed_completions_are_read_to_the_end() {
        let llm = Server::fake_llm();
        let url = format!("{}/v1/chat/completions", llm.url);
        let r = report(&url, &["--chat", "fake-model", "--stream"]);
        assert_eq!(
            r["mode"],
            "chat/completions fake-model (streamed, latency = time to first token)"
        );
        assert_eq!(r["errors"], 0, "{r}");
        assert!(num(&r, "ok") >= 1.0, "{r}");
        let seen = calls(&llm);
        assert_eq!(seen["calls"]["fake-model"], r["ok"], "{seen}");
        assert_eq!(seen["requests"][0]["body"]["stream"], true, "{seen}");
    }

    #[test]
    fn broken_streams_and_statuses_are_errors() {
        let llm = Server::fake_llm();
        let url = format!("{}/v1/chat/completions", llm.url);
        // A stream cut before `[DONE]`: its first token arrived, but the
        // answer did not.
        let r = report(&url, &["--chat", "fake-model@cut-after=3", "--stream"]);
        assert_eq!(r["ok"], 0, "{r}");
        assert!(num(&r, "errors") >= 1.0, "{r}");
        let r = report(&url, &["--chat", "fake-model@503"]);
        assert_eq!(r["ok"], 0, "{r}");
        assert!(samples(&r).contains("HTTP 503"), "{r}");
    }
}
