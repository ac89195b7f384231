//! Micro-benchmarks of Switchyard's hot path, on the library's real code:
//!
//! * `produce_route`: parse a Produce frame (header + body, record batches as
//!   zero-copy slices) and find the upstream leader of every partition.
//! * `metadata_rewrite`: decode an upstream Metadata response, replace every
//!   upstream identity with the virtual cluster's, encode it for the client.
//! * `fetch_forward`: make a 1 MiB Fetch response fit for the client, by the
//!   in-place patch used on the hot path and by the full decode/re-encode it
//!   replaced (kept for responses with upstream leader endpoints).
//!
//! `cargo bench -p switchyard-bench` (criterion reports time per request and,
//! where set, throughput per byte).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchResponse, MetadataResponse, ProduceRequest, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use switchyard::codec::{self, fetch_patch, RequestFrame};
use switchyard::identity::Identity;
use switchyard::pipeline::{identity, At};
use switchyard::upstream::view::ClusterView;
use uuid::Uuid;

const TOPICS: usize = 50;
const PARTITIONS: i32 = 12;

fn identity() -> Identity {
    Identity::new(
        "bench",
        "127.0.0.1:9092".parse().expect("addr"),
        "proxy.example",
        3,
        None,
    )
}

fn upstream_metadata() -> MetadataResponse {
    let mut md = MetadataResponse::default();
    for id in 1..=3 {
        let mut b = MetadataResponseBroker::default();
        b.node_id = BrokerId(id);
        b.host = StrBytes::from_string(format!("broker-{id}.upstream"));
        b.port = 9092;
        md.brokers.push(b);
    }
    md.controller_id = BrokerId(1);
    md.cluster_id = Some(StrBytes::from_static_str("upstream-cluster"));
    for t in 0..TOPICS {
        let mut topic = MetadataResponseTopic::default();
        topic.name = Some(TopicName(StrBytes::from_string(format!("topic-{t}"))));
        topic.topic_id = Uuid::from_u128(t as u128 + 1);
        for p in 0..PARTITIONS {
            let mut part = MetadataResponsePartition::default();
            part.partition_index = p;
            part.leader_id = BrokerId(1 + p % 3);
            part.leader_epoch = 5;
            part.replica_nodes = vec![BrokerId(1), BrokerId(2), BrokerId(3)];
            part.isr_nodes = part.replica_nodes.clone();
            topic.partitions.push(part);
        }
        md.topics.push(topic);
    }
    md
}

fn response_frame<T: Encodable>(api: ApiKey, version: i16, body: &T) -> Bytes {
    let mut buf = BytesMut::new();
    let mut h = ResponseHeader::default();
    h.correlation_id = 7;
    h.encode(&mut buf, api.response_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    buf.freeze()
}

fn produce_frame() -> Bytes {
    // Three partitions of one topic, 256 KiB of (opaque) batch bytes each.
    let mut req = ProduceRequest::default();
    req.acks = 1;
    req.timeout_ms = 30_000;
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_static_str("topic-7"));
    for p in 0..3 {
        let mut pd = PartitionProduceData::default();
        pd.index = p;
        pd.records = Some(Bytes::from(vec![0x5a; 256 * 1024]));
        t.partition_data.push(pd);
    }
    req.topic_data.push(t);
    let mut h = RequestHeader::default();
    h.request_api_key = ApiKey::Produce as i16;
    h.request_api_version = 9;
    h.correlation_id = 1;
    h.client_id = Some(StrBytes::from_static_str("bench"));
    let mut buf = BytesMut::new();
    h.encode(&mut buf, ApiKey::Produce.request_header_version(9))
        .expect("header");
    req.encode(&mut buf, 9).expect("body");
    buf.freeze()
}

fn produce_route(c: &mut Criterion) {
    let view = Arc::new(ClusterView::from_metadata(&upstream_metadata()));
    let frame = produce_frame();
    let mut g = c.benchmark_group("produce_route");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("parse_decode_plan_768KiB", |b| {
        b.iter(|| {
            let req = RequestFrame::parse(frame.clone()).expect("parse");
            let body: ProduceRequest = req.decode().expect("decode");
            let mut leaders = 0;
            for t in &body.topic_data {
                for p in &t.partition_data {
                    leaders += view.leader(t.name.0.as_str(), p.index).unwrap_or(-1);
                }
            }
            leaders
        })
    });
    g.finish();
}

fn metadata_rewrite(c: &mut Criterion) {
    let id = identity();
    let frame = response_frame(ApiKey::Metadata, 12, &upstream_metadata());
    let mut g = c.benchmark_group("metadata_rewrite");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("{TOPICS}_topics_x_{PARTITIONS}_partitions"), |b| {
        b.iter(|| {
            let mut md: MetadataResponse =
                codec::decode_response_body(ApiKey::Metadata, 12, &frame).expect("decode");
            identity::metadata_answer(&id, &mut md);
            codec::encode_response(ApiKey::Metadata, 12, 7, &md).expect("encode")
        })
    });
    g.finish();
}

fn fetch_forward(c: &mut Criterion) {
    let id = identity();
    let md = upstream_metadata();
    let view = ClusterView::from_metadata(&md);
    let mut resp = FetchResponse::default();
    let mut t = FetchableTopicResponse::default();
    t.topic_id = Uuid::from_u128(8);
    for p in 0..4 {
        let mut pd = PartitionData::default();
        pd.partition_index = p;
        pd.high_watermark = 1_000_000;
        pd.records = Some(Bytes::from(vec![0x33; 256 * 1024]));
        t.partitions.push(pd);
    }
    resp.responses.push(t);
    let frame = response_frame(ApiKey::Fetch, 16, &resp);
    let at = At {
        api: ApiKey::Fetch,
        version: 16,
        site: 0,
        view: Arc::new(view.clone()),
        names: Arc::default(),
        sites: Arc::from(Vec::new()),
    };
    let mut g = c.benchmark_group("fetch_forward_1MiB");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("patch_in_place", |b| {
        b.iter_batched(
            || BytesMut::from(&frame[..]),
            |mut buf| {
                fetch_patch::patch_fetch_response(
                    &mut buf,
                    16,
                    |raw| {
                        view.names_by_id
                            .get(&Uuid::from_bytes(*raw))
                            .map(|n| (*id.topic_id(n).as_bytes(), n.clone()))
                    },
                    |topic, p| id.leader_for(topic, p).node_id,
                    switchyard::pipeline::identity::client_error,
                )
                .expect("walks");
                buf
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("decode_reencode", |b| {
        b.iter(|| {
            let mut r: FetchResponse =
                codec::decode_response_body(ApiKey::Fetch, 16, &frame).expect("decode");
            identity::fetch_answer(&at, &id, &mut r);
            codec::encode_response(ApiKey::Fetch, 16, 7, &r).expect("encode")
        })
    });
    g.finish();
}

criterion_group!(benches, produce_route, metadata_rewrite, fetch_forward);
criterion_main!(benches);
