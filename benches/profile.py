#!/usr/bin/env python3
"""Profiles Switchyard under one of side_by_side.py's workloads.

One fresh Apache Kafka node (or Tansu with --broker tansu), one Switchyard
in front of it, one unmeasured warm-up run, then the measured run with
`perf record` (software clock, call graphs) attached to the proxy process
only. Prints the proxy's CPU-seconds per GB for the run and perf's flat
profile (self time per symbol); the perf data stays in --out for
`perf report -i`.

    cargo build --release -p switchyard -p switchyard-bench
    .venv/bin/python benches/profile.py java-produce --records 300000
    .venv/bin/python benches/profile.py consume-1k --records 400000 --no-perf   # CPU/GB only

The machine has no hardware counters, so perf samples `cpu-clock` at
2 kHz: 500 samples are 0.25 CPU-seconds. docs/profiling.md says what the
profiles showed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import side_by_side as sbs
from brokers import KafkaBroker, TansuBroker, wait_until


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=sorted(sbs.WORKLOADS))
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    ap.add_argument("--binary", type=Path, default=sbs.SWITCHYARD, help="the switchyard binary to profile")
    ap.add_argument("--out", type=Path, default=Path("target/profile"), help="where perf.data and logs go")
    ap.add_argument("--no-perf", action="store_true", help="only the CPU-seconds per GB, no perf")
    ap.add_argument("--strace", action="store_true",
                    help="count the proxy's system calls (strace -c -f) instead of sampling with perf")
    ap.add_argument("--runs", type=int, default=1, help="measured runs (CPU/GB of each is printed)")
    ap.add_argument("--config", choices=("switchyard", "switchyard-sync-tee"), default="switchyard",
                    help="switchyard-sync-tee: every record also written, before the ack, to a second site")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sbs.SWITCHYARD = args.binary.resolve()
    sbs.TIMEOUT = 300.0

    with tempfile.TemporaryDirectory(prefix="switchyard-profile-") as d:
        tmp = Path(d)
        os.environ["SWITCHYARD_JVM_TMPDIR"] = d  # the JVMs' temporary files go with it
        broker = KafkaBroker(tmp).start() if args.broker == "kafka" else TansuBroker(tmp).start()
        try:
            warm = sbs.one_run(args.config, args.workload, min(args.records, 100_000), tmp, broker)
            print(f"warm-up: {warm['mb_per_sec']:.1f} MB/s", flush=True)
            for i in range(args.runs):
                r = measured(args, tmp, broker, i)
                print(f"run {i + 1}: {r['mb_per_sec']:.1f} MB/s, proxy {r['proxy_cpu_s']:.2f} CPU-s = "
                      f"{r['proxy_cpu_s_per_gb']:.2f} CPU-s/GB, peak RSS {r['proxy_peak_rss_mib']:.1f} MiB",
                      flush=True)
        finally:
            broker.close()
    if args.strace:
        print((args.out / "strace.txt").read_text())
    elif not args.no_perf:
        report = subprocess.run(["perf", "report", "-i", str(args.out / "perf.data"), "--no-children",
                                 "--sort", "symbol", "-g", "none", "--percent-limit", "0.7", "--stdio"],
                                capture_output=True, text=True)
        print("\n".join(line for line in report.stdout.splitlines() if line and not line.startswith("#")))
    return 0


def measured(args, tmp: Path, broker, i: int) -> dict:
    """sbs.one_run with perf attached to the proxy as soon as it is up."""
    started = sbs.Stack.__init__

    def stack_with_perf(self, *a, **kw):
        started(self, *a, **kw)
        self.perf = None
        if self.proxy and not args.no_perf:
            data = args.out / ("strace.txt" if args.strace else "perf.data")
            data.unlink(missing_ok=True)
            pid = str(self.proxy.p.pid)
            argv = (["strace", "-c", "-f", "-p", pid, "-o", str(data)] if args.strace else
                    ["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-p", pid, "-o", str(data)])
            self.perf = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # perf writes its header once it has attached.
            wait_until(lambda: data.exists() and (args.strace or data.stat().st_size > 0), 10, "attached")

    stopped = sbs.Stack.stop
    seen: dict = {}

    def stop_perf(self):
        if getattr(self, "perf", None):
            self.perf.send_signal(signal.SIGINT)
            self.perf.wait(60)
        if self.proxy and self.proxy.p.poll() is None:
            seen["requests"] = requests(self.admin_port)
            seen["switches"] = context_switches(self.proxy.p.pid)
        stopped(self)

    sbs.Stack.__init__, sbs.Stack.stop = stack_with_perf, stop_perf
    try:
        r = sbs.one_run(args.config, args.workload, args.records, tmp, broker)
        n = max(seen.get("requests", 0), 1)
        print(f"  {n} requests; per request: {r['proxy_cpu_s'] / n * 1e6:.0f} us CPU, "
              f"{seen.get('switches', (0, 0))[0] / n:.2f} voluntary + {seen.get('switches', (0, 0))[1] / n:.2f} "
              f"involuntary context switches", flush=True)
        return r
    finally:
        sbs.Stack.__init__, sbs.Stack.stop = started, stopped


def requests(admin_port: int) -> int:
    """Requests the proxy served (all APIs), from its metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("switchyard_requests_total")))


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of all the process's threads."""
    vol = invol = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return vol, invol


if __name__ == "__main__":
    sys.exit(main())
