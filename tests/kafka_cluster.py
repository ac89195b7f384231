"""Apache Kafka (KRaft) clusters on this machine, for tests, benchmarks and the demo.

Stdlib only, so the pytest fixtures (conftest.py), the benchmarks (benches/)
and scripts/demo.sh share it. Kafka itself comes from Maven Central:
scripts/setup.sh copies the jars of tests/kafka/pom.xml into
.tools/kafka/libs; nothing here downloads anything.

    cluster = KafkaCluster(workdir, nodes=3).start()
    cluster.bootstrap              # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
    cluster.kill_node(1)           # SIGKILL one node (a crash)
    cluster.start_node(1)          # the same node again, same storage and ports
    cluster.add_broker()           # node 4, broker only, on the running cluster
    cluster.close()                # SIGKILL everything

Every node is a combined broker+controller (`process.roles=broker,controller`)
with a static quorum (`controller.quorum.voters`), so a 3-node cluster keeps
its quorum with one node down. Each node has three listeners:

* CLIENT     what clients (Switchyard) use; advertised at `advertise_ports[i]`
             when given (a fault relay's port), else at its own port
* INTERNAL   replication between brokers; never advertised to clients, so a
             relay that cuts the clients' link does not cut replication
* CONTROLLER the KRaft quorum

Defaults sized for tests on 2 cores: a 512 MiB heap, the serial collector,
`group.initial.rebalance.delay.ms=0`; with 3 nodes replication factor 3 and
`min.insync.replicas=2` for every topic, including the internal ones.

As a command (used by scripts/demo.sh and the benchmarks):

    python3 tests/kafka_cluster.py --nodes 1 --dir /tmp/k --port 19092
    # prints "ready <bootstrap>" once up; runs until SIGTERM/SIGINT
"""

from __future__ import annotations

import atexit
import base64
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LIBS = ROOT / ".tools" / "kafka" / "libs"
LOG4J_CONFIG = ROOT / "tests" / "kafka" / "log4j2.properties"
START_TIMEOUT = 90.0
FORMAT_TIMEOUT = 60.0


class KafkaError(RuntimeError):
    """A Kafka node could not be set up or started; the message says which and why."""


# --------------------------------------------------------------------------
# Finding Java and the jars
# --------------------------------------------------------------------------


def kafka_libs() -> Path:
    libs = Path(os.environ.get("KAFKA_LIBS") or DEFAULT_LIBS)
    jars = list(libs.glob("kafka_2.13-*.jar")) if libs.is_dir() else []
    if not jars:
        raise KafkaError(
            f"Apache Kafka is not installed: no kafka_2.13-*.jar in {libs}; run scripts/setup.sh "
            "(it copies the jars pinned in tests/kafka/pom.xml from Maven Central)"
        )
    return libs


def mm2_libs() -> Path:
    """MirrorMaker 2's own class path (tests/kafka/mm2/pom.xml; connect-mirror
    is not published at every Kafka version)."""
    libs = ROOT / ".tools" / "kafka" / "mm2-libs"
    if not list(libs.glob("connect-mirror-[0-9]*.jar")):
        raise KafkaError(f"MirrorMaker 2 is not installed in {libs}; run scripts/setup.sh")
    return libs


def mm2_single_node_properties() -> list[str]:
    """MirrorMaker 2 settings for one-node clusters: a replication factor of
    1 for the copied topics and every topic MM2 keeps for itself (its
    defaults are 3 and would fail on one node)."""
    return [f"{k} = 1" for k in (
        "replication.factor", "checkpoints.topic.replication.factor", "offset-syncs.topic.replication.factor",
        "heartbeats.topic.replication.factor", "config.storage.replication.factor",
        "offset.storage.replication.factor", "status.storage.replication.factor")]


def kafka_version(libs: Optional[Path] = None) -> str:
    jars = sorted((libs or kafka_libs()).glob("kafka_2.13-*.jar"))
    return jars[0].name[len("kafka_2.13-") : -len(".jar")] if jars else "unknown"


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(home) / "bin" / "java")] if home else []
    found = shutil.which("java")
    if found:
        candidates.append(found)
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    raise KafkaError(
        "java not found (looked at $JAVA_HOME/bin/java and PATH); Apache Kafka 4 needs Java 17 or newer "
        "(Debian: apt-get install openjdk-17-jre-headless)"
    )


def jvm_tmpdir() -> str:
    """Where the JVMs the tests start put their temporary files: the Java
    client's lz4 and zstd, and Kafka Streams' RocksDB, extract native
    libraries there at every start and leave them behind. The suite points it
    into its own temporary tree (SWITCHYARD_JVM_TMPDIR, set by conftest.py),
    so a run leaves nothing in the machine's /tmp."""
    return os.environ.get("SWITCHYARD_JVM_TMPDIR") or tempfile.gettempdir()


def jvm_argv(heap: str = "256m", *, libs: Optional[Path] = None, java: Optional[str] = None,
             flags: Sequence[str] = ("-XX:TieredStopAtLevel=1",)) -> list[str]:
    """The start of every java command line the tests run: a small serial-GC
    heap, our log4j config, the temporary directory above, no perf-data file
    in /tmp/hsperfdata_*, and the installed jars (or `libs`) on the class
    path. The caller appends the main class or source file and its args.
    Short-lived tools keep the default `flags` (client compiler only: they
    start faster)."""
    return [java or java_bin(), f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:-UsePerfData", *flags,
            "-Djava.awt.headless=true", f"-Djava.io.tmpdir={jvm_tmpdir()}",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", f"{libs or kafka_libs()}/*"]


def kafka_tool(main: str, bootstrap: str, client_props: dict, args: Sequence[str], workdir: Path,
               timeout: float = 120) -> str:
    """Runs one of Kafka's own command-line tools (a main class of the
    installed jars: VerifiableProducer, TopicCommand, ...) against
    `bootstrap` with `client_props` as its --command-config; returns its
    stdout, asserting it exited 0."""
    props = Path(workdir) / f"{main.rsplit('.', 1)[-1]}-{time.monotonic_ns()}.properties"
    props.write_text("".join(f"{k}={v}\n" for k, v in client_props.items()))
    argv = [*jvm_argv("128m"), main, "--bootstrap-server", bootstrap, "--command-config", str(props), *args]
    r = subprocess.run(argv, capture_output=True, timeout=timeout)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, f"{main} exited {r.returncode}:\n{out[-3000:]}\n{r.stderr.decode()[-2000:]}"
    return out


JAVA_PROGRAMS = ROOT / "tests" / "java"


def java_program(source: str, *args: str, timeout: float = 240, libs: Optional[Path] = None) -> list[dict]:
    """Runs one of the suite's Java programs (tests/java/<source>, a single
    source file the JDK compiles as it starts; Kafka's jars, or `libs`, on
    the class path) and returns the JSON lines it printed; asserts it
    exited 0."""
    argv = [*jvm_argv(libs=libs), str(JAVA_PROGRAMS / source), *args]
    r = subprocess.run(argv, capture_output=True, timeout=timeout)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, f"{source} exited {r.returncode}:\n{out[-3000:]}\n{r.stderr.decode()[-3000:]}"
    return json_events(out)


def json_events(out: str) -> list[dict]:
    """The JSON lines a tool printed (Kafka's own log lines are not JSON)."""
    import json
    events = []
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------


def _free(port: int, reuse: bool = False) -> bool:
    """True if nothing listens on `port`. With `reuse`, connections of a
    killed process still in TIME_WAIT do not count (Kafka binds with
    SO_REUSEADDR, so a restarted node gets its port back at once)."""
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def default_allocate(count: int) -> int:
    """A base port p with p..p+count-1 free, below the kernel's ephemeral range."""
    rng = random.Random()
    for _ in range(2000):
        base = rng.randrange(15000, 32000 - count)
        if all(_free(p) for p in range(base, base + count)):
            return base
    raise KafkaError(f"no {count} consecutive free ports in 15000..32000")


def tcp_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# Raw requests: a Metadata request to know when brokers serve clients, and
# the framing the benchmarks' and tests' own few requests share
# --------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def kafka_call(host: str, port: int, api_key: int, version: int, body: bytes, timeout: float = 2.0,
               client_id: str = "switchyard-tests") -> bytes:
    """Sends one request (request header v1: not for flexible versions) and
    returns its response after the correlation id."""
    cid = client_id.encode()
    frame = struct.pack(">hhih", api_key, version, 1, len(cid)) + cid + body
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(frame)) + frame)
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        return _recv_exact(s, size)[4:]


def metadata_brokers(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """The (node id, host, port) list of a Metadata v1 answer from host:port.
    Kafka lists only brokers that are registered and unfenced, so this is
    what a client would be sent to."""
    # topics: an empty array (no topic metadata)
    data = kafka_call(host, port, 3, 1, struct.pack(">i", 0), timeout)
    pos = 0
    (count,) = struct.unpack_from(">i", data, pos)
    pos += 4
    out = []
    for _ in range(count):
        node_id, hlen = struct.unpack_from(">ih", data, pos)
        pos += 6
        bhost = data[pos : pos + hlen].decode()
        pos += hlen
        (bport, rlen) = struct.unpack_from(">ih", data, pos)
        pos += 6 + max(rlen, 0)
        out.append((node_id, bhost, bport))
    return out


# --------------------------------------------------------------------------
# Nodes and clusters
# --------------------------------------------------------------------------


class KafkaNode:
    """One combined broker+controller process of a KafkaCluster."""

    def __init__(self, cluster: "KafkaCluster", node_id: int, port: int, internal_port: int,
                 controller_port: int, advertise_port: int, controller: bool = True):
        self.cluster = cluster
        self.node_id = node_id
        # False: a broker-only node (KafkaCluster.add_broker), not a voter.
        self.controller = controller
        self.host = "127.0.0.1"
        self.port = port
        self.internal_port = internal_port
        self.controller_port = controller_port
        self.advertise_port = advertise_port
        self.bootstrap = f"{self.host}:{port}"
        self.advertised = f"{self.host}:{advertise_port}"
        self.dir = cluster.workdir / f"node-{node_id}"
        self.data_dir = self.dir / "data"
        self.meta_dir = self.dir / "meta"
        self.config_path = self.dir / "server.properties"
        self.log_path = self.dir / "kafka.log"
        self.proc: Optional[subprocess.Popen] = None
        self._log = None
        self.starts = 0

    # configuration

    def properties(self) -> dict[str, str]:
        c = self.cluster
        # The quorum is the nodes the cluster started with (combined
        # broker+controller); brokers added later only join as brokers.
        quorum = [x for x in c.nodes if x.controller]
        n = len(quorum)
        voters = ",".join(f"{x.node_id}@127.0.0.1:{x.controller_port}" for x in quorum)
        rf = str(min(3, n))
        isr = "2" if n >= 3 else "1"
        listeners = f"CLIENT://127.0.0.1:{self.port},INTERNAL://127.0.0.1:{self.internal_port}"
        if self.controller:
            listeners += f",CONTROLLER://127.0.0.1:{self.controller_port}"
        props = {
            "process.roles": "broker,controller" if self.controller else "broker",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": listeners,
            "advertised.listeners": f"CLIENT://127.0.0.1:{self.advertise_port},"
            f"INTERNAL://127.0.0.1:{self.internal_port}",
            "listener.security.protocol.map": "CLIENT:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data_dir),
            "metadata.log.dir": str(self.meta_dir),
            "num.partitions": "1",
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 << 20),
            # A crashed node's replicas are taken out of the ISR after this
            # long; Kafka's default (30 s) would make every broker-kill test
            # wait that long for acks=all.
            "replica.lag.time.max.ms": "10000",
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "6000",
            "controlled.shutdown.enable": "true",
        }
        props.update(c.extra_properties)
        return props

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{k}={v}\n" for k, v in self.properties().items())
        self.config_path.write_text(text)

    def format(self) -> subprocess.Popen:
        """Starts `StorageTool format` for this node (the caller waits)."""
        c = self.cluster
        argv = [*jvm_argv(java=c.java, libs=c.libs), "kafka.tools.StorageTool", "format",
                f"--cluster-id={c.cluster_id}", f"--config={self.config_path}",
                "--ignore-formatted", *c.format_args]
        log = open(self.dir / "format.log", "wb")
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    # process control

    def argv(self) -> list[str]:
        c = self.cluster
        return [*jvm_argv(c.heap, java=c.java, libs=c.libs, flags=(f"-Xms{c.heap}", *c.jvm_flags)),
                "kafka.Kafka", str(self.config_path)]

    def launch(self) -> None:
        if self.running():
            raise KafkaError(f"kafka node {self.node_id} is already running (pid {self.proc.pid})")
        for p in (self.port, self.internal_port, self.controller_port):
            if p == self.controller_port and not self.controller:
                continue
            if not _free(p, reuse=True):
                raise KafkaError(f"kafka node {self.node_id}: port {p} is taken by another process")
        self._log = open(self.log_path, "ab")
        self._log.write(f"$ {' '.join(self.argv())}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        _live.add(self)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def serves(self) -> bool:
        """True once this node answers Metadata as a registered broker."""
        try:
            return any(b[0] == self.node_id for b in metadata_brokers(self.port))
        except (OSError, ValueError, struct.error):
            return False

    def wait_serving(self, timeout: float, want_brokers: Optional[int] = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                code = self.proc.returncode if self.proc else None
                raise KafkaError(f"kafka node {self.node_id} exited with {code} during startup "
                                 f"(log {self.log_path}):\n{self.tail()}")
            try:
                # INTERNAL is plaintext whatever CLIENT speaks (TLS tests).
                brokers = metadata_brokers(self.internal_port)
                ids = {b[0] for b in brokers}
                if self.node_id in ids and (want_brokers is None or len(ids) >= want_brokers):
                    return
            except (OSError, ValueError, struct.error):
                pass
            if time.monotonic() > deadline:
                raise KafkaError(f"kafka node {self.node_id} did not serve Metadata on {self.bootstrap} "
                                 f"within {timeout:.0f}s (log {self.log_path}):\n{self.tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, as in a crash; returns once the process is gone."""
        self.signal(signal.SIGKILL)
        self._reap(10)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM (controlled shutdown: leadership moves first), SIGKILL after `timeout`."""
        if self.running():
            self.signal(signal.SIGTERM)
            if not self._reap(timeout):
                self.kill()
        return self.proc.returncode if self.proc else None

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing (a frozen node)."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def signal(self, sig: int) -> None:
        if self.running():
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _reap(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        if self._log and not self._log.closed:
            self._log.close()
        _live.discard(self)
        return True

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        return "\n".join(text[-lines:])

    def __repr__(self) -> str:
        return f"<KafkaNode {self.node_id} {self.bootstrap} pid={self.pid}>"


class KafkaCluster:
    """An Apache Kafka cluster of `nodes` combined KRaft nodes on 127.0.0.1.

    `advertise_ports`: per node, the port put in the CLIENT advertised
    listener (e.g. a fault relay's), default the node's own port.
    `internal_ports`: per node p, INTERNAL on p and CONTROLLER on p+1
    (default: allocated), for callers that must know every port in advance.
    `allocate(count) -> base`: where ports come from (the test suite passes
    its own allocator so ports are never reused within a session).
    `properties`: extra server.properties entries for every node."""

    kind = "kafka"  # as the tests' sites say which broker they are

    def __init__(
        self,
        workdir: Path,
        nodes: int = 1,
        *,
        cluster_id: Optional[str] = None,
        heap: str = "512m",
        ports: Optional[Sequence[int]] = None,
        internal_ports: Optional[Sequence[int]] = None,
        advertise_ports: Optional[Sequence[Optional[int]]] = None,
        allocate: Callable[[int], int] = default_allocate,
        properties: Optional[dict[str, str]] = None,
        quick_jit: bool = True,
        name: str = "kafka",
        format_args: Sequence[str] = (),
    ):
        if nodes < 1:
            raise KafkaError(f"nodes must be >= 1, got {nodes}")
        self.libs = kafka_libs()
        self.java = java_bin()
        self.version = kafka_version(self.libs)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster_id = cluster_id or new_cluster_id()
        self.heap = heap
        self.name = name
        self.extra_properties = dict(properties or {})
        # Extra `StorageTool format` arguments, e.g. `--add-scram` users
        # (KRaft keeps SCRAM credentials in its metadata from the start).
        self.format_args = list(format_args)
        # C1 only: roughly halves a node's start-up CPU on 2 cores, which is
        # what the test suite waits for; benchmarks pass quick_jit=False to
        # measure a fully compiled broker.
        self.jvm_flags = ["-XX:TieredStopAtLevel=1"] if quick_jit else []
        self.allocate = allocate
        self.nodes: list[KafkaNode] = []
        for i in range(nodes):
            port = ports[i] if ports else allocate(1)
            internal = internal_ports[i] if internal_ports else allocate(2)
            adv = advertise_ports[i] if advertise_ports and advertise_ports[i] else port
            self.nodes.append(KafkaNode(self, i + 1, port, internal, internal + 1, adv))

    @property
    def bootstrap(self) -> str:
        """The CLIENT listeners of every node (what clients bootstrap from)."""
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def advertised_bootstrap(self) -> str:
        return ",".join(n.advertised for n in self.nodes)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.nodes[0].port

    def node(self, node_id: int) -> KafkaNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id} in {self.name}")

    def start(self, timeout: float = START_TIMEOUT) -> "KafkaCluster":
        """Formats storage (first start only), starts every node and returns
        once each serves Metadata listing all nodes."""
        fresh = [n for n in self.nodes if not (n.meta_dir / "meta.properties").exists()]
        for n in self.nodes:
            n.write_config()
        formatting = [(n, n.format()) for n in fresh]
        for n, p in formatting:
            try:
                code = p.wait(timeout=FORMAT_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                raise KafkaError(f"formatting storage of kafka node {n.node_id} took over {FORMAT_TIMEOUT:.0f}s")
            if code != 0:
                out = (n.dir / "format.log").read_text(errors="replace")[-3000:]
                raise KafkaError(f"formatting storage of kafka node {n.node_id} failed (exit {code}):\n{out}")
        try:
            for n in self.nodes:
                if not n.running():
                    n.launch()
            deadline = time.monotonic() + timeout
            for n in self.nodes:
                n.wait_serving(max(1.0, deadline - time.monotonic()), want_brokers=len(self.nodes))
        except BaseException:
            self.kill()
            raise
        return self

    def start_node(self, node_id: int, timeout: float = START_TIMEOUT) -> KafkaNode:
        """(Re)starts one node with its storage and ports; returns once it serves."""
        n = self.node(node_id)
        n.write_config()
        n.launch()
        n.wait_serving(timeout)
        return n

    def add_broker(self, timeout: float = START_TIMEOUT) -> KafkaNode:
        """Starts one more node, broker only (the quorum stays the nodes the
        cluster started with), with the next node id and free ports, on a
        running cluster: formats its storage with the cluster's id and
        returns once every running node lists it. Partitions move onto it
        only by a reassignment, as in a real cluster. The node is in
        `nodes` from here on (restart(), kill() and tail() include it)."""
        node_id = max(n.node_id for n in self.nodes) + 1
        port, internal = self.allocate(1), self.allocate(2)
        n = KafkaNode(self, node_id, port, internal, internal + 1, port, controller=False)
        self.nodes.append(n)
        n.write_config()
        p = n.format()
        try:
            code = p.wait(timeout=FORMAT_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            raise KafkaError(f"formatting storage of kafka node {node_id} took over {FORMAT_TIMEOUT:.0f}s")
        if code != 0:
            out = (n.dir / "format.log").read_text(errors="replace")[-3000:]
            raise KafkaError(f"formatting storage of kafka node {node_id} failed (exit {code}):\n{out}")
        n.launch()
        brokers = sum(1 for x in self.nodes if x.running())
        n.wait_serving(timeout, want_brokers=brokers)
        return n

    def kill_node(self, node_id: int) -> KafkaNode:
        n = self.node(node_id)
        n.kill()
        return n

    def kill(self) -> None:
        """SIGKILL every node (the whole site dies at once)."""
        for n in self.nodes:
            n.signal(signal.SIGCONT)  # a paused process must not survive its kill
            n.signal(signal.SIGKILL)
        for n in self.nodes:
            n._reap(10)

    def restart(self, timeout: float = START_TIMEOUT) -> "KafkaCluster":
        """Starts every node that is not running (after kill()), same storage."""
        for n in self.nodes:
            n.write_config()
            if not n.running():
                n.launch()
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            n.wait_serving(max(1.0, deadline - time.monotonic()), want_brokers=len(self.nodes))
        return self

    def running(self) -> bool:
        return any(n.running() for n in self.nodes)

    def close(self) -> None:
        self.kill()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(f"--- node {n.node_id} ({n.log_path})\n{n.tail(lines)}" for n in self.nodes)

    def __enter__(self) -> "KafkaCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<KafkaCluster {self.name} {self.bootstrap} nodes={len(self.nodes)} id={self.cluster_id}>"


def run_tool(main_class: str, *args: str, timeout: float = 60.0, heap: str = "256m") -> str:
    """Runs one of Kafka's command-line tools (e.g.
    ``org.apache.kafka.tools.LeaderElectionCommand``) on the installed
    classpath and returns its output; a non-zero exit raises KafkaError with
    that output."""
    argv = [*jvm_argv(heap), main_class, *args]
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise KafkaError(f"{main_class} {' '.join(args)} did not finish within {timeout:.0f}s") from e
    out = res.stdout.decode("utf-8", "replace") + res.stderr.decode("utf-8", "replace")
    if res.returncode != 0:
        raise KafkaError(f"{main_class} {' '.join(args)} exited {res.returncode}:\n{out[-3000:]}")
    return out


# Last resort: nodes of a test run that died without its finalizers.
_live: set[KafkaNode] = set()


@atexit.register
def _kill_live() -> None:
    for n in list(_live):
        n.signal(signal.SIGCONT)
        n.signal(signal.SIGKILL)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Runs an Apache Kafka (KRaft) cluster on 127.0.0.1 until SIGTERM.")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--dir", required=True, help="storage and logs (created; reused if formatted)")
    ap.add_argument("--port", type=int, action="append", help="CLIENT port of node i (repeat per node)")
    ap.add_argument("--internal-port", type=int, action="append",
                    help="INTERNAL port of node i, CONTROLLER on the next one (repeat per node; default: free ports)")
    ap.add_argument("--heap", default="512m")
    ap.add_argument("--full-jit", action="store_true", help="C2 compiler too (for benchmarks)")
    ap.add_argument("--property", action="append", default=[], help="extra server property key=value")
    ap.add_argument("--kill-on-exit", action="store_true",
                    help="SIGKILL the nodes on SIGTERM/SIGINT instead of a controlled shutdown (tests)")
    a = ap.parse_args(argv)
    props = dict(p.split("=", 1) for p in a.property)
    try:
        cluster = KafkaCluster(Path(a.dir), a.nodes, heap=a.heap, ports=a.port, internal_ports=a.internal_port,
                               properties=props, quick_jit=not a.full_jit)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        cluster.start()
    except KafkaError as e:
        print(f"kafka_cluster: error: {e}", file=sys.stderr)
        return 1
    print(f"ready {cluster.bootstrap}", flush=True)
    try:
        while not stop.is_set():
            if not all(n.running() for n in cluster.nodes):
                dead = [n.node_id for n in cluster.nodes if not n.running()]
                print(f"kafka_cluster: node(s) {dead} exited:\n{cluster.tail()}", file=sys.stderr)
                return 1
            stop.wait(0.5)
    finally:
        if a.kill_on_exit:
            cluster.kill()
        else:
            for n in cluster.nodes:
                n.stop(timeout=15)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
