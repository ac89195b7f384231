#!/usr/bin/env python3
"""Tee against MirrorMaker 2: catching up a backlog, same records, same machine.

The tool the async tee replaces is MirrorMaker 2, so the tee is measured on
MM2's own ground: a source Apache Kafka cluster holds a backlog (default
1 GiB: 1,048,576 x 1 KiB records in 6 partitions, written once by Kafka's
ProducerPerformance), and each run copies all of it to a fresh target
cluster, either with

* MirrorMaker 2 in dedicated mode (`org.apache.kafka.connect.mirror.MirrorMaker`,
  connect-mirror from Maven Central, as scripts/setup.sh installs it), its
  defaults (tasks.max 1, checkpoints and heartbeats on) except replication
  factors of 1 and the identity replication policy, so the target topic
  keeps its name as the tee's `naming: identity` does; or
* Switchyard with one route over the topic and an async tee to the target
  (`start: earliest`, its default tee settings), no client connected.

Runs alternate (MM2 first in odd rounds); each gets a fresh target
cluster. For each run: seconds from the copier's start until the target
holds every record (sum of the target's high watermarks), the copy rate
from the first record on the target to the last (the catch-up throughput:
JVM and Connect start-up are not in it, Switchyard's start-up is not
either), and the copier's own CPU-seconds (utime + stime of its process,
start-up included) per GB copied. Medians over --rounds.

    scripts/setup.sh && cargo build --release -p switchyard
    .venv/bin/python benches/tee_vs_mm2.py [--records 1048576] [--size 1024] [--rounds 3] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # kafka_cluster.py
sys.path.insert(0, str(ROOT / "benches"))

import side_by_side as sbs  # noqa: E402  (ProducerPerformance runner, Proc, report section writer)
from brokers import KafkaBroker, kafka_version, wait_until  # noqa: E402
from helpers import allocate_ports  # noqa: E402
from kafka_cluster import jvm_argv, mm2_libs, mm2_single_node_properties  # noqa: E402

TOPIC = "backlog"
PARTITIONS = 6


def target_records(bootstrap: str) -> int:
    """The sum of the target topic's high watermarks (0 while it is missing)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "tee-vs-mm2-unused", "enable.auto.commit": False})
    try:
        md = c.list_topics(TOPIC, timeout=5)
        t = md.topics.get(TOPIC)
        if t is None or t.error is not None:
            return 0
        total = 0
        for p in t.partitions:
            try:
                _, high = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=5, cached=False)
            except KafkaException:
                continue  # a topic just created: its leader is not ready yet
            total += max(high, 0)
        return total
    finally:
        c.close()


def mm2_properties(source: str, target: str) -> str:
    return "\n".join([
        "clusters = source, target",
        f"source.bootstrap.servers = {source}",
        f"target.bootstrap.servers = {target}",
        "source->target.enabled = true",
        "target->source.enabled = false",
        f"source->target.topics = {TOPIC}",
        "replication.policy.class = org.apache.kafka.connect.mirror.IdentityReplicationPolicy",
        *mm2_single_node_properties(),
        "",
    ])


def switchyard_config(source: str, target: str, listen: int, admin: int) -> str:
    return f"""cluster_id: tee-vs-mm2
listen:
  bind: 127.0.0.1:{listen}
sites:
  - name: source
    bootstrap: [{source}]
  - name: target
    bootstrap: [{target}]
default_site: source
routes:
  - name: backlog
    topics: {{exact: {TOPIC}}}
    site: source
    tee:
      - {{site: target, mode: async, start: earliest}}
admin:
  bind: 127.0.0.1:{admin}
log:
  level: warn
"""


def one_run(kind: str, source: KafkaBroker, n: int, size: int, tmp: Path, timeout: float,
            perf: Path | None = None) -> dict:
    target = KafkaBroker(tmp, 1, name=f"target-{kind}").start()
    proc = recorder = None
    try:
        if kind == "mm2":
            props = tmp / "mm2.properties"
            props.write_text(mm2_properties(source.bootstrap, target.bootstrap))
            proc = sbs.Proc([*jvm_argv("1g", libs=mm2_libs(), flags=()),
                             "org.apache.kafka.connect.mirror.MirrorMaker", str(props)], tmp / "mm2.log")
        else:
            listen, admin = allocate_ports(2), allocate_ports(1)
            cfg = tmp / "switchyard.yaml"
            cfg.write_text(switchyard_config(source.bootstrap, target.bootstrap, listen, admin))
            proc = sbs.Proc([str(sbs.SWITCHYARD), "run", "--config", str(cfg)], tmp / "switchyard.log")
        if perf is not None:
            perf.mkdir(parents=True, exist_ok=True)
            data = perf / f"{kind}.perf.data"
            data.unlink(missing_ok=True)
            recorder = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g",
                                         "-p", str(proc.p.pid), "-o", str(data)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        first = None
        done = None
        while time.monotonic() - t0 < timeout:
            if proc.p.poll() is not None:
                raise sbs.RunFailed(f"{kind} exited {proc.p.returncode}:\n{proc.tail(30)}")
            got = target_records(target.bootstrap)
            now = time.monotonic()
            if got and first is None:
                first = now
            if got >= n:
                done = now
                break
            time.sleep(0.25)
        if done is None or first is None:
            raise sbs.RunFailed(f"{kind}: the target did not get all {n} records within {timeout:.0f} s:\n"
                                f"{proc.tail(30)}")
        cpu = proc.cpu_seconds()
        rss = proc.status_kib("VmHWM") / 1024
        gb = n * size / 1e9
        copy_s = max(done - first, 1e-3)
        return {"total_s": done - t0, "copy_s": copy_s, "mb_per_sec": n * size / 1e6 / copy_s,
                "cpu_s": cpu, "cpu_s_per_gb": cpu / gb, "peak_rss_mib": rss}
    finally:
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(60)
        if proc is not None:
            proc.stop()
        target.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1 << 20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    ap.add_argument("--binary", type=Path, default=sbs.SWITCHYARD)
    ap.add_argument("--out", type=Path, help="write the report as a section of this markdown file")
    ap.add_argument("--only", choices=("mm2", "switchyard"), help="run one copier only (no report)")
    ap.add_argument("--perf", type=Path, help="record each run with perf (software clock) into DIR/<copier>.perf.data")
    args = ap.parse_args()
    sbs.SWITCHYARD = args.binary.resolve()
    sbs.TIMEOUT = args.timeout
    if not sbs.SWITCHYARD.is_file():
        print(f"{sbs.SWITCHYARD} missing: cargo build --release -p switchyard", file=sys.stderr)
        return 2
    (ROOT / "target").mkdir(exist_ok=True)
    started = time.monotonic()
    results: dict[str, list[dict]] = {"mm2": [], "switchyard": []}
    with tempfile.TemporaryDirectory(prefix="tee-vs-mm2-", dir=ROOT / "target") as d:
        tmp = Path(d)
        os.environ["SWITCHYARD_JVM_TMPDIR"] = d
        source = KafkaBroker(tmp, 1, name="source").start()
        try:
            source.create_topic(TOPIC, PARTITIONS)
            print(f"writing the backlog: {args.records} x {args.size} B", flush=True)
            sbs.java_produce(source.bootstrap, TOPIC, args.records, args.size,
                             ["acks=1", "linger.ms=20", "batch.size=262144"])
            wait_until(lambda: target_records(source.bootstrap) >= args.records, 60, "the backlog on the source")
            for r in range(args.rounds):
                order = ("mm2", "switchyard") if r % 2 == 0 else ("switchyard", "mm2")
                for kind in order:
                    if args.only and kind != args.only:
                        continue
                    res = one_run(kind, source, args.records, args.size, tmp, args.timeout, args.perf)
                    results[kind].append(res)
                    print(f"round {r + 1} {kind}: {res['mb_per_sec']:.1f} MB/s copying, "
                          f"{res['total_s']:.1f} s in all, {res['cpu_s']:.1f} CPU-s = "
                          f"{res['cpu_s_per_gb']:.2f} CPU-s/GB, peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
        finally:
            source.close()
    if args.only:
        return 0
    report = render(results, args, (time.monotonic() - started) / 60)
    print(report)
    if args.out:
        sbs.write_section(args.out, report)
    return 0


def render(results: dict[str, list[dict]], args, minutes: float) -> str:
    def med(kind, key):
        return statistics.median(r[key] for r in results[kind])

    gib = args.records * args.size / (1 << 30)
    lines = [
        "## Tee against MirrorMaker 2: catching up a backlog",
        "",
        f"`benches/tee_vs_mm2.py --records {args.records} --size {args.size} --rounds {args.rounds}`: "
        f"{gib:.2f} GiB ({args.records:,} x {args.size} B, {PARTITIONS} partitions) on one Apache Kafka "
        f"{kafka_version()} node, copied to a fresh one by each copier in turn, medians of {args.rounds} "
        f"alternating runs, {minutes:.0f} min in all. {sbs.machine()}.",
        "",
        "| copier | catch-up MB/s | start to last record | CPU-s | CPU-s per GB | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for kind, name in (("mm2", "MirrorMaker 2 (dedicated, defaults)"), ("switchyard", "Switchyard async tee")):
        lines.append(f"| {name} | {med(kind, 'mb_per_sec'):.1f} | {med(kind, 'total_s'):.1f} s | "
                     f"{med(kind, 'cpu_s'):.1f} | {med(kind, 'cpu_s_per_gb'):.2f} | "
                     f"{med(kind, 'peak_rss_mib'):.0f} MiB |")
    lines += [
        "",
        f"Tee / MM2: catch-up throughput {med('switchyard', 'mb_per_sec') / med('mm2', 'mb_per_sec'):.2f}x, "
        f"CPU per GB {med('switchyard', 'cpu_s_per_gb') / med('mm2', 'cpu_s_per_gb'):.2f}x.",
        "",
        "CPU counts each copier's whole process, start-up included: for MM2 that is a JVM and a Connect "
        "worker (about 18 CPU-seconds with a 100,000-record backlog, where the copying itself is small). "
        "The tee decodes every batch and writes it again with its origin header (the loop rule), so its "
        "cost is per record, not a byte copy.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
