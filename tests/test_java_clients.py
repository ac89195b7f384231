"""The Java ecosystem through Switchyard, on a 3-broker Apache Kafka (KRaft):
the Java client's producer and consumer groups (classic and KIP-848), its
AdminClient, an exactly-once consume-transform-produce loop, and a stateful
Kafka Streams application.

The Java programs are single source files in tests/java/, compiled by the
JDK as it starts them, with the installed Kafka jars on the class path
(`kafka_cluster.java_program`): nothing to build beforehand.

What a user checks: every record arrives once with its key, value, headers,
timestamp, partition and offset; every AdminClient operation an operator's
tooling uses answers as the broker would; the exactly-once loop and the
Streams application produce exactly what the same programs produce
connected directly, with no duplicate and no gap.
"""

from __future__ import annotations

import collections
import struct
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from helpers import TEARDOWN_GRACE, allocate_ports, start_switchyard, unique_name, wait_until
from kafka_cluster import (
    JAVA_PROGRAMS,
    KafkaCluster,
    KafkaError,
    java_program,
    json_events,
    jvm_argv,
    kafka_tool,
)

pytestmark = pytest.mark.brokers("kafka")


class JavaSite:
    def __init__(self, kafka: KafkaCluster, sy):
        self.kafka, self.sy = kafka, sy

    def create(self, *topics: str, partitions: int = 3) -> None:
        admin = AdminClient({"bootstrap.servers": self.kafka.bootstrap})
        for f in admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=3)
                                      for t in topics]).values():
            f.result(timeout=30)
        # Switchyard learns of them on its next refresh or on demand.


@pytest.fixture(scope="module")
def java_site(tmp_path_factory, switchyard_bin):
    dir = tmp_path_factory.mktemp("java")
    try:
        kafka = KafkaCluster(dir / "kafka", 3, allocate=allocate_ports, name="java",
                             properties={"min.insync.replicas": "2"})
        kafka.start()
    except KafkaError as e:
        pytest.fail(str(e))
    sy = None
    try:
        sy = start_switchyard(switchyard_bin, dir, [kafka], cluster_id="java-test")
        yield JavaSite(kafka, sy)
    finally:
        if sy is not None:
            sy.process.terminate(TEARDOWN_GRACE)
        kafka.kill()


def java_hash(s: str) -> int:
    """Java's String.hashCode, which places a group or transactional id on
    a partition of Kafka's internal topics."""
    h = 0
    for ch in s.encode("utf-16-be").decode("utf-16-be"):
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def coordinator_of(bootstrap: str, internal_topic: str, key: str) -> int:
    """The broker coordinating `key`: the leader of its partition of
    __consumer_offsets (groups) or __transaction_state (transactions)."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(internal_topic, timeout=20)
    parts = md.topics[internal_topic].partitions
    return parts[(java_hash(key) & 0x7FFFFFFF) % len(parts)].leader


def ids_on_two_coordinators(s: JavaSite, how: str) -> tuple[str, str]:
    """A group id and a transactional id coordinated by different brokers:
    where TxnOffsetCommit must go to the group's coordinator, not the
    transaction's (only on a single broker are they always the same)."""
    # The internal topics exist once a group and a transaction have used them.
    p = Producer({"bootstrap.servers": s.kafka.bootstrap, "transactional.id": unique_name("init")})
    p.init_transactions(60)
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap})
    # A consumer in a group makes Kafka create __consumer_offsets.
    c = Consumer({"bootstrap.servers": s.kafka.bootstrap, "group.id": unique_name("init")})
    c.subscribe(["__transaction_state"])

    def both_exist() -> bool:
        c.poll(0.5)
        topics = admin.list_topics(timeout=10).topics
        return "__consumer_offsets" in topics and "__transaction_state" in topics
    wait_until(both_exist, timeout=60, message="Kafka's internal topics were not created")
    c.close()
    for _ in range(200):
        group, txn = unique_name(f"eos-g-{how}"), unique_name(f"eos-tx-{how}")
        if coordinator_of(s.kafka.bootstrap, "__consumer_offsets", group) != \
                coordinator_of(s.kafka.bootstrap, "__transaction_state", txn):
            return group, txn
    raise AssertionError("no group and transactional id on different coordinators")


def read_committed(bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[tuple]:
    """(partition, key, value, headers, timestamp) of every committed record."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("check"),
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    got: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append((m.partition(), m.key(), m.value(), tuple(m.headers() or ()), m.timestamp()[1]))
    # Anything more would be a duplicate.
    end = time.monotonic() + 2
    while time.monotonic() < end:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            got.append((m.partition(), m.key(), m.value(), tuple(m.headers() or ()), m.timestamp()[1]))
    c.close()
    return got


class StreamsApp:
    """tests/java/StreamsRun.java in the background (words counted by word,
    exactly_once_v2), stopped by ending its input."""

    def __init__(self, bootstrap: str, app_id: str, words: str, counts: str, workdir):
        self.app_id, self.counts, self.bootstrap = app_id, counts, bootstrap
        self.log = workdir / f"{app_id}.out"
        argv = [*jvm_argv(), str(JAVA_PROGRAMS / "StreamsRun.java"), bootstrap, app_id, words, counts, str(workdir / app_id)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)

    def counts_now(self, bootstrap: str | None = None) -> dict[str, int]:
        """The latest committed count per word in the output topic."""
        out: dict[str, int] = {}
        for _, k, v, _, _ in read_committed(bootstrap or self.bootstrap, self.counts, 10**9, timeout=3):
            out[k.decode()] = struct.unpack(">q", v)[0]
        return out

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def close(self) -> list[dict]:
        """Stops it; its JSON lines (state changes, thread errors)."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return json_events(self.log.read_text(errors="replace"))


def words_of(lines) -> dict[str, int]:
    return dict(collections.Counter(w for line in lines for w in line.split()))


def sentences(n: int) -> list[str]:
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon"]
    return [" ".join(vocab[(i * 7 + j) % 5] for j in range(1 + i % 4)) for i in range(n)]


@pytest.mark.parametrize("compression,protocol", [("none", "classic"), ("lz4", "consumer"), ("zstd", "consumer")])
def test_producer_defaults_and_consumer_groups_of_both_protocols(java_site, compression, protocol):
    s = java_site
    topic = unique_name(f"java-{compression}")
    s.create(topic)
    n = 600
    events = java_program("RoundTrip.java", s.sy.bootstrap, topic, str(n), compression, protocol,
                          unique_name("java-g"))
    sent = [e["sent"] for e in events if "sent" in e]
    got = [e["got"] for e in events if "got" in e]
    done = next(e for e in events if e.get("done"))
    assert len(sent) == n
    places = [(r["partition"], r["offset"]) for r in sent]
    assert len(set(places)) == n, "two records acked at one offset"
    assert {p for p, _ in places} == {0, 1, 2}, "the default partitioner spreads keys over every partition"
    # Every record back, once, with everything it was sent with.
    key = lambda r: (r["partition"], r["offset"])  # noqa: E731
    assert sorted(got, key=key) == sorted(sent, key=key)
    per_partition = collections.defaultdict(list)
    for r in got:
        per_partition[r["partition"]].append(r["offset"])
    for p, offsets in per_partition.items():
        assert offsets == sorted(offsets), f"partition {p} out of order"
    assert len(done["assigned"]) == 3, done


def test_admin_client_operations(java_site):
    s = java_site
    topic, group = unique_name("java-admin"), unique_name("java-admin-g")
    ops = {e["op"]: e for e in java_program("AdminOps.java", s.sy.bootstrap, topic, group)}
    failed = {k: v["error"] for k, v in ops.items() if not v["ok"]}
    assert not failed, failed
    assert ops["describeCluster"]["cluster_id"] == "java-test" and ops["describeCluster"]["nodes"] == 3
    assert ops["describeTopics"]["partitions"] == 2
    assert ops["createPartitions"]["partitions"] == 3
    lo = ops["listOffsets"]
    # Ten records 1 s apart: timestamp base+4.5 s is first reached by offset 5.
    assert (lo["earliest"], lo["latest"], lo["by_timestamp"], lo["max_timestamp_offset"], lo["max_timestamp"]) == \
        (0, 10, 5, 9, 9000), lo
    assert ops["deleteRecords"]["earliest"] == 3
    assert ops["describeConfigs"]["retention_ms"] == "3600000"
    assert ops["consume"]["records"] == 7 and ops["listGroups"]["found"]
    assert ops["listConsumerGroupOffsets"]["p0"] == 10 and ops["alterConsumerGroupOffsets"]["p0"] == 5
    # Just committed: the markers may still be on their way.
    assert ops["describeTransactions"]["state"] in ("PrepareCommit", "CompleteCommit"), ops

    assert ops["describeProducers"]["producers"] >= 1 and ops["listTransactions"]["found"]
    # Direct, the same describeCluster says the broker's own id: through
    # Switchyard the virtual cluster's.
    assert ops["describeCluster"]["cluster_id"] != s.kafka.cluster_id


@pytest.mark.timeout(400)
def test_exactly_once_loop_gives_what_it_gives_directly(java_site):
    s = java_site
    n = 900
    outputs, said = {}, {}
    for how, bootstrap in (("direct", s.kafka.bootstrap), ("switchyard", s.sy.bootstrap)):
        inp, out = unique_name(f"eos-in-{how}"), unique_name(f"eos-out-{how}")
        s.create(inp, out)
        p = Producer({"bootstrap.servers": s.kafka.bootstrap, "enable.idempotence": True})
        for i in range(n):
            p.produce(inp, f"v{i}".encode(), key=f"k{i % 31}".encode(), headers=[("i", str(i).encode())],
                      timestamp=1_700_000_000_000 + i)
        assert p.flush(30) == 0
        group, txn = ids_on_two_coordinators(s, how)
        result = java_program("Eos.java", bootstrap, inp, out, group, txn, str(n))
        said[how] = result[-1]
        assert said[how]["committed"] == n, (how, result)
        outputs[how] = read_committed(s.kafka.bootstrap, out, n)
    for how, got in outputs.items():
        sources = sorted(int(dict(h)["i"]) for _, _, _, h, _ in got)
        missing = sorted(set(range(n)) - set(sources))
        assert len(got) == n, (f"{how}: {len(got)} committed records, expected {n}; missing i = "
                               f"{missing[:5]}..{missing[-5:]} ({len(missing)}), Eos.java said {said[how]}, "
                               f"partitions read {sorted({r[0] for r in got})}")
        assert sources == list(range(n)), f"{how}: a record lost or written twice"
    # Same records (per partition, in order) through Switchyard as direct.
    order = lambda rs: sorted(rs, key=lambda r: (r[0], int(dict(r[3])["i"])))  # noqa: E731
    assert order(outputs["switchyard"]) == order(outputs["direct"])


def test_streams_application_gives_what_it_gives_directly(java_site, tmp_path):
    s = java_site
    lines = sentences(400)
    expected = words_of(lines)
    results = {}
    for how, bootstrap in (("direct", s.kafka.bootstrap), ("switchyard", s.sy.bootstrap)):
        words, counts = unique_name(f"words-{how}"), unique_name(f"counts-{how}")
        s.create(words, counts)
        p = Producer({"bootstrap.servers": s.kafka.bootstrap})
        for i, line in enumerate(lines):
            p.produce(words, line.encode(), key=f"s{i}".encode())
        assert p.flush(30) == 0
        app = StreamsApp(bootstrap, unique_name(f"app-{how}"), words, counts, tmp_path)
        try:
            wait_until(lambda: sum(app.counts_now(s.kafka.bootstrap).values()) >= sum(expected.values()), 120,
                       lambda: f"{how}: counts {app.counts_now(s.kafka.bootstrap)}\n{app.tail()}")
            results[how] = app.counts_now(s.kafka.bootstrap)
        finally:
            events = app.close()
        assert not [e for e in events if "error" in e], events
    assert results["direct"] == expected, results["direct"]
    assert results["switchyard"] == results["direct"]


def test_a_kip848_group_is_described_under_client_names(java_site, tmp_path):
    s = java_site
    topic, group = unique_name("java-848"), unique_name("java-848-g")
    s.create(topic)
    argv = [*jvm_argv("128m"), "org.apache.kafka.tools.VerifiableConsumer", "--bootstrap-server", s.sy.bootstrap,
            "--topic", topic, "--group-id", group, "--group-protocol", "consumer"]
    log = (tmp_path / "consumer.out").open("wb")
    member = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: any(e.get("name") == "partitions_assigned" and e.get("partitions")
                               for e in json_events((tmp_path / "consumer.out").read_text(errors="replace"))),
                   timeout=60, message="the KIP-848 member was never assigned partitions")
        out = kafka_tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", s.sy.bootstrap, {},
                         ["--describe", "--group", group, "--members", "--verbose"], tmp_path)
        lines = [line.split() for line in out.splitlines() if line.startswith(group)]
        assert len(lines) == 1, out
        # The assignment, by the topic's client name with all 3 partitions.
        assert f"{topic}:0,1,2" in out, out
    finally:
        member.terminate()
        member.wait(30)
        log.close()



def test_kafkas_own_command_line_tools(java_site, tmp_path):
    """kafka-topics, kafka-configs, kafka-consumer-groups and the perf tools
    (their main classes, as the scripts run them) pointed at Switchyard."""
    s = java_site
    bootstrap = s.sy.bootstrap

    def tool(main: str, *args: str) -> str:
        return kafka_tool(f"org.apache.kafka.tools.{main}", bootstrap, {}, list(args), tmp_path)

    topic = unique_name("cli")
    tool("TopicCommand", "--create", "--topic", topic, "--partitions", "3", "--replication-factor", "3")
    assert topic in tool("TopicCommand", "--list").split()
    described = tool("TopicCommand", "--describe", "--topic", topic)
    assert "PartitionCount: 3" in described and "ReplicationFactor: 3" in described, described
    # Leaders and replicas are the virtual brokers' ids (0..2 here).
    leaders = {line.split("Leader:")[1].split()[0] for line in described.splitlines() if "Leader:" in line}
    assert leaders <= {"0", "1", "2"}, described

    tool("ConfigCommand", "--alter", "--entity-type", "topics", "--entity-name", topic,
         "--add-config", "retention.ms=7200000")
    assert "retention.ms=7200000" in tool("ConfigCommand", "--describe", "--entity-type", "topics",
                                          "--entity-name", topic)

    # Records one minute apart; a group reads them all, then is reset to a
    # point in time.
    base = 1_700_000_000_000
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(30):
        p.produce(topic, f"r{i}".encode(), partition=0, timestamp=base + i * 60_000)
    assert p.flush(30) == 0
    group = unique_name("cli-g")
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 60
    while got < 30 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got += 1
    c.commit(asynchronous=False)
    c.close()
    assert got == 30
    described = tool("consumer.group.ConsumerGroupCommand", "--describe", "--group", group)
    row = next(line.split() for line in described.splitlines() if line.startswith(group) and line.split()[2] == "0")
    assert row[3:6] == ["30", "30", "0"], described  # current offset, log end, lag

    # 10 minutes after the first record: offset 10.
    at = time.strftime("%Y-%m-%dT%H:%M:%S.000", time.gmtime((base + 10 * 60_000) / 1000))
    reset = tool("consumer.group.ConsumerGroupCommand", "--reset-offsets", "--group", group, "--topic",
                 f"{topic}:0", "--to-datetime", at, "--execute")
    assert any(line.split()[-1] == "10" for line in reset.splitlines() if line.startswith(group)), reset
    described = tool("consumer.group.ConsumerGroupCommand", "--describe", "--group", group)
    row = next(line.split() for line in described.splitlines() if line.startswith(group) and line.split()[2] == "0")
    assert row[3] == "10", described

    # The perf tools, as in the README's load-testing recipe.
    perf = unique_name("cli-perf")
    s.create(perf)
    out = tool("ProducerPerformance", "--topic", perf, "--num-records", "20000", "--record-size", "100",
               "--throughput", "-1")
    assert "20000 records sent" in out, out
    out = tool("ConsumerPerformance", "--topic", perf, "--num-records", "20000", "--timeout", "30000",
               "--group", unique_name("cli-perf-g"))
    rows = [line.split(",") for line in out.splitlines() if line.count(",") >= 9]
    assert rows and int(rows[-1][4].strip()) == 20000, out  # data.consumed.in.nMsg


def test_a_share_consumer_is_told_share_groups_are_not_served(java_site):
    """KIP-932 share groups are not advertised: the Java share consumer
    must fail at once and say why, not hang (README, "How requests are
    handled"). Directly, the same program reads the records."""
    s = java_site
    topic = unique_name("java-share")
    s.create(topic, partitions=1)
    p = Producer({"bootstrap.servers": s.kafka.bootstrap})
    for i in range(20):
        p.produce(topic, f"s{i}".encode())
    assert p.flush(30) == 0
    direct = java_program("ShareRead.java", s.kafka.bootstrap, topic, unique_name("share-g"), "20")[-1]
    assert direct.get("got") == 20, direct
    through = java_program("ShareRead.java", s.sy.bootstrap, topic, unique_name("share-g"), "20")[-1]
    assert "UnsupportedVersionException" in through.get("error", ""), through
    assert "share group" in through["error"] and through["after_ms"] < 15_000, through


@pytest.mark.timeout(300, method="signal")
def test_streams_application_survives_a_planned_failover(site, switchyard, tmp_path):
    """The Streams application of the test above, running through
    Switchyard on an active-passive route (every topic, its internal ones
    included, teed synchronously to the standby; every group and
    transactional id moving with it), fails over in the middle: the counts
    go on from where they were, none lost, none counted twice.

    Streams commits its offsets only inside transactions, so the switch's
    final commit is the only one the standby ever gets; on a standby whose
    `__consumer_offsets` did not exist yet it used to fail once
    (COORDINATOR_NOT_AVAILABLE) and be dropped, and the application counted
    everything again from the start."""
    from failover import committed_offsets, failover, start_failover_switchyard

    primary, standby = site(), site()
    sy = start_failover_switchyard(switchyard, primary, standby, mode="sync")
    words, counts = unique_name("words-fo"), unique_name("counts-fo")
    admin = AdminClient({"bootstrap.servers": sy.bootstrap})
    for f in admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=-1)
                                  for t in (words, counts)]).values():
        f.result(timeout=30)
    lines = sentences(600)
    first, second = lines[:300], lines[300:]

    def produce(batch, offset):
        p = Producer({"bootstrap.servers": sy.bootstrap, "enable.idempotence": True})
        for i, line in enumerate(batch):
            p.produce(words, line.encode(), key=f"s{offset + i}".encode())
        assert p.flush(30) == 0

    app = StreamsApp(sy.bootstrap, unique_name("app-fo"), words, counts, tmp_path)
    try:
        produce(first, 0)
        want_first = words_of(first)
        wait_until(lambda: app.counts_now() == want_first, 120,
                   lambda: f"counts before the failover: {app.counts_now()} != {want_first}\n{app.tail()}")
        # Its transactions' offsets are shadow-committed on the standby as
        # they commit (what an unplanned failover would resume from).
        wait_until(lambda: all(o >= 0 for o in committed_offsets(standby.bootstrap, app.app_id, words,
                                                                   range(3)).values()), 30,
                   "the application's transactional offsets were not shadow-committed on the standby")
        code, body = failover(sy)
        assert code == 200 and body.get("active") == "standby", (code, body)
        produce(second, len(first))
        want = words_of(lines)
        wait_until(lambda: app.counts_now() == want, 180,
                   lambda: f"counts after the failover: {app.counts_now()} != {want}\n{app.tail()}")
    finally:
        events = app.close()
    states = [e.get("state") for e in events if "state" in e]
    errors = [e for e in events if "error" in e]
    print(f"\nStreams states through the failover: {states}; thread errors: {errors}")
    assert not errors and "ERROR" not in states, (states, errors)
