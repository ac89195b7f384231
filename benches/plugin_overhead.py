#!/usr/bin/env python3
"""What WASM plugins cost on the data path, end to end, in one run:

* direct to Tansu, Switchyard without plugins, Switchyard with `keep-all` on
  the produce and fetch paths (every batch decoded and handed to the plugin,
  nothing changed), Switchyard with `topic-rename` on the produce path (every
  record written under `<topic>-r`), and `tansu proxy` (another proxy on the
  same broker);
* produce and consume of 100 B and 1 KiB records, configurations alternating
  within each round, a fresh broker and proxy per run, medians over rounds;
* ratios against plugin-less Switchyard (the issue's target: renaming
  >= 80% of its throughput) and against direct.

The per-record cost of a keep-all call in batch mode is measured by the
criterion bench `cargo bench -p switchyard-bench --bench plugins`.

`--baseline PATH` adds `baseline+keep-all`: the same keep-all run with
another switchyard binary (e.g. an older commit's release build) in the same
rounds, so a change's cost on the plugin path is a before/after ratio from
one run, not a comparison of two runs on a busy machine.

    scripts/setup.sh && plugins/build.sh && cargo build --release -p switchyard -p switchyard-bench
    .venv/bin/python benches/plugin_overhead.py --rounds 5 --out plugin-overhead.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import side_by_side as sbs  # noqa: E402

DIST = sbs.ROOT / "plugins" / "dist"
CONFIGS = ["direct", "switchyard", "switchyard+keep-all", "switchyard+rename", "tansu-proxy"]
BASELINE: Path | None = None


class PluginStack(sbs.Stack):
    """Switchyard with a route over the benchmark topics running plugins."""

    def __init__(self, config: str, tmp: Path):
        # A fresh Tansu per run; stopped with the proxy.
        self.tansu = sbs.TansuBroker(tmp).start()
        self.broker_port = self.tansu.port
        try:
            self._start(config, tmp)
        except BaseException:
            self.tansu.close()
            raise

    def _start(self, config: str, tmp: Path):
        if "+" not in config:
            super().__init__(config, tmp, self.tansu)
            return
        binary, which = config.split("+", 1)
        binary = BASELINE if binary == "baseline" else sbs.SWITCHYARD
        base = sbs.free_port_run(6)
        self.config = config
        if which == "keep-all":
            plugins = f"  - {{name: p, path: '{DIST / 'keep-all.wasm'}'}}\n"
            chains = "{produce: [p], fetch: [p]}"
        else:
            plugins = (f"  - {{name: p, path: '{DIST / 'topic-rename.wasm'}', "
                       "config: '{\"template\": \"{topic}-r\"}'}\n")
            chains = "{produce: [p]}"
        cfg = tmp / f"switchyard-{base}.yaml"
        cfg.write_text(
            f"cluster_id: bench\nlisten:\n  bind: 127.0.0.1:{base}\n  virtual_nodes: 1\n"
            f"sites:\n  - name: local\n    bootstrap: [\"{self.tansu.bootstrap}\"]\n"
            f"routes:\n  - name: bench\n    topics: {{prefix: bench-}}\n    site: local\n"
            f"    plugins: {chains}\n"
            f"plugins:\n{plugins}"
            f"admin:\n  bind: 127.0.0.1:{base + 5}\nlog:\n  level: warn\n"
        )
        self.proxy = sbs.Proc([str(binary), "run", "--config", str(cfg)], tmp / f"switchyard-{base}.log")
        sbs.wait_until(lambda: sbs.http_ok(f"http://127.0.0.1:{base + 5}/readyz"), 20, "switchyard ready")
        self.bootstrap = f"127.0.0.1:{base}"

    def stop(self):
        try:
            if getattr(self, "proxy", None):
                self.proxy.stop()
        finally:
            self.tansu.close()


def one_run(config: str, mode: str, size: int, records: int, tmp: Path) -> dict:
    stack = PluginStack(config, tmp)
    try:
        topic = f"bench-{mode}-{size}-{time.monotonic_ns()}"
        common = ["--topic", topic, "--num-records", str(records)]
        direct = f"127.0.0.1:{stack.broker_port}"
        if config == "switchyard+rename":
            # The renamed topic, as an operator would create it.
            sbs.perf("produce", "--bootstrap", direct, "--topic", f"{topic}-r", "--num-records", "1",
                     "--record-size", "10", "--partitions", "3", "--acks", "1")
        if mode == "consume":
            sbs.perf("produce", "--bootstrap", direct, *common, "--record-size", str(size),
                     "--partitions", "3", "--acks", "1")
        cpu0 = stack.proxy.cpu_seconds() if stack.proxy else 0.0
        if mode == "produce":
            r = sbs.perf("produce", "--bootstrap", stack.bootstrap, *common, "--record-size", str(size),
                         "--partitions", "3", "--acks", "1", "--throughput", "-1")
        else:
            r = sbs.perf("consume", "--bootstrap", stack.bootstrap, *common, *sbs.GROUP_PROPS)
        if stack.proxy:
            r["proxy_cpu_s_per_gb"] = (stack.proxy.cpu_seconds() - cpu0) / (r["bytes"] / 1e9)
        return r
    finally:
        stack.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records-1k", type=int, default=200_000)
    ap.add_argument("--records-100", type=int, default=600_000)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--baseline", type=Path,
                    help="another switchyard binary to run keep-all with (config baseline+keep-all)")
    ap.add_argument("--baseline-label", default="", help="what the baseline binary is, for the report")
    args = ap.parse_args()
    global BASELINE
    configs = list(CONFIGS)
    if args.baseline:
        BASELINE = args.baseline.resolve()
        configs.insert(configs.index("switchyard+keep-all") + 1, "baseline+keep-all")
    workloads = [("produce", 100, args.records_100), ("produce", 1024, args.records_1k),
                 ("consume", 100, args.records_100), ("consume", 1024, args.records_1k)]
    results: dict = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for rnd in range(args.rounds):
            for mode, size, n in workloads:
                for cfg in configs:
                    if mode == "consume" and cfg == "switchyard+rename":
                        continue  # renaming is a produce-path plugin
                    r = one_run(cfg, mode, size, n, tmp)
                    results.setdefault((mode, size, cfg), []).append(r)
                    print(f"round {rnd + 1} {mode} {size} B {cfg}: {r['records_per_sec']:.0f} rec/s",
                          file=sys.stderr)
    lines = [
        "# Plugin overhead (end to end)", "",
        f"Machine: {sbs.machine()}. {args.rounds} rounds, medians; every run on a fresh Tansu "
        "(in-memory) and proxy; `switchyard-perf` (librdkafka), acks=1, 3 partitions.", "",
        "| workload | " + " | ".join(configs) + " | keep-all / switchyard | rename / switchyard | switchyard / direct |"
        + (" keep-all / baseline keep-all |" if args.baseline else ""),
        "|---" * (len(configs) + 4 + bool(args.baseline)) + "|",
    ]
    for mode, size, _ in workloads:
        med = {c: statistics.median(x["records_per_sec"] for x in results.get((mode, size, c), [{"records_per_sec": 0}]))
               for c in configs}
        ratio = lambda a, b: f"{med[a] / med[b]:.2f}" if med[a] and med[b] else "—"  # noqa: E731
        cells = [f"{med[c] / 1000:.0f}k rec/s" if med[c] else "—" for c in configs]
        lines.append(f"| {mode} {size} B | " + " | ".join(cells) +
                     f" | {ratio('switchyard+keep-all', 'switchyard')} | {ratio('switchyard+rename', 'switchyard')}"
                     f" | {ratio('switchyard', 'direct')} |"
                     + (f" {ratio('switchyard+keep-all', 'baseline+keep-all')} |" if args.baseline else ""))
    lines += ["", "Proxy CPU-seconds per GB (median):", "",
              "| workload | " + " | ".join(c for c in configs if c != "direct") + " |",
              "|---" * len(configs) + "|"]
    for mode, size, _ in workloads:
        cells = []
        for c in configs:
            if c == "direct":
                continue
            rs = results.get((mode, size, c))
            cells.append(f"{statistics.median(x['proxy_cpu_s_per_gb'] for x in rs):.2f}" if rs else "—")
        lines.append(f"| {mode} {size} B | " + " | ".join(cells) + " |")
    if args.baseline:
        lines += ["", f"`baseline+keep-all` is {args.baseline_label or args.baseline}, run in the same rounds."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
