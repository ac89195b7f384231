#!/usr/bin/env python3
"""Tee lag benchmark: how far an async tee trails a steady producer, and how
fast it catches up after the link to its target was cut.

Two sites (source `store1`, target `hub`), each an Apache Kafka cluster
(--broker kafka, the default; KRaft, 1 node or --nodes 3, see
tests/kafka_cluster.py) or a Tansu broker (--broker tansu, in-memory). Every
hub broker is behind a userspace relay, tests/relay.py, that is also its
advertised listener, so every connection to the hub crosses it. Switchyard
has one route:
topic `orders` (6 partitions) on store1, teed async to hub as
`{topic}-{site}` = `orders-store1`, with Switchyard's default tee settings
unless --poll-interval-ms etc. are given.

1. Steady load: a confluent-kafka producer (acks=all, idempotent, linger
   5 ms, keyed, --size byte values, a `ts` header with time.time_ns()) writes
   through Switchyard at --rate records/s. After --warmup s, for --steady s
   the tee's `lag_records` / `lag_seconds` (GET /api/v1/status) are sampled
   every --sample-ms ms, and a consumer assigned to the end of the hub topic
   reads every record: for every --sample-every-th record it compares the
   send timestamp (header) and the producer's delivery-report time with the
   time it was read from the hub.
2. Outage: the producer keeps going; the hub link is cut (RST) for
   --outage s and restored. Reported: the backlog at restore, the time until
   the tee has caught up (lag_records 0), catch-up rate, and the producer's
   errors (must be 0: the ack only waits for store1).
3. Check: after the producer stops, the hub holds exactly the records the
   producer got acks for (counted from Fetch high watermarks; Tansu's
   ListOffsets(latest) is not usable for that). Kafka's storage is in the
   temporary directory, deleted at the end.

Producer and hub consumer run in their own processes (spawn), so the relay
thread in this process does not compete with them for the GIL.

    cargo build --release -p switchyard   # and scripts/setup.sh for Tansu + .venv
    .venv/bin/python benches/tee_lag.py [--broker kafka|tansu] [--nodes 1|3] [--rate 20000] [--out tee-lag.md]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWITCHYARD = ROOT / "target/release/switchyard"
TANSU = ROOT / ".tools/bin/tansu"
TOPIC = "orders"
PARTITIONS = 6
TARGET_TOPIC = f"{TOPIC}-store1"

sys.path.insert(0, str(ROOT / "tests"))  # relay.py, helpers.py (stdlib at import time)
sys.path.insert(0, str(ROOT / "benches"))  # brokers.py


# --------------------------------------------------------------------------
# Child processes: producer and hub consumer
# --------------------------------------------------------------------------


def producer_main(bootstrap, rate, size, sample_every, stop, counters, out_q, conf_extra):
    """Produces keyed records at `rate`/s until `stop`; counters (shared
    int64 array): 0 sent, 1 acked, 2 errors, 3 BufferError retries, 4 max
    send backlog (records behind schedule), 5 done flag. Puts
    {"acks": {seq: ack_ns}, "errors": [...], ...} on out_q at the end."""
    from confluent_kafka import Producer

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    acks: dict[int, int] = {}
    errs: list[str] = []
    state = {"acked": 0, "errors": 0}

    def on_delivery(err, msg):
        if err is not None:
            state["errors"] += 1
            if len(errs) < 20:
                errs.append(str(err))
            return
        state["acked"] += 1
        k = msg.key()
        seq = int(k)
        if seq % sample_every == 0:
            acks[seq] = time.time_ns()

    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "none",
        "message.timeout.ms": 600000,
        "queue.buffering.max.messages": 1000000,
        "queue.buffering.max.kbytes": 2097151,
        "on_delivery": on_delivery,
    }
    conf.update(conf_extra)
    p = Producer(conf)
    value = os.urandom(size)
    pack = struct.Struct(">q").pack
    produce = p.produce
    i = 0
    max_behind = 0
    t0 = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - t0) * rate)
        max_behind = max(max_behind, due - i)
        while i < due:
            try:
                produce(TOPIC, value, str(i).encode(), headers=[("ts", pack(time.time_ns()))])
            except BufferError:
                counters[3] += 1
                p.poll(0.005)
                continue
            i += 1
            if i % 500 == 0:
                p.poll(0)
        p.poll(0)
        counters[0] = i
        counters[1] = state["acked"]
        counters[2] = state["errors"]
        counters[4] = max_behind
        time.sleep(0.001)
    elapsed = time.monotonic() - t0
    remaining = p.flush(600)
    counters[0] = i
    counters[1] = state["acked"]
    counters[2] = state["errors"]
    out_q.put({"acks": acks, "errors": errs, "sent": i, "acked": state["acked"], "n_errors": state["errors"],
               "unflushed": remaining, "elapsed": elapsed})
    counters[5] = 1


def consumer_main(bootstrap, sample_every, ready, stop, out_q):
    """Reads the hub topic from its end; for every sampled record keeps
    (seq, send_ns, read_ns). Sets `ready` once every partition has a
    position."""
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "tee-lag-bench-unused",  # assign() only, never joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 10,
        "fetch.min.bytes": 1,
        "socket.timeout.ms": 10000,
    })
    out: list[tuple[int, int, int]] = []
    unpack = struct.Struct(">q").unpack
    try:
        tps = [TopicPartition(TARGET_TOPIC, p, OFFSET_END) for p in range(PARTITIONS)]
        c.assign(tps)
        seen = 0
        while not stop.is_set():
            msgs = c.consume(num_messages=1000, timeout=0.05)
            now = time.time_ns()
            for m in msgs:
                if m.error() is not None:
                    continue
                seen += 1
                seq = int(m.key())
                if seq % sample_every:
                    continue
                for k, v in m.headers() or ():
                    if k == "ts":
                        out.append((seq, unpack(v)[0], now))
                        break
            if not ready.is_set():
                pos = c.position([TopicPartition(TARGET_TOPIC, p) for p in range(PARTITIONS)])
                if all(tp.offset >= 0 for tp in pos):
                    ready.set()
    finally:
        c.close()
        out_q.put({"samples": out, "seen": seen})


# --------------------------------------------------------------------------
# Processes, HTTP, waiting
# --------------------------------------------------------------------------


class Proc:
    def __init__(self, name, argv, log: Path):
        self.name = name
        self.log = log
        self.f = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self.f, stderr=subprocess.STDOUT, start_new_session=True)

    def running(self) -> bool:
        return self.p.poll() is None

    def tail(self, n=40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.f.close()


class Died(Exception):
    """A process of the benchmark exited early."""


def wait_until(pred, timeout: float, what, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Died:
            raise
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last = e
        if time.monotonic() >= deadline:
            msg = what() if callable(what) else what
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {msg}" + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def http_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def http_text(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def pct(vals, q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not vals:
        return float("nan")
    s = sorted(vals)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU")
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    return f"nproc {os.cpu_count()}, {cpu}, {int(mem) // 1024 // 1024} GiB RAM, Linux {platform.release()}"


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


class Bench:
    def __init__(self, args, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.children: list = []
        self.relays = []
        self.brokers = []  # KafkaBroker / TansuBroker, stopped by close()
        self.samples: list[dict] = []  # every status sample of the run

    # -- setup ---------------------------------------------------------------

    def start(self):
        self.loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
        from brokers import KafkaBroker, TansuBroker
        from helpers import allocate_ports, create_topic
        from relay import Relay

        a = self.args
        n = a.nodes
        hub_ports = [allocate_ports(1) for _ in range(n)]
        self.relays = [Relay(("127.0.0.1", p), allocate_ports(1), name=f"hub-link-{i + 1}").start()
                       for i, p in enumerate(hub_ports)]
        adv = [r.port for r in self.relays]
        if a.broker == "kafka":
            store = KafkaBroker(self.tmp, n, allocate=allocate_ports, name="store1")
            self.brokers.append(store)
            store.start()
            hub = KafkaBroker(self.tmp, n, ports=hub_ports, advertise_ports=adv, allocate=allocate_ports, name="hub")
            self.brokers.append(hub)
            hub.start()
        else:
            store = TansuBroker(self.tmp, allocate_ports(1), cluster_id="tee-lag-store1")
            self.brokers.append(store)
            store.start()
            hub = TansuBroker(self.tmp, hub_ports[0], adv[0], cluster_id="tee-lag-hub")
            self.brokers.append(hub)
            hub.start()
        self.store = store.bootstrap
        self.hub = ",".join(r.bootstrap for r in self.relays)  # everything to the hub crosses the links
        vnodes = 3
        listen = allocate_ports(vnodes + 1)
        admin = allocate_ports(1)
        self.bootstrap = f"127.0.0.1:{listen}"
        self.admin = f"http://127.0.0.1:{admin}"
        cfg = self.tmp / "switchyard.yaml"
        cfg.write_text(f"""cluster_id: tee-lag-bench
listen:
  bind: 127.0.0.1:{listen}
  virtual_nodes: {vnodes}
sites:
  - name: store1
    bootstrap: [{_yaml_list(self.store)}]
  - name: hub
    bootstrap: [{_yaml_list(self.hub)}]
default_site: store1
routes:
  - name: orders
    topics: {{exact: {TOPIC}}}
    site: store1
    tee:
      - {{site: hub, mode: async, naming: "{{topic}}-{{site}}"}}
{tee_settings(a)}admin:
  bind: 127.0.0.1:{admin}
log:
  level: warn
""")
        self.config_text = cfg.read_text()
        sy = Proc("switchyard", [str(a.switchyard), "run", "--config", str(cfg)], self.tmp / "switchyard.log")
        self.procs.append(sy)
        self.sy = sy
        wait_until(lambda: http_ok(self.admin + "/readyz") or _died(sy), 30,
                   lambda: f"switchyard /readyz; log:\n{sy.tail()}")
        if a.broker == "kafka":
            # On store1 directly, with the cluster's default replication factor.
            from brokers import create_topic as create_on
            from helpers import wait_for_topic

            create_on(self.store, TOPIC, PARTITIONS)
            wait_for_topic(self.bootstrap, TOPIC, PARTITIONS, timeout=30)
        else:
            create_topic(self.bootstrap, TOPIC, partitions=PARTITIONS, timeout=30)

    # -- helpers -------------------------------------------------------------

    def tee_topic(self) -> dict | None:
        st = http_json(self.admin + "/api/v1/status")
        tees = st.get("tee") or []
        if not tees or not tees[0].get("topics"):
            return None
        return tees[0]["topics"][0]

    def sample(self, phase: str) -> dict:
        t = self.tee_topic() or {}
        c = self.counters
        s = {"t": time.monotonic(), "phase": phase, "lag_records": t.get("lag_records"),
             "lag_seconds": t.get("lag_seconds"), "records": t.get("records"), "state": t.get("state"),
             "last_error": t.get("last_error"), "sent": c[0], "acked": c[1], "errors": c[2]}
        self.samples.append(s)
        return s

    def sample_for(self, seconds: float, phase: str):
        """Samples every --sample-ms for `seconds` (pacing, not synchronisation)."""
        step = self.args.sample_ms / 1000
        end = time.monotonic() + seconds
        nxt = time.monotonic()
        while True:
            self.check_alive()
            self.sample(phase)
            nxt += step
            if nxt >= end:
                break
            time.sleep(max(0.0, nxt - time.monotonic()))
        time.sleep(max(0.0, end - time.monotonic()))

    def check_alive(self):
        for p in self.procs:
            if not p.running():
                raise Died(f"{p.name} exited with {p.p.returncode}; log:\n{p.tail()}")
        for ch in self.children:
            if ch.exitcode not in (None, 0):
                raise Died(f"{ch.name} exited with {ch.exitcode}")
        for b in self.brokers:
            if not b.running():
                raise Died(f"a {b.kind} broker exited; {b.tail() if b.kind == 'kafka' else ''}")

    # -- phases --------------------------------------------------------------

    def run(self) -> dict:
        a = self.args
        ctx = mp.get_context("spawn")
        self.counters = ctx.RawArray("q", 6)
        self.stop_producer = ctx.Event()
        prod_q = ctx.Queue()
        producer = ctx.Process(target=producer_main, name="producer",
                               args=(self.bootstrap, a.rate, a.size, a.sample_every, self.stop_producer,
                                     self.counters, prod_q, {}), daemon=True)
        self.children.append(producer)
        producer.start()
        print(f"producing {a.rate} records/s of {a.size} B through {self.bootstrap}", flush=True)
        t_start = time.monotonic()
        wait_until(lambda: (self.tee_topic() or {}).get("records", 0) > 0 or self.check_alive(), 60,
                   "the tee to copy its first records")
        # Hub consumer, positioned at the end before the measured window.
        stop_consumer, ready = ctx.Event(), ctx.Event()
        cons_q = ctx.Queue()
        consumer = ctx.Process(target=consumer_main, name="hub-consumer",
                               args=(self.hub, a.sample_every, ready, stop_consumer, cons_q), daemon=True)
        self.children.append(consumer)
        consumer.start()
        wait_until(lambda: ready.is_set() or self.check_alive(), 60, "the hub consumer to get positions")
        self.sample_for(max(0.0, a.warmup - (time.monotonic() - t_start)), "warmup")

        # 1. Steady load.
        print(f"steady: {a.steady:.0f} s", flush=True)
        seq0, acked0, t0 = self.counters[0], self.counters[1], time.monotonic()
        pids = {p.name: p.p.pid for p in self.procs}
        for b, site in zip(self.brokers, ("store1", "hub")):
            for i, pid in enumerate(b.pids):
                pids[f"{b.kind} {site}" + (f" node {i + 1}" if len(b.pids) > 1 else "")] = pid
        pids.update({"producer (Python)": producer.pid, "hub consumer (Python)": consumer.pid,
                     "relay + sampler (Python)": os.getpid()})
        cpu0 = {k: _cpu(v) for k, v in pids.items()}
        self.sample_for(a.steady, "steady")
        seq1, acked1, t1 = self.counters[0], self.counters[1], time.monotonic()
        cpu1 = {k: _cpu(v) for k, v in pids.items()}
        steady_rate = (seq1 - seq0) / (t1 - t0)
        steady_ack_rate = (acked1 - acked0) / (t1 - t0)
        # Let the consumer see the window's last records (it runs on while
        # the producer goes on), then stop it before the cut.
        self.sample_for(a.settle, "settle")
        stop_consumer.set()
        cons = cons_q.get(timeout=60)
        consumer.join(30)

        # 2. Outage and catch-up.
        print(f"outage: cutting the hub link for {a.outage:.0f} s", flush=True)
        err_cut = self.counters[2]
        for r in self.relays:
            r.cut("reset")
        t_cut = time.monotonic()
        self.sample_for(a.outage, "outage")
        at_restore = self.sample("outage")
        for r in self.relays:
            r.restore()
        t_restore = time.monotonic()
        print("restored; waiting for the tee to catch up", flush=True)
        first_progress = None
        caught_up = None
        step = a.sample_ms / 1000
        deadline = t_restore + a.catchup_timeout
        nxt = t_restore
        while time.monotonic() < deadline:
            self.check_alive()
            s = self.sample("catchup")
            if first_progress is None and s["records"] is not None and s["records"] > at_restore["records"]:
                first_progress = s
            if s["lag_records"] == 0:
                caught_up = s
                break
            nxt += step
            time.sleep(max(0.0, nxt - time.monotonic()))
        if caught_up is None:
            print(f"WARNING: the tee did not catch up within {a.catchup_timeout:.0f}s after restore; "
                  f"last sample {self.samples[-1]}", flush=True)
        err_outage = self.counters[2] - err_cut
        if caught_up is not None:
            # A few seconds of steady state after the catch-up (lag shape).
            self.sample_for(a.settle, "after")

        # 3. Stop, flush, verify counts.
        self.stop_producer.set()
        prod = prod_q.get(timeout=660)
        producer.join(30)
        n = prod["acked"]
        print(f"producer stopped: {prod['sent']} sent, {n} acked, {prod['n_errors']} errors; "
              f"waiting up to {a.drain_timeout:.0f}s for the tee to copy everything", flush=True)
        from helpers import wait_for_count

        t_stop = time.monotonic()
        drained = None
        try:
            wait_until(lambda: self.check_alive() or (self.tee_topic() or {}).get("records", -1) >= n,
                       a.drain_timeout, lambda: f"the tee to copy all {n} records (last sample: {self.samples[-1]})",
                       interval=0.2)
            drained = time.monotonic() - t_stop
            on_hub = wait_for_count(self.hub, TARGET_TOPIC, n, timeout=120)
        except (RuntimeError, AssertionError) as e:
            print(f"WARNING: {e}", flush=True)
            on_hub = wait_for_count(self.hub, TARGET_TOPIC, 0, timeout=120)  # what is there now
        on_store = wait_for_count(self.store, TOPIC, n, timeout=120)
        final = self.tee_topic()
        metrics = http_text(self.admin + "/metrics")

        return dict(
            prod=prod, cons=cons, seq0=seq0, seq1=seq1, steady_rate=steady_rate, steady_ack_rate=steady_ack_rate,
            steady_s=t1 - t0, cpu={k: cpu1[k] - cpu0[k] for k in cpu0}, t_cut=t_cut, t_restore=t_restore,
            at_restore=at_restore, first_progress=first_progress, caught_up=caught_up, err_outage=err_outage,
            n=n, on_store=on_store, on_hub=on_hub, final=final, drained=drained,
            teed_metric=_metric(metrics, "switchyard_tee_records_total"),
            tee_errors_metric=_metric(metrics, "switchyard_tee_errors_total"),
        )

    def close(self):
        stop = getattr(self, "stop_producer", None)
        if stop is not None:
            stop.set()
        for ch in self.children:
            if ch.is_alive():
                ch.terminate()
                ch.join(5)
                if ch.is_alive():
                    ch.kill()
                    ch.join(5)
        for p in reversed(self.procs):
            p.stop()
        for b in reversed(self.brokers):
            b.close()
        for r in self.relays:
            try:
                r.close()
            except Exception as e:  # noqa: BLE001 - best effort at exit
                print(f"relay close: {e!r}", file=sys.stderr)


def tee_settings(a) -> str:
    """The `tee:` block for the settings given on the command line (none:
    Switchyard's defaults)."""
    kv = {k: getattr(a, k) for k in ("poll_interval_ms", "max_fetch_bytes", "retry_backoff_ms",
                                       "max_retry_backoff_ms") if getattr(a, k, None) is not None}
    return "tee:\n" + "".join(f"  {k}: {v}\n" for k, v in kv.items()) if kv else ""


def broker_text(a) -> str:
    if a.broker == "tansu":
        return "two Tansu, in-memory"
    from brokers import kafka_version

    return (f"two Apache Kafka {kafka_version()} clusters of {a.nodes} KRaft node{'s' if a.nodes > 1 else ''}"
            + (", replication factor 3, min.insync.replicas 2" if a.nodes > 1 else ""))


def tee_settings_text(a) -> str:
    kv = [f"{k} {getattr(a, k)}" for k in ("poll_interval_ms", "max_fetch_bytes", "retry_backoff_ms",
                                             "max_retry_backoff_ms") if getattr(a, k, None) is not None]
    return ", ".join(kv) + " (others: Switchyard defaults)" if kv else "Switchyard defaults"


def _yaml_list(bootstrap: str) -> str:
    return ", ".join(f'"{b}"' for b in bootstrap.split(","))


def _died(p: Proc):
    if not p.running():
        raise Died(f"{p.name} exited with {p.p.returncode}; log:\n{p.tail()}")
    return False


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(None, 1)[1])
    return total


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def build_info(binary: Path) -> str:
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(binary.stat().st_mtime))
    if binary.resolve() != SWITCHYARD.resolve():
        return f"`{binary}` built {built}"
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    return f"`target/release/switchyard` built {built}, checkout at {head or '?'}"


def report(args, r: dict, samples: list[dict], cmd: str) -> str:
    steady = [s for s in samples if s["phase"] == "steady" and s["lag_records"] is not None]
    lag_rec = [s["lag_records"] for s in steady]
    lag_ms = [s["lag_seconds"] * 1000 for s in steady]
    # Independent view: records acked to the producer but not yet copied (can
    # be slightly negative: the tee may copy a record before its ack reaches
    # the producer).
    behind = [s["acked"] - s["records"] for s in steady]
    acks = r["prod"]["acks"]
    e2e_send, e2e_ack = [], []
    for seq, send_ns, read_ns in r["cons"]["samples"]:
        if r["seq0"] <= seq < r["seq1"]:
            e2e_send.append((read_ns - send_ns) / 1e6)
            if seq in acks:
                e2e_ack.append((read_ns - acks[seq]) / 1e6)
    expected_samples = len(range(r["seq0"] + (-r["seq0"]) % args.sample_every, r["seq1"], args.sample_every))
    mib = args.size / 2**20
    at_restore = r["at_restore"]
    backlog = at_restore["lag_records"]
    backlog_alt = at_restore["acked"] - at_restore["records"]
    cu = r["caught_up"]
    catch_samples = [x for x in samples if x["phase"] == "catchup"]
    end = cu or (catch_samples[-1] if catch_samples else at_restore)
    catch_s = end["t"] - r["t_restore"]
    first_s = (r["first_progress"]["t"] - r["t_restore"]) if r["first_progress"] else float("nan")
    copied = end["records"] - at_restore["records"]
    copy_rate = copied / catch_s if catch_s > 0 else float("nan")
    copy_rate_active = copied / (catch_s - first_s) if catch_s > first_s else float("nan")
    catch_rate = backlog / catch_s if cu and catch_s > 0 else float("nan")
    peak = max([x["lag_records"] for x in catch_samples if x["lag_records"] is not None], default=backlog)
    kept_up = r["steady_rate"] >= 0.99 * args.rate and r["prod"]["unflushed"] == 0
    exact = r["on_hub"] == r["n"] and r["on_store"] == r["n"]
    cpu = r["cpu"]
    cpu_line = ", ".join(f"{k} {v / r['steady_s'] * 100:.0f}%" for k, v in cpu.items())

    L = [
        "# Tee lag",
        "",
        f"Machine: {machine()}. Brokers ({broker_text(args)}), Switchyard, the relay (Python) and the clients "
        "(confluent-kafka, own processes) share these cores.",
        "",
        f"Command: `{cmd}`; {build_info(args.switchyard)}.",
        "",
        f"Load average before the run: {' '.join(r['loadavg_before'])} (anything else running on the machine "
        "skews these numbers).",
        "",
        f"Route `orders` ({PARTITIONS} partitions) on `store1`, tee async to `hub` as `orders-store1`; the hub is "
        f"reached through a userspace relay{' per broker' if args.nodes > 1 else ''}. Tee settings: "
        f"{tee_settings_text(args)}. Producer: "
        f"acks=all, idempotent, linger 5 ms, keyed, {args.size} B values, target {args.rate} records/s.",
        "",
        f"## Steady load ({r['steady_s']:.0f} s, status sampled every {args.sample_ms} ms, {len(steady)} samples)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| producer rate (sent / acked) | {r['steady_rate']:,.0f} / {r['steady_ack_rate']:,.0f} records/s "
        f"({r['steady_ack_rate'] * mib:.1f} MiB/s){'' if kept_up else ' — BEHIND the target rate'} |",
        f"| producer max schedule backlog, queue-full retries | {r['prod_max_behind']} records, {r['buffer_errors']} |",
        f"| `lag_records` p50 / p99 / max | {pct(lag_rec, 50):,.0f} / {pct(lag_rec, 99):,.0f} / {max(lag_rec):,.0f} |",
        f"| `lag_seconds` p50 / p99 / max (ms) | {pct(lag_ms, 50):.0f} / {pct(lag_ms, 99):.0f} / {max(lag_ms):.0f} |",
        f"| acked − teed (records) p50 / p99 / max | {pct(behind, 50):,.0f} / {pct(behind, 99):,.0f} / "
        f"{max(behind):,.0f} |",
        f"| send → readable on hub (ms) p50 / p99 / max | {pct(e2e_send, 50):.1f} / {pct(e2e_send, 99):.1f} / "
        f"{max(e2e_send, default=float('nan')):.1f} |",
        f"| ack → readable on hub (ms) p50 / p99 / max | {pct(e2e_ack, 50):.1f} / {pct(e2e_ack, 99):.1f} / "
        f"{max(e2e_ack, default=float('nan')):.1f} |",
        f"| end-to-end samples (every {args.sample_every}th record) | {len(e2e_send):,} of {expected_samples:,} "
        f"({len(e2e_ack):,} with an ack time) |",
        f"| CPU (share of one core) | {cpu_line} |",
        "",
        f"## Outage ({args.outage:.0f} s, hub link reset) and catch-up",
        "",
        "| metric | value |",
        "|---|---|",
        f"| backlog at restore: `lag_records` / acked − teed | {backlog:,} / {backlog_alt:,} records "
        f"({backlog * mib:.0f} MiB) |",
        f"| `lag_seconds` at restore | {at_restore['lag_seconds']:.1f} s |",
        f"| restore → first record copied | {first_s:.2f} s |",
        (f"| restore → `lag_records` 0 | {catch_s:.2f} s |" if cu else
         f"| restore → `lag_records` 0 | NOT REACHED within {catch_s:.0f} s (lag then {end['lag_records']:,}) |"),
        f"| peak `lag_records` after restore | {peak:,} |",
        f"| catch-up rate (backlog at restore / catch-up time) | "
        + (f"{catch_rate:,.0f} records/s ({catch_rate * mib:.1f} MiB/s) |" if cu else "n/a |"),
        f"| tee copy rate restore → {'caught up' if cu else 'give-up'} (backlog + new records) | {copy_rate:,.0f} "
        f"records/s ({copy_rate * mib:.1f} MiB/s); {copy_rate_active:,.0f} records/s from the first copy on |",
        f"| producer errors during the outage / whole run | {r['err_outage']} / {r['prod']['n_errors']} |",
        f"| tee errors reported (`switchyard_tee_errors_total`) | {r['tee_errors_metric']:.0f} |",
        "",
        "## Completeness",
        "",
        "| metric | value |",
        "|---|---|",
        f"| records acked to the producer | {r['n']:,} (sent {r['prod']['sent']:,}) |",
        f"| producer stop → tee copied everything | "
        + (f"{r['drained']:.1f} s |" if r["drained"] is not None else f"NOT within {args.drain_timeout:.0f} s |"),
        f"| on store1 `orders` / on hub `orders-store1` (Fetch high watermarks) | {r['on_store']:,} / {r['on_hub']:,} "
        f"— {'exact' if exact else 'MISMATCH'} |",
        f"| teed (`switchyard_tee_records_total`, status `records`) | {r['teed_metric']:,.0f}, {r['final']['records']:,} |",
        "",
        "`lag_records`/`lag_seconds` are the tee's own view (source high watermark at its last fetch minus what it "
        "has written; seconds since the partition was last caught up, max over partitions). \"acked − teed\" is "
        "the producer's ack count minus the tee's copied count at the same instant. The end-to-end latencies are "
        "measured by a consumer reading the hub topic from its end (fetch.wait.max.ms 10) through the relay: "
        "send → read compares the record's `ts` header (time.time_ns() at produce()) with the time the consumer "
        "got it; ack → read uses the producer's delivery-report time instead.",
        "",
    ]
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                    help="both sites on Apache Kafka (default) or Tansu")
    ap.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                    help="Kafka brokers per site (3: replication factor 3, min ISR 2)")
    ap.add_argument("--rate", type=int, default=20000, help="records/s (default 20000)")
    ap.add_argument("--size", type=int, default=1024, help="value bytes (default 1024)")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of load before measuring (default 5)")
    ap.add_argument("--steady", type=float, default=30, help="steady-load window, seconds (default 30)")
    ap.add_argument("--settle", type=float, default=3, help="seconds after the window before the cut (default 3)")
    ap.add_argument("--outage", type=float, default=20, help="hub link cut, seconds (default 20)")
    ap.add_argument("--catchup-timeout", type=float, default=300,
                    help="give up waiting for lag 0 after the restore after this many s (default 300)")
    ap.add_argument("--drain-timeout", type=float, default=300,
                    help="after the producer stops, wait this long for the tee to copy everything (default 300 s)")
    ap.add_argument("--sample-ms", type=int, default=100, help="status sampling interval (default 100 ms)")
    ap.add_argument("--sample-every", type=int, default=50,
                    help="end-to-end latency for every Nth record (default 50)")
    for opt in ("poll-interval-ms", "max-fetch-bytes", "retry-backoff-ms", "max-retry-backoff-ms"):
        ap.add_argument(f"--{opt}", type=int, help=f"tee.{opt.replace('-', '_')} (default: Switchyard's)")
    ap.add_argument("--switchyard", type=Path, default=SWITCHYARD,
                    help="the switchyard binary (default target/release/switchyard), e.g. another commit's build")
    ap.add_argument("--out", type=Path, help="also write the Markdown report here")
    ap.add_argument("--raw", type=Path, help="write every status sample as JSON lines here")
    ap.add_argument("--keep-logs", action="store_true", help="keep the process logs (path printed)")
    args = ap.parse_args()
    for b, how in ((args.switchyard, "cargo build --release -p switchyard"), (TANSU, "scripts/setup.sh")):
        if not b.exists() and (b != TANSU or args.broker == "tansu"):
            sys.exit(f"{b} missing: run {how}")
    if args.broker == "tansu" and args.nodes != 1:
        sys.exit("--nodes is for --broker kafka")
    cmd = ".venv/bin/python benches/tee_lag.py " + " ".join(sys.argv[1:])

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    tmpdir = tempfile.mkdtemp(prefix="switchyard-tee-lag-")
    os.environ["SWITCHYARD_JVM_TMPDIR"] = tmpdir  # the JVMs' temporary files go with it
    bench = Bench(args, Path(tmpdir))
    ok = False
    try:
        bench.start()
        r = bench.run()
        r["prod_max_behind"] = bench.counters[4]
        r["loadavg_before"] = bench.loadavg_before
        r["buffer_errors"] = bench.counters[3]
        text = report(args, r, bench.samples, cmd.strip())
        ok = True
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        bench.close()
        if args.raw and bench.samples:
            with open(args.raw, "w") as f:
                for s in bench.samples:
                    f.write(json.dumps(s) + "\n")
        if ok and not args.keep_logs:
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)
        else:
            print(f"logs: {tmpdir}", file=sys.stderr)
    print(text)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    exact = r["on_hub"] == r["n"] and r["on_store"] == r["n"]
    return 0 if exact and r["prod"]["n_errors"] == 0 and r["caught_up"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
