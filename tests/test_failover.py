"""Failover of an active-passive route (primary -> standby) and back.

Every scenario runs one confluent-kafka and one kafka-python consumer, each
in its own group and its own process (tests/failover.py workers; they commit
after every record), and checks that both resume by themselves: clients only
ever use Switchyard's bootstrap address. Each prints one line

    FAILOVER <scenario>: rto_produce=.. rto_consume=.. lost=.. duplicates=.. in_flight_at_fault=..

RTO = time from the fault (or the failover call) to the first ack of a record
handed to the producer after it, and to the first delivery of such a record
(per group; the line shows the slower group). Timing targets are reported,
not asserted: RTO_SANITY is only a bound for "it recovered at all".

Scenarios:
1. planned failover (sync tee, producers stopped): exactly once;
2. unplanned: SIGKILL of the primary mid-stream (sync tee): nothing acked is
   lost, duplicates bounded by what was in flight;
3. network partition (relay blackhole), primary alive: automatic failover,
   writes on the standby only, no automatic failback once the link is back;
4. manual failback once the primary is healthy again: nothing lost, no
   duplicates at the (planned) failback, the primary holds what was written
   during the failover; a long poll waiting on the old site across a switch
   gets none of the records written there after it;
5. offset translation without tee runs: MM2 checkpoints, then timestamps.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from failover import (
    classify_duplicates,
    FAILOVER_SETTINGS,
    ROUTE,
    Worker,
    acked_times,
    checkpoint_key,
    checkpoint_value,
    commit_offsets,
    committed_ids,
    committed_offsets,
    consumed,
    consumed_ids,
    decode_checkpoint,
    failback,
    failover,
    in_flight_at,
    local_ids,
    make_ids,
    metric,
    produce_ids,
    read_ids,
    route_status,
    sent_times,
    site_health,
    start_failover_switchyard,
    summarize,
    worker_problems,
    write_checkpoints,
)
from helpers import admin_client, create_topic, read_partitions, unique_name, wait_until

PARTITIONS = 3
RATE = 100  # records/s of the steady producer
RTO_SANITY = 30.0  # s; a bound for "recovered at all", not a target
SETTLE = 90.0  # s for both groups to get every acked record after a fault
LIBS = ("confluent", "kafka-python")


# --------------------------------------------------------------------------
# fixtures and small helpers
# --------------------------------------------------------------------------


def start_groups(workers, bootstrap: str, topic: str) -> dict[str, Worker]:
    """One consumer process per library, each in its own group."""
    return {
        lib: workers("consume", f"consumer-{lib}", lib=lib, bootstrap=bootstrap, topic=topic,
                     group=unique_name(f"g-{lib}"))
        for lib in LIBS
    }


def wait_consumed(groups: dict[str, Worker], ids, timeout: float, what: str, commit: bool = False) -> None:
    """Waits until every group delivered (and with `commit`, committed) every
    id in `ids`."""
    want = set(ids)

    def missing():
        return {lib: len(want - (committed_ids(w) if commit else consumed_ids(w))) for lib, w in groups.items()}

    wait_until(lambda: not any(missing().values()), timeout,
               lambda: f"{what}: records missing per group {missing()}\n"
               + "\n".join(worker_problems(w) for w in groups.values()))


def settle(groups: dict[str, Worker], ids, timeout: float = SETTLE) -> bool:
    """Like wait_consumed, but returns False at the deadline (the report
    then says what is missing)."""
    want = set(ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(want <= consumed_ids(w) for w in groups.values()):
            return True
        time.sleep(0.2)
    return False


def wait_state(sy, state: str, timeout: float) -> dict:
    return wait_until(lambda: (s := route_status(sy))["state"] == state and s, timeout,
                      lambda: f"route {ROUTE} never reached state {state!r}: {sy.status().get('failover')}")


def wait_post_fault_ack(prod: Worker, fault_t: float, timeout: float) -> float:
    """Time of the first ack of a record handed over after `fault_t`."""
    def first():
        sent = sent_times(prod)
        acks = [t for rid, t in acked_times(prod).items() if sent.get(rid, 0) >= fault_t]
        return min(acks) if acks else None

    return wait_until(first, timeout, lambda: f"no produce acked after the fault; {worker_problems(prod)}")


def wait_for(seconds: float) -> None:
    """Lets a steady workload run for `seconds` (not synchronisation)."""
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 >= seconds, seconds + 5, "time passes")


def stop_producer(prod: Worker) -> None:
    code = prod.stop(grace=90)
    done = prod.events("done")
    assert done, f"producer did not finish cleanly (exit {code}): {worker_problems(prod)}"
    assert done[-1]["undelivered"] == 0 and not done[-1]["fatal"], f"producer: {done[-1]}; {worker_problems(prod)}"


def errors_of(groups: dict[str, Worker]) -> dict[str, int]:
    return {lib: len([e for e in w.events() if e["ev"] in ("err", "commit_err")]) for lib, w in groups.items()}


def assert_transition(sy, frm: str, to: str) -> None:
    n = metric(sy, "switchyard_failover_transitions_total", route=ROUTE, **{"from": frm, "to": to})
    assert n >= 1, f"switchyard_failover_transitions_total{{route={ROUTE},from={frm},to={to}}} = {n}"


def assert_switch_answer(code, body, state: str) -> None:
    assert code == 200, f"expected 200, got {code}: {body}"
    assert isinstance(body, dict), body
    assert body.get("route") == ROUTE and body.get("state") == state and body.get("active") == state, body
    assert isinstance(body.get("epoch"), int) and isinstance(body.get("took_ms"), (int, float)), body


FAILOVER_METRICS = (
    "switchyard_failover_transitions_total",
    "switchyard_offset_translations_total",
    "switchyard_offset_translation_redelivered_total",
    "switchyard_shadow_commits_total",
    "switchyard_failover_fenced_total",
    "switchyard_site_healthy",
)


def print_metrics(sy) -> None:
    samples, _ = sy.metrics()
    for s in samples:
        if s.name in FAILOVER_METRICS:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            print(f"  {s.name}{{{labels}}} {s.value:g}")


def check_duplicates(groups: dict[str, Worker], acked: dict[str, float], fault_t: float) -> None:
    """Every duplicate must be a record in flight at the fault: not yet
    acked to the producer, or not yet committed by the group. None may come
    from offset translation (records the group had committed)."""
    for lib, w in groups.items():
        kinds = classify_duplicates(w, acked, fault_t)
        print(f"  duplicates {lib}: {kinds}")
        assert kinds["translation"] == 0, (
            f"{lib}: {kinds['translation']} records committed before the fault were delivered again: {kinds}")


def steady_start(workers, sy, topic: str, tag: str) -> tuple[Worker, dict[str, Worker]]:
    """Consumers of both libraries plus a steady producer; returns once both
    groups are consuming the stream."""
    groups = start_groups(workers, sy.bootstrap, topic)
    prod = workers("produce", "producer", bootstrap=sy.bootstrap, topic=topic, tag=tag, rate=RATE)
    wait_until(lambda: all(len(committed_ids(w)) >= 2 * RATE for w in groups.values()), 60,
               lambda: "groups not consuming before the fault:\n"
               + "\n".join(worker_problems(w) for w in [prod, *groups.values()]))
    return prod, groups


# --------------------------------------------------------------------------
# 1. planned failover
# --------------------------------------------------------------------------


@pytest.mark.timeout(180, method="signal")
def test_planned_failover_exactly_once(broker_kind, site, switchyard, workers):
    primary, standby = site(), site()
    sy = start_failover_switchyard(switchyard, primary, standby, mode="sync")
    st = route_status(sy)
    assert (st["state"], st["active"], st["primary"], st["standby"]) == ("primary", "primary", "primary", "standby"), st
    topic = unique_name("fo-planned")
    create_topic(sy.bootstrap, topic, partitions=PARTITIONS)
    groups = start_groups(workers, sy.bootstrap, topic)
    if broker_kind == "kafka":
        # A KIP-848 member (the Java consumer, group.protocol=consumer): fenced
        # at the switch like a classic one, it rejoins on the standby and
        # resumes from the translated offsets.
        groups["java-kip848"] = workers("consume", "consumer-java-kip848", lib="java", group_protocol="consumer",
                                        bootstrap=sy.bootstrap, topic=topic, group=unique_name("g-kip848"))

    before = make_ids("before", 300)
    acks_before = produce_ids(sy.bootstrap, topic, before)
    wait_consumed(groups, before, 60, "before the failover", commit=True)

    fault_t = time.time()
    code, body = failover(sy)
    assert_switch_answer(code, body, "standby")
    after = make_ids("after", 200)
    acks_after = produce_ids(sy.bootstrap, topic, after)
    ok = settle(groups, after)

    acked = {rid: a["t"] for rid, a in {**acks_before, **acks_after}.items()}
    sent = {rid: 0.0 for rid in before} | {rid: fault_t for rid in after}
    rep = summarize(broker_kind, "planned", fault_t, acked, sent, {lib: consumed(w) for lib, w in groups.items()},
                    errors_of(groups), in_flight=0)
    print("\n" + rep.line())
    assert ok and rep.lost == 0, f"records lost: {rep.line()}\n" + "\n".join(map(worker_problems, groups.values()))
    assert rep.duplicates == 0, rep.line()
    assert all(g.unexpected == 0 for g in rep.groups.values()), rep.line()
    assert rep.rto_produce < RTO_SANITY and rep.rto_consume < RTO_SANITY, rep.line()

    st = route_status(sy)
    assert st["state"] == "standby" and st["active"] == "standby", st
    assert st["epoch"] == body["epoch"] and st["epoch"] >= 1, st
    lt = st["last_transition"]
    assert lt and lt["from"] == "primary" and lt["to"] == "standby", st
    print(f"planned transition: reason={lt.get('reason')!r} took_ms={lt.get('took_ms')}")
    assert_transition(sy, "primary", "standby")
    print_metrics(sy)
    # The new records were written to the standby by the clients.
    on_standby = read_ids(standby.bootstrap, topic)
    assert set(after) <= local_ids(on_standby), "records produced after the failover are not on the standby"
    # A second failover is refused.
    code, body2 = failover(sy)
    assert code == 409 and "error" in body2, (code, body2)


# --------------------------------------------------------------------------
# 2. unplanned failover: SIGKILL of the primary
# --------------------------------------------------------------------------


@pytest.mark.timeout(300, method="signal")
def test_unplanned_failover_sigkill(broker_kind, site, switchyard, workers):
    unplanned_sigkill(broker_kind, site, switchyard, workers, nodes=1)


@pytest.mark.brokers("kafka")
@pytest.mark.timeout(300, method="signal")
def test_unplanned_failover_sigkill_of_a_three_broker_site(broker_kind, site, switchyard, workers):
    """Both sites 3-broker Kafka clusters (replication factor 3,
    min.insync.replicas=2); every process of the primary is SIGKILLed."""
    unplanned_sigkill(broker_kind, site, switchyard, workers, nodes=3)


def unplanned_sigkill(broker_kind, site, switchyard, workers, nodes: int) -> None:
    primary, standby = site(nodes=nodes), site(nodes=nodes)
    sy = start_failover_switchyard(switchyard, primary, standby, mode="sync")
    topic = unique_name("fo-kill")
    create_topic(sy.bootstrap, topic, partitions=PARTITIONS)
    prod, groups = steady_start(workers, sy, topic, "kill")

    fault_t = time.time()
    primary.kill()
    wait_post_fault_ack(prod, fault_t, 60)
    wait_for(10)
    stop_producer(prod)
    sent, acked = sent_times(prod), acked_times(prod)
    ok = settle(groups, acked)

    in_flight = in_flight_at(sent, acked, fault_t)
    scenario = "unplanned-sigkill" if nodes == 1 else f"unplanned-sigkill-{nodes}-brokers"
    rep = summarize(broker_kind, scenario, fault_t, acked, sent,
                    {lib: consumed(w) for lib, w in groups.items()}, errors_of(groups), in_flight)
    print("\n" + rep.line())
    assert ok and rep.lost == 0, f"acked records lost: {rep.line()}\n" + "\n".join(map(worker_problems, groups.values()))
    check_duplicates(groups, acked, fault_t)
    assert rep.rto_produce is not None and rep.rto_produce < RTO_SANITY, rep.line()
    assert rep.rto_consume is not None and rep.rto_consume < RTO_SANITY, rep.line()

    st = route_status(sy)
    assert st["state"] == "standby" and st["active"] == "standby", st
    lt = st["last_transition"]
    assert lt and (lt["from"], lt["to"]) == ("primary", "standby"), st
    print(f"automatic transition: reason={lt.get('reason')!r} took_ms={lt.get('took_ms')}")
    h = site_health(sy, "primary")
    assert h["healthy"] is False and h["consecutive_failures"] >= 3 and h["last_error"], h
    # A listing of all topics comes from the standby now (it used to go to
    # the dead primary and have the client's connection closed).
    listed = admin_client(sy.bootstrap).list_topics(timeout=15)
    assert topic in listed.topics and len(listed.topics[topic].partitions) == PARTITIONS, (
        f"{topic} not listed through Switchyard after the failover: {sorted(listed.topics)}")
    print_metrics(sy)
    assert metric(sy, "switchyard_shadow_commits_total", route=ROUTE) >= 1
    assert_transition(sy, "primary", "standby")
    assert metric(sy, "switchyard_site_healthy", site="primary") == 0
    assert metric(sy, "switchyard_failover_fenced_total", route=ROUTE) >= 1


# --------------------------------------------------------------------------
# 3. network partition, primary alive
# --------------------------------------------------------------------------


def partition_and_fail_over(sy, link, prod: Worker) -> float:
    """Blackholes the primary's link, waits for the automatic failover and
    for writes to go on; returns the fault time."""
    fault_t = time.time()
    link.cut("blackhole")
    wait_state(sy, "standby", 45)
    wait_post_fault_ack(prod, fault_t, 60)
    wait_for(5)
    return fault_t


def restore_and_wait_healthy(sy, link) -> None:
    link.restore()
    wait_until(lambda: site_health(sy, "primary")["healthy"] is True, 45,
               lambda: f"primary not healthy again: {sy.status().get('health')}")


@pytest.mark.timeout(300, method="signal")
def test_partition_fails_over_and_writes_stay_on_one_site(broker_kind, site, site_behind_relay, switchyard, workers):
    primary, link = site_behind_relay()
    standby = site()
    sy = start_failover_switchyard(switchyard, link, standby, mode="sync")
    topic = unique_name("fo-part")
    create_topic(sy.bootstrap, topic, partitions=PARTITIONS)
    prod, groups = steady_start(workers, sy, topic, "part")

    fault_t = partition_and_fail_over(sy, link, prod)
    restore_and_wait_healthy(sy, link)
    # No automatic failback: still on the standby several health checks later.
    healthy_at = site_health(sy, "primary")["last_check_unix_ms"]
    interval = FAILOVER_SETTINGS["health"]["interval_ms"]
    wait_until(lambda: site_health(sy, "primary")["last_check_unix_ms"] >= healthy_at + 3 * interval, 30,
               "three more health checks of the primary")
    st = route_status(sy)
    assert st["state"] == "standby" and st["active"] == "standby", f"failed back by itself: {st}"
    stop_producer(prod)
    # More writes after the link is back: still the standby only.
    late_t = time.time()
    late = make_ids("late", 100)
    acks_late = produce_ids(sy.bootstrap, topic, late)
    sent = sent_times(prod) | {rid: late_t for rid in late}
    acked = acked_times(prod) | {rid: a["t"] for rid, a in acks_late.items()}
    ok = settle(groups, acked)

    in_flight = in_flight_at(sent, acked, fault_t)
    rep = summarize(broker_kind, "partition", fault_t, acked, sent, {lib: consumed(w) for lib, w in groups.items()},
                    errors_of(groups), in_flight)
    print("\n" + rep.line())

    # Writes on exactly one site: records handed to the producer after the
    # cut were written (by a client, no origin header) on the standby and
    # never on the primary. Copies teed back to the primary carry the
    # standby's origin header and are no writes.
    written_after = {rid for rid, t in sent.items() if t >= fault_t and rid in acked}
    on_primary = read_ids(primary.bootstrap, topic)  # its own port; the link is back
    on_standby = read_ids(standby.bootstrap, topic)
    both = written_after & local_ids(on_primary)
    assert not both, f"{len(both)} records written after the partition are local on the primary, e.g. {sorted(both)[:5]}"
    missing = written_after - local_ids(on_standby)
    assert not missing, f"{len(missing)} records written after the partition not on the standby: {sorted(missing)[:5]}"
    teed_back = {s.id for s in on_primary if s.origin == b"standby"} & written_after
    print(f"written after the cut: {len(written_after)}; teed back to the primary so far: {len(teed_back)}")

    assert ok and rep.lost == 0, f"acked records lost: {rep.line()}\n" + "\n".join(map(worker_problems, groups.values()))
    check_duplicates(groups, acked, fault_t)
    assert rep.rto_produce < RTO_SANITY and rep.rto_consume is not None and rep.rto_consume < RTO_SANITY, rep.line()
    assert route_status(sy)["state"] == "standby"
    assert_transition(sy, "primary", "standby")
    assert metric(sy, "switchyard_failover_transitions_total", route=ROUTE, to="primary") == 0
    print_metrics(sy)


# --------------------------------------------------------------------------
# 4. failback
# --------------------------------------------------------------------------


@pytest.mark.timeout(360, method="signal")
def test_failback_after_primary_returns(broker_kind, site, site_behind_relay, switchyard, workers):
    primary, link = site_behind_relay()
    standby = site()
    sy = start_failover_switchyard(switchyard, link, standby, mode="sync")
    topic = unique_name("fo-back")
    create_topic(sy.bootstrap, topic, partitions=PARTITIONS)
    prod, groups = steady_start(workers, sy, topic, "fo")

    fault_t = partition_and_fail_over(sy, link, prod)
    restore_and_wait_healthy(sy, link)
    stop_producer(prod)
    sent, acked = sent_times(prod), acked_times(prod)
    ok1 = settle(groups, acked)
    in_flight = in_flight_at(sent, acked, fault_t)
    rep1 = summarize(broker_kind, "failback-setup-partition", fault_t, acked, sent,
                     {lib: consumed(w) for lib, w in groups.items()}, errors_of(groups), in_flight)
    print("\n" + rep1.line())
    assert ok1 and rep1.lost == 0, f"lost during the failover: {rep1.line()}\n" + "\n".join(
        map(worker_problems, groups.values()))

    print(f"before the failback: {route_status(sy)}")
    back_t = time.time()
    code, body = failback(sy)
    assert_switch_answer(code, body, "primary")
    after = make_ids("back", 200)
    acks_after = produce_ids(sy.bootstrap, topic, after)
    ok2 = settle(groups, after)

    all_acked = dict(acked) | {rid: a["t"] for rid, a in acks_after.items()}
    all_sent = dict(sent) | {rid: back_t for rid in after}
    rep2 = summarize(broker_kind, "failback-planned", back_t, all_acked, all_sent,
                     {lib: consumed(w) for lib, w in groups.items()}, errors_of(groups), in_flight=0,
                     after=back_t)
    print(rep2.line())
    assert ok2 and rep2.lost == 0, f"lost over failover and failback: {rep2.line()}\n" + "\n".join(
        map(worker_problems, groups.values()))
    assert rep2.duplicates == 0, f"duplicates at the planned failback: {rep2.line()}"
    assert rep2.rto_produce < RTO_SANITY and rep2.rto_consume < RTO_SANITY, rep2.line()

    st = route_status(sy)
    assert st["state"] == "primary" and st["active"] == "primary", st
    assert st["last_transition"]["from"] == "standby" and st["last_transition"]["to"] == "primary", st
    assert_transition(sy, "standby", "primary")
    print_metrics(sy)
    # The primary holds what was written during the failover (teed back),
    # and the records after the failback were written there by the clients.
    on_primary = read_ids(primary.bootstrap, topic)
    have = {s.id for s in on_primary}
    written_during = {rid for rid, t in sent.items() if t >= fault_t and rid in acked}
    gone = written_during - have
    assert not gone, f"{len(gone)} records written during the failover are not on the primary: {sorted(gone)[:5]}"
    assert set(after) <= local_ids(on_primary), "records produced after the failback are not local on the primary"


def send_fetch(bootstrap: str, topic: str, partition: int, offset: int, max_wait_ms: int) -> socket.socket:
    """Sends a Fetch v4 of one partition as a long-polling consumer does
    (min_bytes 1: answered when records arrive or `max_wait_ms` ends)."""
    host, port = bootstrap.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=60)
    t, cid = topic.encode(), b"long-poll"
    req = struct.pack(">hhih", 1, 4, 7, len(cid)) + cid
    req += struct.pack(">iiiibi", -1, max_wait_ms, 1, 1 << 20, 0, 1) + struct.pack(">h", len(t)) + t
    req += struct.pack(">iiqi", 1, partition, offset, 1 << 20)
    s.sendall(struct.pack(">i", len(req)) + req)
    return s


def read_fetch_answer(s: socket.socket) -> tuple[int, int]:
    """(error code, bytes of records) of the one partition a Fetch v4 asked for."""
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            assert chunk, "connection closed before the fetch was answered"
            buf += chunk
        return buf

    (size,) = struct.unpack(">i", exactly(4))
    data = exactly(size)
    pos = 8  # correlation id, throttle time
    (topics,) = struct.unpack_from(">i", data, pos)
    (name_len,) = struct.unpack_from(">h", data, pos + 4)
    pos += 6 + name_len
    (parts,) = struct.unpack_from(">i", data, pos)
    assert (topics, parts) == (1, 1), (topics, parts)
    _, error, _, _ = struct.unpack_from(">ihqq", data, pos + 4)
    pos += 4 + 22
    (aborted,) = struct.unpack_from(">i", data, pos)
    pos += 4 + max(aborted, 0) * 16
    (records,) = struct.unpack_from(">i", data, pos)
    return error, max(records, 0)


def test_long_poll_on_the_old_site_gets_no_records_written_after_the_switch(broker_kind, site, switchyard):
    """A fetch waiting on the primary when the route fails over must not come
    back with what the reverse tee writes there afterwards: those records sit
    at primary offsets a fenced member can no longer commit, so it would
    process them twice after rejoining (seen as duplicates of kafka-python
    in the failback drill). It is answered NOT_LEADER_OR_FOLLOWER without
    records, and the records are read from the new site."""
    primary, standby = site(), site()
    sy = start_failover_switchyard(switchyard, primary, standby, mode="sync")
    topic = unique_name("fo-poll")
    create_topic(sy.bootstrap, topic, partitions=1)
    produce_ids(sy.bootstrap, topic, make_ids("before", 5), partitions=[0] * 5)

    fetches = metric(sy, "switchyard_requests_total", api="Fetch")
    s = send_fetch(sy.bootstrap, topic, 0, offset=5, max_wait_ms=20_000)
    try:
        wait_until(lambda: metric(sy, "switchyard_requests_total", api="Fetch") > fetches, 10,
                   "the fetch did not reach Switchyard")
        code, body = failover(sy)
        assert_switch_answer(code, body, "standby")
        after = make_ids("after", 3)
        produce_ids(sy.bootstrap, topic, after, partitions=[0] * 3)
        wait_until(lambda: {r.id for r in read_ids(primary.bootstrap, topic, timeout=10)} >= set(after), 30,
                   "the reverse tee did not copy the new records to the primary")
        error, records = read_fetch_answer(s)
    finally:
        s.close()
    assert (error, records) == (6, 0), (
        f"the fetch that waited on the old site was answered error {error} with {records} bytes of records")
    assert metric(sy, "switchyard_failover_fenced_total", route=ROUTE, what="fetch_answer") >= 1
    # Nothing is lost: a consumer finds every record on the new site.
    assert {r.id for r in read_ids(sy.bootstrap, topic)} == set(make_ids("before", 5)) | set(after)


# --------------------------------------------------------------------------
# 5. translation without runs: MM2 checkpoints, then timestamps
# --------------------------------------------------------------------------

FILLER = 100  # records on the standby's partitions before the copies
PER_PARTITION = 50
COMMITTED = 30  # the groups' committed offset on the primary, per partition
TS_STEP = 100  # ms between the test records' timestamps


def copy_to_standby_with_filler(primary, standby, topic: str, partitions: int) -> None:
    """The standby's copy of `topic`, not made by Switchyard: FILLER records
    of its own per partition (older timestamps), then the primary's records
    in order, timestamps kept -- so copy offset = primary offset + FILLER."""
    src = read_partitions(primary.bootstrap, topic)
    create_topic(standby.bootstrap, topic, partitions=partitions)
    old = min(r.timestamp[1] for recs in src.values() for r in recs) - 3_600_000
    for p in range(partitions):
        fill = [f"filler-p{p}-{i:03d}" for i in range(FILLER)]
        produce_ids(standby.bootstrap, topic, fill, partitions=[p] * FILLER,
                    timestamps=[old + i for i in range(FILLER)])
        recs = src[p]
        acks = produce_ids(standby.bootstrap, topic, [r.value.decode() for r in recs], partitions=[p] * len(recs),
                           timestamps=[r.timestamp[1] for r in recs])
        for r in recs:
            assert acks[r.value.decode()]["o"] == r.offset + FILLER, (p, r.offset, acks[r.value.decode()])


@pytest.mark.timeout(240, method="signal")
@pytest.mark.parametrize("method", ["checkpoint", "timestamp"])
def test_translation_without_runs(broker_kind, site, switchyard, workers, method):
    primary, standby = site(), site()
    topic = unique_name(f"fo-{method}")
    parts = 2
    # The primary's records exist before Switchyard starts, and the tee
    # starts at `latest`: it copies none of them, so there are no runs.
    create_topic(primary.bootstrap, topic, partitions=parts)
    base = int(time.time() * 1000) - 600_000
    ids, pp, ts = [], [], []
    for p in range(parts):
        for i in range(PER_PARTITION):
            ids.append(f"{method}-p{p}-{i:03d}")
            pp.append(p)
            ts.append(base + i * TS_STEP)
    produce_ids(primary.bootstrap, topic, ids, partitions=pp, timestamps=ts)
    copy_to_standby_with_filler(primary, standby, topic, parts)

    groups = {lib: unique_name(f"g-{lib}") for lib in LIBS}
    if method == "checkpoint":
        write_checkpoints(standby.bootstrap, "primary", [
            (g, topic, p, COMMITTED, COMMITTED + FILLER) for g in groups.values() for p in range(parts)])

    sy = start_failover_switchyard(switchyard, primary, standby, mode="async", tee_start="latest")
    before = metric(sy, "switchyard_offset_translations_total", route=ROUTE, method=method)
    for g in groups.values():
        commit_offsets(sy.bootstrap, g, topic, {p: COMMITTED for p in range(parts)})
        assert committed_offsets(sy.bootstrap, g, topic, range(parts)) == {p: COMMITTED for p in range(parts)}
    # Switchyard shadow-commits the translated offsets on the standby.
    for g in groups.values():
        wait_until(lambda g=g: all(o >= 0 for o in committed_offsets(standby.bootstrap, g, topic, range(parts)).values()),
                   30, lambda g=g: f"no shadow commit of {g} on the standby: "
                   f"{committed_offsets(standby.bootstrap, g, topic, range(parts))}")
    shadow = {lib: committed_offsets(standby.bootstrap, g, topic, range(parts)) for lib, g in groups.items()}
    print(f"\nshadow commits on the standby ({method}): {shadow}")
    # Never skip: at or before the copy of the first unconsumed record.
    for lib, offs in shadow.items():
        for p, o in offs.items():
            assert o <= COMMITTED + FILLER, f"{lib} p{p}: shadow commit {o} skips records (copy of {COMMITTED} is at {COMMITTED + FILLER})"

    fault_t = time.time()
    code, body = failover(sy, force=True)
    assert_switch_answer(code, body, "standby")
    ws = {lib: workers("consume", f"consumer-{lib}", lib=lib, bootstrap=sy.bootstrap, topic=topic, group=g)
          for lib, g in groups.items()}
    unconsumed = [rid for rid in ids if int(rid.rsplit("-", 1)[1]) >= COMMITTED]
    fresh = make_ids(f"{method}-new", 20)
    acks_new = produce_ids(sy.bootstrap, topic, fresh)
    ok = settle(ws, unconsumed + fresh, timeout=60)

    acked = {rid: 0.0 for rid in unconsumed} | {rid: a["t"] for rid, a in acks_new.items()}
    sent = {rid: 0.0 for rid in unconsumed} | {rid: fault_t for rid in fresh}
    # Redelivered: anything before the copy of the first unconsumed record.
    recs = {lib: consumed(w) for lib, w in ws.items()}
    redelivered = {lib: sum(1 for e in r if e["o"] < COMMITTED + FILLER) for lib, r in recs.items()}
    rep = summarize(broker_kind, f"translation-{method}", fault_t, acked, sent, recs, errors_of(ws), in_flight=0)
    print(rep.line() + f"\n  redelivered (before the first unconsumed record): {redelivered}")
    assert ok and rep.lost == 0, f"{rep.line()}\n" + "\n".join(map(worker_problems, ws.values()))
    first = {lib: {p: min((e for e in r if e["p"] == p), key=lambda e: e["o"]) for p in range(parts)}
             for lib, r in recs.items()}
    if method == "checkpoint":
        for lib, per in first.items():
            for p, e in per.items():
                assert (e["o"], e["id"]) == (COMMITTED + FILLER, f"{method}-p{p}-{COMMITTED:03d}"), \
                    f"{lib} p{p}: resumed at {e} instead of the checkpoint's offset {COMMITTED + FILLER}"
        assert rep.duplicates == 0 and all(v == 0 for v in redelivered.values()), rep.line()
    else:
        slack = FAILOVER_SETTINGS["timestamp_slack_ms"]
        # Records within the slack before the last consumed one (inclusive):
        # what a timestamp lookup may legitimately hand out again.
        last_ts = base + (COMMITTED - 1) * TS_STEP
        within = sum(1 for i in range(COMMITTED) if base + i * TS_STEP >= last_ts - slack)
        for lib, per in first.items():
            for p, e in per.items():
                assert e["o"] <= COMMITTED + FILLER, f"{lib} p{p}: first record {e} skips the copy of {COMMITTED}"
            assert redelivered[lib] <= within * parts, \
                f"{lib}: {redelivered[lib]} records redelivered > {within} per partition within the slack"
    print_metrics(sy)
    after = metric(sy, "switchyard_offset_translations_total", route=ROUTE, method=method)
    assert after > before, f"switchyard_offset_translations_total{{method={method}}}: {before} -> {after}"


# --------------------------------------------------------------------------
# 6. transactional producers across a failover
# --------------------------------------------------------------------------


@pytest.mark.timeout(180, method="signal")
def test_transactional_producer_is_fenced_and_recovers(broker_kind, site, switchyard):
    """A transaction open at the switch cannot be finished on the new site
    (its producer id and state live in the old coordinator): the producer is
    fenced (fatal, like a zombie) and the application's new producer
    (InitProducerId goes to the new site) commits there. Committed
    transactions before the switch are on the standby; the open one's
    records are never visible to read_committed consumers."""
    from confluent_kafka import KafkaException, Producer

    primary, standby = site(), site()
    sy = start_failover_switchyard(switchyard, primary, standby, mode="sync")
    topic = unique_name("fo-txn")
    create_topic(sy.bootstrap, topic, partitions=1)
    conf = {"bootstrap.servers": sy.bootstrap, "transactional.id": unique_name("txn"),
            "transaction.timeout.ms": 10000}
    p = Producer(conf)
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, b"committed-before", partition=0)
    p.commit_transaction(30)
    p.begin_transaction()
    p.produce(topic, b"open-at-switch", partition=0)
    p.flush(10)

    code, body = failover(sy)
    assert_switch_answer(code, body, "standby")
    with pytest.raises(KafkaException) as e:
        p.commit_transaction(30)
    err = e.value.args[0]
    print(f"commit of the open transaction after the switch: {err}")
    assert err.fatal(), f"expected the old producer to be fenced (fatal), got {err}"
    assert metric(sy, "switchyard_failover_fenced_total", route=ROUTE, what="transaction") >= 1

    p2 = Producer(conf)
    p2.init_transactions(30)
    p2.begin_transaction()
    p2.produce(topic, b"committed-after", partition=0)
    p2.commit_transaction(30)

    def values() -> list[bytes]:
        parts = read_partitions(sy.bootstrap, topic, **{"isolation.level": "read_committed"})
        return [r.value for recs in parts.values() for r in recs]

    wait_until(lambda: b"committed-after" in values(), 30, lambda: f"standby has {values()}")
    got = values()
    assert got.count(b"committed-before") == 1 and got.count(b"committed-after") == 1, got
    assert b"open-at-switch" not in got, got


def test_checkpoint_record_encoding_round_trips(site):
    """The MM2 checkpoint bytes as stored by a broker and read back."""
    site = site()
    key, value = checkpoint_key("orders-app", "orders", 7), checkpoint_value(1234, 5678, "meta")
    assert key == b"\x00\x0aorders-app\x00\x06orders\x00\x00\x00\x07"
    assert value == (b"\x00\x00" + (1234).to_bytes(8, "big") + (5678).to_bytes(8, "big") + b"\x00\x04meta")
    topic = write_checkpoints(site.bootstrap, "primary", [("orders-app", "orders", 7, 1234, 5678),
                                                          ("g2", "t.x", 0, 0, 100)])
    assert topic == "primary.checkpoints.internal"
    got = read_partitions(site.bootstrap, topic)
    assert list(got) == [0]
    decoded = [decode_checkpoint(r.key, r.value) for r in got[0]]
    assert decoded == [
        {"group": "orders-app", "topic": "orders", "partition": 7, "version": 0,
         "upstream_offset": 1234, "offset": 5678, "metadata": ""},
        {"group": "g2", "topic": "t.x", "partition": 0, "version": 0,
         "upstream_offset": 0, "offset": 100, "metadata": ""},
    ]
