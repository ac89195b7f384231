//! Process lifecycle against a real Tansu: JSON logs, and a graceful shutdown
//! that finishes in-flight requests, refuses new connections and exits 0.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, Raw, Switchyard, Tansu};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let t = Tansu::start();
    let mut sy = Switchyard::start(
        &t.addr(),
        "log:\n  format: json\ntimeouts:\n  shutdown_grace_ms: 8000\n",
    );
    let topic = TopicName(StrBytes::from_static_str("lifecycle"));
    let mut c = Raw::connect(sy.bootstrap);
    c.create_topic(&topic, 1);

    // A long-poll Fetch on an empty partition: the broker holds it for
    // max_wait_ms, so it is in flight when the signal arrives.
    let mut fetch = FetchRequest::default();
    fetch.max_wait_ms = 2000;
    fetch.min_bytes = 1;
    fetch.max_bytes = 1 << 20;
    fetch.replica_id = kafka_protocol::messages::BrokerId(-1);
    let mut ft = FetchTopic::default();
    ft.topic = topic;
    let mut fp = FetchPartition::default();
    fp.partition_max_bytes = 1 << 20;
    ft.partitions.push(fp);
    fetch.topics.push(ft);
    let sent = Instant::now();
    c.send(ApiKey::Fetch, 12, 2, &fetch);
    wait_for("the Fetch to be routed", Duration::from_secs(5), || {
        sy.metrics()
            .contains("switchyard_requests_total{api=\"Fetch\",version=\"12\"} 1")
            .then_some(())
    });
    let status = std::process::Command::new("kill")
        .args(["-TERM", &sy.proc.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    // The in-flight Fetch is still answered, after the broker's wait.
    let (corr, resp): (i32, FetchResponse) = c.recv(ApiKey::Fetch, 12);
    assert_eq!(corr, 2);
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.responses[0].partitions[0].error_code, 0);
    assert!(
        sent.elapsed() >= Duration::from_millis(1000),
        "fetch answered before the broker's wait"
    );
    // Then the connection is closed, and no new connection is accepted.
    assert!(c.closed_by_peer());
    wait_for("listener to close", Duration::from_secs(5), || {
        std::net::TcpStream::connect(sy.bootstrap)
            .is_err()
            .then_some(())
    });
    let code = wait_for("switchyard to exit", Duration::from_secs(15), || {
        sy.proc.child.try_wait().ok().flatten()
    });
    assert_eq!(
        code.code(),
        Some(0),
        "exit status {code:?}\n{}",
        sy.proc.log_text()
    );

    // Every log line is one JSON object with a level and a message.
    let log = sy.proc.log_text();
    assert!(log.lines().count() >= 5, "too few log lines:\n{log}");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(log.contains("shutdown requested"));
    assert!(log.contains("switchyard stopped"));
}
