#!/usr/bin/env python3
"""Side-by-side benchmark: the same Tansu broker reached directly, through
Switchyard, and through Tansu's own proxy (`tansu proxy`, same binary as the
broker), in one run.

For every workload (produce/consume x 100 B/1 KiB records) the configurations
run alternately (direct, switchyard, tansu-proxy, direct, ...) for --rounds
rounds, each on a freshly started broker and proxy (Tansu keeps everything in
memory, so a fresh broker per run keeps runs comparable). Reported per
configuration: median throughput, median latency percentiles, and for the
proxies the CPU seconds per GB moved (utime+stime from /proc) and peak RSS
(VmHWM). Then latency at half of the direct maximum throughput, and the RSS of
Switchyard holding 1,000 idle client connections.

    scripts/setup.sh && cargo build --release -p switchyard -p switchyard-bench
    .venv/bin/python benches/side_by_side.py --out BENCHMARKS.md

Stdlib only; everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERF = ROOT / "target/release/switchyard-perf"
SWITCHYARD = ROOT / "target/release/switchyard"
TANSU = ROOT / ".tools/bin/tansu"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GROUP_PROPS = ["-X", "session.timeout.ms=6000", "-X", "max.poll.interval.ms=6000", "-X", "heartbeat.interval.ms=1000"]


def free_port_run(n: int) -> int:
    """A base port p with p..p+n free, below the ephemeral range."""
    for base in range(20000, 30000, 17):
        ok = True
        for p in range(base, base + n + 1):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port run")


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Proc:
    def __init__(self, argv, log: Path):
        self.log = log
        self.f = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self.f, stderr=subprocess.STDOUT)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.f.close()


class Stack:
    """A fresh Tansu plus, for proxied configs, a fresh proxy in front."""

    def __init__(self, config: str, tmp: Path, baseline: Path | None = None):
        self.config = config
        base = free_port_run(8)
        self.broker_port = base
        url = f"tcp://127.0.0.1:{base}"
        self.tansu = Proc(
            [str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            tmp / f"tansu-{base}.log",
        )
        wait_until(lambda: accepts(base), 20, "tansu")
        self.proxy = None
        if config == "direct":
            self.bootstrap = f"127.0.0.1:{base}"
        elif config in ("switchyard", "switchyard-baseline"):
            binary = SWITCHYARD if config == "switchyard" else baseline
            cfg = tmp / f"switchyard-{base}.yaml"
            cfg.write_text(
                f"cluster_id: bench\nlisten:\n  bind: 127.0.0.1:{base + 1}\n  virtual_nodes: 1\n"
                f"sites:\n  - name: local\n    bootstrap: [\"127.0.0.1:{base}\"]\n"
                f"admin:\n  bind: 127.0.0.1:{base + 5}\nlog:\n  level: warn\n"
            )
            self.proxy = Proc([str(binary), "run", "--config", str(cfg)], tmp / f"switchyard-{base}.log")
            wait_until(lambda: http_ok(f"http://127.0.0.1:{base + 5}/readyz"), 20, "switchyard ready")
            self.bootstrap = f"127.0.0.1:{base + 1}"
        elif config == "tansu-proxy":
            purl = f"tcp://127.0.0.1:{base + 1}"
            self.proxy = Proc(
                [str(TANSU), "proxy", "--listener-url", purl, "--advertised-listener-url", purl,
                 "--origin-url", url],
                tmp / f"tansu-proxy-{base}.log",
            )
            wait_until(lambda: accepts(base + 1), 20, "tansu proxy")
            self.bootstrap = f"127.0.0.1:{base + 1}"
        else:
            raise ValueError(config)

    def stop(self):
        if self.proxy:
            self.proxy.stop()
        self.tansu.stop()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def perf(*args) -> dict:
    out = subprocess.run([str(PERF), *args, "--json", "--progress-secs", "0"], capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"switchyard-perf {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


BASELINE: Path | None = None


def one_run(config: str, mode: str, size: int, records: int, tmp: Path, throughput: int = -1) -> dict:
    stack = Stack(config, tmp, BASELINE)
    try:
        topic = f"bench-{mode}-{size}-{time.monotonic_ns()}"
        common = ["--topic", topic, "--num-records", str(records)]
        if mode == "consume":
            # Fill the topic directly (not measured), then consume through the config.
            perf("produce", "--bootstrap", f"127.0.0.1:{stack.broker_port}", *common,
                 "--record-size", str(size), "--partitions", "3", "--acks", "1")
        cpu0 = stack.proxy.cpu_seconds() if stack.proxy else 0.0
        if mode == "produce":
            r = perf("produce", "--bootstrap", stack.bootstrap, *common, "--record-size", str(size),
                     "--partitions", "3", "--acks", "1", "--throughput", str(throughput))
        else:
            r = perf("consume", "--bootstrap", stack.bootstrap, *common, *GROUP_PROPS)
        if stack.proxy:
            r["proxy_cpu_s"] = stack.proxy.cpu_seconds() - cpu0
            r["proxy_cpu_s_per_gb"] = r["proxy_cpu_s"] / (r["bytes"] / 1e9)
            r["proxy_peak_rss_mib"] = stack.proxy.status_kib("VmHWM") / 1024
        return r
    finally:
        stack.stop()


def idle_connections_rss(tmp: Path, n: int = 1000) -> tuple[float, float]:
    stack = Stack("switchyard", tmp)
    try:
        before = stack.proxy.status_kib("VmRSS")
        port = int(stack.bootstrap.rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        admin = f"http://127.0.0.1:{stack.broker_port + 5}/metrics"

        def all_open():
            with urllib.request.urlopen(admin, timeout=2) as r:
                return f"switchyard_client_connections {n}\n" in r.read().decode()

        wait_until(all_open, 30, f"{n} connections")
        after = stack.proxy.status_kib("VmRSS")
        for s in socks:
            s.close()
        return before / 1024, after / 1024
    finally:
        stack.stop()


def med(rs: list[dict], key: str, sub: str | None = None) -> float:
    vals = [r[key][sub] if sub else r[key] for r in rs if key in r]
    return statistics.median(vals) if vals else float("nan")


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU")
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    return f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB RAM, Linux {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records-1k", type=int, default=300_000, help="records per 1 KiB run")
    ap.add_argument("--records-100", type=int, default=1_000_000, help="records per 100 B run")
    ap.add_argument("--configs", default="direct,switchyard,tansu-proxy")
    ap.add_argument("--out", type=Path, help="write the Markdown report here")
    ap.add_argument("--baseline", type=Path,
                    help="another switchyard binary (e.g. an older commit) to run as config switchyard-baseline")
    ap.add_argument("--baseline-label", default="", help="what the baseline binary is, for the report")
    ap.add_argument("--raw", type=Path, help="write every run as JSON lines here")
    args = ap.parse_args()
    for b in (PERF, SWITCHYARD, TANSU):
        if not b.exists():
            sys.exit(f"{b} missing: run scripts/setup.sh and cargo build --release -p switchyard -p switchyard-bench")
    configs = args.configs.split(",")
    if args.baseline:
        global BASELINE
        BASELINE = args.baseline.resolve()
        configs.append("switchyard-baseline")
    workloads = [("produce", 1024, args.records_1k), ("consume", 1024, args.records_1k),
                 ("produce", 100, args.records_100), ("consume", 100, args.records_100)]
    results: dict[tuple, list[dict]] = {}
    raw = open(args.raw, "w") if args.raw else None
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as t:
        tmp = Path(t)
        for mode, size, n in workloads:
            for rnd in range(args.rounds):
                for config in configs:
                    r = one_run(config, mode, size, n, tmp)
                    results.setdefault((mode, size, config), []).append(r)
                    print(f"round {rnd + 1} {mode:7} {size:5}B {config:12} {r['mb_per_sec']:8.1f} MB/s "
                          f"p99 {r['latency_ms']['p99']:8.2f} ms"
                          + (f"  proxy {r['proxy_cpu_s_per_gb']:.2f} CPU-s/GB" if 'proxy_cpu_s_per_gb' in r else ""),
                          flush=True)
                    if raw:
                        raw.write(json.dumps({"mode": mode, "size": size, "config": config, **r}) + "\n")
        # Latency at half of the direct maximum (1 KiB produce).
        half = int(med(results[("produce", 1024, "direct")], "records_per_sec") / 2)
        half_n = max(half * 5, 10_000)  # ~5 s per run
        for rnd in range(args.rounds):
            for config in configs:
                r = one_run(config, "produce", 1024, half_n, tmp, throughput=half)
                results.setdefault(("half", 1024, config), []).append(r)
                print(f"round {rnd + 1} half-load {config:12} p50 {r['latency_ms']['p50']:.2f} ms "
                      f"p99 {r['latency_ms']['p99']:.2f} ms", flush=True)
        idle_before, idle_after = idle_connections_rss(tmp)
        print(f"switchyard RSS: {idle_before:.1f} MiB idle, {idle_after:.1f} MiB with 1000 idle connections")
    if raw:
        raw.close()
    report = render(results, configs, args, half, idle_before, idle_after)
    if args.out:
        args.out.write_text(report)
        print(f"wrote {args.out}")
    else:
        print(report)
    return 0


def render(results, configs, args, half, idle_before, idle_after) -> str:
    cmd = "cargo build --release -p switchyard -p switchyard-bench && .venv/bin/python benches/side_by_side.py " \
          f"--rounds {args.rounds} --records-1k {args.records_1k} --records-100 {args.records_100} --out BENCHMARKS.md"
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {machine()}. Client (`switchyard-perf`, librdkafka), broker (Tansu, in-memory) and proxy share "
        "these cores, so every number here is also a measure of how little CPU the proxy takes from the others.",
        "",
        f"Reproduce (one run, all tables): `{cmd}`",
        "",
    ]
    if args.baseline:
        lines += [f"`switchyard-baseline` is {args.baseline_label or args.baseline}, run in the same rounds for a "
                  "before/after comparison (add `--baseline PATH --baseline-label TEXT` to the command).", ""]
    lines += [
        f"Each cell is the median of {args.rounds} runs; configurations alternate within each round, and every run "
        "uses a fresh broker and proxy. Throughput counts payload bytes (MB = 2^20 bytes). Produce: acks=1, 3 "
        "partitions, linger 5 ms, batch.size 1 MB, one producer. Consume: one consumer in a fresh group, "
        "throughput measured from the first record. Produce latency is send → delivery report; consume latency "
        "is not reported (it measures how old the pre-filled records are, not the proxy).",
        "",
        "## Throughput",
        "",
        "| workload | " + " | ".join(configs) + " | Switchyard / direct | Switchyard / Tansu proxy |",
        "|---|" + "---|" * (len(configs) + 2),
    ]
    for mode, size in (("produce", 1024), ("consume", 1024), ("produce", 100), ("consume", 100)):
        cells = []
        mb = {}
        for c in configs:
            rs = results.get((mode, size, c), [])
            mb[c] = med(rs, "mb_per_sec")
            cells.append(f"{mb[c]:.1f} MB/s ({med(rs, 'records_per_sec') / 1000:.0f}k rec/s)")
        ratio_d = mb.get("switchyard", float("nan")) / mb.get("direct", float("nan"))
        ratio_t = mb.get("switchyard", float("nan")) / mb.get("tansu-proxy", float("nan")) \
            if "tansu-proxy" in mb else float("nan")
        lines.append(f"| {mode} {size} B | " + " | ".join(cells) + f" | {ratio_d:.2f} | {ratio_t:.2f} |")
    lines += ["", "## Produce latency at full speed (ms, 1 KiB)", "",
              "| config | p50 | p99 | p99.9 | max |", "|---|---|---|---|---|"]
    for c in configs:
        rs = results.get(("produce", 1024, c), [])
        lines.append(f"| {c} | " + " | ".join(f"{med(rs, 'latency_ms', q):.2f}" for q in ("p50", "p99", "p999", "max")) + " |")
    lines += ["", f"## Produce latency at half of the direct maximum ({half} records/s of 1 KiB)", "",
              "| config | p50 | p99 | p99.9 | added p99 vs direct |", "|---|---|---|---|---|"]
    d99 = med(results.get(("half", 1024, "direct"), []), "latency_ms", "p99")
    for c in configs:
        rs = results.get(("half", 1024, c), [])
        p99 = med(rs, "latency_ms", "p99")
        lines.append(f"| {c} | {med(rs, 'latency_ms', 'p50'):.2f} | {p99:.2f} | {med(rs, 'latency_ms', 'p999'):.2f} "
                     f"| {p99 - d99:+.2f} |")
    lines += ["", "## Proxy cost", "", "| workload | proxy | CPU-seconds per GB | peak RSS (MiB) |", "|---|---|---|---|"]
    for mode, size in (("produce", 1024), ("consume", 1024), ("produce", 100), ("consume", 100)):
        for c in configs:
            if c == "direct":
                continue
            rs = results.get((mode, size, c), [])
            lines.append(f"| {mode} {size} B | {c} | {med(rs, 'proxy_cpu_s_per_gb'):.2f} | "
                         f"{med(rs, 'proxy_peak_rss_mib'):.1f} |")
    lines += ["", "## Idle connections", "",
              f"Switchyard RSS: {idle_before:.1f} MiB at start, {idle_after:.1f} MiB holding 1,000 idle client "
              f"connections ({(idle_after - idle_before) * 1024 / 1000:.1f} KiB per connection).", "",
              "## Profile", "",
              "Where the proxy's CPU goes and what was fixed: [docs/profiling.md](docs/profiling.md). Micro-benchmarks "
              "of the hot path: `cargo bench -p switchyard-bench`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
