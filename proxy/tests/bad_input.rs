//! Bad input against the real binary in front of a real broker (Apache Kafka
//! and Tansu): every bad frame closes (or, where Kafka does so, answers) only
//! its own connection, is logged with the client's address, and never harms
//! other clients.

mod common;

use std::time::Duration;

use common::{broker_kinds, wait_for, Broker, BrokerKind, Raw, Switchyard, Tansu};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

/// A well-behaved client: ApiVersions then Metadata, checking the answers.
fn assert_healthy(sy: &Switchyard) {
    let mut c = Raw::connect(sy.bootstrap);
    c.send(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default());
    let (corr, av): (i32, ApiVersionsResponse) = c.recv(ApiKey::ApiVersions, 3);
    assert_eq!((corr, av.error_code), (1, 0));
    c.send(ApiKey::Metadata, 12, 2, &MetadataRequest::default());
    let (corr, md): (i32, MetadataResponse) = c.recv(ApiKey::Metadata, 12);
    assert_eq!(corr, 2);
    let ports: Vec<i32> = md.brokers.iter().map(|b| b.port).collect();
    let base = i32::from(sy.bootstrap.port());
    assert_eq!(
        ports,
        (1..=i32::from(sy.nodes))
            .map(|i| base + i)
            .collect::<Vec<_>>()
    );
}

fn start(kind: BrokerKind) -> (Broker, Switchyard) {
    let t = Broker::start(kind);
    let s = Switchyard::start(&t.addr(), "limits:\n  max_frame_bytes: 1048576\n");
    (t, s)
}

fn expect_closed(sy: &Switchyard, frame_with_len: &[u8], what: &str) {
    let mut c = Raw::connect(sy.bootstrap);
    use std::io::Write;
    c.s.write_all(frame_with_len).expect("write");
    assert!(c.closed_by_peer(), "{what}: connection was not closed");
    assert_healthy(sy);
}

fn log_mentions(sy: &Switchyard, needle: &str) {
    wait_for(
        &format!("log line containing {needle:?}"),
        Duration::from_secs(5),
        || sy.proc.log_text().contains(needle).then_some(()),
    );
}

#[test]
fn bad_frames_close_only_their_connection() {
    for kind in broker_kinds() {
        bad_frames_on(kind);
    }
}

fn bad_frames_on(kind: BrokerKind) {
    let (_t, sy) = start(kind);
    assert_healthy(&sy);
    // A bystander connection stays open and usable throughout.
    let mut bystander = Raw::connect(sy.bootstrap);

    // Oversized: 2 MiB announced against a 1 MiB limit; nothing else sent.
    expect_closed(&sy, &(2 * 1024 * 1024i32).to_be_bytes(), "oversized frame");
    log_mentions(&sy, "exceeds the limit of 1048576 bytes");
    // Negative length.
    expect_closed(&sy, &(-5i32).to_be_bytes(), "negative length");
    // Frame shorter than a request header.
    expect_closed(&sy, &[0, 0, 0, 3, 0, 18, 0], "short frame");
    log_mentions(&sy, "shorter than a request header");
    // Unknown API key 999.
    expect_closed(
        &sy,
        &[0, 0, 0, 10, 0x03, 0xe7, 0, 0, 0, 0, 0, 1, 0xff, 0xff],
        "unknown api key",
    );
    log_mentions(&sy, "unknown API key 999");
    // Produce v99: a version we never advertised.
    let mut f = Raw::encode(ApiKey::Metadata, 1, 5, &MetadataRequest::default()).to_vec();
    f[0..2].copy_from_slice(&0i16.to_be_bytes());
    f[2..4].copy_from_slice(&99i16.to_be_bytes());
    let mut framed = (f.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&f);
    expect_closed(&sy, &framed, "unsupported version");
    log_mentions(&sy, "API version not supported");
    // Metadata v12 with its body cut short.
    let f = Raw::encode(ApiKey::Metadata, 12, 6, &MetadataRequest::default());
    let cut = &f[..f.len() - 2];
    let mut framed = (cut.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(cut);
    expect_closed(&sy, &framed, "truncated body");
    // Garbage.
    expect_closed(
        &sy,
        b"GET / HTTP/1.1\r\nHost: kafka\r\n\r\n",
        "HTTP request",
    );
    // Truncated mid-frame then EOF.
    {
        let mut c = Raw::connect(sy.bootstrap);
        use std::io::Write;
        c.s.write_all(&[0, 0, 0, 50, 0, 3]).expect("write");
        c.s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        assert!(c.closed_by_peer());
    }

    // Every log line about a bad client names its address.
    for line in sy
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("closing client connection"))
    {
        assert!(
            line.contains("client=127.0.0.1:"),
            "no client address in: {line}"
        );
    }
    // The bystander never noticed.
    bystander.send(ApiKey::ApiVersions, 0, 77, &ApiVersionsRequest::default());
    let (corr, av): (i32, ApiVersionsResponse) = bystander.recv(ApiKey::ApiVersions, 0);
    assert_eq!((corr, av.error_code), (77, 0));
    let m = sy.metrics();
    for kind in [
        "frame_too_large",
        "bad_frame",
        "unknown_api",
        "unsupported_version",
        "malformed_request",
    ] {
        assert!(
            m.contains(&format!("switchyard_errors_total{{kind=\"{kind}\"}}")),
            "no {kind} in metrics"
        );
    }
}

#[test]
fn api_versions_fallback_and_pipelining() {
    let (_t, sy) = start(BrokerKind::Tansu);
    // KIP-511: a newer ApiVersions than we know gets a v0 body with error 35.
    let mut c = Raw::connect(sy.bootstrap);
    let f = Raw::encode(ApiKey::ApiVersions, 3, 9, &ApiVersionsRequest::default());
    let mut f = f.to_vec();
    f[2..4].copy_from_slice(&42i16.to_be_bytes());
    c.send_frame(&f).expect("send");
    let (corr, av): (i32, ApiVersionsResponse) = c.recv(ApiKey::ApiVersions, 0);
    assert_eq!((corr, av.error_code), (9, 35));
    assert!(av
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));

    // A Kafka 4.4 client's first ApiVersions (v5, KIP-1242): the cluster and
    // node it expects, here not ours. v5 is not served: the same KIP-511
    // answer (the range it may use, v4 at most), never a hang or a close.
    let mut v4 = ApiVersionsRequest::default();
    v4.client_software_name = StrBytes::from_static_str("apache-kafka-java");
    v4.client_software_version = StrBytes::from_static_str("4.4.0");
    let mut f = Raw::encode(ApiKey::ApiVersions, 4, 10, &v4).to_vec();
    f[2..4].copy_from_slice(&5i16.to_be_bytes());
    let tagged = f.pop().expect("the body's tagged fields");
    let cluster = b"some-other-cluster";
    f.push(cluster.len() as u8 + 1);
    f.extend_from_slice(cluster);
    f.extend_from_slice(&7i32.to_be_bytes());
    f.push(tagged);
    c.send_frame(&f).expect("send");
    let (corr, av): (i32, ApiVersionsResponse) = c.recv(ApiKey::ApiVersions, 0);
    assert_eq!((corr, av.error_code), (10, 35));
    let range = av
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::ApiVersions as i16)
        .map(|k| k.max_version);
    assert_eq!(range, Some(4));

    // 64 pipelined requests of mixed kinds: answers in order, none missing.
    // An acks=0 Produce in the middle must get no answer at all.
    let mut produce = ProduceRequest::default();
    produce.acks = 0;
    produce.timeout_ms = 1000;
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_static_str("no-such-topic-acks0"));
    let mut p = PartitionProduceData::default();
    p.index = 0;
    t.partition_data.push(p);
    produce.topic_data.push(t);
    let mut expected = Vec::new();
    for i in 0..64 {
        match i % 3 {
            0 => c.send(ApiKey::ApiVersions, 3, i, &ApiVersionsRequest::default()),
            1 => c.send(ApiKey::Metadata, 12, i, &MetadataRequest::default()),
            _ => {
                c.send(ApiKey::Produce, 9, i, &produce);
                continue;
            }
        }
        expected.push(i);
    }
    for want in expected {
        let f = c.read_frame().expect("response");
        let corr = i32::from_be_bytes([f[0], f[1], f[2], f[3]]);
        assert_eq!(corr, want, "responses out of order");
    }
    assert_healthy(&sy);
}

#[test]
fn silent_connections_do_not_hurt_others_and_idle_out() {
    let t = Tansu::start();
    let sy = Switchyard::start(&t.addr(), "limits:\n  idle_timeout_ms: 3000\n");
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(std::net::TcpStream::connect(sy.bootstrap).expect("connect"));
    }
    // One more that starts a frame and stalls.
    let mut stalled = Raw::connect(sy.bootstrap);
    use std::io::Write;
    stalled.s.write_all(&[0, 0, 1, 0, 0, 3]).expect("write");
    wait_for("1001 connections open", Duration::from_secs(10), || {
        sy.metrics()
            .contains("switchyard_client_connections 1001")
            .then_some(())
    });
    assert_healthy(&sy);
    // All of them are closed by the idle timeout, and logged.
    wait_for("idle connections closed", Duration::from_secs(20), || {
        sy.metrics()
            .contains("switchyard_client_connections 0\n")
            .then_some(())
    });
    assert!(stalled.closed_by_peer());
    let idle_lines = sy
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("closing idle client connection") && l.contains("client=127.0.0.1:"))
        .count();
    assert!(idle_lines >= 1001, "only {idle_lines} idle closes logged");
    assert_healthy(&sy);
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn metric(sy: &Switchyard, name: &str) -> u64 {
    sy.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn a_thousand_huge_frames_stay_within_the_memory_budget() {
    for kind in broker_kinds() {
        huge_frames_on(kind);
    }
}

/// 1,000 clients each declare a 100 MiB frame and send 512 KiB of it (what
/// the kernel's socket buffers take): without a budget Switchyard would hold
/// 500 MiB of their bytes; with a budget of 128 MiB it holds at most that,
/// and other clients keep working.
fn huge_frames_on(kind: BrokerKind) {
    const BUDGET: u64 = 128 << 20;
    const EACH: usize = 512 << 10;
    let t = Broker::start(kind);
    let sy = Switchyard::start(
        &t.addr(),
        &format!(
            "limits:\n  max_frame_bytes: {}\n  max_request_bytes_in_flight: {BUDGET}\n\
             timeouts:\n  request_ms: 5000\n",
            100 << 20
        ),
    );
    assert_healthy(&sy);
    let before = rss_bytes(sy.proc.child.id());
    let mut attackers = Vec::new();
    let chunk = vec![0x42u8; 64 << 10];
    for _ in 0..1000 {
        let mut s = std::net::TcpStream::connect(sy.bootstrap).expect("connect");
        use std::io::Write;
        s.write_all(&(100i32 << 20).to_be_bytes()).expect("length");
        s.set_nonblocking(true).expect("nonblocking");
        let mut sent = 0;
        while sent < EACH {
            match s.write(&chunk[..chunk.len().min(EACH - sent)]) {
                Ok(n) => sent += n,
                // Switchyard stopped reading: the socket's buffers are full.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("attacker write: {e}"),
            }
        }
        attackers.push(s);
    }
    wait_for("the budget spent", Duration::from_secs(60), || {
        (metric(&sy, "switchyard_request_memory_waits_total") > 0).then_some(())
    });
    // Everything the attackers sent that Switchyard took in, it has read by
    // now: held memory stops growing once the budget is spent.
    let held = metric(&sy, "switchyard_request_memory_bytes");
    assert!(
        held <= BUDGET,
        "{held} bytes held over a budget of {BUDGET}"
    );
    let grown = rss_bytes(sy.proc.child.id()).saturating_sub(before);
    // The budget, plus each connection's free first 16 KiB and its own
    // state (about 10 KiB idle), plus allocator slack.
    let bound = BUDGET + 1000 * (16 << 10) + 1000 * (16 << 10) + (32 << 20);
    assert!(
        grown <= bound,
        "{kind:?}: RSS grew by {} MiB under 1,000 huge frames; bound {} MiB",
        grown >> 20,
        bound >> 20
    );
    // Other clients keep working meanwhile.
    assert_healthy(&sy);
    // Gone clients give their memory back: those holding part of it (and
    // waiting for more, not reading) once their wait for memory runs out.
    drop(attackers);
    wait_for("memory given back", Duration::from_secs(60), || {
        (metric(&sy, "switchyard_request_memory_bytes") == 0).then_some(())
    });
    assert_healthy(&sy);
}
