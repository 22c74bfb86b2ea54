"""Prints the summary of a scripts/bench.sh run from its results.jsonl:
each scenario's rows against the direct connection (ratios, added latency,
CPU per request of the process under load and of its upstream), memory
notes, and the targets from docs/benchmarks.md."""

from __future__ import annotations

import json
import sys
from collections import defaultdict

TARGET_ADDED_P50_US = 100.0
TARGET_BYTES_PER_SESSION = 20 * 1024


def main(path: str) -> int:
    runs: list[dict] = []
    notes: list[dict] = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            d = json.loads(line)
            if d.get("kind") == "note":
                notes.append(d)
            else:
                d["scenario"], d["target"] = d["label"].split("|", 1)
                runs.append(d)

    by_scenario: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by_scenario[r["scenario"]][r["concurrency"]].append(r)

    header = (
        f"{'scenario':<11}{'c':>3}  {'target':<32}{'req/s':>9}{'p50':>12}{'p90':>12}{'p99':>12}{'max':>12}"
        f"{'x thr':>9}{'+p50':>10}{'cpu/req':>10}{'up cpu':>8}  err"
    )
    print(header)
    print("-" * len(header))
    for scenario, by_c in by_scenario.items():
        for c in sorted(by_c):
            rows = by_c[c]
            base = next((r for r in rows if r["target"].startswith("direct")), None)
            for r in rows:
                l = r["latency_us"]
                ratio = added = ""
                if base is not None and r is not base and base["throughput"] > 0:
                    x = r["throughput"] / base["throughput"]
                    ratio = f"{x:.2f}" if x >= 0.1 else f"{x:.3f}" if x >= 0.01 else f"{x:.5f}"
                    added = f"{l['p50'] - base['latency_us']['p50']:+.0f}"
                cpu = r.get("cpu") or []
                own = f"{cpu[0]['us_per_request']:.1f}" if cpu else ""
                up = f"{cpu[1]['us_per_request']:.1f}" if len(cpu) > 1 else ""
                # Below 10 a second (peers listing thousands of tools), decimals matter.
                thr = f"{r['throughput']:.0f}" if r["throughput"] >= 10 else f"{r['throughput']:.2f}"
                print(
                    f"{scenario:<11}{c:>3}  {r['target']:<32}{thr:>9}{l['p50']:>12.1f}"
                    f"{l['p90']:>12.1f}{l['p99']:>12.1f}{l['max']:>12.1f}{ratio:>9}{added:>10}{own:>10}{up:>8}"
                    f"  {r['errors']}"
                )
    print("latencies in microseconds; x thr = throughput / direct; +p50 = added median latency;")
    print("cpu/req = CPU of the process under load per request, up cpu = its upstream's (µs)")
    paged = [r for r in runs if (r.get("pages_per_request") or 1) > 1]
    for r in paged:
        print(f"{r['scenario']} c={r['concurrency']} {r['target']}: one request = {r['pages_per_request']:g} pages"
              " (tools/list followed page by page)")

    if notes:
        print()
        for n in notes:
            facts = ", ".join(f"{k} {v:g}" if isinstance(v, float) and not v.is_integer()
                              else f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in n.items() if k not in ("kind", "scenario", "target"))
            print(f"{n['scenario']:<11} {n['target']:<32} {facts}")

    print()
    print("targets:")

    def find(scenario: str, target: str, c: int) -> dict | None:
        return next((r for r in by_scenario.get(scenario, {}).get(c, []) if r["target"] == target), None)

    for target in ("portcullis", "portcullis (1 worker)"):
        direct1, gw1 = find("echo", "direct", 1), find("echo", target, 1)
        if direct1 and gw1:
            added = gw1["latency_us"]["p50"] - direct1["latency_us"]["p50"]
            verdict = "met" if added < TARGET_ADDED_P50_US else "MISSED"
            print(f"  {target}: added median latency at c=1: {added:.1f} µs (target < {TARGET_ADDED_P50_US:.0f}): {verdict}")
        for c in (1, 32):
            d, g = find("echo", "direct", c), find("echo", target, c)
            if d and g and d.get("cpu") and g.get("cpu"):
                own, fx = g["cpu"][0]["us_per_request"], d["cpu"][0]["us_per_request"]
                verdict = "met" if own <= fx else "MISSED"
                print(f"  {target}: CPU per call at c={c}: {own:.1f} µs vs the fixture's own {fx:.1f} µs: {verdict}")
    # A plain HTTP proxy in front of the same fixture: the floor of what any
    # proxy adds on this machine.
    for c in (1, 32):
        d = find("echo", "direct", c)
        floor = next((r for r in by_scenario.get("echo", {}).get(c, []) if r["target"].startswith("nginx")), None)
        if d and floor:
            added = floor["latency_us"]["p50"] - d["latency_us"]["p50"]
            print(f"  floor, {floor['target']}: added median latency at c={c}: {added:.1f} µs")
    # Awake: just opened. Hibernated: once idle past `session_hibernate_after`,
    # which is what an idle session is after that long.
    for target in ("portcullis", "portcullis (hibernated)",
                   "portcullis, GET streams", "portcullis, GET streams (hibernated)"):
        idle = next((n for n in notes if n["scenario"] == "idle" and n["target"] == target), None)
        if idle:
            per = idle["bytes_per_session"]
            verdict = "met" if per < TARGET_BYTES_PER_SESSION else "MISSED"
            print(f"  {target}: memory per idle session: {per:.0f} bytes (target < 20 KB): {verdict}")
    return 0


def line(text: str) -> int:
    """One run's report on one line, as the run ends."""
    r = json.loads(text)
    l = r["latency_us"]
    cpu = "  ".join(f"cpu(pid {'+'.join(map(str, c.get('pids') or [c['pid']]))}) {c['us_per_request']:.1f}us/req"
                    for c in r["cpu"])
    print(
        f"  {r['label']:<38} c={r['concurrency']:<3} {r['throughput']:>9.{0 if r['throughput'] >= 10 else 2}f}/s"
        f"  p50 {l['p50']:>8.1f}"
        f"  p90 {l['p90']:>8.1f}  p99 {l['p99']:>8.1f}  max {l['max']:>9.1f} us  err {r['errors']}  {cpu}"
    )
    if (r.get("pages_per_request") or 1) > 1:
        print(f"    {r['pages_per_request']:g} pages per request")
    for e in r["error_samples"]:
        print("    error:", e)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--line":
        sys.exit(line(sys.argv[2]))
    sys.exit(main(sys.argv[1]))
