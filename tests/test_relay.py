"""The userspace fault relay (tests/relay.py) and the whole-topic helpers.

Socket-level tests run the relay in front of an in-process echo/sink server
and check exactly what a peer sees: bytes unchanged, RST on a reset cut,
silence (timeouts, no RST) in a blackhole, latency with order preserved,
bounded buffering with backpressure, no threads left after close().

Broker-level tests put the relay between confluent-kafka and a real Tansu
whose advertised listener is the relay (tansu_behind_relay): produce works,
a cut makes delivery fail within message.timeout.ms, restore makes the same
producer deliver again, a blackhole gives timeouts and no resets, a delay
shows up in the produce latency; and read_partitions / wait_for_count see
Fetch high watermarks (not Tansu's ListOffsets(latest)) and return records
exactly as produced.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import Optional

import pytest

from helpers import (
    compare_copies,
    create_topic,
    make_records,
    read_partitions,
    unique_name,
    wait_for_count,
    wait_until,
)
from relay import Relay

pytestmark = pytest.mark.timeout(60, method="signal")

IO_TIMEOUT = 5.0  # bound for every blocking socket call that should succeed


# --------------------------------------------------------------------------
# An in-process upstream: echo, or a sink that reads only when told to
# --------------------------------------------------------------------------


class Upstream:
    def __init__(self, mode: str = "echo"):
        assert mode in ("echo", "sink")
        self.mode = mode
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = self.listener.getsockname()
        self.reading = threading.Event()
        if mode == "echo":
            self.reading.set()
        self.received = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept_loop, name="upstream-accept", daemon=True)]
        self._threads[0].start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self.listener], [], [], 0.05)
            if not r:
                continue
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name="upstream-conn", daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                if not self.reading.wait(0.05):
                    continue
                r, _, _ = select.select([conn], [], [], 0.05)
                if not r:
                    continue
                data = conn.recv(65536)
                if not data:
                    conn.shutdown(socket.SHUT_WR)  # echo the half-close
                    return
                if self.mode == "echo":
                    conn.sendall(data)
                else:
                    with self._lock:
                        self.received += data
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(IO_TIMEOUT)
        with self._lock:
            for c in self._conns:
                c.close()
        self.listener.close()


@pytest.fixture
def echo():
    up = Upstream("echo")
    yield up
    up.close()


@pytest.fixture
def sink():
    up = Upstream("sink")
    yield up
    up.close()


def connect(relay: Relay) -> socket.socket:
    s = socket.create_connection(relay.address, timeout=IO_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def roundtrip(s: socket.socket, payload: bytes) -> bytes:
    s.sendall(payload)
    return recv_exactly(s, len(payload))


def assert_reset(s: socket.socket, context: str) -> None:
    """The peer gets an RST: recv raises ECONNRESET (not EOF, not timeout)."""
    __tracebackhide__ = True
    s.settimeout(IO_TIMEOUT)
    try:
        data = s.recv(1)
    except ConnectionResetError:
        return
    except socket.timeout:
        pytest.fail(f"{context}: recv timed out; expected a connection reset")
    pytest.fail(f"{context}: recv returned {data!r}; expected a connection reset")


def assert_new_connection_reset(relay: Relay, context: str) -> None:
    """A new connection is reset: either already at connect() (the RST beat
    the client's connect completion) or at the first recv."""
    __tracebackhide__ = True
    try:
        s = connect(relay)
    except ConnectionResetError:
        return
    with s:
        assert_reset(s, context)


def assert_silent(s: socket.socket, context: str, wait: float = 0.5) -> None:
    """Nothing arrives and the connection is not closed or reset for `wait` s."""
    __tracebackhide__ = True
    s.settimeout(wait)
    try:
        data = s.recv(1)
    except socket.timeout:
        return
    except OSError as e:
        pytest.fail(f"{context}: expected silence, got {e!r}")
    pytest.fail(f"{context}: expected silence, got {data!r}")


# --------------------------------------------------------------------------
# Socket-level behaviour
# --------------------------------------------------------------------------


def test_forwards_bytes_unchanged_and_counts(echo):
    with Relay(echo.address) as relay:
        assert relay.port < 32768 and relay.bootstrap == f"127.0.0.1:{relay.port}"
        payload = os.urandom(3 * 1024 * 1024 + 17)
        with connect(relay) as s:
            got = bytearray()
            reader = threading.Thread(target=lambda: got.extend(recv_exactly(s, len(payload))))
            reader.start()
            s.sendall(payload)
            reader.join(IO_TIMEOUT * 2)
            assert bytes(got) == payload
        wait_until(lambda: relay.bytes_down == len(payload), IO_TIMEOUT, lambda: f"bytes_down {relay.bytes_down}")
        assert relay.bytes_up == len(payload)
        assert relay.connections_total == 1
        with connect(relay) as s2:
            assert roundtrip(s2, b"second") == b"second"
        assert relay.connections_total == 2
        # a half-close passes through: the echo server sees EOF and closes
        with connect(relay) as s3:
            s3.sendall(b"bye")
            s3.shutdown(socket.SHUT_WR)
            assert recv_exactly(s3, 3) == b"bye"
            assert s3.recv(1) == b""
        wait_until(lambda: relay.active_connections == 0, IO_TIMEOUT, lambda: f"{relay.stats()}")


def test_reset_cut_resets_open_and_new_connections(echo):
    with Relay(echo.address) as relay:
        old = connect(relay)
        assert roundtrip(old, b"ping") == b"ping"
        relay.cut()
        assert relay.mode == "reset"
        assert_reset(old, "open connection after cut()")
        assert relay.connections_reset == 1
        # the handshake completes (kernel), then the relay resets it
        assert_new_connection_reset(relay, "new connection during cut()")
        wait_until(lambda: relay.connections_refused == 1, IO_TIMEOUT, lambda: f"{relay.stats()}")
        before = relay.bytes_up
        relay.restore()
        assert relay.mode == "forward"
        with connect(relay) as s:
            assert roundtrip(s, b"back") == b"back"
        assert relay.bytes_up == before + 4
        with pytest.raises(OSError):  # connections cut in reset mode stay dead
            old.sendall(b"x")
            old.recv(1)
        old.close()


def test_blackhole_gives_timeouts_not_resets_and_restore_resets_held_connections(echo):
    with Relay(echo.address) as relay:
        held = connect(relay)
        assert roundtrip(held, b"ping") == b"ping"
        relay.cut("blackhole")
        held.sendall(b"lost")
        assert_silent(held, "open connection in a blackhole")
        fresh = connect(relay)  # accepted, but goes nowhere
        fresh.sendall(b"also lost")
        assert_silent(fresh, "new connection in a blackhole")
        assert relay.active_connections == 2
        assert relay.connections_reset == 0 and relay.connections_refused == 0
        assert relay.bytes_up == 4 and relay.bytes_down == 4  # only the ping
        relay.restore()
        # nothing "dropped" is delivered: both held connections are reset
        assert_reset(held, "blackholed connection after restore()")
        assert_reset(fresh, "connection opened in a blackhole, after restore()")
        assert relay.connections_reset == 2
        with connect(relay) as s:
            assert roundtrip(s, b"again") == b"again"
        held.close()
        fresh.close()


def test_delay_adds_latency_both_ways_and_keeps_order(echo):
    delay_ms = 150
    with Relay(echo.address) as relay:
        with connect(relay) as s:
            assert roundtrip(s, b"warm") == b"warm"
            relay.set_delay(delay_ms)
            assert relay.delay_ms == delay_ms
            t0 = time.monotonic()
            assert roundtrip(s, b"x") == b"x"
            rtt = time.monotonic() - t0
            assert rtt >= 2 * delay_ms / 1000, f"round trip {rtt:.3f}s with {delay_ms} ms each way"
            # many small writes while the delay changes under them: order kept
            chunks = [os.urandom(1 + i * 37 % 3000) for i in range(200)]
            expected = b"".join(chunks)
            got = bytearray()
            reader = threading.Thread(target=lambda: got.extend(recv_exactly(s, len(expected))))
            reader.start()
            for i, c in enumerate(chunks):
                s.sendall(c)
                if i == 50:
                    relay.set_delay(300)
                elif i == 100:
                    relay.set_delay(0)
            reader.join(IO_TIMEOUT * 2)
            assert not reader.is_alive(), f"only {len(got)} of {len(expected)} bytes came back"
            assert bytes(got) == expected


def test_backpressure_bounds_buffering(sink):
    limit = 64 * 1024
    with Relay(sink.address, max_buffer=limit) as relay:
        relay.set_delay(20)
        with connect(relay) as s:
            s.setblocking(False)
            sent = bytearray()
            block = os.urandom(64 * 1024)
            # Send until the sender is blocked: the sink reads nothing, so the
            # relay must stop reading once it holds `limit` bytes, and the
            # kernel buffers on both hops fill up.
            deadline = time.monotonic() + 20
            while True:
                assert time.monotonic() < deadline, f"sender never blocked; sent {len(sent)} bytes"
                try:
                    n = s.send(block)
                    sent += block[:n]
                    continue
                except BlockingIOError:
                    pass
                _, w, _ = select.select([], [s], [], 0.2)
                if not w and relay.max_buffered >= limit:
                    break
            assert relay.max_buffered <= limit, relay.stats()
            assert len(sent) < 64 * 1024 * 1024, "an unbounded buffer somewhere"
            # once the sink reads, every byte arrives, in order
            sink.reading.set()
            s.setblocking(True)
            wait_until(
                lambda: len(sink.received) == len(sent), 20, lambda: f"sink has {len(sink.received)} of {len(sent)}"
            )
            assert bytes(sink.received) == bytes(sent)
            assert relay.max_buffered <= limit


def test_dead_upstream_resets_clients():
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    addr = port.getsockname()
    port.close()  # nothing listens there now
    with Relay(addr) as relay:
        assert_new_connection_reset(relay, "client of a relay whose upstream refuses connections")


def test_close_joins_thread_and_frees_port(echo):
    relay = Relay(echo.address).start()
    loop = relay._thread
    assert loop is not None and loop.is_alive()
    port = relay.port
    s = connect(relay)
    assert roundtrip(s, b"hi") == b"hi"
    relay.cut("blackhole")
    relay.set_delay(50)
    relay.close()
    relay.close()  # idempotent
    assert not loop.is_alive()
    left = [t.name for t in threading.enumerate() if t.name.startswith("relay:")]
    assert not left, f"relay threads left after close(): {left}"
    with pytest.raises(RuntimeError):
        relay.restore()
    s.settimeout(IO_TIMEOUT)
    assert s.recv(1) == b""  # close() closes open connections
    s.close()
    # the port is free again: a new relay can take it over
    with Relay(echo.address, listen_port=port) as again:
        with connect(again) as s2:
            assert roundtrip(s2, b"ok") == b"ok"


# --------------------------------------------------------------------------
# Against Tansu with confluent-kafka
# --------------------------------------------------------------------------

FAST_RECONNECT = {
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 250,
    "retry.backoff.ms": 50,
    "retry.backoff.max.ms": 250,
    "socket.connection.setup.timeout.ms": 2000,
}


class Events:
    def __init__(self):
        self.errors: list = []

    def error_cb(self, err) -> None:
        self.errors.append(err)


def make_producer(bootstrap: str, events: Optional[Events] = None, **extra):
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "acks": "all",
        "message.timeout.ms": 2000,
        "request.timeout.ms": 1500,
        **FAST_RECONNECT,
    }
    if events is not None:
        conf["error_cb"] = events.error_cb
    conf.update(extra)
    return Producer(conf)


def produce_one(producer, topic: str, key: bytes, timeout: float = 15.0):
    """Produces one record and waits for its delivery report. Returns
    (error or None, seconds from produce() to the report)."""
    box: list = []
    t0 = time.monotonic()

    def on_delivery(err, msg):
        box.append((err, time.monotonic() - t0))

    producer.produce(topic, key=key, value=b"v-" + key, partition=0, on_delivery=on_delivery)
    deadline = t0 + timeout
    while not box and time.monotonic() < deadline:
        producer.poll(0.05)
    assert box, f"no delivery report for {key!r} within {timeout}s"
    return box[0]


def keys_in(records: dict) -> list[bytes]:
    return [r.key for p in sorted(records) for r in records[p]]


def test_produce_through_relay(tansu_behind_relay):
    site = tansu_behind_relay()
    broker, relay = site
    assert broker.advertised == relay.bootstrap == site.bootstrap == str(site)
    assert broker.bootstrap != relay.bootstrap
    topic = unique_name("relay")
    create_topic(relay.bootstrap, topic, partitions=2)
    assert relay.connections_total >= 1
    up, down = relay.bytes_up, relay.bytes_down
    producer = make_producer(relay.bootstrap)
    for i in range(20):
        err, _ = produce_one(producer, topic, f"k{i}".encode())
        assert err is None, err
    assert relay.bytes_up > up + 20 * 4 and relay.bytes_down > down
    # a client that bootstraps at the broker itself is still sent through the relay
    up = relay.bytes_up
    direct = make_producer(broker.bootstrap)
    err, _ = produce_one(direct, topic, b"via-metadata")
    assert err is None, err
    assert relay.bytes_up > up
    got = read_partitions(relay.bootstrap, topic, timeout=15)
    assert keys_in(got) == [f"k{i}".encode() for i in range(20)] + [b"via-metadata"]
    assert got[1] == []


def test_reset_cut_fails_delivery_and_restore_delivers_again(tansu_behind_relay):
    from confluent_kafka import KafkaError

    broker, relay = tansu_behind_relay()
    topic = unique_name("cut")
    create_topic(relay.bootstrap, topic, partitions=1)
    events = Events()
    producer = make_producer(relay.bootstrap, events)
    assert produce_one(producer, topic, b"before")[0] is None

    relay.cut()
    up = relay.bytes_up
    err, took = produce_one(producer, topic, b"during")
    assert err is not None, "delivered although the link is cut"
    assert err.code() == KafkaError._MSG_TIMED_OUT, err
    assert took < 10
    assert relay.bytes_up == up, "bytes crossed a cut link"
    wait_until(lambda: relay.connections_refused >= 1, 10, lambda: f"client never retried: {relay.stats()}")
    assert relay.connections_reset >= 1
    assert any(e.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN) for e in events.errors), [
        str(e) for e in events.errors
    ]

    relay.restore()
    err, _ = produce_one(producer, topic, b"after", timeout=20)
    assert err is None, f"same producer cannot deliver after restore(): {err}"
    got = read_partitions(relay.bootstrap, topic, timeout=15)
    assert keys_in(got) == [b"before", b"after"]


def test_blackhole_gives_timeouts_not_resets(tansu_behind_relay):
    from confluent_kafka import KafkaError

    broker, relay = tansu_behind_relay()
    topic = unique_name("blackhole")
    create_topic(relay.bootstrap, topic, partitions=1)
    events = Events()
    producer = make_producer(relay.bootstrap, events)
    assert produce_one(producer, topic, b"before")[0] is None
    errors_before = len(events.errors)

    relay.cut("blackhole")
    up = relay.bytes_up
    err, took = produce_one(producer, topic, b"during")
    assert err is not None, "delivered through a blackhole"
    assert err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT), err
    assert took < 10
    assert relay.bytes_up == up, "bytes crossed a blackholed link"
    assert relay.connections_reset == 0 and relay.connections_refused == 0, relay.stats()
    assert relay.active_connections >= 1
    seen = [str(e) for e in events.errors[errors_before:]]
    assert not [m for m in seen if "reset" in m.lower() or "refused" in m.lower()], seen

    relay.restore()
    assert relay.connections_reset >= 1  # held connections are reset on restore
    err, _ = produce_one(producer, topic, b"after", timeout=20)
    assert err is None, f"same producer cannot deliver after restore(): {err}"
    got = read_partitions(relay.bootstrap, topic, timeout=15)
    assert b"after" in keys_in(got) and b"before" in keys_in(got)


def test_delay_shows_in_produce_latency(tansu_behind_relay):
    broker, relay = tansu_behind_relay()
    topic = unique_name("delay")
    create_topic(relay.bootstrap, topic, partitions=1)
    producer = make_producer(relay.bootstrap, **{"message.timeout.ms": 10000, "request.timeout.ms": 8000})
    assert produce_one(producer, topic, b"warm")[0] is None
    delay_ms = 200
    relay.set_delay(delay_ms)
    err, took = produce_one(producer, topic, b"slow")
    assert err is None, err
    # the request and its response each wait `delay_ms` in the relay
    assert took > 2 * delay_ms / 1000, f"produce took {took:.3f}s with {delay_ms} ms each way"
    relay.set_delay(0)
    assert produce_one(producer, topic, b"fast")[0] is None


def test_read_partitions_and_wait_for_count_use_fetch_high_watermarks(tansu_behind_relay):
    """One batch of 1,000 records: Tansu's ListOffsets(latest) says 1, the
    Fetch high watermark says 1000; the helpers must see 1000."""
    from confluent_kafka import TIMESTAMP_CREATE_TIME

    _, relay = tansu_behind_relay()
    topic = unique_name("read")
    create_topic(relay.bootstrap, topic, partitions=3)
    recs = make_records(1000, "batch", max_value_bytes=200)
    producer = make_producer(
        relay.bootstrap, **{"linger.ms": 200, "message.timeout.ms": 15000, "request.timeout.ms": 10000}
    )
    reports: list = []
    for r in recs:
        producer.produce(
            topic,
            key=r.key,
            value=r.value,
            headers=list(r.headers),
            timestamp=r.timestamp,
            partition=0,
            on_delivery=lambda err, msg: reports.append(err),
        )
    producer.produce(topic, key=b"p1", value=b"one", partition=1, on_delivery=lambda err, msg: reports.append(err))
    assert producer.flush(20) == 0 and reports == [None] * 1001
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": relay.bootstrap, "group.id": unique_name("probe")})
    _, listoffsets_latest = probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    probe.close()
    assert listoffsets_latest < 1000, (
        f"precondition: expected Tansu's ListOffsets(latest) quirk (< 1000 for one batch), got {listoffsets_latest}"
    )

    assert wait_for_count(relay.bootstrap, topic, 1001, timeout=15) == 1001
    with pytest.raises(AssertionError, match=r"1001 records \(< 1002\)"):
        wait_for_count(relay.bootstrap, topic, 1002, timeout=1)

    got = read_partitions(relay.bootstrap, topic, timeout=15)
    assert sorted(got) == [0, 1, 2]
    assert [r.offset for r in got[0]] == list(range(1000))
    for r, g in zip(recs, got[0]):
        assert (g.key, g.value) == (r.key, r.value)
        assert g.headers == list(r.headers)  # order and duplicate keys kept
        assert g.timestamp == (TIMESTAMP_CREATE_TIME, r.timestamp)
    assert [(g.offset, g.key, g.value) for g in got[1]] == [(0, b"p1", b"one")]
    assert got[2] == []
    assert compare_copies(got, got).ok

    with pytest.raises(AssertionError, match="not found"):
        read_partitions(relay.bootstrap, unique_name("absent"), timeout=1)
