"""Real MirrorMaker 2 beside Switchyard: two Apache Kafka clusters, MM2 in
dedicated mode (`org.apache.kafka.connect.mirror.MirrorMaker`, checkpoints
and offset syncs on) copying a topic and a consumer group's offsets from
the primary to the standby, and Switchyard failing a route over to the
standby with `failover.mm2_source_alias`.

What a user checks: Switchyard translates the group's committed offsets
from MM2's checkpoints to exactly what MM2's own
`RemoteClusterUtils.translateOffsets` says; after the failover the group
resumes on the standby with no record skipped, and reads again exactly the
records MM2's translation gives back, no more.

MM2's bound: a checkpoint is never after the committed position, but since
Kafka 3.5 (KAFKA-14666) it may be far before it: MM2 keeps offset syncs
sparser the older they are, and a group committed before MM2 copied the
records translates to an early sync (here, typically a position tens of
records back). That is MM2's duplicates, which a failover inherits; the
test counts them and asserts Switchyard adds none.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from failover import (
    commit_offsets,
    committed_offsets,
    consumed,
    failover,
    make_ids,
    produce_ids,
    read_ids,
    start_failover_switchyard,
    worker_problems,
)
from helpers import create_topic, unique_name, wait_until
from kafka_cluster import java_program, jvm_argv, mm2_libs, mm2_single_node_properties

pytestmark = pytest.mark.brokers("kafka")

PARTITIONS = 2
RECORDS = 200  # per partition
COMMITTED = {0: 120, 1: 75}  # the group's position on the primary
OFFSET_LAG_MAX = 10  # MM2: an offset sync at least every this many records copied


def mm2_properties(primary: str, standby: str, topic: str, group: str) -> str:
    return "\n".join([
        "clusters = primary, standby",
        f"primary.bootstrap.servers = {primary}",
        f"standby.bootstrap.servers = {standby}",
        "primary->standby.enabled = true",
        "standby->primary.enabled = false",
        f"primary->standby.topics = {topic}",
        f"primary->standby.groups = {group}",
        # The topic keeps its name on the standby, as Switchyard's route
        # names it there (identity naming).
        "replication.policy.class = org.apache.kafka.connect.mirror.IdentityReplicationPolicy",
        "emit.checkpoints.enabled = true",
        "emit.checkpoints.interval.seconds = 1",
        "emit.heartbeats.enabled = false",
        "sync.group.offsets.enabled = false",
        "refresh.topics.interval.seconds = 1",
        "refresh.groups.interval.seconds = 1",
        f"offset.lag.max = {OFFSET_LAG_MAX}",
        "offset-syncs.topic.location = target",
        *mm2_single_node_properties(),
        "",
    ])


@pytest.mark.timeout(300, method="signal")
def test_switchyard_translates_mm2_checkpoints_as_mm2_does(site, switchyard, workers, tmp_path):
    primary, standby = site(), site()
    topic, group = unique_name("mm2"), unique_name("g-mm2")
    create_topic(primary.bootstrap, topic, partitions=PARTITIONS)
    ids = {p: [f"mm2-p{p}-{i:03d}" for i in range(RECORDS)] for p in range(PARTITIONS)}
    # Each partition's first record alone, then the rest once MM2 copied it:
    # MM2 keeps one pending offset sync per partition and replaces it while its
    # producer is busy, so a partition that arrives whole in one burst may get
    # its first sync only near its end, and a group committed before that sync
    # has no checkpoint at all. A first sync at offset 0 gives every committed
    # position one (MM2's store keeps its oldest sync).
    for p in range(PARTITIONS):
        produce_ids(primary.bootstrap, topic, ids[p][:1], partitions=[p])

    props = tmp_path / "mm2.properties"
    props.write_text(mm2_properties(primary.bootstrap, standby.bootstrap, topic, group))
    log = (tmp_path / "mm2.log").open("wb")
    mm2 = subprocess.Popen(
        [*jvm_argv(libs=mm2_libs()), "org.apache.kafka.connect.mirror.MirrorMaker", str(props)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(read_ids(standby.bootstrap, topic, timeout=5)) >= PARTITIONS, 120,
                   lambda: f"MM2 did not copy the first records:\n{(tmp_path / 'mm2.log').read_text()[-3000:]}")
        for p in range(PARTITIONS):
            produce_ids(primary.bootstrap, topic, ids[p][1:], partitions=[p] * (RECORDS - 1))
        ids = [rid for p in range(PARTITIONS) for rid in ids[p]]
        commit_offsets(primary.bootstrap, group, topic, COMMITTED)
        wait_until(lambda: len(read_ids(standby.bootstrap, topic, timeout=5)) >= len(ids), 120,
                   lambda: f"MM2 did not copy the topic:\n{(tmp_path / 'mm2.log').read_text()[-3000:]}")

        def mm2_says() -> dict[int, int]:
            out = java_program("Mm2Translate.java", standby.bootstrap, "primary", group, libs=mm2_libs())[-1]
            return {int(k.rsplit(":", 1)[1]): v for k, v in out.items() if k.startswith(f"{topic}:")}
        wait_until(lambda: len(mm2_says()) == PARTITIONS, 120,
                   lambda: f"no MM2 checkpoint for {group}:\n{(tmp_path / 'mm2.log').read_text()[-3000:]}")
        translated = mm2_says()
    finally:
        mm2.terminate()
        try:
            mm2.wait(30)
        except subprocess.TimeoutExpired:
            mm2.kill()
        log.close()
    print(f"\nMM2 RemoteClusterUtils.translateOffsets: {translated} (committed on the primary: {COMMITTED})")
    # MM2 copied the records at the same offsets (an empty standby): its
    # checkpoint is at or before the committed position, never after.
    for p, o in translated.items():
        assert 0 <= o <= COMMITTED[p], (p, o)

    # Switchyard in front: the tee starts at `latest` (MM2 did the copying),
    # so only MM2's checkpoints can translate the group.
    sy = start_failover_switchyard(switchyard, primary, standby, mode="async", tee_start="latest",
                                   mm2_source_alias="primary")
    commit_offsets(sy.bootstrap, group, topic, COMMITTED)
    wait_until(lambda: all(o >= 0 for o in committed_offsets(standby.bootstrap, group, topic,
                                                               range(PARTITIONS)).values()),
               30, "Switchyard made no shadow commit of the group on the standby")
    shadow = committed_offsets(standby.bootstrap, group, topic, range(PARTITIONS))
    print(f"Switchyard's shadow commit on the standby: {shadow}")
    assert shadow == translated, f"Switchyard translated {shadow}, MM2 says {translated}"

    fault_t = time.time()
    code, body = failover(sy, force=True)
    assert code == 200 and body.get("active") == "standby", (code, body)
    fresh = make_ids("mm2-new", 20)
    produce_ids(sy.bootstrap, topic, fresh)
    w = workers("consume", "consumer-confluent", lib="confluent", bootstrap=sy.bootstrap, topic=topic, group=group)
    unconsumed = [rid for rid in ids if int(rid.rsplit("-", 1)[1]) >= COMMITTED[int(rid.split("-p")[1][0])]]
    want = set(unconsumed + fresh)
    wait_until(lambda: want <= {e["id"] for e in consumed(w)}, 90,
               lambda: f"records not delivered after the failover:\n{worker_problems(w)}")
    recs = consumed(w)
    again = {p: sum(1 for e in recs if e["p"] == p and e["o"] < COMMITTED[p]) for p in range(PARTITIONS)}
    bound = {p: COMMITTED[p] - translated[p] for p in range(PARTITIONS)}
    print(f"read again after the failover: {again} (MM2's translation gives back {bound}); "
          f"{time.time() - fault_t:.1f} s to deliver every record")
    for p in range(PARTITIONS):
        first = min((e for e in recs if e["p"] == p), key=lambda e: e["o"])
        assert first["o"] == translated[p], f"p{p}: resumed at {first['o']}, not at the checkpoint {translated[p]}"
    assert again == bound, f"read again {again}, MM2's translation gives back {bound}"
