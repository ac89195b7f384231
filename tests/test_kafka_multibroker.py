"""Switchyard in front of a 3-broker Apache Kafka cluster (KRaft, replication
factor 3, min.insync.replicas=2), with leaders moving under running clients.

What a Kafka operator does to a cluster, done directly on the cluster (never
through Switchyard) while producers and consumer groups run through it:

1. partitions led by different brokers: Produce, Fetch and ListOffsets are
   split per leader and merged; every record arrives once, at its offset;
2. a broker SIGKILLed under load (acks=all): leaders move, Switchyard
   refreshes its view on NOT_LEADER_OR_FOLLOWER, clients continue, no acked
   record is lost;
3. a partition reassignment (`kafka-reassign-partitions`) that takes the
   leader out of a partition's replicas, then a preferred-leader election
   (`kafka-leader-election`) that moves leaders again;
4. the group coordinator's broker and the transaction coordinator's broker
   killed: groups rejoin and commit, transactions go on, read_committed
   sees every committed record once;
5. OffsetForLeaderEpoch: Switchyard does not advertise it (leader epochs are
   -1 for clients, see README "What clients see"); a consumer keeps its
   position across a leader change without an offset reset.

Each scenario prints a line ``MULTIBROKER <scenario> [kafka]: ...`` with what
was measured (the longest gap between acks is reported, not asserted).
"""

from __future__ import annotations

import json
import struct
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import NewTopic, OffsetSpec

from failover import (
    acked_times,
    classify_duplicates,
    committed_ids,
    consumed,
    consumed_ids,
    in_flight_at,
    sent_times,
    summarize,
    worker_problems,
)
from helpers import (
    admin_client,
    confluent_consume,
    confluent_consumer_conf,
    confluent_produce,
    make_records,
    unique_name,
    verify_exactly_once,
    wait_led_through,
    wait_until,
)
from kafka_cluster import kafka_call, run_tool

pytestmark = pytest.mark.brokers("kafka")

RATE = 100
SETTLE = 90.0
SANITY = 60.0  # s: "clients recovered at all"; timings are printed, not asserted
LIBS = ("confluent", "kafka-python")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


_admins: dict[str, object] = {}


def direct_admin(cluster):
    """One AdminClient per cluster, kept: a future of a client that was
    garbage-collected never completes."""
    if cluster.bootstrap not in _admins:
        _admins[cluster.bootstrap] = admin_client(cluster.bootstrap)
    return _admins[cluster.bootstrap]


def leaders(cluster, topic: str) -> dict[int, int]:
    """Partition -> real leader node id, asked of the cluster directly."""
    md = direct_admin(cluster).list_topics(topic=topic, timeout=10)
    t = md.topics[topic]
    return {p.id: p.leader for p in t.partitions.values()}


def replicas(cluster, topic: str) -> dict[int, list[int]]:
    md = direct_admin(cluster).list_topics(topic=topic, timeout=10)
    return {p.id: list(p.replicas) for p in md.topics[topic].partitions.values()}


def create_direct(cluster, topic: str, partitions: int, assignment=None) -> None:
    """Creates `topic` on the cluster directly (replication factor 3, or the
    explicit replica `assignment`) and waits until every partition is led."""
    admin = direct_admin(cluster)
    nt = (NewTopic(topic, num_partitions=len(assignment), replica_assignment=assignment) if assignment
          else NewTopic(topic, num_partitions=partitions, replication_factor=3))
    admin.create_topics([nt], operation_timeout=30)[topic].result(timeout=30)
    wait_until(lambda: len(leaders(cluster, topic)) == partitions and min(leaders(cluster, topic).values()) >= 0,
               30, f"{topic}: not every partition led")


def start_groups(workers, bootstrap: str, topic: str):
    return {lib: workers("consume", f"consumer-{lib}", lib=lib, bootstrap=bootstrap, topic=topic,
                         group=unique_name(f"g-{lib}")) for lib in LIBS}


def steady(workers, sy, topic: str, tag: str, transactional: bool = False):
    groups = start_groups(workers, sy.bootstrap, topic)
    prod = workers("produce", "producer", bootstrap=sy.bootstrap, topic=topic, tag=tag, rate=RATE)
    wait_until(lambda: all(len(committed_ids(w)) >= 2 * RATE for w in groups.values()), 60,
               lambda: "groups not consuming:\n" + "\n".join(worker_problems(w) for w in [prod, *groups.values()]))
    return prod, groups


def run_for(seconds: float) -> None:
    """Lets the steady workload run (not synchronisation)."""
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 >= seconds, seconds + 5, "time passes")


def wait_acks_after(prod, t: float, n: int = 1) -> float:
    def got():
        sent = sent_times(prod)
        acks = sorted(ts for rid, ts in acked_times(prod).items() if sent.get(rid, 0) >= t)
        return acks[n - 1] if len(acks) >= n else None

    return wait_until(got, SANITY, lambda: f"fewer than {n} acks of records sent after the event; "
                      f"{worker_problems(prod)}")


def longest_ack_gap(prod, t0: float, t1: float) -> float:
    acks = sorted(ts for ts in acked_times(prod).values() if t0 <= ts <= t1)
    if len(acks) < 2:
        return t1 - t0
    return max(b - a for a, b in zip(acks, acks[1:]))


def finish(prod, groups, fault_t: float, scenario: str) -> None:
    """Stops the producer, waits for every acked record in every group and
    checks: nothing acked lost, duplicates only of records in flight."""
    code = prod.stop(grace=90)
    done = prod.events("done")
    assert done and done[-1]["undelivered"] == 0 and not done[-1]["fatal"], (
        f"producer (exit {code}): {done[-1] if done else None}; {worker_problems(prod)}")
    sent, acked = sent_times(prod), acked_times(prod)
    want = set(acked)
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline and not all(want <= consumed_ids(w) for w in groups.values()):
        time.sleep(0.2)
    rep = summarize("kafka", scenario, fault_t, acked, sent, {lib: consumed(w) for lib, w in groups.items()},
                    {lib: 0 for lib in groups}, in_flight_at(sent, acked, fault_t))
    gap = longest_ack_gap(prod, fault_t - 5, max(acked.values(), default=fault_t))
    print("\n" + rep.line().replace("FAILOVER", "MULTIBROKER", 1) + f"\n  longest gap between acks: {gap:.1f}s")
    assert rep.lost == 0, f"acked records lost: {rep.line()}\n" + "\n".join(map(worker_problems, groups.values()))
    for lib, w in groups.items():
        kinds = classify_duplicates(w, acked, fault_t)
        print(f"  duplicates {lib}: {kinds}")
        assert kinds["translation"] == 0, f"{lib}: committed records delivered again: {kinds}"


# --------------------------------------------------------------------------
# 1. split and merge over three leaders
# --------------------------------------------------------------------------


@pytest.mark.timeout(240, method="signal")
def test_requests_split_per_leader_and_merged(kafka, switchyard):
    cluster = kafka(3)
    sy = switchyard([cluster])
    st = sy.status()["sites"][0]
    assert sorted(b["node_id"] for b in st["brokers"]) == [1, 2, 3], st

    topic = unique_name("mb-split")
    partitions = 6
    create_direct(cluster, topic, partitions)
    led = leaders(cluster, topic)
    assert len(set(led.values())) == 3, f"leaders not spread over the 3 brokers: {led}"
    wait_led_through(sy, topic, partitions)

    records = make_records(3000, tag=topic)
    producer = Producer({"bootstrap.servers": sy.bootstrap, "linger.ms": 20, "acks": "all",
                         "enable.idempotence": True})
    reports = confluent_produce(producer, topic, records)
    per_partition: dict[int, int] = {}
    for _, p, _ in reports.values():
        per_partition[p] = per_partition.get(p, 0) + 1
    assert len(per_partition) == partitions, per_partition

    # ListOffsets for all partitions in one request: split over 3 brokers, merged.
    admin = admin_client(sy.bootstrap)
    futs = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                              request_timeout=15)
    latest = {tp.partition: f.result(timeout=20).offset for tp, f in futs.items()}
    assert latest == per_partition, f"latest offsets {latest} != records per partition {per_partition}"

    c = Consumer(confluent_consumer_conf(sy.bootstrap, unique_name("mb-split"), **{"fetch.min.bytes": 1}))
    try:
        c.subscribe([topic])
        got = confluent_consume(c, len(records), timeout=90, context="through Switchyard")
    finally:
        c.close()
    verify_exactly_once(records, got, num_partitions=partitions,
                        expected_partition={k: p for k, (_, p, _) in reports.items()},
                        expected_offset={k: o for k, (_, _, o) in reports.items()}, context="3 brokers")
    # Each virtual node the clients talk to leads partitions whose real
    # leaders are on all three brokers, so none of these answers is right
    # unless Switchyard split the request per real leader and merged.
    print(f"\nMULTIBROKER split [kafka]: 6 partitions on real leaders {led}; 3000 records exactly once at "
          "their offsets; ListOffsets of all partitions in one request exact")


# --------------------------------------------------------------------------
# 2. a broker SIGKILLed under load
# --------------------------------------------------------------------------


@pytest.mark.timeout(300, method="signal")
def test_broker_sigkill_under_load_loses_nothing(kafka, switchyard, workers):
    cluster = kafka(3)
    sy = switchyard([cluster], overrides={"metadata": {"refresh_interval_ms": 5000}})
    topic = unique_name("mb-kill")
    create_direct(cluster, topic, 6)
    wait_led_through(sy, topic, 6)
    prod, groups = steady(workers, sy, topic, "kill")

    before = leaders(cluster, topic)
    victim = max({1, 2, 3}, key=lambda n: sum(1 for v in before.values() if v == n))
    fault_t = time.time()
    cluster.kill_node(victim)
    wait_until(lambda: victim not in leaders(cluster, topic).values(), 30,
               f"leaders still on killed broker {victim}")
    after = leaders(cluster, topic)
    first = wait_acks_after(prod, fault_t, n=RATE)  # a second's worth of records acked after the kill
    run_for(10)
    print(f"\nbroker {victim} killed; leaders {before} -> {after}; "
          f"{RATE} acks of post-kill records after {first - fault_t:.1f}s")
    finish(prod, groups, fault_t, "broker-sigkill")
    # Consumers (committing through the group coordinator) kept committing.
    for lib, w in groups.items():
        late = [e for e in w.events("commit") if e["t"] > fault_t + 1]
        assert late, f"{lib} committed nothing after the kill: {worker_problems(w)}"


# --------------------------------------------------------------------------
# 3. reassignment and preferred-leader election while clients run
# --------------------------------------------------------------------------


@pytest.mark.timeout(300, method="signal")
def test_reassignment_and_preferred_leader_election_under_load(kafka, switchyard, workers, tmp_path):
    cluster = kafka(3)
    sy = switchyard([cluster])
    topic = unique_name("mb-move")
    # Replication factor 2, so a reassignment can take a partition's leader
    # out of its replicas altogether.
    create_direct(cluster, topic, 3, assignment=[[1, 2], [2, 3], [3, 1]])
    wait_led_through(sy, topic, 3)
    prod, groups = steady(workers, sy, topic, "move")

    before = leaders(cluster, topic)
    fault_t = time.time()
    # Move every partition off its current leader, onto the remaining broker + the follower.
    plan = {"version": 1, "partitions": []}
    for p, reps in replicas(cluster, topic).items():
        spare = ({1, 2, 3} - set(reps)).pop()
        follower = [r for r in reps if r != before[p]][0]
        plan["partitions"].append({"topic": topic, "partition": p, "replicas": [spare, follower]})
    plan_file = tmp_path / "reassign.json"
    plan_file.write_text(json.dumps(plan))
    tool = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"

    def reassign(action: str) -> str:
        return run_tool(tool, "--bootstrap-server", cluster.bootstrap, "--reassignment-json-file", str(plan_file),
                        action)

    def completed() -> bool:
        out = reassign("--verify")
        return "is completed" in out and "still in progress" not in out

    reassign("--execute")
    wait_until(completed, 90, "reassignment did not complete", interval=1.0)
    moved = leaders(cluster, topic)
    assert all(moved[p] != before[p] for p in before), f"leaders did not move: {before} -> {moved}"
    wait_acks_after(prod, time.time(), n=RATE)

    # The new first replica (`spare`) is preferred; make the follower lead
    # first so the election has something to move.
    t_elect = time.time()
    plan2 = {"version": 1, "partitions": [
        {"topic": topic, "partition": x["partition"], "replicas": list(reversed(x["replicas"]))}
        for x in plan["partitions"]]}
    plan_file.write_text(json.dumps(plan2))
    reassign("--execute")
    wait_until(completed, 90, "reorder did not complete", interval=1.0)
    elect_file = tmp_path / "elect.json"
    elect_file.write_text(json.dumps({"partitions": [{"topic": topic, "partition": x["partition"]}
                                                     for x in plan2["partitions"]]}))
    run_tool("org.apache.kafka.tools.LeaderElectionCommand", "--bootstrap-server", cluster.bootstrap,
             "--election-type", "PREFERRED", "--path-to-json-file", str(elect_file))
    want = {x["partition"]: x["replicas"][0] for x in plan2["partitions"]}
    wait_until(lambda: leaders(cluster, topic) == want, 30,
               lambda: f"preferred leaders {want} not elected: {leaders(cluster, topic)}")
    wait_acks_after(prod, time.time(), n=RATE)
    run_for(5)
    print(f"\nleaders {before} -> reassigned {moved} -> preferred election {want} "
          f"(election at +{t_elect - fault_t:.1f}s)")
    finish(prod, groups, fault_t, "reassign+elect")


# --------------------------------------------------------------------------
# 4. coordinators move: group and transaction coordinators killed
# --------------------------------------------------------------------------


def api_versions(bootstrap: str) -> set[int]:
    """The API keys of an ApiVersions v0 answer from `bootstrap`."""
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    data = kafka_call(host, int(port), 18, 0, b"", timeout=10)
    error, n = struct.unpack_from(">hi", data, 0)
    assert error == 0, f"ApiVersions error {error}"
    return {struct.unpack_from(">h", data, 6 + 6 * i)[0] for i in range(n)}


def group_coordinator(cluster, group: str) -> int:
    d = direct_admin(cluster).describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
    return d.coordinator.id


@pytest.mark.timeout(300, method="signal")
def test_group_coordinator_broker_killed(kafka, switchyard, workers):
    cluster = kafka(3)
    sy = switchyard([cluster])
    topic = unique_name("mb-coord")
    create_direct(cluster, topic, 3)
    wait_led_through(sy, topic, 3)
    prod, groups = steady(workers, sy, topic, "coord")

    group = groups["confluent"].args["group"]
    victim = group_coordinator(cluster, group)
    fault_t = time.time()
    cluster.kill_node(victim)
    moved_to = wait_until(lambda: (c := group_coordinator(cluster, group)) != victim and c, 60,
                          f"coordinator of {group} still {victim}")
    # The group commits again after the coordinator moved.
    wait_until(lambda: any(e["t"] > fault_t + 1 for e in groups["confluent"].events("commit")), SANITY,
               lambda: f"no commit after the coordinator died: {worker_problems(groups['confluent'])}")
    run_for(5)
    print(f"\ngroup coordinator {victim} killed; moved to {moved_to}")
    finish(prod, groups, fault_t, "group-coordinator-killed")


@pytest.mark.timeout(300, method="signal")
def test_transaction_coordinator_broker_killed(kafka, switchyard):
    cluster = kafka(3)
    sy = switchyard([cluster])
    topic = unique_name("mb-txn")
    create_direct(cluster, topic, 3)
    wait_led_through(sy, topic, 3)
    txn_id = unique_name("txn")
    p = Producer({"bootstrap.servers": sy.bootstrap, "transactional.id": txn_id, "transaction.timeout.ms": 30000,
                  "linger.ms": 5})
    p.init_transactions(30)

    committed: list[str] = []

    errors: list[str] = []

    def one_txn(n: int, tag: str) -> None:
        """Commits one transaction of 10 records, retrying what librdkafka
        says is retriable or abortable, for at most SANITY seconds."""
        ids = [f"{tag}-{n}-{i}" for i in range(10)]
        deadline = time.monotonic() + SANITY
        while time.monotonic() < deadline:
            try:
                p.begin_transaction()
                for rid in ids:
                    p.produce(topic, key=rid.encode(), value=rid.encode())
                p.commit_transaction(30)
                committed.extend(ids)
                return
            except Exception as e:  # noqa: BLE001 - classified below, per librdkafka
                err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
                errors.append(str(e))
                if err is not None and err.txn_requires_abort():
                    p.abort_transaction(30)
                    continue
                if err is not None and err.retriable():
                    continue
                raise
        raise AssertionError(f"transaction {tag}-{n} not committed within {SANITY}s; errors {errors[-5:]}")

    for n in range(20):
        one_txn(n, "before")
    out = run_tool("org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server", cluster.bootstrap,
                   "describe", "--transactional-id", txn_id)
    # CoordinatorId is the first column of the describe table.
    row = [line for line in out.splitlines() if line.strip() and not line.startswith("CoordinatorId")][-1]
    victim = int(row.split()[0])
    fault_t = time.time()
    cluster.kill_node(victim)
    for n in range(20):
        one_txn(n, "after")
    took = time.time() - fault_t

    c = Consumer(confluent_consumer_conf(sy.bootstrap, None, **{"isolation.level": "read_committed",
                                                                   "enable.auto.commit": False}))
    try:
        c.assign([TopicPartition(topic, i, 0) for i in range(3)])
        got: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(got) < len(committed):
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got[m.value().decode()] = got.get(m.value().decode(), 0) + 1
    finally:
        c.close()
    missing = set(committed) - set(got)
    dups = {k: v for k, v in got.items() if v > 1}
    print(f"\nMULTIBROKER txn-coordinator-killed [kafka]: coordinator {victim} killed; 20 transactions after it in "
          f"{took:.1f}s; committed={len(committed)} read_committed={len(got)} missing={len(missing)} "
          f"duplicates={len(dups)}; {len(errors)} retried errors, e.g. {errors[:2]}")
    assert not missing, f"{len(missing)} committed records not read: {sorted(missing)[:5]}"
    assert not dups, f"records read twice: {list(dups.items())[:5]}"


# --------------------------------------------------------------------------
# 5. OffsetForLeaderEpoch: hidden, and positions survive a leader change
# --------------------------------------------------------------------------


@pytest.mark.timeout(240, method="signal")
def test_offset_for_leader_epoch_hidden_and_consumers_keep_position(kafka, switchyard):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition

    cluster = kafka(3)
    sy = switchyard([cluster])
    # Not advertised: clients never validate positions against leader epochs
    # (epochs are -1 to clients, and would not survive a failover anyway).
    api_keys = api_versions(sy.bootstrap)
    assert 1 in api_keys and 3 in api_keys, f"ApiVersions answer looks wrong: {sorted(api_keys)}"
    assert 23 not in api_keys, "OffsetForLeaderEpoch (23) is advertised"

    topic = unique_name("mb-epoch")
    create_direct(cluster, topic, 1)
    wait_led_through(sy, topic, 1)
    records = make_records(400, tag=topic)
    producer = Producer({"bootstrap.servers": sy.bootstrap, "acks": "all", "enable.idempotence": True})
    confluent_produce(producer, topic, records[:200])

    # Both libraries read half, then the leader changes, then they read on.
    cf = Consumer(confluent_consumer_conf(sy.bootstrap, None, **{"auto.offset.reset": "error",
                                                                   "enable.auto.commit": False}))
    cf.assign([TopicPartition(topic, 0, 0)])
    kp = KafkaConsumer(bootstrap_servers=sy.bootstrap, auto_offset_reset="none", enable_auto_commit=False,
                       consumer_timeout_ms=1000)
    kp.assign([KpTopicPartition(topic, 0)])
    kp.seek(KpTopicPartition(topic, 0), 0)
    try:
        first_cf = confluent_consume(cf, 200, timeout=60, settle=0.5, context="before the leader change")
        first_kp = []
        deadline = time.monotonic() + 60
        while len(first_kp) < 200 and time.monotonic() < deadline:
            first_kp += [m.offset for m in kp]
        old = leaders(cluster, topic)[0]
        cluster.kill_node(old)
        wait_until(lambda: leaders(cluster, topic)[0] not in (old, -1), 30, "no new leader")
        confluent_produce(producer, topic, records[200:], timeout=90)
        rest_cf = confluent_consume(cf, 200, timeout=90, settle=1.0, context="after the leader change")
        rest_kp = []
        deadline = time.monotonic() + 90
        while len(first_kp) + len(rest_kp) < 400 and time.monotonic() < deadline:
            rest_kp += [m.offset for m in kp]
    finally:
        cf.close()
        kp.close()
    offsets_cf = [g.offset for g in first_cf + rest_cf]
    assert offsets_cf == list(range(400)), f"confluent offsets not 0..399 across the leader change: {offsets_cf[195:210]}"
    offsets_kp = first_kp + rest_kp
    assert offsets_kp == list(range(400)), f"kafka-python offsets not 0..399: {offsets_kp[195:210]}"
    print(f"\nMULTIBROKER epoch [kafka]: leader {old} killed mid-read; both consumers continued 0..399 "
          "with no offset reset (OffsetForLeaderEpoch not advertised)")
