"""Helpers for the failover scenarios (tests/test_failover.py).

* ``start_failover_switchyard`` -- Switchyard over two sites, `primary` and
  `standby`, with one route `main` that serves every topic and every group
  on the primary, tees to the standby and fails over to it.
* admin calls: ``failover``, ``failback``, ``route_status``, ``site_health``,
  ``metric``.
* worker processes (``Worker``): consumer-group members and steady
  producers of confluent-kafka, kafka-python or the Java client (``lib``),
  each a separate process that writes one JSON object per line to an events
  file, so a stuck client can be killed without hanging pytest. The same
  file is the worker's program: ``python tests/failover.py consume|produce
  '<json args>'``. The Java workers run Kafka's VerifiableProducer /
  VerifiableConsumer (kafka-tools) as their child and translate its JSON
  lines into the same events.
* ``summarize`` -- lost records, duplicates and RTO from those events.
* MirrorMaker 2 checkpoint records (``checkpoint_key`` / ``checkpoint_value``
  / ``write_checkpoints``), as MirrorCheckpointTask writes them to
  ``<source alias>.checkpoints.internal`` on the target cluster.

Record ids: every record the tests produce carries its id (a unique string)
as its value, so the consumers report what they got by id; times are wall
clock (time.time()) so that events of different processes compare. The
Python producers' ids are ``<tag>-<seq>``; the Java producer's are
VerifiableProducer's values, ``<prefix>.<seq>`` (an integer prefix derived
from the tag).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from helpers import metric_sum, read_partitions  # noqa: E402

ROUTE = "main"
ORIGIN = "switchyard-origin"

# Consumer-group timings (Tansu completes a join only after the rebalance
# timeout; librdkafka wants max.poll.interval.ms >= session.timeout.ms).
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 500
MAX_POLL_INTERVAL_MS = 6000

FAILOVER_SETTINGS = {
    "health": {"interval_ms": 1000, "timeout_ms": 1000, "unhealthy_after": 3, "healthy_after": 2},
    "fence_timeout_ms": 30000,
    "drain_timeout_ms": 5000,
    "planned_timeout_ms": 10000,
    "shadow_commit_interval_ms": 1000,
    "timestamp_slack_ms": 1000,
}


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


def failover_overrides(
    primary: str,
    standby: str,
    *,
    mode: str = "sync",
    tee_start: Optional[str] = None,
    automatic: bool = True,
    mm2_source_alias: Optional[str] = None,
    settings: Optional[dict] = None,
) -> dict:
    """The config (as fixture overrides) of an active-passive route `main`:
    every topic and every group on `primary`, teed (`mode`) to `standby`,
    failing over to it. `primary`/`standby` are bootstrap addresses.

    The route selects everything with `regex: '.*'`: an empty `prefix` is
    refused by the config ("must not be empty")."""
    tee: dict[str, Any] = {"site": "standby", "mode": mode}
    if tee_start is not None:
        tee["start"] = tee_start
    fo: dict[str, Any] = {"standby": "standby", "automatic": automatic}
    if mm2_source_alias is not None:
        fo["mm2_source_alias"] = mm2_source_alias
    settings_all = dict(FAILOVER_SETTINGS)
    for k, v in (settings or {}).items():
        settings_all[k] = {**settings_all[k], **v} if isinstance(v, dict) else v
    return {
        "sites": [
            {"name": "primary", "bootstrap": str(primary).split(",")},
            {"name": "standby", "bootstrap": str(standby).split(",")},
        ],
        "default_site": "primary",
        "routes": [
            {
                "name": ROUTE,
                "topics": {"regex": ".*"},
                "site": "primary",
                "groups": {"regex": ".*"},
                "tee": [tee],
                "failover": fo,
            }
        ],
        "failover": settings_all,
        # Fast retries keep tests short (the tee back to a returning site too).
        "tee": {"retry_backoff_ms": 100, "max_retry_backoff_ms": 1000},
    }


def start_failover_switchyard(switchyard, primary, standby, **kw):
    """Starts Switchyard (fixture factory `switchyard`) with the route of
    failover_overrides. `primary`/`standby`: TansuBroker or RelayedBroker
    (anything with `.bootstrap`)."""
    overrides = failover_overrides(primary.bootstrap, standby.bootstrap, **kw)
    return switchyard(upstreams=[str(primary.bootstrap)], virtual_nodes=1, overrides=overrides)


# --------------------------------------------------------------------------
# Admin API
# --------------------------------------------------------------------------


def http_post(url: str, timeout: float = 60.0) -> tuple[int, Any]:
    """POST with an empty body; returns (status, parsed JSON or raw text)."""
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body = resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        status, body = e.code, (e.read().decode("utf-8", "replace") if e.fp else "")
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def failover(sy, route: str = ROUTE, force: bool = False, timeout: float = 60.0) -> tuple[int, Any]:
    url = f"{sy.admin}/api/v1/routes/{route}/failover" + ("?force=true" if force else "")
    return http_post(url, timeout)


def failback(sy, route: str = ROUTE, timeout: float = 60.0) -> tuple[int, Any]:
    return http_post(f"{sy.admin}/api/v1/routes/{route}/failback", timeout)


def status(sy) -> dict:
    return sy.status()


def route_status(sy, route: str = ROUTE) -> dict:
    entries = [e for e in sy.status().get("failover", []) if e.get("route") == route]
    assert len(entries) == 1, f"/api/v1/status failover entries for {route!r}: {entries}"
    return entries[0]


def site_health(sy, site: str) -> dict:
    entries = [e for e in sy.status().get("health", []) if e.get("site") == site]
    assert len(entries) == 1, f"/api/v1/status health entries for {site!r}: {entries}"
    return entries[0]


def metric(sy, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    samples, _ = sy.metrics()
    return metric_sum(samples, name, **labels)


# --------------------------------------------------------------------------
# Records by id (in-process)
# --------------------------------------------------------------------------


def make_ids(tag: str, count: int, start: int = 0) -> list[str]:
    return [f"{tag}-{i:07d}" for i in range(start, start + count)]


def key_of(rid: str) -> bytes:
    return f"k{sum(rid.encode()) % 97}".encode()


def produce_ids(
    bootstrap: str,
    topic: str,
    ids: Sequence[str],
    *,
    partitions: Optional[Sequence[int]] = None,
    timestamps: Optional[Sequence[int]] = None,
    headers: Optional[Sequence[Optional[list]]] = None,
    timeout: float = 90.0,
    **conf: Any,
) -> dict[str, dict]:
    """Produces one record per id (value = id) with an idempotent acks=all
    confluent producer and returns {id: {"p", "o", "t"}} (partition, offset,
    ack time). Fails on any delivery error."""
    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(timeout * 1000),
        **conf,
    })
    acks: dict[str, dict] = {}
    errors: list = []

    def on_delivery(err, msg):
        rid = msg.value().decode()
        if err is not None:
            errors.append((rid, err))
        else:
            acks[rid] = {"p": msg.partition(), "o": msg.offset(), "t": time.time()}

    for i, rid in enumerate(ids):
        kw: dict[str, Any] = {"key": key_of(rid), "value": rid.encode(), "on_delivery": on_delivery}
        if partitions is not None:
            kw["partition"] = partitions[i]
        if timestamps is not None:
            kw["timestamp"] = timestamps[i]
        if headers is not None and headers[i]:
            kw["headers"] = headers[i]
        p.produce(topic, **kw)
        p.poll(0)
    left = p.flush(timeout)
    assert left == 0, f"{left} of {len(ids)} records undelivered after {timeout}s"
    assert not errors, f"{len(errors)} delivery errors, e.g. {errors[:3]}"
    return acks


@dataclass
class StoredId:
    id: str
    partition: int
    offset: int
    origin: Optional[bytes]  # switchyard-origin header (None: written locally)
    timestamp: int


def read_ids(bootstrap: str, topic: str, timeout: float = 60.0) -> list[StoredId]:
    """Every record of `topic` on one cluster (up to the high watermarks)."""
    out = []
    for p, recs in read_partitions(bootstrap, topic, timeout=timeout).items():
        for r in recs:
            origin = next((v for k, v in r.headers if k == ORIGIN), None)
            rid = r.value.decode("utf-8", "replace") if r.value is not None else ""
            out.append(StoredId(rid, p, r.offset, origin, r.timestamp[1]))
    return out


def local_ids(stored: Iterable[StoredId]) -> set[str]:
    """Ids written to this cluster by a client (no origin header)."""
    return {s.id for s in stored if s.origin is None}


# --------------------------------------------------------------------------
# Consumer-group offsets (in-process)
# --------------------------------------------------------------------------


def commit_offsets(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commits `offsets` ({partition: next offset}) for `group` without
    joining it (a standalone commit, as tools do for an empty group)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: Iterable[int],
                      timeout: float = 10.0) -> dict[int, int]:
    """{partition: committed offset} of `group` on one cluster (-1001 when
    none)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        return {tp.partition: tp.offset for tp in got}
    finally:
        c.close()


# --------------------------------------------------------------------------
# MirrorMaker 2 checkpoints
# --------------------------------------------------------------------------


def _mm2_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def checkpoint_key(group: str, topic: str, partition: int) -> bytes:
    """Checkpoint key: Struct{group: STRING, topic: STRING, partition: INT32}
    (STRING = int16 length + UTF-8, big-endian). `topic` is the name on the
    target cluster (MM2 puts the renamed topic here)."""
    return _mm2_string(group) + _mm2_string(topic) + struct.pack(">i", partition)


def checkpoint_value(upstream_offset: int, downstream_offset: int, metadata: str = "") -> bytes:
    """Checkpoint value: int16 version (0), then Struct{upstreamOffset:
    INT64, offset: INT64, metadata: STRING}."""
    return struct.pack(">hqq", 0, upstream_offset, downstream_offset) + _mm2_string(metadata)


def decode_checkpoint(key: bytes, value: bytes) -> dict:
    """Inverse of checkpoint_key/checkpoint_value (for checking the bytes)."""
    def string(buf: bytes, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from(">h", buf, pos)
        return buf[pos + 2: pos + 2 + n].decode(), pos + 2 + n

    group, pos = string(key, 0)
    topic, pos = string(key, pos)
    (partition,) = struct.unpack_from(">i", key, pos)
    assert pos + 4 == len(key), f"trailing bytes in checkpoint key {key!r}"
    version, upstream, downstream = struct.unpack_from(">hqq", value, 0)
    metadata, pos = string(value, 18)
    assert pos == len(value), f"trailing bytes in checkpoint value {value!r}"
    return {"group": group, "topic": topic, "partition": partition, "version": version,
            "upstream_offset": upstream, "offset": downstream, "metadata": metadata}


def checkpoints_topic(source_alias: str) -> str:
    return f"{source_alias}.checkpoints.internal"


def write_checkpoints(bootstrap: str, source_alias: str, entries: Iterable[tuple[str, str, int, int, int]]) -> str:
    """Writes MM2 checkpoint records (group, topic, partition, upstream
    offset, downstream offset) to partition 0 of
    `<source_alias>.checkpoints.internal` on `bootstrap` (created with one
    partition if missing, as MM2 does). Returns the topic name."""
    from confluent_kafka import KafkaError, KafkaException, Producer

    from helpers import create_topic

    topic = checkpoints_topic(source_alias)
    try:
        create_topic(bootstrap, topic, partitions=1)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors: list = []
    for group, t, part, up, down in entries:
        p.produce(topic, key=checkpoint_key(group, t, part), value=checkpoint_value(up, down), partition=0,
                  on_delivery=lambda e, m: errors.append(e) if e else None)
    assert p.flush(30) == 0, "checkpoint records undelivered"
    assert not errors, errors
    return topic


# --------------------------------------------------------------------------
# Worker processes (parent side)
# --------------------------------------------------------------------------


class Worker:
    """One worker process (`python tests/failover.py KIND ARGS`). Its
    events go to `events_path` (JSON lines), its output to `log_path`.
    Has `.name`, `.log_path`, `.tail()` so that conftest's failure report
    attaches its log."""

    def __init__(self, kind: str, args: dict, directory: Path, name: str):
        self.kind = kind
        self.name = name
        self.args = dict(args)
        self.events_path = directory / f"{name}.events.jsonl"
        self.log_path = directory / f"{name}.log"
        self.args["events"] = str(self.events_path)
        self._terminated = False
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), kind, json.dumps(self.args)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def events(self, ev: Optional[str] = None) -> list[dict]:
        """Every complete event line written so far (of type `ev`)."""
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # being written
            e = json.loads(line)
            if ev is None or e["ev"] == ev:
                out.append(e)
        return out

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"<{e}>"
        return "\n".join(text[-lines:])

    def terminate(self) -> None:
        """SIGTERM, once (the worker finishes: the producer flushes,
        consumers close); stop() waits for it. A second SIGTERM could reach
        a worker already past its handler, on its way out."""
        if self.running() and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 30.0) -> Optional[int]:
        """terminate(), SIGKILL after `grace` s. Returns the exit code."""
        if self.running():
            self.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # after the grace, or whatever of its group is left
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL to the worker's process group: the worker and a Java
        client it runs (which would outlive its parent otherwise)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._close()

    def _close(self) -> None:
        if self.proc.poll() is not None and not self._log.closed:
            self._log.close()

    def __repr__(self) -> str:
        return f"<Worker {self.name} pid={self.proc.pid}>"


def consumed(w: Worker) -> list[dict]:
    return w.events("rec")


def consumed_ids(w: Worker) -> set[str]:
    return {e["id"] for e in w.events("rec")}


def committed_ids(w: Worker) -> set[str]:
    return {e["id"] for e in w.events("commit")}


def acked_times(w: Worker) -> dict[str, float]:
    return {e["id"]: e["t"] for e in w.events("ack")}


def sent_times(w: Worker) -> dict[str, float]:
    return {e["id"]: e["t"] for e in w.events("sent")}


def in_flight_at(sent: dict[str, float], acked: dict[str, float], t: float) -> int:
    """Records handed to the producer by `t` and not acked by `t`."""
    return sum(1 for rid, ts in sent.items() if ts <= t and acked.get(rid, float("inf")) > t)


def classify_duplicates(w: Worker, acked: dict[str, float], fault_t: float) -> dict[str, int]:
    """Why a group got records twice, per duplicated record id:

    * ``producer_in_flight``: the record was not acked when the fault hit;
      the producer sent it again (to the new site), so it exists twice;
    * ``consumer_uncommitted``: acked before the fault, but the group never
      committed past it before the fault (it was in the consumer's hands or
      its commit failed): redelivering it is what at-least-once means;
    * ``translation``: acked and committed by the group before the fault,
      delivered again on the new site: the translated offset was too early.
      With a sync tee this must be 0.

    The first two are the records in flight at the fault (producer and
    consumer side); the issue's bound is duplicates <= those."""
    recs = w.events("rec")
    counts = Counter(e["id"] for e in recs)
    first: dict[str, dict] = {}
    for e in recs:
        first.setdefault(e["id"], e)
    committed: dict[int, int] = {}
    for e in w.events("commit"):
        if e["t"] < fault_t:
            committed[e["p"]] = max(committed.get(e["p"], -1), e["o"])
    out = Counter()
    for rid, c in counts.items():
        if c < 2:
            continue
        f = first[rid]
        if acked.get(rid, float("inf")) >= fault_t:
            out["producer_in_flight"] += c - 1
        elif f["t"] < fault_t and f["o"] < committed.get(f["p"], -1):
            out["translation"] += c - 1
        else:
            out["consumer_uncommitted"] += c - 1
    return {k: out.get(k, 0) for k in ("producer_in_flight", "consumer_uncommitted", "translation")}


def consumed_between(w: Worker, t0: float, t1: float) -> int:
    return sum(1 for e in w.events("rec") if t0 <= e["t"] <= t1)


def worker_problems(w: Worker) -> str:
    """A short description of a worker's errors and exit, for messages."""
    errs = [e for e in w.events() if e["ev"] in ("err", "commit_err", "fatal", "fail")]
    kinds = Counter(f"{e['ev']}: {e.get('err', '')[:120]}" for e in errs)
    state = "running" if w.running() else f"exited {w.proc.returncode}"
    return f"{w.name} ({state}): {len(errs)} errors {dict(kinds.most_common(5))}; log tail:\n{w.tail(15)}"


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


@dataclass
class GroupReport:
    name: str
    consumed: int
    distinct: int
    lost: list[str]
    duplicates: int  # deliveries beyond the first of an id
    unexpected: int  # distinct ids that were never acked to the producer
    rto_consume: Optional[float]
    errors: int


@dataclass
class Report:
    scenario: str
    rto_produce: Optional[float]
    in_flight: Optional[int]
    groups: dict[str, GroupReport] = field(default_factory=dict)
    broker: str = "?"  # the broker kind the figures were measured on

    @property
    def lost(self) -> int:
        return max((len(g.lost) for g in self.groups.values()), default=0)

    @property
    def duplicates(self) -> int:
        return max((g.duplicates for g in self.groups.values()), default=0)

    @property
    def rto_consume(self) -> Optional[float]:
        vals = [g.rto_consume for g in self.groups.values()]
        return None if any(v is None for v in vals) or not vals else max(vals)

    def line(self) -> str:
        def s(v):
            return "n/a" if v is None else f"{v:.1f}s"

        out = (f"FAILOVER {self.scenario} [{self.broker}]: rto_produce={s(self.rto_produce)} rto_consume={s(self.rto_consume)} "
               f"lost={self.lost} duplicates={self.duplicates} in_flight_at_fault="
               f"{'n/a' if self.in_flight is None else self.in_flight}")
        for g in self.groups.values():
            out += (f"\n  group {g.name}: consumed={g.consumed} distinct={g.distinct} lost={len(g.lost)} "
                    f"duplicates={g.duplicates} unexpected={g.unexpected} rto_consume={s(g.rto_consume)} "
                    f"errors={g.errors}")
        return out


def summarize(broker: str, scenario: str, fault_t: float, acked: dict[str, float], sent: dict[str, float],
              groups: dict[str, list[dict]], errors: Optional[dict[str, int]] = None,
              in_flight: Optional[int] = None, after: Optional[float] = None) -> Report:
    """Lost / duplicates / RTO from events, measured on `broker` (a kind).

    `acked`/`sent`: {id: time} of the producer(s); `groups`: {name: "rec"
    events}. RTO (from `fault_t`): produce = first ack of a record handed to
    the producer at or after the fault; consume = first delivery of such a
    record, per group. Lost = acked ids a group never got; duplicates =
    deliveries of an id beyond its first (only deliveries at or after
    `after` count when given, e.g. to judge one phase)."""
    post = {rid for rid, t in sent.items() if t >= fault_t}
    post_acks = [acked[rid] for rid in post if rid in acked]
    rep = Report(scenario, (min(post_acks) - fault_t) if post_acks else None, in_flight, broker=broker)
    for name, recs in groups.items():
        counts = Counter(e["id"] for e in recs)
        if after is not None:
            seen_before = {e["id"] for e in recs if e["t"] < after}
            late = Counter(e["id"] for e in recs if e["t"] >= after)
            dups = sum(c - (0 if rid in seen_before else 1) for rid, c in late.items())
        else:
            dups = sum(c - 1 for c in counts.values())
        firsts = [e["t"] for e in recs if e["id"] in post]
        rep.groups[name] = GroupReport(
            name=name,
            consumed=len(recs),
            distinct=len(counts),
            lost=sorted(rid for rid in acked if rid not in counts),
            duplicates=dups,
            unexpected=sum(1 for rid in counts if rid not in acked),
            rto_consume=(min(firsts) - fault_t) if firsts else None,
            errors=(errors or {}).get(name, 0),
        )
    return rep


# --------------------------------------------------------------------------
# Worker processes (child side)
# --------------------------------------------------------------------------

_stop = False


def _on_term(signum, frame):
    global _stop
    _stop = True


class _Events:
    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1)
        # kafka-python calls delivery callbacks on its sender thread.
        self.lock = threading.Lock()

    def __call__(self, ev: str, **fields: Any) -> None:
        fields["ev"] = ev
        fields.setdefault("t", time.time())
        line = json.dumps(fields) + "\n"
        with self.lock:
            self.f.write(line)


def _consume_confluent(a: dict, emit: _Events) -> int:
    """A group member committing synchronously what it consumed: each
    record (`commit` "record", the default), or each poll's records at once
    (`commit` "batch": consume() of up to `max_records`, as the Java
    worker's tool does)."""
    from confluent_kafka import Consumer, KafkaException

    def on_assign(c, parts):
        emit("assigned", parts=[p.partition for p in parts])

    def on_revoke(c, parts):
        emit("revoked", parts=[p.partition for p in parts])

    def on_lost(c, parts):
        emit("lost", parts=[p.partition for p in parts])

    c = Consumer({
        "bootstrap.servers": a["bootstrap"],
        "group.id": a["group"],
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
        "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
        "topic.metadata.refresh.interval.ms": 2000,
        "reconnect.backoff.max.ms": 1000,
        "fetch.wait.max.ms": 100,
    })
    c.subscribe([a["topic"]], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    deadline = time.monotonic() + a.get("max_seconds", 600)
    batch = a.get("commit", "record") == "batch"
    try:
        while not _stop and time.monotonic() < deadline:
            if batch:
                msgs = c.consume(num_messages=a.get("max_records", 500), timeout=0.2)
            else:
                m = c.poll(0.2)
                msgs = [] if m is None else [m]
            got: list[tuple[str, int, int]] = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    emit("err", err=str(err), fatal=err.fatal())
                    if err.fatal():
                        return 2
                    continue
                rid = (m.value() or b"").decode("utf-8", "replace")
                emit("rec", id=rid, p=m.partition(), o=m.offset())
                if batch:
                    got.append((rid, m.partition(), m.offset()))
                    continue
                try:
                    c.commit(message=m, asynchronous=False)
                    emit("commit", id=rid, p=m.partition(), o=m.offset() + 1)
                except KafkaException as e:
                    emit("commit_err", err=str(e.args[0]), p=m.partition(), o=m.offset() + 1)
            if got:
                _commit_batch_confluent(c, a["topic"], got, emit)
    finally:
        c.close()
        emit("closed")
    return 0


def _commit_batch_confluent(c, topic: str, got: list[tuple[str, int, int]], emit: _Events) -> None:
    """One synchronous commit of a poll's records (id, partition, offset):
    a "commit" event per record of a partition committed, a "commit_err"
    per partition that was not."""
    from confluent_kafka import KafkaException, TopicPartition

    last: dict[int, int] = {}
    for _, p, o in got:
        last[p] = max(last.get(p, -1), o)
    failed: dict[int, str] = {}
    try:
        for tp in c.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()],
                           asynchronous=False) or []:
            if tp.error is not None:
                failed[tp.partition] = str(tp.error)
    except KafkaException as e:
        failed = {p: str(e.args[0]) for p in last}
    for p, err in failed.items():
        emit("commit_err", err=err, p=p, o=last[p] + 1)
    for rid, p, o in got:
        if p not in failed:
            emit("commit", id=rid, p=p, o=o + 1)


# kafka-python 3.0.12 can stop making progress for good when it rejoins right
# after a join (the topic's metadata changed under it: first generation
# assigned nothing because the topic was not known yet, or partitions moved):
# the second generation's SyncGroup answer arrives, with the partitions, and is
# never applied; the consumer loops in poll() without fetching or heartbeating
# (seen with its debug logs through Switchyard: every answer was delivered, in
# order). Tansu's slow joins hid it; Kafka's immediate ones show it. A
# rebalance that has not ended after this long (several session timeouts; a
# failover's rejoin takes seconds) is reported as an error and the consumer is
# replaced: as at-least-once as a restarted application, and visible.
KAFKA_PYTHON_STALL_S = 20.0


def _consume_kafka_python(a: dict, emit: _Events) -> int:
    """As _consume_confluent (`commit` "record" or "batch"; `max_records`
    per poll, 100 by default), plus the stall guard above."""
    from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    # Since a revocation with no assignment after it (None: assigned).
    rebalancing = {"since": None}

    class Listener(ConsumerRebalanceListener):
        def on_partitions_assigned(self, assigned):
            rebalancing["since"] = None
            emit("assigned", parts=sorted(tp.partition for tp in assigned))

        def on_partitions_revoked(self, revoked):
            rebalancing["since"] = time.monotonic()
            emit("revoked", parts=sorted(tp.partition for tp in revoked))

    def subscribed() -> Any:
        c = KafkaConsumer(
            bootstrap_servers=a["bootstrap"],
            group_id=a["group"],
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            metadata_max_age_ms=2000,
            reconnect_backoff_max_ms=1000,
            request_timeout_ms=20000,
            fetch_max_wait_ms=100,
        )

        # Subscribe once every partition of the topic has a leader: fewer
        # rejoins right after the first join (see KAFKA_PYTHON_STALL_S).
        def settled() -> bool:
            parts = c.partitions_for_topic(a["topic"])
            cluster = getattr(getattr(c, "_client", None), "cluster", None)
            led = cluster.available_partitions_for_topic(a["topic"]) if cluster is not None else parts
            return bool(parts) and led == parts

        settled_by = time.monotonic() + 30
        while not settled() and time.monotonic() < settled_by:
            time.sleep(0.1)  # poll metadata with a deadline (not synchronisation)
        c.subscribe([a["topic"]], listener=Listener())
        return c

    c = subscribed()
    deadline = time.monotonic() + a.get("max_seconds", 600)
    per_batch = a.get("commit", "record") == "batch"
    try:
        while not _stop and time.monotonic() < deadline:
            since = rebalancing["since"]
            if since is not None and time.monotonic() - since > KAFKA_PYTHON_STALL_S:
                # Reported as an error of the group (FAILOVER/MULTIBROKER lines
                # count them), then a new consumer joins in its place.
                emit("err", err=f"kafka-python stalled in a rebalance for {KAFKA_PYTHON_STALL_S}s; consumer recreated")
                try:
                    c.close(timeout_ms=5000)
                except TypeError:
                    c.close()
                rebalancing["since"] = None
                c = subscribed()
                continue
            try:
                batch = c.poll(timeout_ms=200, max_records=a.get("max_records", 100))
            except Exception as e:  # noqa: BLE001 - reported, the loop goes on
                emit("err", err=repr(e))
                time.sleep(0.2)  # back off a failing poll (not synchronisation)
                continue
            got: list[tuple[str, int, int]] = []
            for tp, msgs in batch.items():
                for m in msgs:
                    rid = (m.value or b"").decode("utf-8", "replace")
                    emit("rec", id=rid, p=m.partition, o=m.offset)
                    if per_batch:
                        got.append((rid, m.partition, m.offset))
                        continue
                    try:
                        c.commit({TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(m.offset + 1, "", -1)},
                                 timeout_ms=15000)
                        emit("commit", id=rid, p=m.partition, o=m.offset + 1)
                    except Exception as e:  # noqa: BLE001 - CommitFailedError etc.
                        emit("commit_err", err=repr(e), p=m.partition, o=m.offset + 1)
            if got:
                last: dict[int, int] = {}
                for _, p, o in got:
                    last[p] = max(last.get(p, -1), o)
                try:
                    c.commit({TopicPartition(a["topic"], p): OffsetAndMetadata(o + 1, "", -1) for p, o in last.items()},
                             timeout_ms=15000)
                except Exception as e:  # noqa: BLE001 - CommitFailedError etc.
                    for p, o in last.items():
                        emit("commit_err", err=repr(e), p=p, o=o + 1)
                else:
                    for rid, p, o in got:
                        emit("commit", id=rid, p=p, o=o + 1)
    finally:
        try:
            c.close(timeout_ms=5000)
        except TypeError:
            c.close()
        emit("closed")
    return 0


def _produce(a: dict, emit: _Events) -> int:
    """Produces ids `<tag>-<seq>` at `rate` per second until `count` were
    handed over or SIGTERM; then flushes (`flush_seconds`)."""
    from confluent_kafka import KafkaException, Producer

    fatal: list = []

    def on_delivery(err, msg):
        rid = msg.value().decode()
        if err is None:
            emit("ack", id=rid, p=msg.partition(), o=msg.offset())
        else:
            emit("fail", id=rid, err=str(err))

    def on_error(err):
        emit("err", err=str(err), fatal=err.fatal())
        if err.fatal():
            fatal.append(err)

    p = Producer({**_producer_conf(a), "error_cb": on_error})
    rate = float(a.get("rate", 100))
    count = a.get("count")
    tag = a["tag"]
    ts_base, ts_step = a.get("ts_base"), a.get("ts_step", 1)
    deadline = time.monotonic() + a.get("max_seconds", 600)
    t0 = time.monotonic()
    seq = 0
    while not _stop and not fatal and time.monotonic() < deadline and (count is None or seq < count):
        due = int((time.monotonic() - t0) * rate) + 1
        while seq < due and (count is None or seq < count):
            rid = f"{tag}-{seq:07d}"
            kw: dict[str, Any] = {}
            if ts_base is not None:
                kw["timestamp"] = ts_base + seq * ts_step
            try:
                p.produce(a["topic"], key=key_of(rid), value=rid.encode(), on_delivery=on_delivery, **kw)
            except BufferError:
                break
            except KafkaException as e:
                emit("fatal", err=str(e))
                fatal.append(e)
                break
            emit("sent", id=rid)
            seq += 1
        p.poll(0.01)
    left = p.flush(a.get("flush_seconds", 60))
    emit("done", sent=seq, undelivered=left, fatal=[str(f) for f in fatal])
    return 3 if fatal else 0


def _producer_conf(a: dict) -> dict:
    return {
        "bootstrap.servers": a["bootstrap"],
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": a.get("message_timeout_ms", 120000),
        "topic.metadata.refresh.interval.ms": 2000,
        "reconnect.backoff.max.ms": 1000,
        **({"debug": os.environ["FAILOVER_RDKAFKA_DEBUG"]} if os.environ.get("FAILOVER_RDKAFKA_DEBUG") else {}),
    }


def _produce_kafka_python(a: dict, emit: _Events) -> int:
    """`_produce` with kafka-python: idempotent, acks=all, the same ids,
    keys and events. A send that cannot be handed over (buffer full, no
    metadata within max_block_ms) is retried on the next turn."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    if a.get("ts_base") is not None:
        raise SystemExit("the kafka-python producer worker takes no ts_base")
    p = KafkaProducer(
        bootstrap_servers=a["bootstrap"],
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        delivery_timeout_ms=a.get("message_timeout_ms", 120000),
        metadata_max_age_ms=2000,
        reconnect_backoff_max_ms=1000,
        max_block_ms=5000,
    )
    done = {"ack": 0, "fail": 0}

    def acked(rid):
        def cb(md):
            done["ack"] += 1
            emit("ack", id=rid, p=md.partition, o=md.offset)
        return cb

    def failed(rid):
        def cb(exc):
            done["fail"] += 1
            emit("fail", id=rid, err=repr(exc))
        return cb

    rate = float(a.get("rate", 100))
    count = a.get("count")
    tag = a["tag"]
    deadline = time.monotonic() + a.get("max_seconds", 600)
    t0 = time.monotonic()
    seq = 0
    while not _stop and time.monotonic() < deadline and (count is None or seq < count):
        due = int((time.monotonic() - t0) * rate) + 1
        while seq < due and (count is None or seq < count) and not _stop:
            rid = f"{tag}-{seq:07d}"
            try:
                fut = p.send(a["topic"], key=key_of(rid), value=rid.encode())
            except KafkaTimeoutError as e:
                emit("err", err=repr(e))
                break
            fut.add_callback(acked(rid))
            fut.add_errback(failed(rid))
            emit("sent", id=rid)
            seq += 1
        time.sleep(0.01)  # pacing (the rate), not synchronisation
    fatal = []
    try:
        p.flush(timeout=a.get("flush_seconds", 60))
    except KafkaTimeoutError as e:
        fatal.append(f"flush: {e!r}")
    undelivered = seq - done["ack"] - done["fail"]
    try:
        p.close(timeout=5)
    except Exception as e:  # noqa: BLE001 - reported
        emit("err", err=f"close: {e!r}")
    emit("done", sent=seq, undelivered=undelivered, fatal=fatal)
    return 3 if fatal else 0


# --------------------------------------------------------------------------
# Java client workers: Kafka's own VerifiableProducer / VerifiableConsumer
# (kafka-tools, on the classpath scripts/setup.sh installs) run as a child of
# the worker process; their JSON lines on stdout become the same events as
# the Python workers' (time-stamped as they are read; the tools flush each
# line). Other output (log4j) goes to the worker's log.
# --------------------------------------------------------------------------

JAVA_CLIENT_HEAP = "128m"


def java_value_prefix(tag: str) -> int:
    """VerifiableProducer's values are "<prefix>.<n>" with an integer prefix
    (--value-prefix); the Java producer's record ids are those values, the
    prefix derived from the worker's tag."""
    import zlib

    return zlib.crc32(tag.encode()) % 1_000_000_000


def _java_argv(main_class: str, props: dict, props_path: Path, *args: str) -> list[str]:
    from kafka_cluster import jvm_argv

    props_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return [*jvm_argv(JAVA_CLIENT_HEAP), main_class, "--command-config", str(props_path), *args]


def _run_java(argv: list[str], on_event, emit: _Events, *, stop_grace: float,
              max_seconds: float) -> Optional[int]:
    """Runs a Java tool, calling on_event(name, obj, t) per JSON line. On
    SIGTERM of this worker (or after max_seconds) the tool gets SIGTERM (its
    shutdown hook closes the client) and `stop_grace` s to finish, then
    SIGKILL. Returns its exit code (None: killed; 0 for the JVM's 143 after
    our SIGTERM)."""
    import queue

    sys.stdout.write(f"$ {' '.join(argv)}\n")
    sys.stdout.flush()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    emit("java_start", pid=proc.pid)
    lines: "queue.Queue[Optional[bytes]]" = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + max_seconds
    stop_by = None
    killed = False
    while True:
        if stop_by is None and (_stop or time.monotonic() > deadline):
            proc.send_signal(signal.SIGTERM)
            stop_by = time.monotonic() + stop_grace
        if stop_by is not None and not killed and time.monotonic() > stop_by:
            emit("err", err=f"java tool did not stop within {stop_grace}s of SIGTERM; killed")
            proc.kill()
            killed = True
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        t = time.time()
        text = line.decode("utf-8", "replace").rstrip("\n")
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and "name" in obj:
                on_event(obj["name"], obj, t)
                continue
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    code = proc.wait()
    if killed:
        return None
    # 143: the JVM's exit after the SIGTERM we sent (its shutdown hook ran).
    return 0 if stop_by is not None and code == 128 + signal.SIGTERM else code


def _produce_java(a: dict, emit: _Events) -> int:
    """org.apache.kafka.tools.VerifiableProducer: the Java producer with the
    client's defaults (idempotent, acks=all, retries until
    delivery.timeout.ms), `--throughput` = rate, keys "0".."96"
    (--repeating-keys 97), values "<prefix>.<n>" (the record ids). The tool
    reports completions only, so a record's "sent" event is estimated when
    its completion is read: the tool's throttle hands record n over at about
    start + n/rate (`est: true`; later if the producer blocked)."""
    if a.get("ts_base") is not None:
        raise SystemExit("the Java producer worker takes no ts_base")
    rate = float(a.get("rate", 100))
    prefix = int(a.get("value_prefix", java_value_prefix(a["tag"])))
    events_dir = Path(a["events"]).parent
    props = {
        # VerifiableProducer sets retries=0 ("no producer retries"), which
        # also turns idempotence off; its --command-config file is applied
        # after that, so the client's defaults come back here.
        "retries": 2147483647,
        "enable.idempotence": "true",
        "acks": "all",
        "delivery.timeout.ms": a.get("message_timeout_ms", 120000),
        "metadata.max.age.ms": 2000,
        "reconnect.backoff.max.ms": 1000,
    }
    args = ["--bootstrap-server", a["bootstrap"], "--topic", a["topic"], "--throughput", str(int(rate)),
            "--value-prefix", str(prefix), "--repeating-keys", "97"]
    if a.get("count") is not None:
        args += ["--max-messages", str(a["count"])]
    argv = _java_argv("org.apache.kafka.tools.VerifiableProducer", props,
                      events_dir / f"{Path(a['events']).stem}.producer.properties", *args)
    st = {"start": None, "sent_ids": set(), "acked": 0, "failed": 0, "tool": None, "max_n": -1}

    def sent(rid: str, t: float) -> None:
        if rid in st["sent_ids"]:
            return
        st["sent_ids"].add(rid)
        n = int(rid.rsplit(".", 1)[1])
        st["max_n"] = max(st["max_n"], n)
        start = st["start"] if st["start"] is not None else t
        emit("sent", id=rid, t=min(t, start + n / rate), est=True)

    def on_event(name: str, o: dict, t: float) -> None:
        if name == "startup_complete":
            st["start"] = t
        elif name == "producer_send_success":
            sent(o["value"], t)
            st["acked"] += 1
            emit("ack", id=o["value"], p=o["partition"], o=o["offset"], t=t)
        elif name == "producer_send_error":
            sent(o["value"], t)
            st["failed"] += 1
            emit("fail", id=o["value"], err=f"{o.get('exception')}: {o.get('message')}", t=t)
        elif name == "tool_data":
            st["tool"] = o
        elif name == "shutdown_complete":
            emit("closed", t=t)

    code = _run_java(argv, on_event, emit, stop_grace=float(a.get("flush_seconds", 60)),
                     max_seconds=a.get("max_seconds", 600))
    tool = st["tool"]
    total = int(tool["sent"]) if tool else st["max_n"] + 1
    # Records handed over that never completed (the tool was killed): sent
    # events at their estimated time, so the producer's records are complete.
    if st["start"] is not None:
        for n in range(total):
            rid = f"{prefix}.{n}"
            if rid not in st["sent_ids"]:
                st["sent_ids"].add(rid)
                emit("sent", id=rid, t=st["start"] + n / rate, est=True)
    fatal = [] if (code == 0 and tool) else [f"java producer exit {code}; tool_data {tool}"]
    emit("done", sent=total, undelivered=total - st["acked"] - st["failed"], fatal=fatal)
    return 3 if fatal else 0


def _consume_java(a: dict, emit: _Events) -> int:
    """org.apache.kafka.tools.VerifiableConsumer: the Java consumer in a
    group (`group_protocol` classic, the default, or consumer), `--verbose`
    for one record_data line per record, auto-commit off (the tool's
    default): the tool commits synchronously after each poll's batch, and a
    commit's offsets become one "commit" event per record it covers."""
    protocol = a.get("group_protocol", "classic")
    events_dir = Path(a["events"]).parent
    props: dict[str, Any] = {
        "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
        "metadata.max.age.ms": 2000,
        "reconnect.backoff.max.ms": 1000,
        "fetch.max.wait.ms": 100,
        "request.timeout.ms": 20000,
    }
    args = ["--bootstrap-server", a["bootstrap"], "--topic", a["topic"], "--group-id", a["group"],
            "--group-protocol", protocol, "--verbose", "--reset-policy", "earliest", "--close-timeout", "5000"]
    if protocol == "classic":
        # The consumer protocol sets these on the broker side (and refuses them here).
        props["heartbeat.interval.ms"] = HEARTBEAT_INTERVAL_MS
        args += ["--session-timeout", str(SESSION_TIMEOUT_MS)]
    argv = _java_argv("org.apache.kafka.tools.VerifiableConsumer", props,
                      events_dir / f"{Path(a['events']).stem}.consumer.properties", *args)
    pending: dict[int, list[tuple[int, str]]] = {}

    def parts(o: dict) -> list[int]:
        return sorted(x["partition"] for x in o.get("partitions", []))

    def on_event(name: str, o: dict, t: float) -> None:
        if name == "record_data":
            rid = o.get("value") or ""
            emit("rec", id=rid, p=o["partition"], o=o["offset"], t=t)
            pending.setdefault(o["partition"], []).append((o["offset"], rid))
        elif name == "offsets_committed":
            for x in o.get("offsets", []):
                p, off = x["partition"], x["offset"]
                if o.get("success"):
                    recs = pending.get(p, [])
                    for ro, rid in recs:
                        if ro < off:
                            emit("commit", id=rid, p=p, o=ro + 1, t=t)
                    pending[p] = [r for r in recs if r[0] >= off]
                else:
                    emit("commit_err", err=str(o.get("error")), p=p, o=off, t=t)
        elif name == "partitions_assigned":
            emit("assigned", parts=parts(o), t=t)
        elif name == "partitions_revoked":
            emit("revoked", parts=parts(o), t=t)
            for p in parts(o):
                pending.pop(p, None)
        elif name == "partitions_lost":
            emit("lost", parts=parts(o), t=t)
        elif name == "shutdown_complete":
            emit("closed", t=t)

    # The tool ends on any exception from poll() ("terminating consumer
    # process"); like a replaced application instance, a new one joins (the
    # exit is reported as an error of the group).
    deadline = time.monotonic() + a.get("max_seconds", 600)
    while True:
        code = _run_java(argv, on_event, emit, stop_grace=30.0, max_seconds=max(1.0, deadline - time.monotonic()))
        if _stop or time.monotonic() >= deadline:
            return 0 if code == 0 else 2
        emit("err", err=f"java consumer exited by itself (exit {code}); started again")
        pending.clear()


def _main(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    signal.signal(signal.SIGTERM, _on_term)
    emit = _Events(args["events"])
    emit("start", pid=os.getpid(), kind=kind, lib=args.get("lib"))
    # kafka-python's group membership steps (join, sync, heartbeat failures)
    # go to the worker's log, which a failed test attaches.
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka.coordinator").setLevel(logging.INFO)
    fns = {
        ("consume", "confluent"): _consume_confluent,
        ("consume", "kafka-python"): _consume_kafka_python,
        ("consume", "java"): _consume_java,
        ("produce", "confluent"): _produce,
        ("produce", "kafka-python"): _produce_kafka_python,
        ("produce", "java"): _produce_java,
    }
    lib = args.get("lib", "confluent")
    if (kind, lib) not in fns:
        raise SystemExit(f"unknown worker {kind!r} lib {lib!r}")
    return fns[(kind, lib)](args, emit)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
