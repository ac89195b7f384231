"""The broker a benchmark runs on: Tansu (in-memory, one process) or Apache
Kafka (KRaft, 1 or 3 nodes, tests/kafka_cluster.py), plus the three admin
requests the benchmarks send to Kafka themselves (CreateTopics, DeleteTopics,
Metadata), so the scripts stay stdlib-only.

    b = KafkaBroker(tmp, nodes=3).start()    # or TansuBroker(tmp).start()
    b.bootstrap                               # "127.0.0.1:p1,127.0.0.1:p2,..."
    b.create_topic("t", 3)                   # replication factor: the cluster's default
    b.delete_topic("t")
    b.close()                                 # processes stopped, storage deleted

Kafka topics get the broker's default replication factor (3 on 3 nodes, with
min.insync.replicas 2; see tests/kafka_cluster.py). Kafka clusters run with
the full JIT (quick_jit=False) and a 1 GiB heap, Kafka's own default.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TANSU = ROOT / ".tools/bin/tansu"

sys.path.insert(0, str(ROOT / "tests"))  # kafka_cluster.py (stdlib only)
from kafka_cluster import KafkaCluster, java_bin, jvm_tmpdir, kafka_call, kafka_libs, kafka_version  # noqa: E402

KAFKA_HEAP = "1g"
# Deleted topics' files go at once (the default waits a minute), so a cluster
# that serves many runs does not keep every run's log on disk.
KAFKA_PROPERTIES = {"num.partitions": "3", "file.delete.delay.ms": "1000", "log.segment.delete.delay.ms": "1000"}


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------
# Kafka protocol: just enough for topic admin (non-flexible versions)
# --------------------------------------------------------------------------


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _call(bootstrap: str, api_key: int, version: int, body: bytes, timeout: float) -> bytes:
    """One request to the first broker of `bootstrap`; the response body
    (after the correlation id)."""
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    return kafka_call(host, int(port), api_key, version, body, timeout, client_id="switchyard-bench")


class _Reader:
    def __init__(self, data: bytes):
        self.d, self.p = data, 0

    def i8(self) -> int:
        self.p += 1
        return self.d[self.p - 1]

    def i16(self) -> int:
        self.p += 2
        return struct.unpack_from(">h", self.d, self.p - 2)[0]

    def i32(self) -> int:
        self.p += 4
        return struct.unpack_from(">i", self.d, self.p - 4)[0]

    def str(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        self.p += n
        return self.d[self.p - n : self.p].decode()


def topic_leaders(bootstrap: str, topic: str, timeout: float = 5.0) -> list[int] | None:
    """Leader ids of `topic`'s partitions (Metadata v4, no auto-creation), or
    None if the topic is unknown."""
    body = struct.pack(">i", 1) + _str(topic) + b"\x00"
    r = _Reader(_call(bootstrap, 3, 4, body, timeout))
    r.i32()  # throttle
    for _ in range(r.i32()):  # brokers
        r.i32(), r.str(), r.i32(), r.str()
    r.str(), r.i32()  # cluster id, controller
    leaders = None
    for _ in range(r.i32()):
        err, name, _internal = r.i16(), r.str(), r.i8()
        parts = []
        for _ in range(r.i32()):
            perr, _idx, leader = r.i16(), r.i32(), r.i32()
            for _ in range(2):  # replicas, isr
                for _ in range(r.i32()):
                    r.i32()
            parts.append(leader if perr == 0 else -1)
        if name == topic and err == 0:
            leaders = parts
    return leaders


def create_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """CreateTopics v4 with the broker's default replication factor; returns
    once every partition has a leader."""
    body = (struct.pack(">i", 1) + _str(topic) + struct.pack(">ihii", partitions, -1, 0, 0)
            + struct.pack(">i", int(timeout * 1000)) + b"\x00")
    r = _Reader(_call(bootstrap, 19, 4, body, timeout + 5))
    r.i32()
    for _ in range(r.i32()):
        name, err, msg = r.str(), r.i16(), r.str()
        if err not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
            raise RuntimeError(f"creating topic {name}: error {err} {msg or ''}")

    def ready():
        try:
            leaders = topic_leaders(bootstrap, topic)
        except OSError:
            return False
        return leaders is not None and len(leaders) == partitions and all(x >= 0 for x in leaders)

    wait_until(ready, timeout, f"leaders for topic {topic}")


def delete_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> None:
    body = struct.pack(">i", 1) + _str(topic) + struct.pack(">i", int(timeout * 1000))
    r = _Reader(_call(bootstrap, 20, 3, body, timeout + 5))
    r.i32()
    for _ in range(r.i32()):
        name, err = r.str(), r.i16()
        if err not in (0, 3):  # 3: UNKNOWN_TOPIC_OR_PARTITION
            raise RuntimeError(f"deleting topic {name}: error {err}")


# --------------------------------------------------------------------------
# Brokers
# --------------------------------------------------------------------------


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


class TansuBroker:
    """One in-memory Tansu broker."""

    kind = "tansu"
    nodes = 1

    def __init__(self, tmp: Path, port: int | None = None, advertise_port: int | None = None,
                 cluster_id: str = "tansu"):
        self.port = port or free_port_run(1)
        self.advertise_port = advertise_port or self.port
        self.tmp = tmp
        self.cluster_id = cluster_id
        self.proc = None
        self.log = None

    def start(self) -> "TansuBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        adv = f"tcp://127.0.0.1:{self.advertise_port}"
        self.log = open(self.tmp / f"tansu-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [str(TANSU), "broker", "--cluster-id", self.cluster_id, "--listener-url", url,
             "--advertised-listener-url", adv, "--storage-engine", "memory://tansu/"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: accepts(self.port) or self._died(), 30, f"tansu on {self.port}")
        return self

    def _died(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {self.proc.returncode}")
        return False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def create_topic(self, topic: str, partitions: int) -> None:
        pass  # the client creates it (switchyard-perf --partitions)

    def delete_topic(self, topic: str) -> None:
        pass  # a fresh broker per run

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()


class KafkaBroker:
    """An Apache Kafka cluster of `nodes` KRaft nodes, storage under `tmp`
    (deleted by close())."""

    kind = "kafka"

    def __init__(self, tmp: Path, nodes: int = 1, ports=None, advertise_ports=None, allocate=None,
                 name: str = "kafka", properties: dict | None = None):
        self.nodes = nodes
        self.dir = tmp / f"{name}-{time.monotonic_ns()}"
        more = {"allocate": allocate} if allocate else {}
        self.cluster = KafkaCluster(self.dir, nodes, heap=KAFKA_HEAP, ports=ports, advertise_ports=advertise_ports,
                                    properties={**KAFKA_PROPERTIES, **(properties or {})}, quick_jit=False,
                                    name=name, **more)

    def start(self) -> "KafkaBroker":
        try:
            self.cluster.start()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    @property
    def port(self) -> int:
        return self.cluster.port

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.cluster.nodes if n.running()]

    def running(self) -> bool:
        return all(n.running() for n in self.cluster.nodes)

    def tail(self) -> str:
        return self.cluster.tail()

    @property
    def admin_bootstrap(self) -> str:
        """The plaintext broker-to-broker listeners: topic admin and filling
        topics work the same whatever the client listener speaks (TLS)."""
        return ",".join(f"127.0.0.1:{n.internal_port}" for n in self.cluster.nodes)

    def create_topic(self, topic: str, partitions: int) -> None:
        create_topic(self.admin_bootstrap, topic, partitions)

    def delete_topic(self, topic: str) -> None:
        delete_topic(self.admin_bootstrap, topic)

    def close(self) -> None:
        try:
            self.cluster.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def java_tool(main_class: str, *args: str, timeout: float) -> str:
    """Runs one of Kafka's command-line tools (full JIT, 512 MiB heap);
    returns its stdout, raises on a non-zero exit or after `timeout` s (the
    JVM is killed)."""
    argv = [java_bin(), "-Xmx512m", "-Djava.awt.headless=true", "-XX:-UsePerfData",
            # Native libraries (lz4, zstd) extracted at each start land in
            # the run's temporary directory, not in /tmp for good.
            f"-Djava.io.tmpdir={jvm_tmpdir()}",
            f"-Dlog4j2.configurationFile={ROOT / 'tests/kafka/log4j2.properties'}",
            "-cp", f"{kafka_libs()}/*", main_class, *args]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        last = out.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{main_class.rsplit('.', 1)[1]} timed out after {timeout:.0f}s (killed); its last "
                           f"line: {last[0]}") from None
    if out.returncode != 0:
        raise RuntimeError(f"{main_class} {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n"
                           f"{out.stderr[-3000:]}")
    return out.stdout


__all__ = ["KafkaBroker", "TansuBroker", "java_tool", "kafka_version", "create_topic", "delete_topic",
           "topic_leaders", "free_port_run", "accepts", "wait_until"]
