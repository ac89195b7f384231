//! Property test: random and mutated frames never crash Switchyard and never
//! harm another client. Bounded (`SWITCHYARD_FUZZ_CASES`, default 300) so it
//! runs in CI on every change; raise it locally for a longer soak.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use common::{Raw, Switchyard, Tansu};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchRequest, FindCoordinatorRequest,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Valid requests to mutate, covering the routed APIs.
fn seeds() -> Vec<Bytes> {
    let topic = TopicName(StrBytes::from_static_str("fuzz"));
    let mut produce = ProduceRequest::default();
    produce.acks = 1;
    produce.timeout_ms = 1000;
    let mut t = TopicProduceData::default();
    t.name = topic.clone();
    let mut p = PartitionProduceData::default();
    // A record batch header's worth of bytes; content is opaque to the proxy.
    p.records = Some(Bytes::from(vec![0u8; 70]));
    t.partition_data.push(p);
    produce.topic_data.push(t);

    let mut fetch = FetchRequest::default();
    fetch.max_wait_ms = 10;
    fetch.max_bytes = 1024;
    let mut ft = FetchTopic::default();
    ft.topic = topic.clone();
    let mut fp = FetchPartition::default();
    fp.partition_max_bytes = 1024;
    ft.partitions.push(fp);
    fetch.topics.push(ft);

    let mut lo = ListOffsetsRequest::default();
    let mut lt = ListOffsetsTopic::default();
    lt.name = topic;
    let mut lp = ListOffsetsPartition::default();
    lp.timestamp = -1;
    lt.partitions.push(lp);
    lo.topics.push(lt);

    let mut fc = FindCoordinatorRequest::default();
    fc.coordinator_keys = vec![StrBytes::from_static_str("fuzz-group")];

    vec![
        Raw::encode(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()),
        Raw::encode(ApiKey::Metadata, 12, 2, &MetadataRequest::default()),
        Raw::encode(ApiKey::Produce, 9, 3, &produce),
        Raw::encode(ApiKey::Fetch, 12, 4, &fetch),
        Raw::encode(ApiKey::ListOffsets, 7, 5, &lo),
        Raw::encode(ApiKey::FindCoordinator, 4, 6, &fc),
    ]
}

#[derive(Debug, Clone)]
enum Case {
    /// Arbitrary bytes, sent as they are (the length prefix is random too).
    Raw(Vec<u8>),
    /// A valid request with bytes flipped, cut or inserted, correctly framed.
    Mutated {
        seed: usize,
        edits: Vec<(usize, u8, u8)>,
    },
}

fn strategy(n_seeds: usize) -> impl Strategy<Value = Case> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Case::Raw),
        (
            0..n_seeds,
            proptest::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 1..6)
        )
            .prop_map(|(seed, edits)| Case::Mutated { seed, edits }),
    ]
}

fn build(case: &Case, seeds: &[Bytes]) -> Vec<u8> {
    match case {
        Case::Raw(b) => b.clone(),
        Case::Mutated { seed, edits } => {
            let mut f = seeds[*seed].to_vec();
            for &(pos, op, byte) in edits {
                if f.is_empty() {
                    break;
                }
                let i = pos % f.len();
                match op {
                    0 => f[i] = byte,
                    1 => f.truncate(i),
                    _ => f.insert(i, byte),
                }
            }
            let mut out = (f.len() as i32).to_be_bytes().to_vec();
            out.extend_from_slice(&f);
            out
        }
    }
}

#[test]
fn random_and_mutated_frames_never_harm_other_clients() {
    let tansu = Tansu::start();
    let mut sy = Switchyard::start(&tansu.addr(), "limits:\n  max_frame_bytes: 65536\n");
    let seeds = seeds();
    // A long-lived bystander that must keep working across every case.
    let bystander = std::cell::RefCell::new(Raw::connect(sy.bootstrap));
    let cases: u32 = std::env::var("SWITCHYARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::cell::Cell::new(0i32);
    let result = runner.run(&strategy(seeds.len()), |case| {
        let bytes = build(&case, &seeds);
        {
            let mut s = std::net::TcpStream::connect(sy.bootstrap)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            s.set_read_timeout(Some(Duration::from_millis(200))).ok();
            let _ = s.write_all(&bytes);
            let mut sink = [0u8; 4096];
            let _ = s.read(&mut sink);
        }
        n.set(n.get() + 1);
        let mut b = bystander.borrow_mut();
        b.send(
            ApiKey::ApiVersions,
            3,
            n.get(),
            &ApiVersionsRequest::default(),
        );
        let (corr, av): (i32, ApiVersionsResponse) = b.recv(ApiKey::ApiVersions, 3);
        prop_assert_eq!((corr, av.error_code), (n.get(), 0));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n--- switchyard log ---\n{}", sy.proc.log_text());
    }
    assert_eq!(n.get() as u32, cases, "every case ran");
    assert!(
        sy.proc.is_running(),
        "switchyard exited:\n{}",
        sy.proc.log_text()
    );
    // Upstream traffic still flows for a fresh client too.
    let mut c = Raw::connect(sy.bootstrap);
    c.send(ApiKey::Metadata, 12, 1, &MetadataRequest::default());
    let (_, md): (i32, MetadataResponse) = c.recv(ApiKey::Metadata, 12);
    assert_eq!(md.brokers.len(), usize::from(sy.nodes));
    assert!(
        !sy.proc.log_text().contains("panicked"),
        "a task panicked:\n{}",
        sy.proc.log_text()
    );
}
