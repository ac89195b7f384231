"""Multi-site patterns, run from the example configs in config/ as written
(only addresses, and where a pattern needs it site names, substituted):

* every example config loads and serves traffic: the route's site holds the
  records under the physical name, the tee target an exact copy under the
  configured name, each copy naming its origin site;
* active-active: two gateways teeing to each other converge on the same
  records on both sites, and nothing ping-pongs;
* hub-and-spoke: three stores, each with its own edge gateway, land in one
  topic per store on the hub;
* offset syncs persisted on the target translate source offsets correctly,
  also across a Switchyard restart.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from confluent_kafka import KafkaError, KafkaException

from helpers import (
    admin_client,
    compare_copies,
    create_topic,
    metric_sum,
    read_partitions,
    unique_name,
    wait_for_count,
    wait_for_topic,
    wait_until,
)
from multisite import (
    CONFIG_DIR,
    offset_syncs,
    produce_keyed,
    producer,
    read_at,
    start_again,
    switchyard_from_file,
    translate,
)

ORIGIN = "switchyard-origin"
N = 300  # records per producer
PARTITIONS = 3
COPY_TIMEOUT = 60.0  # upper bound for a tee to catch up (it takes ~1 s)
# How long counts must stay put after convergence for "no ping-pong": a copy
# of a copy would appear within a few tee polls (100 ms each).
STABLE_FOR = 3.0


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def origins(rec) -> list:
    return [v for k, v in rec.headers if k == ORIGIN]


def total(parts: dict) -> int:
    return sum(len(v) for v in parts.values())


def topics_on(bootstrap: str) -> set[str]:
    return set(admin_client(bootstrap).list_topics(timeout=10).topics)


def ensure_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    """Creates a topic through `bootstrap`; one that exists already (e.g.
    created meanwhile by a tee) is fine if it has `partitions`."""
    try:
        create_topic(bootstrap, name, partitions=partitions)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
        wait_for_topic(bootstrap, name, partitions)


def describe_runs(runs: list) -> str:
    """Offset-sync runs as `src a..b -> tgt c..d` (duplicates, as head and
    slot records of one run, shown once)."""
    seen = []
    for r in runs:
        s, t, n = r["source_offset"], r["target_offset"], r["count"]
        text = f"src {s}..{s + n - 1} -> tgt {t}..{t + n - 1}"
        if text not in seen:
            seen.append(text)
    return ", ".join(seen) or "none"


def assert_holds_produced(parts: dict, reports: dict, context: str) -> None:
    """`parts` (a whole-topic read) holds exactly the produced records, each
    at the partition and offset its delivery report named, none with an
    origin header (written locally, not teed in)."""
    __tracebackhide__ = True
    where = {r.key: (p, r.offset) for p, recs in parts.items() for r in recs}
    assert total(parts) == len(reports) == len(where), (
        f"{context}: {total(parts)} records ({len(where)} distinct keys), produced {len(reports)}"
    )
    wrong = [(k, (p, o), where.get(k)) for k, (_, p, o) in reports.items() if where.get(k) != (p, o)]
    assert not wrong, f"{context}: {len(wrong)} records not where the producer was told, e.g. {wrong[:3]}"
    tagged = [(r.key, origins(r)) for recs in parts.values() for r in recs if origins(r)]
    assert not tagged, f"{context}: locally produced records carry {ORIGIN}: {tagged[:3]}"


def assert_exact_copy(src: dict, dst: dict, origin: str, context: str) -> None:
    """`dst` is `src` partition for partition (same records, same order,
    same headers and timestamps), every copy with exactly one origin header
    naming `origin`."""
    __tracebackhide__ = True
    compare_copies(src, dst).assert_ok(context)
    assert total(dst) == total(src), f"{context}: {total(dst)} copies of {total(src)} records"
    bad = [(p, r.offset, origins(r)) for p, recs in dst.items() for r in recs if origins(r) != [origin.encode()]]
    assert not bad, f"{context}: {len(bad)} copies without exactly one {ORIGIN}={origin!r}, e.g. {bad[:3]}"


# --------------------------------------------------------------------------
# 1. every example config loads and serves traffic
# --------------------------------------------------------------------------

# file -> (route site, tee target site, [(client topic, target topic, sync)])
EXAMPLES = {
    "active-active.yaml": ("east", "west", [(unique_name("orders.t"), "{t}", False)]),
    "aggregate.yaml": ("eu", "global", [("orders", "{t}-eu", False)]),
    "hub-and-spoke-edge.yaml": ("store-17", "hub", [(unique_name("pos.t"), "{t}-store-17", False)]),
    "observer.yaml": (
        "prod",
        "observer",
        [(unique_name("orders.t"), "prod.{t}", False), (unique_name("payments.t"), "prod.{t}", True)],
    ),
}


@pytest.mark.timeout(90, method="signal")
@pytest.mark.parametrize("file", list(EXAMPLES), ids=[f.removesuffix(".yaml") for f in EXAMPLES])
def test_example_config_serves_traffic(site, switchyard, file):
    assert (CONFIG_DIR / file).is_file(), f"example config {CONFIG_DIR / file} missing"
    source, target, topics = EXAMPLES[file]
    src_site, dst_site = site(), site()
    sy = switchyard_from_file(switchyard, file, [src_site, dst_site])

    for topic, naming, sync in topics:
        teed = naming.format(t=topic)
        ctx = f"{file}: {topic} on {source} -> {teed} on {target}"
        create_topic(sy.bootstrap, topic, partitions=PARTITIONS)
        reports = produce_keyed(sy.bootstrap, topic, N, tag=topic)
        if sync:
            # Every ack came after the target held the record: no waiting.
            now = read_partitions(dst_site.bootstrap, teed, timeout=30)
            assert total(now) == N, f"{ctx} (sync): {total(now)} of {N} acked records on the target at ack time"
        wait_for_count(dst_site.bootstrap, teed, N, timeout=COPY_TIMEOUT)

        src = read_partitions(src_site.bootstrap, topic)
        assert len(src) == PARTITIONS
        assert_holds_produced(src, reports, f"{ctx}: source")
        dst = read_partitions(dst_site.bootstrap, teed)
        assert_exact_copy(src, dst, source, ctx)

    # Clients of the gateway see the client names; each site holds only its
    # physical names (the copies only under the teed name).
    names = {t for t, _, _ in topics}
    teed_names = {n.format(t=t) for t, n, _ in topics}
    assert names <= topics_on(sy.bootstrap)
    assert names <= topics_on(src_site.bootstrap)
    on_target = topics_on(dst_site.bootstrap)
    assert teed_names <= on_target
    assert not (names - teed_names) & on_target, f"client names on the target: {on_target}"


# --------------------------------------------------------------------------
# 2. active-active: two gateways teeing to each other, no loops
# --------------------------------------------------------------------------


@pytest.mark.timeout(90, method="signal")
def test_active_active_converges_without_loops(site, switchyard):
    east, west = site(), site()
    gw = {
        "east": switchyard_from_file(switchyard, "active-active.yaml", [east, west]),
        # The mirror image: every `east` <-> `west`, bootstraps swapped.
        "west": switchyard_from_file(
            switchyard, "active-active.yaml", [west, east], replace={"east": "west", "west": "east"}
        ),
    }
    site = {"east": east, "west": west}
    other = {"east": "west", "west": "east"}
    topic = unique_name("orders.x")
    for name in gw:
        ensure_topic(gw[name].bootstrap, topic)
    for name in site:
        wait_for_topic(site[name].bootstrap, topic, PARTITIONS)

    n = {"east": 400, "west": 300}
    tag = {name: f"{name}-{topic}" for name in gw}
    with ThreadPoolExecutor(2) as pool:
        futs = {name: pool.submit(produce_keyed, gw[name].bootstrap, topic, n[name], tag[name]) for name in gw}
        reports = {name: f.result() for name, f in futs.items()}
    want = n["east"] + n["west"]

    for name in site:
        got = wait_for_count(site[name].bootstrap, topic, want, timeout=COPY_TIMEOUT)
        assert got == want, f"{topic} on {name}: {got} records, want {want}"
    # Each gateway's tee copied exactly its own site's records.
    for name in gw:
        wait_until(
            lambda name=name: metric_sum(gw[name].metrics()[0], "switchyard_tee_records_total",
                                         route="orders", target=other[name]) == n[name],
            10,
            lambda name=name: f"tee {name}->{other[name]} records: "
            f"{metric_sum(gw[name].metrics()[0], 'switchyard_tee_records_total', route='orders')}",
        )

    # No ping-pong: the counts stay exactly where they are.
    t0 = time.monotonic()
    rounds = 0
    while True:
        for name in site:
            got = wait_for_count(site[name].bootstrap, topic, want, timeout=10)
            assert got == want, f"{topic} on {name}: {got} records after convergence, want {want} (teed twice?)"
            teed = metric_sum(gw[name].metrics()[0], "switchyard_tee_records_total", route="orders")
            assert teed == n[name], f"tee of {name} copied {teed} records, its site produced {n[name]}"
        rounds += 1
        if time.monotonic() - t0 >= STABLE_FOR:
            break
    assert rounds >= 2

    parts = {name: read_partitions(site[name].bootstrap, topic) for name in site}
    local, copies = {}, {}
    for name, ps in parts.items():
        keys = Counter(r.key for recs in ps.values() for r in recs)
        twice = [k for k, c in keys.items() if c > 1]
        assert not twice, f"{topic} on {name}: {len(twice)} keys more than once, e.g. {twice[:3]}"
        assert total(ps) == want, f"{topic} on {name}: {total(ps)} records, want {want}"
        local[name] = {p: [r for r in recs if not origins(r)] for p, recs in ps.items()}
        copies[name] = {p: [r for r in recs if origins(r)] for p, recs in ps.items()}
        # Written here: exactly what was produced at this gateway, no header.
        assert_holds_produced(local[name], reports[name], f"{topic} on {name}, local records")
        # Copies: exactly the records of the other site, origin = the other site.
        ctx = f"{topic}: local records of {other[name]} vs copies on {name}"
        assert total(copies[name]) == n[other[name]], f"{ctx}: {total(copies[name])} copies"
    for name in site:
        assert_exact_copy(local[name], copies[other[name]], name,
                          f"{topic}: local records of {name} vs copies on {other[name]}")


# --------------------------------------------------------------------------
# 3. hub-and-spoke: three stores, one topic per store on the hub
# --------------------------------------------------------------------------


@pytest.mark.timeout(90, method="signal")
def test_hub_and_spoke_one_topic_per_store(site, switchyard):
    hub = site()
    stores = {f"store-{i}": site() for i in (1, 2, 3)}
    gws = {
        name: switchyard_from_file(switchyard, "hub-and-spoke-edge.yaml", [broker, hub],
                                   replace={"store-17": name})
        for name, broker in stores.items()
    }
    topic = "pos.sales"
    for g in gws.values():
        create_topic(g.bootstrap, topic, partitions=PARTITIONS)
    n = {name: 200 + 50 * i for i, name in enumerate(stores)}  # different per store
    with ThreadPoolExecutor(len(gws)) as pool:
        futs = {name: pool.submit(produce_keyed, g.bootstrap, topic, n[name], f"{name}-sale")
                for name, g in gws.items()}
        reports = {name: f.result() for name, f in futs.items()}

    for name in stores:
        wait_for_count(hub.bootstrap, f"{topic}-{name}", n[name], timeout=COPY_TIMEOUT)
    for name, broker in stores.items():
        teed = f"{topic}-{name}"
        src = read_partitions(broker.bootstrap, topic)
        assert len(src) == PARTITIONS
        assert_holds_produced(src, reports[name], f"{topic} on {name}")
        dst = read_partitions(hub.bootstrap, teed)
        assert len(dst) == PARTITIONS, f"{teed} on hub has {len(dst)} partitions"
        assert_exact_copy(src, dst, name, f"{topic} on {name} -> {teed} on hub")
    pos_on_hub = {t for t in topics_on(hub.bootstrap) if t.startswith("pos.")}
    assert pos_on_hub == {f"{topic}-{name}" for name in stores}, pos_on_hub


# --------------------------------------------------------------------------
# 4. offset syncs translate correctly, also across a restart
# --------------------------------------------------------------------------


# How Switchyard goes down between the two halves:
#   sigterm   a graceful stop (what operators do): the tee writes its last
#             offset syncs before the process exits;
#   sigkill   a crash: nothing is written at the stop; on restart the tee
#             finds what it copied on the target (by the origin header) and
#             must neither copy it again nor forget where it put it.
# Known failures (switchyard as of 3d7bbff): server::run returns without
# waiting for the tee workers, so the last offset-sync write at SIGTERM races
# the process exit (sigterm fails in about 1 run of 5, more under load);
# and the restart's reconcile skips the records it finds on the target
# without recording a run for them, so what the lost write should have said
# is never written (sigkill fails every time).
STOPS = ["sigterm", "sigkill"]


@pytest.mark.timeout(90, method="signal")
@pytest.mark.parametrize("stop", STOPS)
def test_offset_syncs_survive_restart(site, switchyard, stop):
    eu, glob = site(), site()
    topic, teed = "orders", "orders-eu"
    # The aggregate's topic exists already and holds a few records of its own
    # (a different number per partition), so the tee's copies sit at other
    # offsets than their originals and translation is not the identity.
    create_topic(glob.bootstrap, teed, partitions=PARTITIONS)
    seeded = {p: 5 + 4 * p for p in range(PARTITIONS)}
    seeder = producer(glob.bootstrap)
    for p, k in seeded.items():
        for i in range(k):
            seeder.produce(teed, key=f"seed-{p}-{i}".encode(), value=b"already here", partition=p)
    assert seeder.flush(30) == 0
    del seeder

    sy = switchyard_from_file(switchyard, "aggregate.yaml", [eu, glob])
    create_topic(sy.bootstrap, topic, partitions=PARTITIONS)
    produce_keyed(sy.bootstrap, topic, N, tag="before")
    wait_for_count(glob.bootstrap, teed, sum(seeded.values()) + N, timeout=COPY_TIMEOUT)

    if stop == "sigkill":
        sy.kill()
    else:
        code = sy.stop()
        assert code == 0, f"switchyard exited with {code} on SIGTERM"
    sy = start_again(switchyard, sy)
    produce_keyed(sy.bootstrap, topic, N, tag="after")
    wait_for_count(glob.bootstrap, teed, sum(seeded.values()) + 2 * N, timeout=COPY_TIMEOUT)

    src = read_partitions(eu.bootstrap, topic)
    dst = read_partitions(glob.bootstrap, teed)
    assert total(src) == 2 * N
    # The records that were there stay first; after them, the copies: nothing
    # copied twice or lost across the restart.
    for p, k in seeded.items():
        head = [(r.offset, r.key, origins(r)) for r in dst[p][:k]]
        assert head == [(i, f"seed-{p}-{i}".encode(), []) for i in range(k)], f"{teed}/{p}: {head}"
    copies = {p: recs[seeded[p]:] for p, recs in dst.items()}
    assert_exact_copy(src, copies, "eu", f"{topic} on eu -> {teed} on global, across a restart")

    # Runs are persisted every offset_sync_interval_ms (1 s): wait until they
    # cover the last record of every partition.
    def covering():
        runs = offset_syncs(glob.bootstrap, "eu", topic)
        ok = all(translate(runs.get(p, []), recs[-1].offset) is not None for p, recs in src.items() if recs)
        return runs if ok else None

    runs = wait_until(covering, 30, lambda: f"offset syncs for {topic} do not cover the last records: "
                      f"{offset_syncs(glob.bootstrap, 'eu', topic)}")
    # Every source record is covered by a run ...
    holes = []
    for p, recs in src.items():
        lost = [r for r in recs if translate(runs.get(p, []), r.offset) is None]
        if lost:
            halves = Counter(r.key.split(b"-")[0].decode() for r in lost)
            holes.append(f"{topic}/{p}: {len(lost)} of {len(recs)} source records (offsets "
                         f"{lost[0].offset}..{lost[-1].offset}; {dict(halves)}) have no offset-sync run; "
                         f"runs: {describe_runs(runs.get(p, []))}")
    assert not holes, f"offset syncs on global after a {stop} and restart:\n  " + "\n  ".join(holes)
    dst_at = {p: {r.offset: r for r in recs} for p, recs in dst.items()}
    for p, recs in src.items():
        before = [r for r in recs if r.key.startswith(b"before")]
        after = [r for r in recs if r.key.startswith(b"after")]
        assert before and after, f"partition {p}: {len(before)} records before, {len(after)} after the restart"
        # ... and translates to its copy (checked against the read of the
        # whole target topic) ...
        for r in recs:
            t = translate(runs[p], r.offset)
            d = dst_at[p].get(t)
            assert d is not None and (d.key, d.value) == (r.key, r.value), (
                f"{topic}/{p}@{r.offset} ({r.key!r}) -> {teed}/{p}@{t}: {d and d.key!r}; runs {runs[p]}"
            )
        # ... and samples, from the beginning and after the restart, read
        # back at the translated offset.
        for r in (before[0], before[len(before) // 2], before[-1], after[0], after[-1]):
            t = translate(runs[p], r.offset)
            m = read_at(glob.bootstrap, teed, p, t)
            assert m is not None and (m.key(), m.value()) == (r.key, r.value), (
                f"{topic}/{p}@{r.offset} -> {teed}/{p}@{t}: {m and (m.key(), m.offset())}"
            )
