#!/usr/bin/env python3
"""Broker-churn drills: what broker churn on a 3-broker Apache Kafka cluster
costs clients that connect directly, and the same clients through
Switchyard, side by side in one run, per client library.

One run of an event: a fresh 3-broker KRaft cluster (tests/kafka_cluster.py:
replication factor 3, min.insync.replicas=2), one Switchyard per library in
front of it (so connections it closes are counted per library), and for
each library (confluent-kafka/librdkafka, kafka-python, the Java client)
and each side (``direct``, ``switchyard``) a 6-partition topic, a steady
producer (idempotent, acks=all, ~100 records/s) and a consumer group that
commits synchronously after each poll (tests/failover.py workers; the Java
ones are Kafka's VerifiableProducer/VerifiableConsumer, which commits that
way; the Python consumers are told to: one commit per record cannot keep
up with 100 records/s on two busy cores, and the lag would swamp the
event). All of them run at once, so both sides see the same event. Then:
a warm-up, the event, a settle period, the producers stop, the groups
drain, and per (side, library):

* produce gap: the longest time without an ack, from 5 s before the event
  until the producers were stopped (the window's ends count as acks, so a
  producer that never recovered shows the whole window);
* consume gap: the same for records delivered to the group;
* lost: records acked to the producer that the group never got (if any,
  the topic is read directly: how many of them are not in its log);
* dup: deliveries of a record beyond its first, from 5 s before the event
  on (what happened while the load started is not the event's doing);
  of them, ``written_twice`` records that are in the log at two offsets (an
  idempotent producer must never do that) and ``committed_redelivered``
  records the group had committed past before the event and got again (a
  group that went back behind its own commits, e.g. an offset reset);
* closed by switchyard: client connections Switchyard closed because of a
  broker's fault during the event and settle period, from
  ``switchyard_client_connections_closed_total{reason="upstream"}`` (and
  ``reason="upstream_timeout"``, a request to a frozen broker); n/a if this
  Switchyard does not export it. Before the load starts, the drill has each
  Switchyard close one connection of its own (an unknown API key), since a
  counter with no sample is not in /metrics at all. The increase of
  ``switchyard_errors_total`` by kind is printed as well.

Events (each a function below, ``EVENTS``):

  sigkill     SIGKILL of the broker that coordinates the through-Switchyard
              confluent group (it leads some partitions too); restarted after
              --hold s; until every ISR is full again
  sigterm     controlled shutdown (SIGTERM) of that broker; restarted after
              --hold s; until every ISR is full again
  rolling     rolling restart of all three brokers, one at a time (controlled
              shutdown, start, every ISR full before the next)
  reassign    kafka-reassign-partitions takes each partition's leader out of
              its replicas, then puts it back (a replica copied), then a
              preferred-leader election (kafka-leader-election) moves the
              leaders back
  controller  SIGKILL of the active KRaft controller (kafka-metadata-quorum
              describe --status), restarted after --hold s
  add-broker  a 4th broker (broker only) joins; every Switchyard must list
              it in /api/v1/status; a reassignment puts a replica of every
              partition on it and a preferred-leader election makes it lead a
              third of them (new client connections to Switchyard printed)
  sigstop     the coordinator's broker frozen (SIGSTOP) for --freeze s under
              load, then SIGCONT; until every ISR is full again

Usage (Kafka jars and Java from scripts/setup.sh; a built proxy, by default
target/debug/switchyard or $SWITCHYARD_BIN; nothing is built here):

    .venv/bin/python tests/churn.py --events sigkill,sigterm --libs confluent,java
    .venv/bin/python tests/churn.py --events all --runs 3 --out churn.md
    .venv/bin/python tests/churn.py --events rolling --switchyard-bin target/release/switchyard

It prints one line per (event, side, library)::

    CHURN sigkill switchyard java: produce gap 8.2 s, consume gap 9.0 s, lost 0, dup 12, closed by switchyard 3

(each followed by indented details) and, with --out, writes a Markdown
table: direct and Switchyard side by side per event and library, medians
over --runs. An event run takes 1.5-2 minutes on 2 cores (a fresh cluster
per event and run; about 20 processes, 7 of them JVMs); all seven events
about 12 minutes. Work files go to a temporary directory that is removed at
the end unless --keep (or a run failed: then it is kept and named).

tests/test_broker_churn.py runs sigkill, sigterm and sigstop in CI with all
three libraries and asserts what users check (nothing acked lost, producers
delivered everything, Switchyard closed no client connection for a broker's
fault); the timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from failover import (  # noqa: E402
    Worker,
    acked_times,
    classify_duplicates,
    committed_ids,
    consumed,
    read_ids,
    worker_problems,
)
from helpers import (  # noqa: E402
    ROOT,
    admin_client,
    allocate_ports,
    metric_sum,
    samples_named,
    start_switchyard,
    switchyard_bin_path,
    unique_name,
    wait_led_through,
    wait_until,
)
from kafka_cluster import KafkaCluster, run_tool  # noqa: E402

SIDES = ("direct", "switchyard")
LIBS = ("confluent", "kafka-python", "java")
RATE = 100  # records/s per producer
PARTITIONS = 6
WARMUP = 10.0  # s of steady load before the event
PRE_WINDOW = 5.0  # s before the event where the gap window starts
SETTLE = 20.0  # s after the event
HOLD = 15.0  # s a killed/stopped broker stays down
FREEZE = 30.0  # s a SIGSTOPped broker stays frozen
START_TIMEOUT = 150.0  # s until every group consumes (JVMs start slowly on 2 busy cores)
ISR_TIMEOUT = 180.0
DRAIN = 90.0  # s for the groups to get every acked record after the producers stop...
DRAIN_MAX = 300.0  # ...or longer while they still make progress (a slow group is not a lossy one)
DRAIN_IDLE = 15.0  # s without a delivery that ends the drain after DRAIN
PRODUCER_STOP_GRACE = 90.0

CLOSED_METRIC = "switchyard_client_connections_closed_total"
# Its reasons that are a broker's fault: a failed upstream request, and one
# that timed out (a frozen broker).
BROKER_FAULT_REASONS = ("upstream", "upstream_timeout")


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass
class Snap:
    """One Switchyard's counters at one moment."""

    closed_upstream: Optional[float]  # None: the metric is not exported
    closed: dict[str, float]  # by reason
    errors: dict[str, float]  # switchyard_errors_total by kind
    connections: float  # client connections accepted so far


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    out = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: v for k, v in sorted(out.items()) if v}


@dataclass
class Result:
    event: str
    side: str
    lib: str
    produce_gap: float
    consume_gap: float
    lost: int  # acked, never consumed (the whole run)
    dup: int  # deliveries beyond a record's first, from 5 s before the event on
    closed: Optional[float]  # by Switchyard for a broker's fault; None: n/a
    acked: int = 0
    consumed: int = 0
    undelivered: Optional[int] = None  # None: the producer reported no "done"
    producer_fatal: list = field(default_factory=list)
    producer_exit: Optional[int] = None
    producer_errors: int = 0  # fail/err/fatal events (from 5 s before the event on)
    consumer_errors: int = 0  # err/commit_err events (same window)
    dup_kinds: dict = field(default_factory=dict)
    closed_by_reason: dict = field(default_factory=dict)
    switchyard_errors: dict = field(default_factory=dict)
    new_connections: Optional[float] = None
    metric_missing: bool = False
    # Records delivered from two different offsets: in the log twice.
    written_twice: int = 0
    # Of the lost records, how many the topic's log does not hold (read
    # directly after the run; None: nothing lost, not read). Lost records
    # that are in the log were never delivered to the group.
    lost_from_log: Optional[int] = None

    def line(self) -> str:
        closed = "n/a" if self.closed is None else f"{self.closed:g}"
        out = (f"CHURN {self.event} {self.side} {self.lib}: produce gap {self.produce_gap:.1f} s, "
               f"consume gap {self.consume_gap:.1f} s, lost {self.lost}, dup {self.dup}, "
               f"closed by switchyard {closed}")
        undelivered = "no done event" if self.undelivered is None else self.undelivered
        if self.lost_from_log is not None:
            out += f"\n  of the {self.lost} lost records {self.lost_from_log} are not in the topic's log"
        out += (f"\n  acked {self.acked}, consumed {self.consumed}, undelivered {undelivered}, "
                f"producer exit {self.producer_exit} errors {self.producer_errors}"
                f"{' fatal ' + str(self.producer_fatal) if self.producer_fatal else ''}, "
                f"consumer errors {self.consumer_errors}, duplicates {self.dup_kinds}, "
                f"written twice {self.written_twice}")
        if self.side == "switchyard":
            missing = f" ({CLOSED_METRIC} not exported)" if self.metric_missing else ""
            out += (f"\n  switchyard: closed by reason {self.closed_by_reason or {}}{missing}, "
                    f"errors_total by kind {self.switchyard_errors or {}}, "
                    f"new client connections {self.new_connections:g}")
        return out

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EventRun:
    event: str
    results: list[Result]
    notes: list[str]
    setup_s: float
    event_s: float
    total_s: float
    kafka_version: str = "?"

    def header(self) -> str:
        return (f"CHURN {self.event}: {'; '.join(self.notes)}; setup {self.setup_s:.0f} s, "
                f"event {self.event_s:.0f} s, run {self.total_s:.0f} s")

    def text(self) -> str:
        return "\n".join([self.header()] + [r.line() for r in self.results])


def _producer_trouble(r: Result) -> Optional[str]:
    if r.undelivered is None:
        return f"producer reported no end (exit {r.producer_exit})"
    if r.undelivered or r.producer_fatal:
        return f"producer left {r.undelivered} undelivered, fatal {r.producer_fatal}"
    return None


def problems(run: EventRun) -> list[str]:
    """What a user would call broken, per (side, library): acked records
    lost (either side: with acks=all and min.insync.replicas=2 a loss on the
    direct side means the harness is wrong), and on the Switchyard side a
    producer that did not deliver everything, a client connection
    Switchyard closed for a broker's fault (or the metric that counts them
    missing), or a group re-reading what it had committed before the event
    (an offset reset) beyond what the same library got direct in the same
    run (Kafka's own doing), or an idempotent producer's records written
    twice (in the log at two offsets) beyond the same library's direct run.
    At-least-once redeliveries of what was not yet committed are what a
    group's contract allows, on either side: printed.

    Written twice was seen in CI and in local runs with all three libraries
    (confluent-kafka, around a controlled shutdown and a crash): Switchyard
    sent a partition's later batch to the new leader while earlier ones were
    failing on the old one; the new leader's OUT_OF_ORDER_SEQUENCE made
    librdkafka bump its epoch and re-send a batch the old leader had passed
    on before it answered NOT_LEADER_OR_FOLLOWER. Fixed by keeping each
    partition's batches on one broker at a time (upstream/producer_ids.rs).

    A direct producer that Kafka itself wedges is the baseline, not a
    failure: seen once in CI, the Java client's idempotent producer got
    OUT_OF_ORDER_SEQUENCE_NUMBER from the thawed broker for good and never
    finished. `baseline_notes` reports those."""
    out = []
    direct = {r.lib: r for r in run.results if r.side == "direct"}
    for r in run.results:
        who = f"{r.event} {r.side} {r.lib}"
        base = direct.get(r.lib)
        if r.side == "switchyard" and base is not None:
            if r.written_twice > base.written_twice:
                out.append(f"{who}: {r.written_twice} acked records are in the log twice "
                           f"(direct: {base.written_twice})")
            went_back = r.dup_kinds.get("committed_redelivered", 0)
            if went_back > base.dup_kinds.get("committed_redelivered", 0):
                out.append(f"{who}: the group got {went_back} records again that it had committed before the "
                           f"event (direct: {base.dup_kinds.get('committed_redelivered', 0)})")
        if r.lost:
            out.append(f"{who}: {r.lost} acked records never consumed "
                       f"({r.lost_from_log} of them not in the topic's log)")
        if r.side == "switchyard":
            trouble = _producer_trouble(r)
            if trouble:
                out.append(f"{who}: {trouble}")
            if r.metric_missing:
                out.append(f"{who}: Switchyard does not export {CLOSED_METRIC} (needed to count connections "
                           "it closes for a broker's fault)")
            elif r.closed:
                out.append(f"{who}: Switchyard closed {r.closed:g} client connections for a broker's fault "
                           f"(by reason {r.closed_by_reason}; errors {r.switchyard_errors})")
    return out


def baseline_notes(run: EventRun) -> list[str]:
    """Direct clients the broker's fault left unfinished: printed next to
    the Switchyard side, which must not show the same."""
    out = []
    for r in run.results:
        if r.side != "switchyard":
            trouble = _producer_trouble(r)
            if trouble:
                out.append(f"{r.event} {r.side} {r.lib} (baseline, not a failure): {trouble}")
    return out


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def longest_gap(times, t0: float, t1: float) -> float:
    """The longest interval in [t0, t1] without one of `times` (t0 and t1
    count as points, so no point at all gives t1 - t0)."""
    pts = [t0] + sorted(t for t in times if t0 <= t <= t1) + [t1]
    return max(b - a for a, b in zip(pts, pts[1:]))


def _dup_kinds(w: Worker, acked: dict[str, float], fault_t: float) -> dict[str, int]:
    """failover.classify_duplicates in this drill's words: on one cluster
    its "translation" (committed before the event, delivered again) is a
    group that went back behind its own commits."""
    k = classify_duplicates(w, acked, fault_t)
    return {"producer_in_flight": k["producer_in_flight"], "consumer_uncommitted": k["consumer_uncommitted"],
            "committed_redelivered": k["translation"]}


def _written_twice(recs: list[dict]) -> int:
    """Records delivered from more than one (partition, offset): in the log
    more than once (a redelivery of the same offset is the group's doing)."""
    at: dict[str, set] = {}
    for e in recs:
        at.setdefault(e["id"], set()).add((e["p"], e["o"]))
    return sum(len(o) - 1 for o in at.values() if len(o) > 1)


def snapshot(sy) -> Snap:
    samples, types = sy.metrics()
    exported = CLOSED_METRIC in types or bool(samples_named(samples, CLOSED_METRIC))
    closed: dict[str, float] = {}
    for s in samples_named(samples, CLOSED_METRIC):
        reason = s.labels.get("reason", "")
        closed[reason] = closed.get(reason, 0.0) + s.value
    errors: dict[str, float] = {}
    for s in samples_named(samples, "switchyard_errors_total"):
        kind = s.labels.get("kind", "")
        errors[kind] = errors.get(kind, 0.0) + s.value
    fault = sum(closed.get(r, 0.0) for r in BROKER_FAULT_REASONS)
    return Snap(fault if exported else None, closed, errors,
                metric_sum(samples, "switchyard_client_connections_total"))


def provoke_close(sy, timeout: float = 10.0) -> bool:
    """Makes Switchyard close one connection of ours for a reason of its
    own (a request with an API key Kafka does not have), so that
    CLOSED_METRIC shows up in /metrics if this Switchyard has it: a counter
    family with no sample yet is not exported at all, and "never closed a
    connection" would look like "no such metric". Returns whether it shows."""
    body = struct.pack(">hhih", 32000, 0, 1, 5) + b"churn"
    try:
        with socket.create_connection((sy.host, sy.port), timeout=5) as s:
            s.settimeout(5)
            s.sendall(struct.pack(">i", len(body)) + body)
            while s.recv(4096):
                pass
    except OSError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples, types = sy.metrics()
        if CLOSED_METRIC in types or samples_named(samples, CLOSED_METRIC):
            return True
        time.sleep(0.2)  # poll with a deadline
    return False


def run_for(seconds: float) -> None:
    """Lets the load run (the drill's own pacing, not synchronisation)."""
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 >= seconds, seconds + 5, "time passes", interval=0.2)


# --------------------------------------------------------------------------
# One drill
# --------------------------------------------------------------------------


class Drill:
    """Cluster, proxies, topics and workers of one event run. `kafka`,
    `switchyard` and `workers` are the conftest fixtures' factories (or
    ScriptRig's, which have the same signatures); `workdir` holds the
    reassignment plans."""

    def __init__(self, event: str, libs: Sequence[str], *, kafka: Callable, switchyard: Callable,
                 workers: Callable, workdir: Path, rate: float = RATE, warmup: float = WARMUP,
                 settle: float = SETTLE, hold: float = HOLD, freeze: float = FREEZE,
                 log: Callable[[str], None] = print):
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events: {', '.join(EVENTS)}")
        self.event = event
        self.libs = list(libs)
        self.kafka_factory, self.switchyard_factory, self.workers_factory = kafka, switchyard, workers
        self.workdir = Path(workdir)
        self.rate, self.warmup, self.settle, self.hold, self.freeze = rate, warmup, settle, hold, freeze
        self.log = log
        self.notes: list[str] = []
        self.topics: dict[tuple[str, str], str] = {}
        self.groups: dict[tuple[str, str], str] = {}
        self.producers: dict[tuple[str, str], Worker] = {}
        self.consumers: dict[tuple[str, str], Worker] = {}
        self.proxies: dict[str, Any] = {}
        self._plans = 0

    # ---- set-up -------------------------------------------------------

    def setup(self) -> None:
        self.log(f"[{self.event}] starting a 3-broker Kafka cluster")
        self.cluster: KafkaCluster = self.kafka_factory(3)
        self.admin = admin_client(self.cluster.bootstrap)
        for lib in self.libs:
            self.proxies[lib] = self.switchyard_factory([self.cluster])
            if not provoke_close(self.proxies[lib]):
                self.log(f"[{self.event}] Switchyard does not export {CLOSED_METRIC}")
        from confluent_kafka.admin import NewTopic

        for side in SIDES:
            for lib in self.libs:
                self.topics[(side, lib)] = unique_name(f"churn-{self.event}-{side}-{lib}")
        new = [NewTopic(t, num_partitions=PARTITIONS, replication_factor=3) for t in self.topics.values()]
        for t, fut in self.admin.create_topics(new, operation_timeout=30).items():
            fut.result(timeout=60)
        wait_until(self._all_led, 60, "not every partition of the drill's topics has a leader")
        for lib in self.libs:
            wait_led_through(self.proxies[lib], self.topics[("switchyard", lib)], PARTITIONS, timeout=60)
        self.log(f"[{self.event}] topics ready; starting {2 * len(self.topics)} workers")
        for (side, lib), topic in self.topics.items():
            bootstrap = self.cluster.bootstrap if side == "direct" else self.proxies[lib].bootstrap
            group = self.groups[(side, lib)] = unique_name(f"churn-{side}-{lib}")
            self.consumers[(side, lib)] = self.workers_factory(
                "consume", f"{self.event}-{side}-{lib}-consumer", lib=lib, bootstrap=bootstrap, topic=topic,
                group=group, max_seconds=3600, commit="batch")
        for (side, lib), topic in self.topics.items():
            bootstrap = self.cluster.bootstrap if side == "direct" else self.proxies[lib].bootstrap
            self.producers[(side, lib)] = self.workers_factory(
                "produce", f"{self.event}-{side}-{lib}-producer", lib=lib, bootstrap=bootstrap, topic=topic,
                tag=f"{side}-{lib}", rate=self.rate, max_seconds=3600, flush_seconds=60)
        every = list(self.producers.values()) + list(self.consumers.values())
        wait_until(lambda: all(len(committed_ids(w)) >= 2 * self.rate for w in self.consumers.values()),
                   START_TIMEOUT, lambda: "groups not consuming:\n" + "\n".join(map(worker_problems, every)))

    def _all_led(self) -> bool:
        md = self.admin.list_topics(timeout=10)
        for t in self.topics.values():
            tm = md.topics.get(t)
            if tm is None or len(tm.partitions) != PARTITIONS or any(p.leader < 0 for p in tm.partitions.values()):
                return False
        return True

    # ---- cluster views (asked of the cluster directly) ----------------

    def leaders(self) -> dict[tuple[str, int], int]:
        md = self.admin.list_topics(timeout=10)
        return {(t, p.id): p.leader for t in self.topics.values() if t in md.topics
                for p in md.topics[t].partitions.values()}

    def replicas(self) -> dict[tuple[str, int], list[int]]:
        md = self.admin.list_topics(timeout=10)
        return {(t, p.id): list(p.replicas) for t in self.topics.values()
                for p in md.topics[t].partitions.values()}

    def isr_full(self) -> bool:
        """Every partition of every topic (the internal ones too) led and with
        all its replicas in sync."""
        md = self.admin.list_topics(timeout=10)
        for tm in md.topics.values():
            for p in tm.partitions.values():
                if p.leader < 0 or set(p.isrs) != set(p.replicas):
                    return False
        return True

    def wait_isr_full(self, what: str) -> float:
        t0 = time.time()
        wait_until(self.isr_full, ISR_TIMEOUT, f"ISRs not full again after {what}", interval=0.5)
        return time.time() - t0

    def wait_leaders_off(self, node: int) -> float:
        t0 = time.time()
        wait_until(lambda: node not in self.leaders().values(), 60, f"partitions still led by broker {node}",
                   interval=0.2)
        return time.time() - t0

    def coordinator(self, side: str = "switchyard") -> int:
        lib = "confluent" if "confluent" in self.libs else self.libs[0]
        group = self.groups[(side, lib)]
        d = self.admin.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
        return d.coordinator.id

    def victim(self) -> int:
        """The broker coordinating the through-Switchyard confluent group
        (it leads partitions of the drill's topics too, as each broker does)."""
        node = self.coordinator()
        led = sum(1 for v in self.leaders().values() if v == node)
        self.notes.append(f"victim broker {node} (coordinator of the Switchyard-side "
                          f"{'confluent' if 'confluent' in self.libs else self.libs[0]} group, "
                          f"leader of {led}/{len(self.topics) * PARTITIONS} partitions)")
        return node

    def quorum_leader(self, bootstrap: Optional[str] = None) -> Optional[int]:
        out = run_tool("org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server",
                       bootstrap or self.cluster.bootstrap, "describe", "--status", timeout=60)
        m = re.search(r"^LeaderId:\s+(-?\d+)", out, re.M)
        return int(m.group(1)) if m else None

    def reassign(self, plan: dict[tuple[str, int], list[int]], what: str) -> float:
        """Runs kafka-reassign-partitions with `plan` and waits until it is
        complete; returns how long that took."""
        self._plans += 1
        path = self.workdir / f"{self.event}-reassign-{self._plans}.json"
        path.write_text(json.dumps({"version": 1, "partitions": [
            {"topic": t, "partition": p, "replicas": reps} for (t, p), reps in sorted(plan.items())]}))
        tool = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"

        def call(action: str) -> str:
            return run_tool(tool, "--bootstrap-server", self.cluster.bootstrap, "--reassignment-json-file",
                            str(path), action, timeout=90)

        def completed() -> bool:
            out = call("--verify")
            return "is completed" in out and "still in progress" not in out

        t0 = time.time()
        call("--execute")
        wait_until(completed, 180, f"reassignment ({what}) did not complete", interval=1.0)
        return time.time() - t0

    def elect_preferred(self, partitions: Sequence[tuple[str, int]]) -> None:
        self._plans += 1
        path = self.workdir / f"{self.event}-elect-{self._plans}.json"
        path.write_text(json.dumps({"partitions": [{"topic": t, "partition": p} for t, p in partitions]}))
        run_tool("org.apache.kafka.tools.LeaderElectionCommand", "--bootstrap-server", self.cluster.bootstrap,
                 "--election-type", "PREFERRED", "--path-to-json-file", str(path), timeout=90)

    # ---- the run ------------------------------------------------------

    def _drain(self, acked: dict[tuple[str, str], dict[str, float]]) -> None:
        """Until every group got every record its producer had acked: at
        least DRAIN s, longer (up to DRAIN_MAX) while deliveries go on."""
        t0 = time.monotonic()
        last_count, last_progress = -1, t0
        while True:
            got = {k: {e["id"] for e in consumed(w)} for k, w in self.consumers.items()}
            if all(set(acked[k]) <= got[k] for k in got):
                return
            now = time.monotonic()
            count = sum(len(v) for v in got.values())
            if count != last_count:
                last_count, last_progress = count, now
            if now - t0 > DRAIN_MAX or (now - t0 > DRAIN and now - last_progress > DRAIN_IDLE):
                behind = {f"{s}/{lib}": len(set(acked[(s, lib)]) - got[(s, lib)]) for s, lib in got}
                self.log(f"[{self.event}] drain ended after {now - t0:.0f} s; records not consumed: {behind}")
                return
            time.sleep(1.0)  # poll with a deadline (the groups catch up)

    def run(self) -> EventRun:
        t_start = time.time()
        self.setup()
        setup_s = time.time() - t_start
        self.log(f"[{self.event}] all groups consuming after {setup_s:.0f} s; warm-up {self.warmup:.0f} s")
        run_for(self.warmup)
        before = {lib: snapshot(sy) for lib, sy in self.proxies.items()}
        fault_t = time.time()
        self.log(f"[{self.event}] event")
        EVENTS[self.event](self)
        event_s = time.time() - fault_t
        self.log(f"[{self.event}] event done after {event_s:.0f} s; settling {self.settle:.0f} s")
        run_for(self.settle)
        after = {lib: snapshot(sy) for lib, sy in self.proxies.items()}

        stop_t = time.time()
        for w in self.producers.values():
            w.terminate()
        for w in self.producers.values():
            w.stop(grace=PRODUCER_STOP_GRACE)
        acked = {k: acked_times(w) for k, w in self.producers.items()}
        t1 = time.time()
        self._drain(acked)
        t2 = time.time()
        for w in self.consumers.values():
            w.terminate()
        for w in self.consumers.values():
            w.stop(grace=30)
        self.log(f"[{self.event}] producers stopped in {t1 - stop_t:.0f} s, groups drained in {t2 - t1:.0f} s, "
                 f"consumers stopped in {time.time() - t2:.0f} s")

        results = []
        w0 = fault_t - PRE_WINDOW
        for side in SIDES:
            for lib in self.libs:
                prod, cons = self.producers[(side, lib)], self.consumers[(side, lib)]
                ack = acked[(side, lib)]
                recs = consumed(cons)
                counts = Counter(e["id"] for e in recs)
                # Duplicates delivered in the window: a record delivered
                # again from w0 on (whenever it was first delivered).
                seen_before = {e["id"] for e in recs if e["t"] < w0}
                late = Counter(e["id"] for e in recs if e["t"] >= w0)
                done = prod.events("done")
                r = Result(
                    event=self.event, side=side, lib=lib,
                    produce_gap=longest_gap(ack.values(), w0, stop_t),
                    consume_gap=longest_gap((e["t"] for e in recs), w0, stop_t),
                    lost=sum(1 for rid in ack if rid not in counts),
                    dup=sum(c - (0 if rid in seen_before else 1) for rid, c in late.items()),
                    closed=None,
                    acked=len(ack), consumed=len(recs),
                    undelivered=done[-1]["undelivered"] if done else None,
                    producer_fatal=done[-1]["fatal"] if done else [],
                    producer_exit=prod.proc.returncode,
                    producer_errors=sum(1 for e in prod.events()
                                        if e["ev"] in ("fail", "err", "fatal") and e["t"] >= w0),
                    consumer_errors=sum(1 for e in cons.events() if e["ev"] in ("err", "commit_err") and e["t"] >= w0),
                    dup_kinds=_dup_kinds(cons, ack, fault_t),
                    written_twice=_written_twice(recs),
                )
                if r.lost:
                    stored = {s.id for s in read_ids(self.cluster.bootstrap, self.topics[(side, lib)])}
                    r.lost_from_log = sum(1 for rid in ack if rid not in counts and rid not in stored)
                if side == "switchyard":
                    b, a = before[lib], after[lib]
                    r.metric_missing = a.closed_upstream is None
                    r.closed = None if a.closed_upstream is None else a.closed_upstream - (b.closed_upstream or 0)
                    r.closed_by_reason = _delta(a.closed, b.closed)
                    r.switchyard_errors = _delta(a.errors, b.errors)
                    r.new_connections = a.connections - b.connections
                results.append(r)
        return EventRun(self.event, results, self.notes, setup_s, event_s, time.time() - t_start,
                        self.cluster.version)


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


def ev_sigkill(d: Drill) -> None:
    node = d.victim()
    d.cluster.kill_node(node)
    moved = d.wait_leaders_off(node)
    run_for(max(0.0, d.hold - moved))
    d.cluster.start_node(node)
    isr = d.wait_isr_full(f"broker {node} restarted")
    d.notes.append(f"SIGKILLed, leaders off it in {moved:.1f} s, restarted after {d.hold:.0f} s, "
                   f"ISRs full {isr:.1f} s after its restart")


def ev_sigterm(d: Drill) -> None:
    node = d.victim()
    t0 = time.time()
    code = d.cluster.node(node).stop(timeout=60)
    took = time.time() - t0
    run_for(max(0.0, d.hold - took))
    d.cluster.start_node(node)
    isr = d.wait_isr_full(f"broker {node} restarted")
    d.notes.append(f"controlled shutdown took {took:.1f} s (exit {code}), restarted after {d.hold:.0f} s, "
                   f"ISRs full {isr:.1f} s after its restart")


def ev_rolling(d: Drill) -> None:
    steps = []
    for n in list(d.cluster.nodes):
        t0 = time.time()
        n.stop(timeout=60)
        stopped = time.time() - t0
        t1 = time.time()
        d.cluster.start_node(n.node_id)
        started = time.time() - t1
        isr = d.wait_isr_full(f"broker {n.node_id} restarted")
        steps.append(f"broker {n.node_id} stopped in {stopped:.1f} s, serving again {started:.1f} s later, "
                     f"ISRs full {isr:.1f} s after that")
    d.notes.append("rolling restart: " + "; ".join(steps))


def ev_reassign(d: Drill) -> None:
    before = d.replicas()
    led = d.leaders()
    # Each partition's leader out of its replicas (leadership moves to the
    # next replica), then back in (a replica is copied to it again), in the
    # original order, and a preferred election makes it lead again.
    drop = {tp: [r for r in reps if r != led[tp]] for tp, reps in before.items()}
    t1 = d.reassign(drop, "leaders out")
    moved = d.leaders()
    t2 = d.reassign(before, "replicas back")
    t0 = time.time()
    d.elect_preferred(sorted(before))
    want = {tp: reps[0] for tp, reps in before.items()}
    wait_until(lambda: d.leaders() == want, 60, lambda: f"preferred leaders not elected: {d.leaders()}")
    changed = sum(1 for tp in led if moved.get(tp) != led[tp])
    d.notes.append(f"reassignment without the leaders {t1:.1f} s ({changed}/{len(led)} leaders moved), "
                   f"replicas back {t2:.1f} s, preferred election {time.time() - t0:.1f} s")


def ev_controller(d: Drill) -> None:
    leader = d.quorum_leader()
    if leader is None:
        raise AssertionError("kafka-metadata-quorum did not name a leader")
    d.notes.append(f"active controller {leader}")
    t0 = time.time()
    d.cluster.kill_node(leader)
    alive = ",".join(n.bootstrap for n in d.cluster.nodes if n.running())
    new = wait_until(lambda: (x := d.quorum_leader(alive)) not in (None, -1, leader) and x, 90,
                     "no new KRaft leader", interval=1.0)
    elected = time.time() - t0
    run_for(max(0.0, d.hold - elected))
    d.cluster.start_node(leader)
    isr = d.wait_isr_full(f"controller {leader} restarted")
    d.notes.append(f"SIGKILLed; controller {new} active {elected:.1f} s later; restarted after {d.hold:.0f} s, "
                   f"ISRs full {isr:.1f} s after its restart")


def ev_add_broker(d: Drill) -> None:
    t0 = time.time()
    node = d.cluster.add_broker()
    started = time.time() - t0

    def listed() -> bool:
        return all(any(b["node_id"] == node.node_id for s in sy.status()["sites"] for b in s["brokers"])
                   for sy in d.proxies.values())

    wait_until(listed, 90, f"a Switchyard does not list broker {node.node_id} in /api/v1/status", interval=0.5)
    seen = time.time() - t0
    reps = d.replicas()
    # A replica of every partition onto the new broker; it comes first (is
    # preferred) in a third of them.
    plan = {}
    for (t, p), r in reps.items():
        r = list(r)
        r[p % 3] = node.node_id
        plan[(t, p)] = r
    took = d.reassign(plan, f"onto broker {node.node_id}")
    d.elect_preferred(sorted(plan))
    want = {tp: r[0] for tp, r in plan.items()}
    wait_until(lambda: d.leaders() == want, 60, lambda: f"preferred leaders not elected: {d.leaders()}")
    d.notes.append(f"broker {node.node_id} serving {started:.1f} s after its start, listed by every Switchyard "
                   f"after {seen:.1f} s; reassignment onto it {took:.1f} s; it leads "
                   f"{sum(1 for v in want.values() if v == node.node_id)}/{len(want)} partitions")


def ev_sigstop(d: Drill) -> None:
    node = d.victim()
    n = d.cluster.node(node)
    n.pause()
    try:
        run_for(d.freeze)
    finally:
        n.resume()
    isr = d.wait_isr_full(f"broker {node} resumed")
    d.notes.append(f"frozen (SIGSTOP) {d.freeze:.0f} s, ISRs full {isr:.1f} s after SIGCONT")


EVENTS: dict[str, Callable[[Drill], None]] = {
    "sigkill": ev_sigkill,
    "sigterm": ev_sigterm,
    "rolling": ev_rolling,
    "reassign": ev_reassign,
    "controller": ev_controller,
    "add-broker": ev_add_broker,
    "sigstop": ev_sigstop,
}


def run_event(event: str, libs: Sequence[str] = LIBS, **kw: Any) -> EventRun:
    """One run of `event` (see Drill for the keyword arguments)."""
    return Drill(event, libs, **kw).run()


# --------------------------------------------------------------------------
# Outside pytest: the same factories as the fixtures
# --------------------------------------------------------------------------


class ScriptRig:
    """kafka(nodes), switchyard(upstreams, **kw) and workers(kind, name,
    **args) like the conftest fixtures, for one event run under `workdir`;
    close() stops everything."""

    def __init__(self, workdir: Path, binary: Path):
        self.workdir = workdir
        self.binary = binary
        self.clusters: list[KafkaCluster] = []
        self.proxies: list = []
        self.workers_started: list[Worker] = []

    def kafka(self, nodes: int = 1, **kw: Any) -> KafkaCluster:
        name = f"kafka{len(self.clusters) + 1}"
        c = KafkaCluster(self.workdir / name, nodes, allocate=allocate_ports, name=name, **kw)
        self.clusters.append(c)
        return c.start()

    def switchyard(self, upstreams, **kw: Any):
        return start_switchyard(self.binary, self.workdir, upstreams, index=len(self.proxies) + 1,
                                launched=self.proxies.append, **kw)

    def workers(self, kind: str, name: str, **args: Any) -> Worker:
        w = Worker(kind, args, self.workdir, name)
        self.workers_started.append(w)
        return w

    def close(self) -> None:
        for w in reversed(self.workers_started):
            w.kill()
        for sy in reversed(self.proxies):
            sy.process.terminate()
        for c in reversed(self.clusters):
            c.kill()

    def tails(self) -> str:
        out = [f"--- {w.name}\n{w.tail(15)}" for w in self.workers_started]
        out += [f"--- switchyard {sy.process.name}\n{sy.process.tail(20)}" for sy in self.proxies]
        out += [c.tail(15) for c in self.clusters]
        return "\n".join(out)


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------


def _median(vals: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def _fmt(v: Optional[float], unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}" if digits else f"{v:g}{unit}"


def markdown(runs: list[EventRun], failures: list[tuple[str, int, str]], *, libs: Sequence[str],
             runs_per_event: int, binary: Path, settings: str) -> str:
    version = runs[0].kafka_version if runs else "?"
    out = [
        "# Broker churn: direct vs through Switchyard",
        "",
        f"Apache Kafka {version}, 3 brokers (KRaft, replication factor 3, min.insync.replicas=2), "
        f"{PARTITIONS} partitions per topic. Per library and side one producer (idempotent, acks=all) and "
        "one consumer group committing synchronously after each poll, all running at once "
        "(Switchyard: one proxy per library, "
        f"in front of the same cluster). {settings}. Medians over {runs_per_event} run(s) per event "
        f"(a fresh cluster per run). Proxy: `{binary}`. Written by `tests/churn.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "* **produce gap**: longest time without an ack, from 5 s before the event until the producers stop;",
        "* **consume gap**: the same for records delivered to the group;",
        "* **lost**: acked records the group never got; **dup**: deliveries beyond a record's first, "
        "from 5 s before the event on;",
        "* **written twice**: acked records an idempotent producer got into the log at two offsets, "
        "summed over all runs (a median would hide one bad run);",
        f"* **closed by Switchyard**: client connections Switchyard closed for a broker's fault "
        f"(`{CLOSED_METRIC}`, reasons {', '.join(f'`{r}`' for r in BROKER_FAULT_REASONS)}, "
        "event and settle period; n/a: not exported).",
        "",
    ]
    by_event: dict[str, list[EventRun]] = {}
    for r in runs:
        by_event.setdefault(r.event, []).append(r)
    for event, eruns in by_event.items():
        took = ", ".join(f"{r.total_s:.0f} s" for r in eruns)
        out += [f"## {event}", "", f"Run time{'s' if len(eruns) > 1 else ''}: {took}. "
                f"{'First run: ' if len(eruns) > 1 else ''}{'; '.join(eruns[0].notes)}.", ""]
        out += ["| library | produce gap direct | produce gap Switchyard | consume gap direct | "
                "consume gap Switchyard | lost direct / Switchyard | dup direct / Switchyard | "
                "written twice direct / Switchyard | closed by Switchyard |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for lib in libs:
            def med(side: str, attr: str):
                return _median([getattr(x, attr) for r in eruns for x in r.results
                                if x.side == side and x.lib == lib])

            if not any(x.lib == lib for r in eruns for x in r.results):
                continue
            def total(side: str) -> int:
                return sum(x.written_twice for r in eruns for x in r.results if x.side == side and x.lib == lib)

            closed = [x.closed for r in eruns for x in r.results if x.side == "switchyard" and x.lib == lib]
            closed_s = "n/a" if any(c is None for c in closed) else _fmt(_median(closed), digits=0)
            out.append(
                f"| {lib} | {_fmt(med('direct', 'produce_gap'), ' s')} | {_fmt(med('switchyard', 'produce_gap'), ' s')} "
                f"| {_fmt(med('direct', 'consume_gap'), ' s')} | {_fmt(med('switchyard', 'consume_gap'), ' s')} "
                f"| {_fmt(med('direct', 'lost'), digits=0)} / {_fmt(med('switchyard', 'lost'), digits=0)} "
                f"| {_fmt(med('direct', 'dup'), digits=0)} / {_fmt(med('switchyard', 'dup'), digits=0)} "
                f"| {total('direct')} / {total('switchyard')} | {closed_s} |")
        out.append("")
    if failures:
        out += ["## Runs that failed", ""]
        out += [f"* {event} run {i}: {msg.splitlines()[0][:300]}" for event, i, msg in failures]
        out.append("")
    out += ["## Every run", "", "```"]
    for r in runs:
        out.append(r.text())
    out += ["```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Broker-churn drills on a 3-broker Kafka: direct vs through Switchyard.",
                                 epilog=f"events: {', '.join(EVENTS)}")
    ap.add_argument("--events", default="sigkill", help="comma list or 'all'")
    ap.add_argument("--libs", default=",".join(LIBS), help=f"comma list of {', '.join(LIBS)}")
    ap.add_argument("--runs", type=int, default=1, help="runs per event (medians in the table)")
    ap.add_argument("--out", type=Path, help="write the Markdown table here")
    ap.add_argument("--json", type=Path, help="write every result as JSON here")
    ap.add_argument("--rate", type=float, default=RATE, help="records/s per producer")
    ap.add_argument("--warmup", type=float, default=WARMUP, help="s of steady load before the event")
    ap.add_argument("--settle", type=float, default=SETTLE, help="s of load after the event")
    ap.add_argument("--hold", type=float, default=HOLD, help="s a killed/stopped broker stays down")
    ap.add_argument("--freeze", type=float, default=FREEZE, help="s of SIGSTOP (sigstop)")
    ap.add_argument("--switchyard-bin", type=Path, default=None,
                    help="proxy binary (default $SWITCHYARD_BIN or target/debug/switchyard)")
    ap.add_argument("--workdir", type=Path, help="work files here (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work files")
    a = ap.parse_args(argv)

    events = list(EVENTS) if a.events == "all" else [e.strip() for e in a.events.split(",") if e.strip()]
    libs = [x.strip() for x in a.libs.split(",") if x.strip()]
    bad = [e for e in events if e not in EVENTS] + [x for x in libs if x not in LIBS]
    if bad:
        ap.error(f"unknown event(s)/lib(s) {bad}; events: {', '.join(EVENTS)}; libs: {', '.join(LIBS)}")
    binary = a.switchyard_bin or switchyard_bin_path()
    if not binary.is_file():
        ap.error(f"{binary} does not exist; build it (cargo build -p switchyard) or pass --switchyard-bin")
    try:
        binary_shown = binary.resolve().relative_to(ROOT)
    except ValueError:
        binary_shown = binary
    top = a.workdir or Path(tempfile.mkdtemp(prefix="switchyard-churn-"))
    top.mkdir(parents=True, exist_ok=True)
    keep = a.keep
    runs: list[EventRun] = []
    failures: list[tuple[str, int, str]] = []
    t_all = time.time()
    for event in events:
        for i in range(1, a.runs + 1):
            workdir = top / f"{event}-{i}"
            workdir.mkdir(parents=True, exist_ok=True)
            rig = ScriptRig(workdir, binary)
            print(f"== {event} run {i}/{a.runs} (work files {workdir})", flush=True)
            try:
                run = run_event(event, libs, kafka=rig.kafka, switchyard=rig.switchyard, workers=rig.workers,
                                workdir=workdir, rate=a.rate, warmup=a.warmup, settle=a.settle, hold=a.hold,
                                freeze=a.freeze, log=lambda s: print(s, flush=True))
            except Exception as e:  # noqa: BLE001 - reported, the next run goes on
                keep = True
                msg = f"{type(e).__name__}: {e}"
                failures.append((event, i, msg))
                print(f"!! {event} run {i} failed: {msg}\n{traceback.format_exc()}\n{rig.tails()}", flush=True)
            else:
                runs.append(run)
                print(run.text(), flush=True)
                for p in problems(run):
                    print(f"  problem: {p}", flush=True)
                for n in baseline_notes(run):
                    print(f"  note: {n}", flush=True)
            finally:
                rig.close()
    print(f"== {len(runs)} run(s) in {time.time() - t_all:.0f} s; {len(failures)} failed", flush=True)
    settings = (f"{a.rate:g} records/s per producer, warm-up {a.warmup:g} s, settle {a.settle:g} s, "
                f"brokers down {a.hold:g} s, frozen {a.freeze:g} s")
    if a.out:
        a.out.write_text(markdown(runs, failures, libs=libs, runs_per_event=a.runs, binary=binary_shown,
                                  settings=settings))
        print(f"wrote {a.out}")
    if a.json:
        a.json.write_text(json.dumps([{"event": r.event, "notes": r.notes, "setup_s": r.setup_s,
                                       "event_s": r.event_s, "total_s": r.total_s,
                                       "results": [x.to_json() for x in r.results]} for r in runs], indent=1))
    if keep:
        print(f"work files kept in {top}")
    elif a.workdir is None:
        shutil.rmtree(top, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
