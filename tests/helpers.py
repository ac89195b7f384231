"""Shared helpers for the Switchyard integration suite.

These are the pieces several test files need: ports, bounded waiting, HTTP
and Prometheus scraping, topic creation, deterministic test records and the
exactly-once comparison that every data-path test ends with. The fixtures
(conftest.py) start processes; the few process pieces they share with
scripts that run outside pytest (tests/churn.py) are here at the end:
`ManagedProcess`, the `Switchyard` handle and `start_switchyard`.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

T = TypeVar("T")

# Consumer-group timings. Tansu completes a JoinGroup only after the rebalance
# timeout (= max.poll.interval.ms) has passed, so the Kafka defaults (45 s /
# 300 s) would make every group test take minutes. librdkafka requires
# max.poll.interval.ms >= session.timeout.ms.
SESSION_TIMEOUT_MS = 6000
MAX_POLL_INTERVAL_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------

_allocated_ports: set[int] = set()
_port_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _candidate_range() -> tuple[int, int]:
    """Ports outside the kernel's ephemeral range, so that the outgoing
    connections clients make while a test runs can never take a port we picked
    but have not bound yet."""
    lo, hi = _ephemeral_range()
    if lo - 1 - 15000 >= 2000:
        return 15000, lo - 1
    if 65000 - (hi + 1) >= 2000:
        return hi + 1, 65000
    return 10000, 65000


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def allocate_ports(count: int, host: str = "127.0.0.1") -> int:
    """Returns a base port such that base .. base+count-1 are all free now and
    were never handed out before in this test session."""
    lo, hi = _candidate_range()
    rng = random.Random()
    with _port_lock:
        for _ in range(2000):
            base = rng.randrange(lo, hi - count)
            block = range(base, base + count)
            if any(p in _allocated_ports for p in block):
                continue
            if all(port_is_free(p, host) for p in block):
                _allocated_ports.update(block)
                return base
    raise RuntimeError(f"could not find {count} consecutive free ports in {lo}..{hi}")


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# Bounded waiting
# --------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.1,
) -> T:
    """Polls `predicate` until it returns something truthy, which is returned.
    Fails with `message` (plus the last exception, if the predicate raised)
    once `timeout` seconds have passed."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last_exc = None
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            msg = message() if callable(message) else message
            if last_exc is not None:
                msg += f" (last error: {last_exc!r})"
            raise AssertionError(f"timed out after {timeout:.0f}s: {msg}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# HTTP / Prometheus
# --------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0, headers: Optional[dict] = None,
             context: Any = None) -> tuple[int, str]:
    """GET returning (status, body) for any HTTP status; raises only on
    connection problems. An https URL without `context` is not verified
    (the suite's probes of a TLS admin port)."""
    req = urllib.request.Request(url, method="GET", headers=headers or {})
    if context is None and url.startswith("https:"):
        import ssl
        context = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace") if e.fp else ""
        return e.code, body


def admin_reload(admin: str) -> tuple[int, Any]:
    """POST /api/v1/reload on an admin base URL: (status, JSON answer)."""
    req = urllib.request.Request(f"{admin}/api/v1/reload", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def http_get_json(url: str, timeout: float = 5.0) -> Any:
    status, body = http_get(url, timeout)
    assert status == 200, f"GET {url} returned {status}: {body[:500]}"
    try:
        return json.loads(body)
    except ValueError as e:
        raise AssertionError(f"GET {url} did not return JSON ({e}): {body[:500]}") from None


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict
    value: float


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_prometheus(text: str) -> tuple[list[Sample], dict[str, str]]:
    """Parses Prometheus text exposition into samples and {metric: TYPE}.
    Raises AssertionError on a line that is not valid exposition format."""
    samples: list[Sample] = []
    types: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"/metrics line {lineno} is not Prometheus text format: {line!r}"
        labels: dict[str, str] = {}
        if m.group(3):
            pos = 0
            body = m.group(3)
            while pos < len(body):
                lm = _LABEL_RE.match(body, pos)
                assert lm, f"/metrics line {lineno} has malformed labels: {line!r}"
                labels[lm.group(1)] = bytes(lm.group(2), "utf-8").decode("unicode_escape")
                pos = lm.end()
        raw = m.group(4)
        try:
            value = float(raw.replace("+Inf", "inf").replace("-Inf", "-inf"))
        except ValueError:
            raise AssertionError(f"/metrics line {lineno} has a non-numeric value: {line!r}") from None
        samples.append(Sample(m.group(1), labels, value))
    return samples, types


def samples_named(samples: Iterable[Sample], name: str, **labels: str) -> list[Sample]:
    return [
        s
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def metric_sum(samples: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples_named(samples, name, **labels))


# --------------------------------------------------------------------------
# Topics (confluent_kafka AdminClient)
# --------------------------------------------------------------------------


def wait_led_through(sy, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Waits until Switchyard answers ListOffsets for every partition of
    `topic` (the new leaders have made themselves leader)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = admin_client(sy.bootstrap)

    def ok():
        futs = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                                  request_timeout=10)
        return all(f.result(timeout=15).offset >= 0 for f in futs.values())

    wait_until(ok, timeout, f"ListOffsets of {topic} through Switchyard")


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def admin_client(bootstrap: str, **extra: Any):
    from confluent_kafka.admin import AdminClient

    conf = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000}
    conf.update(extra)
    return AdminClient(conf)


def create_topic(bootstrap: str, name: str, partitions: int = 3, timeout: float = 30.0):
    """Creates a topic through `bootstrap` and waits until the metadata seen
    through `bootstrap` lists all its partitions with a leader. Returns that
    TopicMetadata."""
    __tracebackhide__ = True
    from confluent_kafka.admin import NewTopic

    admin = admin_client(bootstrap)
    # -1: the cluster's default.replication.factor (3 on a 3-broker Kafka
    # site of the harness, 1 on a single node and on Tansu).
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=-1)],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    futures[name].result(timeout=timeout)  # raises KafkaException on failure
    return wait_for_topic(bootstrap, name, partitions, timeout, admin=admin)


def wait_for_topic(bootstrap: str, name: str, partitions: int, timeout: float = 30.0, admin=None):
    admin = admin or admin_client(bootstrap)

    def ready():
        md = admin.list_topics(topic=name, timeout=5)
        t = md.topics.get(name)
        if t is None or t.error is not None or len(t.partitions) != partitions:
            return None
        if any(p.leader < 0 or p.error is not None for p in t.partitions.values()):
            return None
        return t

    return wait_until(
        ready,
        timeout,
        f"topic {name} with {partitions} partitions (all with a leader) not visible through {bootstrap}",
        interval=0.2,
    )


# --------------------------------------------------------------------------
# Test records and exactly-once verification
# --------------------------------------------------------------------------

Header = tuple[str, Optional[bytes]]


@dataclass(frozen=True)
class Rec:
    """A record as produced."""

    key: bytes
    value: Optional[bytes]
    headers: tuple[Header, ...]
    timestamp: int  # CreateTime, ms


@dataclass(frozen=True)
class Got:
    """A record as consumed, normalised across client libraries."""

    key: Optional[bytes]
    value: Optional[bytes]
    headers: tuple[Header, ...]
    timestamp: int
    timestamp_type: str  # "create", "logappend" or "none"
    partition: int
    offset: int


def make_records(
    count: int,
    tag: str,
    base_ts_ms: Optional[int] = None,
    null_header_values: bool = True,
    max_value_bytes: int = 1500,
) -> list[Rec]:
    """Deterministic, varied records: unique keys; binary values of varying
    size incl. some empty and some null values; headers with duplicate keys in
    a fixed order (and some records without headers); distinct CreateTime
    timestamps one hour in the past (so a broker overwriting them with the
    append time would be caught)."""
    if base_ts_ms is None:
        base_ts_ms = int(time.time() * 1000) - 3_600_000
    recs = []
    for i in range(count):
        rng = random.Random(f"{tag}/{i}")
        key = f"{tag}-{i:06d}".encode()
        if i % 997 == 13:
            value: Optional[bytes] = None
        elif i % 991 == 7:
            value = b""
        else:
            value = rng.randbytes(rng.randrange(1, max_value_bytes))
        if i % 10 == 9:
            headers: tuple[Header, ...] = ()
        else:
            h: list[Header] = [
                ("seq", str(i).encode()),
                ("dup", b"first"),
                ("bin", bytes([i % 256, 0, 255, 10])),
                ("dup", b"second"),
            ]
            if i % 3 == 0:
                h.append(("dup", b""))
            if null_header_values and i % 5 == 0:
                h.append(("nullable", None))
            headers = tuple(h)
        recs.append(Rec(key=key, value=value, headers=headers, timestamp=base_ts_ms + i * 3))
    return recs


def _describe(rec: Any) -> str:
    return repr(rec)[:300]


def verify_exactly_once(
    expected: Sequence[Rec],
    got: Sequence[Got],
    *,
    first_offsets: Optional[dict[int, int]] = None,
    num_partitions: Optional[int] = None,
    expected_partition: Optional[dict[bytes, int]] = None,
    expected_offset: Optional[dict[bytes, int]] = None,
    context: str = "",
) -> dict[int, list[Got]]:
    """Asserts that `got` holds every record of `expected` exactly once, with
    identical key, value, headers (order and duplicates included) and
    CreateTime timestamp, and that per partition the offsets are contiguous
    starting at `first_offsets[p]` (default 0). Optionally checks that each
    record landed in the partition / at the offset the producer was told.
    Returns the consumed records grouped by partition."""
    __tracebackhide__ = True
    prefix = f"{context}: " if context else ""
    exp_by_key = {r.key: r for r in expected}
    assert len(exp_by_key) == len(expected), "test bug: expected keys are not unique"
    counts = Counter(g.key for g in got)
    missing = [k for k in exp_by_key if counts[k] == 0]
    dups = {k: c for k, c in counts.items() if c > 1}
    unexpected = [k for k in counts if k not in exp_by_key]

    mismatches: list[str] = []
    for g in got:
        e = exp_by_key.get(g.key)
        if e is None:
            continue
        diffs = []
        if g.value != e.value:
            diffs.append(
                f"value len {None if g.value is None else len(g.value)} != "
                f"{None if e.value is None else len(e.value)} or content differs"
            )
        if g.headers != e.headers:
            diffs.append(f"headers {g.headers!r} != {e.headers!r}")
        if g.timestamp != e.timestamp:
            diffs.append(f"timestamp {g.timestamp} != {e.timestamp}")
        if g.timestamp_type != "create":
            diffs.append(f"timestamp type {g.timestamp_type!r} != 'create'")
        if expected_partition is not None and g.partition != expected_partition.get(g.key):
            diffs.append(f"partition {g.partition} != producer-reported {expected_partition.get(g.key)}")
        if expected_offset is not None and g.offset != expected_offset.get(g.key):
            diffs.append(f"offset {g.offset} != producer-reported {expected_offset.get(g.key)}")
        if diffs:
            mismatches.append(f"{g.key!r} (p{g.partition}@{g.offset}): " + "; ".join(diffs))

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:5]!r})")
    if dups:
        problems.append(f"{len(dups)} delivered more than once (e.g. {list(dups.items())[:5]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]!r})")
    if mismatches:
        problems.append(f"{len(mismatches)} differ from what was produced:\n    " + "\n    ".join(mismatches[:10]))
    assert not problems, (
        f"{prefix}expected {len(expected)} records exactly once, consumed {len(got)}: " + "; ".join(problems)
    )

    by_partition: dict[int, list[Got]] = defaultdict(list)
    for g in got:
        by_partition[g.partition].append(g)
    if num_partitions is not None:
        bad = sorted(p for p in by_partition if not 0 <= p < num_partitions)
        assert not bad, f"{prefix}records from partitions {bad} of a {num_partitions}-partition topic"
    for p, recs in sorted(by_partition.items()):
        offsets = sorted(g.offset for g in recs)
        start = (first_offsets or {}).get(p, 0)
        want = list(range(start, start + len(offsets)))
        if offsets != want:
            gaps = sorted(set(want) - set(offsets))[:10]
            extra = sorted(set(offsets) - set(want))[:10]
            raise AssertionError(
                f"{prefix}partition {p}: offsets not contiguous from {start}: {len(offsets)} records, "
                f"first {offsets[:1]}, last {offsets[-1:]}, gaps e.g. {gaps}, out-of-range e.g. {extra}"
            )
    return dict(by_partition)


# --------------------------------------------------------------------------
# confluent-kafka adapters
# --------------------------------------------------------------------------


def confluent_consumer_conf(bootstrap: str, group: Optional[str] = None, **extra: Any) -> dict:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
        "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
    }
    if group is not None:
        conf["group.id"] = group
    else:
        conf["group.id"] = unique_name("unused-group")
    conf.update(extra)
    return conf


def got_from_confluent(m) -> Got:
    from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME

    ts_type, ts = m.timestamp()
    kind = {TIMESTAMP_CREATE_TIME: "create", TIMESTAMP_LOG_APPEND_TIME: "logappend"}.get(ts_type, "none")
    return Got(
        key=m.key(),
        value=m.value(),
        headers=tuple((k, v) for k, v in (m.headers() or [])),
        timestamp=ts,
        timestamp_type=kind,
        partition=m.partition(),
        offset=m.offset(),
    )


def confluent_consume(consumer, expected: int, timeout: float, settle: float = 2.0, context: str = "") -> list[Got]:
    """Polls until `expected` records arrived (then `settle` more seconds to
    catch duplicates or extras) or `timeout` passed. Returns what arrived;
    the caller's verify_exactly_once reports what is missing."""
    out: list[Got] = []
    deadline = time.monotonic() + timeout
    settle_until: Optional[float] = None
    while True:
        now = time.monotonic()
        if now >= deadline or (settle_until is not None and now >= settle_until):
            break
        msgs = consumer.consume(num_messages=1000, timeout=0.5)
        for m in msgs:
            err = m.error()
            if err is not None:
                raise AssertionError(f"{context}: consumer error: {err}")
            out.append(got_from_confluent(m))
        if settle_until is None and len(out) >= expected:
            settle_until = time.monotonic() + settle
    return out


def confluent_wait_for_assignment(consumer, timeout: float, collected: Optional[list] = None) -> None:
    """Polls until the group assigned partitions to `consumer`. Records that
    arrive meanwhile are appended to `collected` (the caller checks them)."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    while not consumer.assignment():
        assert time.monotonic() < deadline, f"consumer got no partition assignment within {timeout}s"
        for m in consumer.consume(num_messages=100, timeout=0.5):
            assert m.error() is None, f"consumer error while joining the group: {m.error()}"
            if collected is not None:
                collected.append(got_from_confluent(m))


def confluent_produce(producer, topic: str, records: Sequence[Rec], timeout: float = 90.0):
    """Produces `records`, flushes and returns the delivery reports as
    {key: (error, partition, offset)}."""
    reports: dict[bytes, tuple[Any, int, Optional[int]]] = {}

    def on_delivery(err, msg):
        reports[msg.key()] = (err, msg.partition(), msg.offset())

    deadline = time.monotonic() + timeout
    for r in records:
        while True:
            try:
                producer.produce(
                    topic,
                    key=r.key,
                    value=r.value,
                    headers=list(r.headers),
                    timestamp=r.timestamp,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                assert time.monotonic() < deadline, "producer queue stayed full until the deadline"
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(max(1.0, deadline - time.monotonic()))
    assert remaining == 0, f"{remaining} of {len(records)} records still undelivered after {timeout}s"
    assert len(reports) == len(records), f"{len(records) - len(reports)} records got no delivery report"
    errors = [(k, e) for k, (e, _, _) in reports.items() if e is not None]
    assert not errors, f"{len(errors)} delivery failures, e.g. {errors[:5]!r}"
    return reports


# --------------------------------------------------------------------------
# kafka-python adapters
# --------------------------------------------------------------------------


def got_from_kafka_python(m) -> Got:
    kind = {0: "create", 1: "logappend"}.get(m.timestamp_type, "none")
    return Got(
        key=m.key,
        value=m.value,
        headers=tuple((k, v) for k, v in (m.headers or [])),
        timestamp=m.timestamp,
        timestamp_type=kind,
        partition=m.partition,
        offset=m.offset,
    )


def kafka_python_consume(consumer, expected: int, timeout: float, settle: float = 2.0) -> list[Got]:
    out: list[Got] = []
    deadline = time.monotonic() + timeout
    settle_until: Optional[float] = None
    while True:
        now = time.monotonic()
        if now >= deadline or (settle_until is not None and now >= settle_until):
            break
        batch = consumer.poll(timeout_ms=500, max_records=2000)
        for msgs in batch.values():
            out.extend(got_from_kafka_python(m) for m in msgs)
        if settle_until is None and len(out) >= expected:
            settle_until = time.monotonic() + settle
    return out


# --------------------------------------------------------------------------
# Whole-topic reads and copy comparison (tee / multi-site tests)
# --------------------------------------------------------------------------
#
# End offsets come from the high watermark in Fetch responses (librdkafka's
# cached watermarks), never from ListOffsets(latest): Tansu answers that with
# "base offset of the last batch + 1" (DESIGN.md §7).


@dataclass
class StoredRec:
    """A record as stored in one partition and delivered by confluent-kafka."""

    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: list[Header]  # as delivered: order and duplicate keys kept
    timestamp: tuple[int, int]  # (confluent_kafka.TIMESTAMP_* type, ms)


def _reader_conf(bootstrap: str, conf: dict) -> dict:
    out: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": unique_name("reader"),  # never joined: assign() only
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_uncommitted",
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 10000,
    }
    out.update(conf)
    return out


def _topic_partitions(consumer, topic: str, deadline: float, bootstrap: str) -> list[int]:
    last = "no metadata"
    while True:
        try:
            md = consumer.list_topics(topic=topic, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            t = md.topics.get(topic)
            if t is None:
                last = "topic absent from metadata"
            elif t.error is not None:
                last = f"topic error {t.error}"
            elif not t.partitions:
                last = "no partitions"
            else:
                return sorted(t.partitions)
        except Exception as e:  # KafkaException on metadata timeout
            last = repr(e)
        if time.monotonic() >= deadline:
            raise AssertionError(f"topic {topic!r} not found through {bootstrap}: {last}")
        time.sleep(0.1)


def stored_from_confluent(m) -> StoredRec:
    return StoredRec(
        offset=m.offset(),
        key=m.key(),
        value=m.value(),
        headers=list(m.headers() or []),
        timestamp=tuple(m.timestamp()),
    )


def read_partitions(bootstrap: str, topic: str, timeout: float = 30.0, **conf: Any) -> dict[int, list[StoredRec]]:
    """Reads every partition of `topic` from the beginning up to its high
    watermark as of the start of the call (the HW in the first Fetch response
    for the partition), with assign() -- no group is joined, nothing is
    committed. Returns {partition: [StoredRec in offset order]} (an empty list
    for an empty partition). `conf` overrides librdkafka settings; keys have
    dots, so pass them as ``**{"isolation.level": "read_committed"}``
    (default here: read_uncommitted). Raises AssertionError if the end
    offsets are not reached within `timeout` seconds."""
    __tracebackhide__ = True
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    deadline = time.monotonic() + timeout
    consumer = Consumer(_reader_conf(bootstrap, conf))
    try:
        parts = _topic_partitions(consumer, topic, deadline, bootstrap)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: dict[int, list[StoredRec]] = {p: [] for p in parts}
        end: dict[int, int] = {}  # target end offset (exclusive)
        start: dict[int, int] = {}
        last: dict[int, int] = {}  # highest offset delivered
        eof: dict[int, int] = {}  # highest end-of-partition offset reported
        done: set[int] = set()
        while True:
            for p in parts:
                if p not in end:
                    lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                    if hi >= 0:
                        end[p] = hi
                        start[p] = max(lo, 0)
                if p in end and p not in done:
                    e = end[p]
                    if start[p] >= e or last.get(p, -1) >= e - 1 or eof.get(p, -1) >= e:
                        done.add(p)
            if len(done) == len(parts):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status = ", ".join(
                    f"p{p}: end {end.get(p, '?')}, last offset read {last.get(p, '-')}"
                    f"{', eof at ' + str(eof[p]) if p in eof else ''}"
                    for p in parts
                    if p not in done
                )
                raise AssertionError(
                    f"read_partitions({bootstrap}, {topic!r}): high watermark not reached within {timeout}s "
                    f"({status}; '?' = no Fetch response yet)"
                )
            for m in consumer.consume(num_messages=1000, timeout=min(0.5, remaining)):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof[m.partition()] = max(eof.get(m.partition(), -1), m.offset())
                        continue
                    if err.retriable():
                        continue
                    raise AssertionError(f"read_partitions({bootstrap}, {topic!r}): consumer error {err}")
                p = m.partition()
                out[p].append(stored_from_confluent(m))
                last[p] = max(last.get(p, -1), m.offset())
    finally:
        consumer.close()
    for p, recs in out.items():
        recs.sort(key=lambda r: r.offset)
        out[p] = [r for r in recs if r.offset < end[p]]
    return out


def wait_for_count(bootstrap: str, topic: str, n: int, timeout: float, **conf: Any) -> int:
    """Polls the partitions' watermarks until sum(high - low) >= n and returns
    that sum; raises AssertionError with the last count seen otherwise. High
    watermarks are those of Fetch responses (see above), so a consumer reads
    from near each partition's end and drops what it gets; the topic may not
    exist yet when this starts."""
    __tracebackhide__ = True
    from confluent_kafka import Consumer, TopicPartition

    deadline = time.monotonic() + timeout
    consumer = Consumer(_reader_conf(bootstrap, {"enable.partition.eof": False, **conf}))
    last_count: Optional[int] = None
    per_partition: dict[int, tuple[int, int]] = {}
    try:
        try:
            parts = _topic_partitions(consumer, topic, deadline, bootstrap)
        except AssertionError as e:
            raise AssertionError(f"wait_for_count: {topic!r} never had {n} records (last count: none; {e})") from None
        from confluent_kafka import OFFSET_BEGINNING, KafkaException

        tps = []
        low: dict[int, int] = {}
        for p in parts:
            # ListOffsets: earliest is right; "latest" is only a lower bound on
            # Tansu, good enough as a place to start fetching near the end.
            try:
                wm = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5.0)
            except KafkaException:  # e.g. no leader yet
                wm = None
            if wm is None:  # fetch from the start instead
                low[p] = 0
                tps.append(TopicPartition(topic, p, OFFSET_BEGINNING))
                continue
            lo, approx_hi = wm
            low[p] = max(lo, 0)
            tps.append(TopicPartition(topic, p, max(low[p], approx_hi - 1)))
        consumer.assign(tps)
        while True:
            known = True
            for p in parts:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                if hi < 0:
                    known = False
                    continue
                per_partition[p] = (lo if lo >= 0 else low[p], hi)
            if known:
                last_count = sum(hi - lo for lo, hi in per_partition.values())
                if last_count >= n:
                    return last_count
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{topic!r} through {bootstrap}: {last_count} records (< {n}) after {timeout}s; "
                    f"watermarks (low, high) per partition: {dict(sorted(per_partition.items()))}"
                )
            consumer.consume(num_messages=10000, timeout=min(0.2, remaining))  # keeps fetches flowing
    finally:
        consumer.close()


@dataclass
class PartitionDiff:
    partition: int
    src_count: int
    dst_count: int
    missing: int = 0  # in src, not in dst (by (key, value), counting multiplicity)
    duplicates: int = 0  # extra copies in dst of a record that is in src
    unexpected: int = 0  # in dst, never in src
    order_violations: int = 0  # matched records out of src order (matched - longest in-order run)
    mismatches: int = 0  # matched records whose headers or timestamp differ
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.unexpected or self.order_violations or self.mismatches)


@dataclass
class CopyReport:
    """What compare_copies found; ``ok`` is True when dst is an exact copy."""

    partitions: dict[int, PartitionDiff]
    src_count: int = 0
    dst_count: int = 0
    missing: int = 0
    duplicates: int = 0
    unexpected: int = 0
    order_violations: int = 0
    mismatches: int = 0
    misplaced: int = 0  # missing from one partition and present in another
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.unexpected or self.order_violations or self.mismatches)

    def summary(self) -> str:
        head = (
            f"src {self.src_count} records, dst {self.dst_count}: missing {self.missing}, "
            f"duplicates {self.duplicates}, unexpected {self.unexpected}, "
            f"order violations {self.order_violations}, field mismatches {self.mismatches}"
        )
        if self.misplaced:
            head += f" ({self.misplaced} of the missing are in another dst partition)"
        bad = [f"p{p}" for p, d in sorted(self.partitions.items()) if not d.ok]
        if bad:
            head += f"; partitions with problems: {', '.join(bad)}"
        if self.examples:
            head += "\n  " + "\n  ".join(self.examples)
        return head

    def assert_ok(self, context: str = "") -> None:
        __tracebackhide__ = True
        assert self.ok, (f"{context}: " if context else "") + self.summary()

    def __str__(self) -> str:
        return self.summary()


def _short(b: Optional[bytes], limit: int = 40) -> str:
    if b is None:
        return "None"
    r = repr(b)
    return r if len(r) <= limit else f"{r[:limit]}...({len(b)} bytes)"


def _in_order_count(seq: Sequence[int]) -> int:
    """Length of the longest strictly increasing subsequence."""
    import bisect

    tails: list[int] = []
    for x in seq:
        i = bisect.bisect_left(tails, x)
        if i == len(tails):
            tails.append(x)
        else:
            tails[i] = x
    return len(tails)


def compare_copies(
    src: dict[int, Sequence[Any]],
    dst: dict[int, Sequence[Any]],
    ignore_headers: Iterable[str] = ("switchyard-origin",),
    *,
    check_timestamps: bool = True,
    max_examples: int = 5,
) -> CopyReport:
    """Compares two whole-topic reads ({partition: records in offset order},
    e.g. from read_partitions) partition by partition: dst partition p should
    hold src partition p's records, same order, nothing else (offsets may
    differ). Records are matched by (key, value): the k-th dst copy of a
    (key, value) matches its k-th occurrence in src, further copies are
    duplicates. For matched records, headers (minus the names in
    `ignore_headers`, order and duplicates kept) and timestamps ((type, ms)
    when check_timestamps) must be equal. Records need .key, .value, .headers,
    .timestamp and, for examples, .offset."""
    ignored = frozenset(ignore_headers)
    report = CopyReport(partitions={})
    missing_ids: dict[tuple, int] = {}
    unexpected_ids: dict[tuple, int] = {}

    def note(diff: PartitionDiff, text: str) -> None:
        if len(diff.examples) < max_examples:
            diff.examples.append(text)
        if len(report.examples) < max_examples:
            report.examples.append(text)

    def hdrs(r) -> tuple:
        return tuple((k, v) for k, v in (r.headers or ()) if k not in ignored)

    for p in sorted(set(src) | set(dst)):
        s = list(src.get(p, ()))
        d = list(dst.get(p, ()))
        diff = PartitionDiff(partition=p, src_count=len(s), dst_count=len(d))
        positions: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(s):
            positions[(r.key, r.value)].append(i)
        used: Counter = Counter()
        matched: list[int] = []  # src index of each matched dst record, dst order
        running_max = -1
        for r in d:
            ident = (r.key, r.value)
            occ = positions.get(ident)
            if not occ:
                diff.unexpected += 1
                unexpected_ids[ident] = p
                note(
                    diff,
                    f"p{p}: unexpected key={_short(r.key)} value={_short(r.value)} "
                    f"at dst offset {getattr(r, 'offset', '?')}",
                )
                continue
            k = used[ident]
            used[ident] += 1
            if k >= len(occ):
                diff.duplicates += 1
                note(
                    diff,
                    f"p{p}: duplicate key={_short(r.key)} at dst offset {getattr(r, 'offset', '?')} "
                    f"(copy {k + 1}, src has {len(occ)})",
                )
                continue
            si = occ[k]
            e = s[si]
            if si < running_max:
                note(
                    diff,
                    f"p{p}: out of order: key={_short(r.key)} (src offset {getattr(e, 'offset', si)}) at dst offset "
                    f"{getattr(r, 'offset', '?')} after src offset {getattr(s[running_max], 'offset', running_max)}",
                )
            running_max = max(running_max, si)
            matched.append(si)
            problems = []
            if hdrs(r) != hdrs(e):
                problems.append(f"headers {hdrs(r)!r} != src {hdrs(e)!r}")
            if check_timestamps and tuple(r.timestamp) != tuple(e.timestamp):
                problems.append(f"timestamp {r.timestamp} != src {e.timestamp}")
            if problems:
                diff.mismatches += 1
                note(
                    diff,
                    f"p{p}: key={_short(r.key)} src offset {getattr(e, 'offset', si)} / dst offset "
                    f"{getattr(r, 'offset', '?')}: " + "; ".join(problems),
                )
        diff.order_violations = len(matched) - _in_order_count(matched)
        for ident, occ in positions.items():
            lost = len(occ) - min(used[ident], len(occ))
            if lost:
                diff.missing += lost
                missing_ids[ident] = p
                first_lost = s[occ[used[ident]]] if used[ident] < len(occ) else s[occ[-1]]
                note(
                    diff,
                    f"p{p}: missing key={_short(ident[0])} "
                    f"(src offset {getattr(first_lost, 'offset', '?')}, {lost} copies)",
                )
        report.partitions[p] = diff
        report.src_count += diff.src_count
        report.dst_count += diff.dst_count
        report.missing += diff.missing
        report.duplicates += diff.duplicates
        report.unexpected += diff.unexpected
        report.order_violations += diff.order_violations
        report.mismatches += diff.mismatches
    report.misplaced = sum(
        1 for ident, p in missing_ids.items() if ident in unexpected_ids and unexpected_ids[ident] != p
    )
    return report


# --------------------------------------------------------------------------
# Processes and Switchyard (the fixtures in conftest.py wrap these; scripts
# such as tests/churn.py use them directly)
# --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SWITCHYARD_BIN = ROOT / "target" / "debug" / "switchyard"
SWITCHYARD_READY_TIMEOUT = 30.0
TEARDOWN_GRACE = 5.0

_live: list["ManagedProcess"] = []


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_live):
        p.kill()


class ManagedProcess:
    """A child process whose stdout+stderr go to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Optional[dict] = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._log.write(f"$ {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C on pytest doesn't hit it; finalizers stop it
        )
        _live.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 60) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        text = data.decode("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])

    def send_signal(self, sig: int) -> None:
        if self.running():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.running():
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._close()

    def terminate(self, grace: float = TEARDOWN_GRACE) -> Optional[int]:
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(grace) is None:
                self.kill()
        self._close()
        return self.proc.returncode

    def _close(self) -> None:
        if self.proc.poll() is not None:
            if self in _live:
                _live.remove(self)
            if not self._log.closed:
                self._log.close()


def bootstrap_list(upstream: Any) -> list[str]:
    """The bootstrap addresses of a site object or "host:port[,host:port]" string."""
    text = upstream if isinstance(upstream, str) else upstream.bootstrap
    return [a for a in str(text).split(",") if a]


# --------------------------------------------------------------------------
# Switchyard
# --------------------------------------------------------------------------


def _yaml_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        assert not v
        return "{}"
    if isinstance(v, list):
        assert not v
        return "[]"
    import json

    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def _yaml_lines(obj: Any, indent: int):
    pad = "  " * indent
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                yield f"{pad}{k}:"
                yield from _yaml_lines(v, indent + 1)
            else:
                yield f"{pad}{k}: {_yaml_scalar(v)}"
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub = list(_yaml_lines(item, indent + 1))
                yield f"{pad}- {sub[0].lstrip()}"
                yield from sub[1:]
            else:
                yield f"{pad}- {_yaml_scalar(item)}"
    else:
        yield f"{pad}{_yaml_scalar(obj)}"


def to_yaml(obj: dict) -> str:
    """Minimal block-style YAML writer for the config dicts used here."""
    return "\n".join(_yaml_lines(obj, 0)) + "\n"


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def switchyard_bin_path() -> Path:
    env_bin = os.environ.get("SWITCHYARD_BIN")
    return Path(env_bin) if env_bin else DEFAULT_SWITCHYARD_BIN


class Switchyard:
    def __init__(
        self,
        proc: ManagedProcess,
        config: dict,
        config_path: Path,
        upstreams: list,
    ):
        self.process = proc
        self.proc = proc.proc
        self.log_path = proc.log_path
        self.config = config
        self.config_path = config_path
        self.upstreams = upstreams
        self.cluster_id = config["cluster_id"]
        bind_host, bind_port = config["listen"]["bind"].rsplit(":", 1)
        self.host = bind_host
        self.port = int(bind_port)
        self.bootstrap = f"{bind_host}:{self.port}"
        self.virtual_nodes = int(config["listen"].get("virtual_nodes", 3))
        self.advertised_host = config["listen"].get("advertised_host") or bind_host
        self.node_ports = {i: self.port + 1 + i for i in range(self.virtual_nodes)}
        self.advertised = {i: f"{self.advertised_host}:{p}" for i, p in self.node_ports.items()}
        admin_bind = config.get("admin", {}).get("bind", "127.0.0.1:9644")
        self.admin_bind = admin_bind
        scheme = "https" if config.get("admin", {}).get("tls") else "http"
        self.admin = f"{scheme}://{admin_bind}"

    @property
    def broker(self) -> Any:
        """The site the fixture started (or the first upstream given)."""
        b = self.upstreams[0]
        assert not isinstance(b, str), "the first upstream is an address, not a site started by the fixture"
        return b

    @property
    def tansu(self) -> Any:
        t = self.upstreams[0]
        assert getattr(t, "kind", None) == "tansu", "first upstream is not a Tansu started by the fixture"
        return t

    # admin API
    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        return http_get(self.admin + path, timeout)

    def status(self) -> dict:
        return http_get_json(self.admin + "/api/v1/status")

    def metrics(self):
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics returned {status}: {body[:300]}"
        return parse_prometheus(body)

    # process control
    def running(self) -> bool:
        return self.process.running()

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        """Sends SIGTERM (or `sig`) and waits for exit; returns the exit code.
        Raises AssertionError (after SIGKILL) if it does not exit in time."""
        assert self.running(), f"switchyard already exited with {self.proc.returncode}"
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        if code is None:
            self.process.kill()
            raise AssertionError(
                f"switchyard did not exit within {timeout}s after signal {sig}:\n{self.process.tail()}"
            )
        self.process._close()
        return code

    def kill(self) -> None:
        self.process.kill()

    def __repr__(self) -> str:
        return f"<Switchyard {self.bootstrap} admin={self.admin} pid={self.proc.pid}>"



def start_switchyard(
    binary: Path,
    workdir: Path,
    upstreams: Sequence[Any],
    *,
    index: int = 1,
    cluster_id: str = "switchyard-test",
    virtual_nodes: int = 3,
    overrides: Optional[dict] = None,
    wait_ready: bool = True,
    ready_timeout: float = SWITCHYARD_READY_TIMEOUT,
    config_text: Optional[str] = None,
    launched: Optional[Callable[[Switchyard], None]] = None,
) -> Switchyard:
    """Writes `workdir/switchyard-<index>.yaml` (one site "local" over the
    `upstreams`' bootstrap addresses, `overrides` deep-merged; `config_text`
    replaces the file's text), runs `binary run --config` with its log in
    `workdir/switchyard-<index>.log` and returns once `GET /readyz` (with
    wait_ready=False: `/healthz`) is 200. Free ports are allocated for the
    listener (bootstrap port and the next `virtual_nodes`) and the admin API
    unless the overrides set them. `launched(sy)` is called as soon as the
    process exists (so a caller can clean it up even if it never gets
    ready); a process that exits or is not ready in time raises
    AssertionError with its log tail."""
    upstreams = list(upstreams)
    config: dict = {
        "cluster_id": cluster_id,
        "listen": {"bind": None, "virtual_nodes": virtual_nodes},
        "sites": [
            {
                "name": "local",
                "bootstrap": [a for u in upstreams for a in bootstrap_list(u)],
            }
        ],
        "admin": {"bind": None},
        "log": {"format": "human", "level": os.environ.get("SWITCHYARD_LOG_LEVEL", "info")},
    }
    config = deep_merge(config, overrides or {})
    n = int(config["listen"]["virtual_nodes"])
    if config["listen"]["bind"] is None:
        base = allocate_ports(n + 1)
        config["listen"]["bind"] = f"127.0.0.1:{base}"
    if config["admin"]["bind"] is None:
        config["admin"]["bind"] = f"127.0.0.1:{allocate_ports(1)}"

    config_path = Path(workdir) / f"switchyard-{index}.yaml"
    config_path.write_text(to_yaml(config) if config_text is None else config_text)
    log_path = Path(workdir) / f"switchyard-{index}.log"
    env = dict(os.environ, RUST_BACKTRACE="1")
    proc = ManagedProcess(
        f"switchyard#{index}",
        [str(binary), "run", "--config", str(config_path)],
        log_path,
        env=env,
    )
    sy = Switchyard(proc, config, config_path, upstreams)
    if launched is not None:
        launched(sy)

    path = "/readyz" if wait_ready else "/healthz"
    deadline = time.monotonic() + ready_timeout
    last = "no answer"
    while True:
        if not proc.running():
            raise AssertionError(
                f"switchyard exited with {proc.proc.returncode} during startup; config:\n"
                f"{config_path.read_text()}\nlog:\n{proc.tail()}"
            )
        try:
            code, body = http_get(sy.admin + path, timeout=2)
            if code == 200:
                break
            last = f"{code} {body[:200]!r}"
        except OSError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"GET {sy.admin}{path} not 200 within {ready_timeout}s (last: {last}); log:\n{proc.tail()}"
            )
        time.sleep(0.1)
    if wait_ready:
        assert tcp_accepts(sy.host, sy.port), f"/readyz is 200 but {sy.bootstrap} does not accept TCP"
    return sy
