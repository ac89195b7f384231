#!/usr/bin/env python3
"""Side-by-side benchmark: the same broker reached directly, through
Switchyard, and through Tansu's own proxy (`tansu proxy`), in one run.

--broker kafka (default): Apache Kafka (KRaft, tests/kafka_cluster.py, full
JIT, 1 GiB heap), one node, or three with --nodes 3 (replication factor 3,
min.insync.replicas 2). One fresh cluster per workload serves all of that
workload's rounds: an unmeasured warm-up run first (the broker's JIT is warm,
as it is in production), then every run on its own 3-partition topic,
deleted after the run. Storage is in the temporary directory.

--broker tansu: a fresh Tansu broker (in-memory) per run, since Tansu keeps
everything in memory and a fresh broker keeps runs comparable.

Workloads: `switchyard-perf` (librdkafka) produce / consume x 100 B / 1 KiB
records (produce acks=1). On Kafka also Kafka's own perf tools (the Java
client) as users run them: ProducerPerformance with the producer's defaults
(idempotent, acks=all, linger 5 ms, batch.size 16 KiB), the same with
compression.type=lz4, and ConsumerPerformance. Every configuration runs
once per round, the order rotating from round to round, for --rounds rounds;
each run gets a fresh proxy. Reported per configuration: median throughput,
median latency percentiles, and for the proxies the CPU seconds per GB of
payload moved (utime+stime from /proc) and peak RSS (VmHWM). Then latency at
half of the direct maximum throughput, and the RSS of Switchyard holding
1,000 idle client connections.

A configuration that fails (e.g. a client that hangs through a proxy and
hits --timeout) is reported as failed with the reason, and is not run again
for that workload.

--tls: TLS both ways, with certificates made for the run
(tests/tls_pki.py): the broker's client listener is TLS, "direct" is a TLS
client of it, and "switchyard" terminates the clients' TLS and speaks TLS
to the broker. Only the Java client's workloads (switchyard-perf's
librdkafka is built without TLS); tansu proxy has no TLS. The report goes
under its own heading.

    scripts/setup.sh && cargo build --release -p switchyard -p switchyard-bench
    .venv/bin/python benches/side_by_side.py --broker kafka --out BENCHMARKS.md
    .venv/bin/python benches/side_by_side.py --broker tansu --out tansu.md

With --broker kafka, --out replaces the "## On Apache Kafka X.Y" section of
the file (appended if missing); with tansu it writes the whole file. Stdlib
only; everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from brokers import KafkaBroker, TansuBroker, accepts, free_port_run, java_tool, kafka_version, wait_until

ROOT = Path(__file__).resolve().parent.parent
PERF = ROOT / "target/release/switchyard-perf"
SWITCHYARD = ROOT / "target/release/switchyard"
TANSU = ROOT / ".tools/bin/tansu"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GROUP_PROPS = ["-X", "session.timeout.ms=6000", "-X", "max.poll.interval.ms=6000", "-X", "heartbeat.interval.ms=1000"]
PARTITIONS = 3

# key: (client, mode, record size, label)
WORKLOADS = {
    "produce-1k": ("perf", "produce", 1024, "produce 1024 B"),
    "consume-1k": ("perf", "consume", 1024, "consume 1024 B"),
    "produce-100": ("perf", "produce", 100, "produce 100 B"),
    "consume-100": ("perf", "consume", 100, "consume 100 B"),
    "java-produce": ("java", "produce", 1024, "Java produce 1024 B, defaults (idempotent, acks=all)"),
    "java-produce-lz4": ("java", "produce-lz4", 1024, "Java produce 1024 B, defaults + lz4"),
    "java-consume": ("java", "consume", 1024, "Java consume 1024 B"),
}
EXTRA = ("half-load", "idle")


class RunFailed(RuntimeError):
    """One run of one configuration failed (reported, not fatal)."""


class Tls:
    """--tls: a CA, the broker's and Switchyard's certificates, and the
    Java client's trust settings."""

    def __init__(self, tmp: Path):
        sys.path.insert(0, str(ROOT / "tests"))
        from tls_pki import Pki, kafka_tls_listener

        self.pki = Pki(tmp / "pki", "bench")
        broker = self.pki.issue("kafka-broker", ["localhost", "127.0.0.1"])
        self.switchyard = self.pki.issue("switchyard", ["localhost", "127.0.0.1"])
        self.broker_properties = kafka_tls_listener(broker, self.pki, client_auth="none")
        self.client = {"security.protocol": "SSL", "ssl.truststore.type": "PEM",
                       "ssl.truststore.location": str(self.pki.ca_pem)}
        self.client_file = tmp / "client-tls.properties"
        self.client_file.write_text("".join(f"{k}={v}\n" for k, v in self.client.items()))


TLS: "Tls | None" = None


class Proc:
    def __init__(self, argv, log: Path):
        self.log = log
        self.f = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self.f, stderr=subprocess.STDOUT, start_new_session=True)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def errors(self) -> str:
        """The distinct ERROR/WARN messages of the log, with counts."""
        counts: dict[str, int] = {}
        for line in re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace")).splitlines():
            m = re.search(r"\b(ERROR|WARN)\b.*?(err=.*|$)", line)
            if m:
                msg = m.group(2) or line.split(m.group(1), 1)[1].strip()
                counts[msg[:200]] = counts.get(msg[:200], 0) + 1
        return "; ".join(f"{n}x {msg}" for msg, n in sorted(counts.items(), key=lambda x: -x[1])[:3]) or "nothing"

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
    """For proxied configs, a fresh proxy in front of `broker`."""

    def __init__(self, config: str, tmp: Path, broker, baseline: Path | None = None):
        self.config = config
        self.broker = broker
        base = free_port_run(6)
        self.admin_port = base + 5
        self.proxy = None
        if config == "direct":
            self.bootstrap = broker.bootstrap
        elif config in ("switchyard", "switchyard-baseline", "switchyard-sync-tee"):
            binary = baseline if config == "switchyard-baseline" else SWITCHYARD
            cfg = tmp / f"switchyard-{base}.yaml"
            upstream = ", ".join(f'"{b}"' for b in broker.bootstrap.split(","))
            listen_tls = site_tls = ""
            if TLS is not None:
                listen_tls = (f"  tls:\n    cert: {TLS.switchyard.cert}\n    key: {TLS.switchyard.key}\n")
                site_tls = f"    tls:\n      ca: {TLS.pki.ca_pem}\n"
            tee = ""
            if config == "switchyard-sync-tee":
                # An RPO-0 route: every bench topic also written, before the
                # ack, to `{topic}-teed`. The tee target is a second site on
                # the same cluster: on one machine a second cluster would
                # share its CPU just the same, and here the broker writes
                # every record twice, the worst case for the ratio.
                tee = (f"  - name: copy\n    bootstrap: [{upstream}]\n{site_tls}default_site: local\n"
                       "routes:\n  - name: bench\n    topics: {regex: 'bench-[a-z0-9-]*[0-9]'}\n    site: local\n"
                       "    tee:\n      - {site: copy, mode: sync, naming: '{topic}-teed'}\n")
            cfg.write_text(
                f"cluster_id: bench\nlisten:\n  bind: 127.0.0.1:{base}\n  virtual_nodes: 1\n{listen_tls}"
                f"sites:\n  - name: local\n    bootstrap: [{upstream}]\n{site_tls}{tee}"
                f"admin:\n  bind: 127.0.0.1:{self.admin_port}\nlog:\n  level: warn\n"
            )
            self.proxy = Proc([str(binary), "run", "--config", str(cfg)], tmp / f"switchyard-{base}.log")
            wait_until(lambda: http_ok(f"http://127.0.0.1:{self.admin_port}/readyz") or self._died(), 30,
                       "switchyard ready")
            self.bootstrap = f"127.0.0.1:{base}"
        elif config == "tansu-proxy":
            # tansu proxy forwards to one origin: the first broker.
            purl = f"tcp://127.0.0.1:{base}"
            self.proxy = Proc(
                [str(TANSU), "proxy", "--listener-url", purl, "--advertised-listener-url", purl,
                 "--origin-url", f"tcp://{broker.bootstrap.split(',')[0]}"],
                tmp / f"tansu-proxy-{base}.log",
            )
            wait_until(lambda: accepts(base) or self._died(), 30, "tansu proxy")
            self.bootstrap = f"127.0.0.1:{base}"
        else:
            raise ValueError(config)

    def _died(self):
        if self.proxy.p.poll() is not None:
            raise RunFailed(f"{self.config} exited with {self.proxy.p.returncode}: {self.proxy.tail()}")
        return False

    def stop(self):
        if self.proxy:
            self.proxy.stop()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


TIMEOUT = 300.0  # seconds per client run (--timeout)


def perf(*args) -> dict:
    try:
        out = subprocess.run([str(PERF), *args, "--json", "--progress-secs", "0"], capture_output=True, text=True,
                             timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"switchyard-perf {args[0]} timed out after {TIMEOUT:.0f}s") from None
    if out.returncode != 0:
        raise RunFailed(f"switchyard-perf {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


PRODUCER_SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max "
    r"latency, ([\d.]+) ms 50th, ([\d.]+) ms 95th, ([\d.]+) ms 99th, ([\d.]+) ms 99.9th")


def java_produce(bootstrap: str, topic: str, n: int, size: int, props: list[str]) -> dict:
    """ProducerPerformance; everything not in `props` is the Java producer's default."""
    if TLS is not None:
        props = [*props, *(f"{k}={v}" for k, v in TLS.client.items())]
    try:
        out = java_tool("org.apache.kafka.tools.ProducerPerformance", "--bootstrap-server", bootstrap,
                        "--topic", topic, "--num-records", str(n), "--record-size", str(size), "--throughput", "-1",
                        *(["--command-property", *props] if props else []), timeout=TIMEOUT)
    except RuntimeError as e:
        raise RunFailed(str(e)) from None
    m = None
    for m in PRODUCER_SUMMARY.finditer(out):
        pass
    if m is None or int(m.group(1)) != n:
        raise RunFailed(f"ProducerPerformance: no summary for {n} records in:\n{out[-2000:]}")
    f = [float(x) for x in m.groups()]
    return {"records": n, "bytes": n * size, "records_per_sec": f[1], "mb_per_sec": f[2],
            "latency_ms": {"avg": f[3], "max": f[4], "p50": f[5], "p95": f[6], "p99": f[7], "p999": f[8]}}


def java_consume(bootstrap: str, topic: str, n: int, size: int) -> dict:
    """ConsumerPerformance (fresh group); fetch.* excludes the group join."""
    try:
        out = java_tool("org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", bootstrap,
                        "--topic", topic, "--num-records", str(n), "--timeout", "30000",
                        "--group", f"bench-{time.monotonic_ns()}",
                        *(["--command-config", str(TLS.client_file)] if TLS is not None else []), timeout=TIMEOUT)
    except RuntimeError as e:
        raise RunFailed(str(e)) from None
    lines = [l for l in out.splitlines() if l.count(",") >= 9]
    head = next((i for i, l in enumerate(lines) if l.startswith("start.time")), None)
    if head is None or head + 1 >= len(lines):
        raise RunFailed(f"ConsumerPerformance: no result in:\n{out[-2000:]}")
    row = dict(zip([x.strip() for x in lines[head].split(",")], [x.strip() for x in lines[head + 1].split(",")]))
    got = int(row["data.consumed.in.nMsg"])
    if got < n:
        raise RunFailed(f"ConsumerPerformance read {got} of {n} records")
    return {"records": got, "bytes": got * size, "records_per_sec": float(row["fetch.nMsg.sec"]),
            "mb_per_sec": float(row["fetch.MB.sec"]), "rebalance_ms": float(row["rebalance.time.ms"])}


BASELINE: Path | None = None


def one_run(config: str, key: str, records: int, tmp: Path, broker=None, throughput: int = -1,
            nodes: int = 1) -> dict:
    """One measured run. broker None: a fresh Tansu for this run; else a
    running (Kafka) broker shared with other runs."""
    client, mode, size, _ = WORKLOADS[key]
    own = None
    if broker is None:
        own = broker = TansuBroker(tmp).start()
    topic = f"bench-{key}-{time.monotonic_ns()}"
    stack = None
    try:
        stack = Stack(config, tmp, broker, BASELINE)
        broker.create_topic(topic, PARTITIONS)
        acks = "all" if nodes > 1 else "1"
        common = ["--topic", topic, "--num-records", str(records)]
        if mode == "consume":
            # Fill the topic directly (not measured), then consume through the config.
            perf("produce", "--bootstrap", getattr(broker, "admin_bootstrap", broker.bootstrap), *common,
                 "--record-size", str(size), "--partitions", str(PARTITIONS), "--acks", acks)
        cpu0 = stack.proxy.cpu_seconds() if stack.proxy else 0.0
        if client == "perf" and mode == "produce":
            r = perf("produce", "--bootstrap", stack.bootstrap, *common, "--record-size", str(size),
                     "--partitions", str(PARTITIONS), "--acks", acks, "--throughput", str(throughput))
        elif client == "perf":
            r = perf("consume", "--bootstrap", stack.bootstrap, *common, *GROUP_PROPS)
        elif mode == "consume":
            r = java_consume(stack.bootstrap, topic, records, size)
        else:
            r = java_produce(stack.bootstrap, topic, records, size,
                             ["compression.type=lz4"] if mode == "produce-lz4" else [])
        if stack.proxy:
            if stack.proxy.p.poll() is not None:
                raise RunFailed(f"{config} exited with {stack.proxy.p.returncode}")
            r["proxy_cpu_s"] = stack.proxy.cpu_seconds() - cpu0
            r["proxy_cpu_s_per_gb"] = r["proxy_cpu_s"] / (r["bytes"] / 1e9)
            r["proxy_peak_rss_mib"] = stack.proxy.status_kib("VmHWM") / 1024
        return r
    except RunFailed as e:
        if stack and stack.proxy:
            e.args = (f"{e.args[0]}; {config} log: {stack.proxy.errors()}",)
        raise
    finally:
        if stack:
            stack.stop()
        if own:
            own.close()
        elif broker.running():
            try:
                broker.delete_topic(topic)
                if config == "switchyard-sync-tee":
                    broker.delete_topic(f"{topic}-teed")
            except (OSError, RuntimeError) as e:
                print(f"  (deleting {topic}: {e})", flush=True)


def idle_connections_rss(tmp: Path, broker=None, n: int = 1000) -> tuple[float, float]:
    own = None
    if broker is None:
        own = broker = TansuBroker(tmp).start()
    stack = Stack("switchyard", tmp, broker)
    try:
        before = stack.proxy.status_kib("VmRSS")
        port = int(stack.bootstrap.rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        admin = f"http://127.0.0.1:{stack.admin_port}/metrics"

        def all_open():
            with urllib.request.urlopen(admin, timeout=2) as r:
                return f"switchyard_client_connections {n}\n" in r.read().decode()

        try:
            wait_until(all_open, 30, f"{n} connections")
            after = stack.proxy.status_kib("VmRSS")
        finally:
            for s in socks:
                s.close()
        return before / 1024, after / 1024
    finally:
        stack.stop()
        if own:
            own.close()


def med(rs: list[dict], key: str, sub: str | None = None) -> float:
    vals = [r[key][sub] if sub else r[key] for r in rs if key in r and (not sub or sub in r[key])]
    return statistics.median(vals) if vals else float("nan")


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU")
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    return f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB RAM, Linux {platform.release()}"


def records_for(args, key: str) -> int:
    client, _, size, _ = WORKLOADS[key]
    if client == "java":
        return args.records_java
    return args.records_1k if size == 1024 else args.records_100


def main() -> int:
    global BASELINE, TIMEOUT, TLS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=("kafka", "tansu"), default="kafka", help="default kafka")
    ap.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                    help="Kafka brokers (3: replication factor 3, min ISR 2, producers acks=all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records-1k", type=int, default=300_000, help="records per 1 KiB switchyard-perf run")
    ap.add_argument("--records-100", type=int, default=1_000_000, help="records per 100 B run")
    ap.add_argument("--records-java", type=int, default=300_000, help="records per Java-client run (1 KiB)")
    ap.add_argument("--configs", default="direct,switchyard,tansu-proxy")
    ap.add_argument("--workloads", help="comma-separated subset of: " + ", ".join([*WORKLOADS, *EXTRA])
                    + " (default: all; the java-* ones only with --broker kafka)")
    ap.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per client run (default 300)")
    ap.add_argument("--out", type=Path, help="write the Markdown report here (kafka: replaces its section)")
    ap.add_argument("--baseline", type=Path,
                    help="another switchyard binary (e.g. an older commit) to run as config switchyard-baseline")
    ap.add_argument("--baseline-label", default="", help="what the baseline binary is, for the report")
    ap.add_argument("--raw", type=Path, help="write every run as JSON lines here")
    ap.add_argument("--tls", action="store_true", help="TLS both ways (Java workloads, direct and switchyard)")
    args = ap.parse_args()
    for b in (PERF, SWITCHYARD, TANSU):
        if not b.exists():
            sys.exit(f"{b} missing: run scripts/setup.sh and cargo build --release -p switchyard -p switchyard-bench")
    TIMEOUT = args.timeout
    kafka = args.broker == "kafka"
    if not kafka and args.nodes != 1:
        sys.exit("--nodes is for --broker kafka")
    configs = args.configs.split(",")
    if args.baseline:
        BASELINE = args.baseline.resolve()
        configs.append("switchyard-baseline")
    wanted = args.workloads.split(",") if args.workloads else [*WORKLOADS, *EXTRA]
    for w in wanted:
        if w not in WORKLOADS and w not in EXTRA:
            sys.exit(f"unknown workload {w}")
    workloads = [k for k in WORKLOADS if k in wanted and (kafka or WORKLOADS[k][0] == "perf")]
    if args.tls:
        if not kafka:
            sys.exit("--tls is for --broker kafka")
        workloads = [k for k in workloads if WORKLOADS[k][0] == "java"]
        configs = [c for c in configs if c != "tansu-proxy"]
        wanted = [w for w in wanted if w in workloads]

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    results: dict[tuple, list[dict]] = {}
    failed: dict[tuple, str] = {}
    half = idle_before = idle_after = None
    raw = open(args.raw, "w") if args.raw else None
    started = time.time()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]

    def run_rounds(key, n, broker, result_key, throughput=-1):
        for rnd in range(args.rounds):
            k = rnd % len(configs)
            for config in configs[k:] + configs[:k]:
                if (result_key, config) in failed:
                    continue
                if config == "switchyard-sync-tee" and WORKLOADS[key][1] == "consume":
                    continue  # a tee changes nothing a consumer reads
                try:
                    r = one_run(config, key, n, tmp, broker, throughput, args.nodes)
                except RunFailed as e:
                    failed[(result_key, config)] = str(e)
                    print(f"round {rnd + 1} {result_key:16} {config:12} FAILED: {e}", flush=True)
                    if broker is not None and not broker.running():
                        raise RuntimeError(f"a Kafka node died:\n{broker.tail()}") from None
                    if raw:
                        raw.write(json.dumps({"workload": result_key, "config": config, "failed": str(e)}) + "\n")
                    continue
                results.setdefault((result_key, config), []).append(r)
                lat = r.get("latency_ms", {})
                print(f"round {rnd + 1} {result_key:16} {config:12} {r['mb_per_sec']:8.1f} MB/s"
                      + (f" p99 {lat['p99']:8.2f} ms" if "p99" in lat else "")
                      + (f"  proxy {r['proxy_cpu_s_per_gb']:.2f} CPU-s/GB" if "proxy_cpu_s_per_gb" in r else ""),
                      flush=True)
                if raw:
                    raw.write(json.dumps({"workload": result_key, "config": config, "round": rnd + 1, **r}) + "\n")

    def cluster(tmp):
        props = TLS.broker_properties if TLS is not None else None
        b = KafkaBroker(tmp, args.nodes, properties=props).start() if kafka else None
        return b

    try:
        with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as t:
            tmp = Path(t)
            os.environ["SWITCHYARD_JVM_TMPDIR"] = t  # the JVMs' temporary files go with it
            if args.tls:
                TLS = Tls(tmp)
            for key in workloads:
                n = records_for(args, key)
                broker = cluster(tmp)
                try:
                    if broker is not None:
                        print(f"{key}: Kafka {broker.bootstrap}; warm-up run (direct, not measured)", flush=True)
                        one_run("direct", key, max(n // 3, 1000), tmp, broker, nodes=args.nodes)
                    run_rounds(key, n, broker, key)
                finally:
                    if broker is not None:
                        broker.close()
            if "half-load" in wanted or "idle" in wanted:
                broker = cluster(tmp)
                try:
                    if "half-load" in wanted:
                        # Latency at half of the direct maximum (1 KiB produce).
                        full = results.get(("produce-1k", "direct"))
                        if broker is not None:
                            one_run("direct", "produce-1k", args.records_1k // 3, tmp, broker, nodes=args.nodes)
                        if not full:
                            full = [one_run("direct", "produce-1k", args.records_1k, tmp, broker, nodes=args.nodes)]
                        half = int(med(full, "records_per_sec") / 2)
                        half_n = max(half * 5, 10_000)  # ~5 s per run
                        run_rounds("produce-1k", half_n, broker, "half", throughput=half)
                    if "idle" in wanted:
                        idle_before, idle_after = idle_connections_rss(tmp, broker)
                        print(f"switchyard RSS: {idle_before:.1f} MiB idle, {idle_after:.1f} MiB with 1000 idle "
                              "connections", flush=True)
                finally:
                    if broker is not None:
                        broker.close()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if raw:
            raw.close()
    minutes = (time.time() - started) / 60
    report = render(results, failed, configs, workloads, args, half, idle_before, idle_after, loadavg, minutes)
    if args.out:
        if kafka:
            write_section(args.out, report)
        else:
            args.out.write_text(report)
        print(f"wrote {args.out}")
    else:
        print(report)
    return 0


def write_section(path: Path, report: str) -> None:
    """Replaces the section of `path` that starts with the report's first
    line (up to the next heading of the same or a higher level), or appends
    the report."""
    heading = report.splitlines()[0]
    old = path.read_text().splitlines() if path.exists() else []
    if heading in old:
        i = old.index(heading)
        j = next((k for k in range(i + 1, len(old)) if re.match(r"#{1,2} ", old[k])), len(old))
        new = old[:i] + report.rstrip("\n").splitlines() + [""] + old[j:]
    else:
        new = old + ([""] if old and old[-1] else []) + report.splitlines()
    path.write_text("\n".join(new).rstrip("\n") + "\n")


def render(results, failed, configs, workloads, args, half, idle_before, idle_after, loadavg, minutes) -> str:
    kafka = args.broker == "kafka"
    h = "###" if kafka else "##"
    on = "" if kafka else " (on Tansu)"  # Kafka's tables are under their own section heading
    cmd = ".venv/bin/python benches/side_by_side.py " + " ".join(
        [f"--broker {args.broker}"] + ([f"--nodes {args.nodes}"] if args.nodes != 1 else [])
        + [f"--rounds {args.rounds}", f"--records-1k {args.records_1k}", f"--records-100 {args.records_100}"]
        + ([f"--records-java {args.records_java}"] if kafka else [])
        + ([f"--workloads {args.workloads}"] if args.workloads else [])
        + ([f"--configs {args.configs}"] if args.configs != "direct,switchyard,tansu-proxy" else [])
        + ([f"--timeout {args.timeout:g}"] if args.timeout != 300 else []) + (["--tls"] if args.tls else [])
        + ["--out BENCHMARKS.md"])
    cmd = "cargo build --release -p switchyard -p switchyard-bench && " + cmd
    if kafka:
        version = kafka_version()
        where = f"{args.nodes} node{'s' if args.nodes > 1 else ''}"
        lines = [
            f"## On Apache Kafka {'.'.join(version.split('.')[:2])}" + (" (3 brokers)" if args.nodes > 1 else "")
            + (", TLS both ways" if args.tls else ""),
            "",
            *(["TLS 1.3 (rustls on Switchyard's side, the JDK's on the clients' and the broker's), a CA and "
               "certificates made for the run: `direct` is a TLS client of the broker's TLS listener; "
               "`switchyard` terminates the client's TLS and opens its own TLS connections to the broker (host "
               "name verified). Only the Java client's workloads: `switchyard-perf`'s librdkafka is built without "
               "TLS.", ""] if args.tls else []),
            f"Broker: Apache Kafka {version} (KRaft, {where}, combined broker+controller, 1 GiB heap, serial GC, "
            "tests/kafka_cluster.py" + (", replication factor 3, min.insync.replicas 2" if args.nodes > 1 else "")
            + f"). Machine: {machine()}. Clients, broker and proxy share these cores. "
            f"Load average at the start: {' '.join(loadavg)}; the run took {minutes:.0f} min. The machine may have "
            "been shared with other work (test suites) during the run.",
            "",
            f"Reproduce: `{cmd}`",
            "",
            f"Each cell is the median of {args.rounds} runs. One fresh Kafka cluster per workload serves all of its "
            "runs (after one unmeasured warm-up run, so the broker's JIT is warm); every run has its own topic "
            f"({PARTITIONS} partitions, deleted afterwards) and a fresh proxy; the order of the configurations "
            "rotates from round to round. Throughput counts payload bytes (MB = 2^20 bytes).",
            "",
            f"* `switchyard-perf` (librdkafka): produce acks={'all' if args.nodes > 1 else '1'}, linger 5 ms, "
            "batch.size 1 MB, one producer; consume: one consumer in a fresh group, throughput from the first "
            "record. Produce latency is send → delivery report.",
            "* Java client (Kafka's own `ProducerPerformance` / `ConsumerPerformance`, as `kafka-producer-perf-test` "
            "and `kafka-consumer-perf-test` run them): the producer with its defaults (idempotent, acks=all, "
            "linger 5 ms, batch.size 16 KiB, one in-flight batch per partition ×5), and the same with "
            "`compression.type=lz4`. ProducerPerformance sends the same random-letter payload in every record, "
            "so lz4 shrinks its batches far more than it would real data. Consume: ConsumerPerformance, fresh "
            "group, `fetch.MB.sec` (time from the first fetch, group join excluded). Latency as the tool reports "
            "it (send → ack, whole milliseconds).",
            "",
        ]
    else:
        lines = [
            "# Benchmarks",
            "",
            f"Machine: {machine()}. Client (`switchyard-perf`, librdkafka), broker (Tansu, in-memory) and proxy "
            "share these cores, so every number here is also a measure of how little CPU the proxy takes from the "
            "others.",
            "",
            f"Reproduce (one run, all tables): `{cmd}`",
            "",
            f"Each cell is the median of {args.rounds} runs; every run uses a fresh broker and proxy, and the order "
            "of the configurations rotates from round to round. Throughput counts payload bytes (MB = 2^20 bytes). "
            "Produce: acks=1, 3 partitions, linger 5 ms, batch.size 1 MB, one producer. Consume: one consumer in a "
            "fresh group, throughput measured from the first record. Produce latency is send → delivery report; "
            "consume latency is not reported (it measures how old the pre-filled records are, not the proxy).",
            "",
        ]
    if args.baseline:
        lines += [f"`switchyard-baseline` is {args.baseline_label or args.baseline}, run in the same rounds for a "
                  "before/after comparison (add `--baseline PATH --baseline-label TEXT` to the command).", ""]

    def cell(key, c, fmt):
        rs = results.get((key, c), [])
        if (key, c) in failed and not rs:
            return "failed"
        v = fmt(rs)
        return v + (f" ({len(rs)} of {args.rounds} ok)" if (key, c) in failed else "")

    lines += [
        f"{h} Throughput{on}",
        "",
        "| workload | " + " | ".join(configs) + " | Switchyard / direct | Switchyard / Tansu proxy |",
        "|---|" + "---|" * (len(configs) + 2),
    ]
    for key in workloads:
        mb = {c: med(results.get((key, c), []), "mb_per_sec") for c in configs}
        cells = [cell(key, c, lambda rs: f"{med(rs, 'mb_per_sec'):.1f} MB/s "
                                         f"({med(rs, 'records_per_sec') / 1000:.0f}k rec/s)") for c in configs]
        ratio_d = mb.get("switchyard", float("nan")) / mb.get("direct", float("nan"))
        ratio_t = mb.get("switchyard", float("nan")) / mb["tansu-proxy"] if "tansu-proxy" in mb else float("nan")
        lines.append(f"| {WORKLOADS[key][3]} | " + " | ".join(cells) + f" | {ratio_d:.2f} | "
                     + ("—" if ratio_t != ratio_t else f"{ratio_t:.2f}") + " |")
    lines += ["", f"{h} Run-to-run spread (lowest – highest MB/s of the {args.rounds} runs){on}", "",
              "| workload | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    for key in workloads:
        cells = []
        for c in configs:
            vals = [r["mb_per_sec"] for r in results.get((key, c), [])]
            cells.append(f"{min(vals):.1f} – {max(vals):.1f}" if vals else "—")
        lines.append(f"| {WORKLOADS[key][3]} | " + " | ".join(cells) + " |")
    produce_keys = [k for k in workloads if WORKLOADS[k][1].startswith("produce") and WORKLOADS[k][2] == 1024]
    if produce_keys:
        lines += ["", f"{h} Produce latency at full speed (ms, 1 KiB){on}", "",
                  "| workload | config | p50 | p99 | p99.9 | max |", "|---|---|---|---|---|---|"]
        for key in produce_keys:
            for c in configs:
                rs = results.get((key, c), [])
                if not rs:
                    continue
                lines.append(f"| {WORKLOADS[key][3]} | {c} | "
                             + " | ".join(f"{med(rs, 'latency_ms', q):.2f}" for q in ("p50", "p99", "p999", "max"))
                             + " |")
    if half is not None:
        lines += ["", f"{h} Produce latency at half of the direct maximum ({half} records/s of 1 KiB, "
                  f"switchyard-perf){on}", "",
                  "| config | p50 | p99 | p99.9 | added p99 vs direct |", "|---|---|---|---|---|"]
        d99 = med(results.get(("half", "direct"), []), "latency_ms", "p99")
        for c in configs:
            rs = results.get(("half", c), [])
            if not rs:
                lines.append(f"| {c} | failed | | | |")
                continue
            p99 = med(rs, "latency_ms", "p99")
            lines.append(f"| {c} | {med(rs, 'latency_ms', 'p50'):.2f} | {p99:.2f} | "
                         f"{med(rs, 'latency_ms', 'p999'):.2f} | {p99 - d99:+.2f} |")
    lines += ["", f"{h} Proxy cost{on}", "", "| workload | proxy | CPU-seconds per GB | peak RSS (MiB) |",
              "|---|---|---|---|"]
    for key in workloads:
        for c in configs:
            rs = results.get((key, c), [])
            if c == "direct" or not rs:
                continue
            lines.append(f"| {WORKLOADS[key][3]} | {c} | {med(rs, 'proxy_cpu_s_per_gb'):.2f} | "
                         f"{med(rs, 'proxy_peak_rss_mib'):.1f} |")
    if failed:
        lines += ["", f"{h} Failed runs{on}", ""]
        for (key, c), why in failed.items():
            first = " ".join(why.split())[:400]
            lines.append(f"* {WORKLOADS.get(key, (0, 0, 0, key))[3]}, {c}: {first}")
    if idle_before is not None:
        lines += ["", f"{h} Idle connections{on}", "",
                  f"Switchyard RSS: {idle_before:.1f} MiB at start, {idle_after:.1f} MiB holding 1,000 idle client "
                  f"connections ({(idle_after - idle_before) * 1024 / 1000:.1f} KiB per connection)."]
    if not kafka:
        lines += ["", "## Profile", "",
                  "Where the proxy's CPU goes and what was fixed: [docs/profiling.md](docs/profiling.md). "
                  "Micro-benchmarks of the hot path: `cargo bench -p switchyard-bench`."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
