//! Plugin overhead in batch mode, on the library's real code and the real
//! `keep-all` component (`plugins/build.sh` builds it):
//!
//! * `decode`: decode a Kafka batch into owned records — done only when a
//!   plugin changes something (for re-encoding), for reference;
//! * `keep_all_call`: build the WIT batch (one data buffer, descriptor
//!   tables) straight from the Kafka batch and call `on-batch` on a pooled
//!   instance under its deadline;
//! * `keep_all_fetch_path`: the whole fetch-stage hook for one batch (walk,
//!   build, call, the batch left untouched): what a route with a keep-all
//!   plugin adds per batch;
//!
//! each for 1000 records of 100-byte values with two headers, 1 record per
//! element (criterion's `elem/s`: ns/record = 1e9 / rate).
//! `cargo bench -p switchyard-bench --bench plugins`

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard::codec::batch::{self, BatchParams, Compression, WireRecord};
use switchyard::metrics::Metrics;
use switchyard::pipeline::plugins::{fetch_records, Fetched};
use switchyard::plugin::conflict::Conflicts;
use switchyard::plugin::registry::Registry;
use switchyard::plugin::{records, BatchMeta, FailurePolicy, Host, Limits, Site, Stage};

const RECORDS: usize = 1000;

fn kafka_batch() -> Bytes {
    let recs: Vec<WireRecord> = (0..RECORDS)
        .map(|i| WireRecord {
            offset: i as i64,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i:08}"))),
            value: Some(Bytes::from(vec![b'v'; 100])),
            headers: vec![
                (
                    Bytes::from_static(b"trace"),
                    Some(Bytes::from_static(b"abc123")),
                ),
                (
                    Bytes::from_static(b"kind"),
                    Some(Bytes::from_static(b"sale")),
                ),
            ],
        })
        .collect();
    batch::encode(
        &recs,
        &BatchParams {
            compression: Compression::None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        },
    )
    .expect("encode")
}

fn meta() -> BatchMeta {
    BatchMeta {
        stage: Stage::Fetch,
        topic: "orders".into(),
        partition: 0,
        origin_site: 0,
        local_site: 0,
        target_site: None,
        client_id: None,
        base_offset: 0,
    }
}

fn bench(c: &mut Criterion) {
    let wasm = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/keep-all.wasm"),
    )
    .expect("plugins/dist/keep-all.wasm (run plugins/build.sh)");
    let host = Host::new(Arc::new(Metrics::new())).expect("host");
    let sites = vec![Site {
        id: 0,
        name: "local".into(),
        priority: 0,
    }];
    let keep = host
        .load(
            "keep-all",
            &wasm,
            "",
            sites.clone(),
            FailurePolicy::FailOpen,
            Limits::default(),
        )
        .expect("load");
    let reg = Registry::new(host, sites, Conflicts::new(Vec::new(), 10));
    let bytes = kafka_batch();
    let walked = batch::batches(&bytes).expect("walk");

    let mut g = c.benchmark_group("plugin_overhead");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            let bs = batch::batches(&bytes).expect("walk");
            batch::decode(&bs[0]).expect("decode").len()
        })
    });
    g.bench_function("keep_all_call", |b| {
        b.iter(|| {
            let wit = records::to_batch_raw(meta(), &walked[0]).expect("batch");
            keep.on_batch(&wit).expect("call").len()
        })
    });
    let chain = [keep.clone()];
    g.bench_function("keep_all_fetch_path", |b| {
        b.iter(|| match fetch_records(&reg, &chain, meta(), &bytes) {
            Fetched::Unchanged => 0,
            _ => panic!("keep-all changed the batch"),
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
