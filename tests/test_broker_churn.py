"""Broker churn on a 3-broker Apache Kafka cluster, clients direct and
through Switchyard side by side (tests/churn.py; the full set of events
runs from the command line, these are the ones CI can afford).

Each test is one event run of tests/churn.py: a fresh 3-broker cluster, one
Switchyard per client library in front of it, and for confluent-kafka,
kafka-python and the Java client a steady producer (idempotent, acks=all,
~100 records/s) plus a committing consumer group, once direct and once
through Switchyard, all at once. Then the event:

* ``sigkill``: the broker coordinating the Switchyard side's confluent
  group (and leading partitions) SIGKILLed, restarted 15 s later;
* ``sigterm``: the same broker shut down gracefully, restarted 15 s later;
* ``sigstop``: the same broker frozen for 30 s.

What a user checks, for every library: no acked record lost (on either
side); through Switchyard, producers delivered everything they were handed
(a direct producer that the broker's fault left unfinished is printed as the
baseline, not failed: Kafka did that, not us); and Switchyard closed
no client connection because of the broker's fault
(``switchyard_client_connections_closed_total{reason="upstream"}``: a
Switchyard that does not export it fails the test); and no group through
Switchyard re-reads what it had committed before the event (an offset
reset), or had an idempotent producer's records written twice, beyond what
the same library did direct. Gaps (the longest time
without an ack, or without a delivery) are printed as ``CHURN ...`` lines,
never asserted.
"""

from __future__ import annotations

import pytest

import churn

pytestmark = pytest.mark.brokers("kafka")


@pytest.mark.timeout(600, method="signal")
@pytest.mark.parametrize("event", ["sigkill", "sigterm", "sigstop"])
def test_broker_churn_direct_vs_switchyard(event, kafka, switchyard, workers, tmp_path):
    run = churn.run_event(event, churn.LIBS, kafka=kafka, switchyard=switchyard, workers=workers,
                          workdir=tmp_path, log=lambda s: print(s, flush=True))
    print("\n" + run.text())
    for note in churn.baseline_notes(run):
        print("CHURN note: " + note)
    problems = churn.problems(run)
    assert not problems, "\n".join(problems)
