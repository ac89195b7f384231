//! What stage tests build: an exchange and a site answer's context without
//! a data plane or a broker (answers are built in memory, as a site would
//! send them).

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::protocol::Encodable;

use super::names::Names;
use super::{Api, At, Exchange};
use crate::codec::{self, RequestFrame};
use crate::upstream::ClusterView;

/// An exchange for `body` as a client would send it (the latest version
/// the crate encodes, client id "test").
pub fn exchange<A: Api>(body: A::Req) -> Exchange<A>
where
    A::Req: Encodable,
{
    exchange_at::<A>(body, None)
}

/// [`exchange`] at a given API version.
pub fn exchange_at<A: Api>(body: A::Req, version: Option<i16>) -> Exchange<A>
where
    A::Req: Encodable,
{
    let key = A::KEY;
    let version = version.unwrap_or(newest(key));
    let client_id = Some(kafka_protocol::protocol::StrBytes::from_static_str("test"));
    let frame = codec::encode_request(key, version, client_id, &body).unwrap();
    let req = RequestFrame::parse(frame).unwrap();
    Exchange {
        req,
        body,
        names: Names::default(),
        site_of: Vec::new(),
        views: Vec::new(),
        unanswered: Vec::new(),
        timeout: Duration::from_secs(30),
        no_response: false,
        offload: None,
        touched: Vec::new(),
        plan_stages: Vec::new(),
        site_stages: Vec::new(),
        client_stages: Vec::new(),
    }
}

/// The newest version of `key` Switchyard speaks.
pub fn newest(key: kafka_protocol::messages::ApiKey) -> i16 {
    codec::versions::TABLE
        .iter()
        .find(|t| t.0 == key)
        .map_or(0, |t| t.2)
}

/// Where a site's answer is handled: `site` of no real site, with `view`.
pub fn at<A: Api>(site: usize, version: i16, names: Names, view: ClusterView) -> At {
    At {
        api: A::KEY,
        version,
        site,
        view: Arc::new(view),
        names: Arc::new(names),
        sites: Arc::from(Vec::new()),
    }
}

/// A config with sites `a` (default), `b` and `hub`, none of them running,
/// and `routes` (YAML list items, indented two spaces).
pub fn config(routes: &str) -> String {
    format!(
        "
cluster_id: c1
listen:
  bind: 127.0.0.1:9092
sites:
  - name: a
    bootstrap: [\"127.0.0.1:19092\"]
  - name: b
    bootstrap: [\"127.0.0.1:19093\"]
  - name: hub
    bootstrap: [\"127.0.0.1:19094\"]
default_site: a
routes:
{routes}"
    )
}

/// The data plane of [`config`]: built, never started (no connection is
/// made until a request needs one).
pub fn plane(routes: &str) -> Arc<crate::shared::DataPlane> {
    proxy(routes).plane.clone()
}

/// The whole proxy of [`config`] (its listeners too), never started.
pub fn proxy(routes: &str) -> Arc<crate::shared::Proxy> {
    let loaded = crate::shared::Loaded::text(&config(routes)).unwrap();
    crate::shared::Proxy::new(loaded)
}

/// Routes as a client with id "app" on the main listener.
pub const WHO: crate::route::Who<'static> = crate::route::Who {
    listener: "default",
    client_id: "app",
};

/// A batch of `n` one-byte records from producer `pid` (-1: none) at base
/// sequence `seq`, transactional or not.
pub fn batch(n: usize, pid: i64, seq: i32, transactional: bool) -> bytes::Bytes {
    use crate::codec::batch::{self, BatchParams, Compression, WireRecord};
    let rec = WireRecord {
        offset: 0,
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(bytes::Bytes::from_static(b"v")),
        headers: vec![],
    };
    let params = BatchParams {
        compression: Compression::None,
        producer_id: pid,
        producer_epoch: 0,
        base_sequence: seq,
    };
    let mut b = bytes::BytesMut::from(&batch::encode(&vec![rec; n], &params).unwrap()[..]);
    if transactional {
        // The transactional bit sits in the attributes; the CRC covers them.
        b[22] |= 0x10;
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    b.freeze()
}

/// A produce of `partitions` partitions of `topic`, each one batch of
/// three records (transactional: producer id 7, else none).
pub fn produce(
    topic: &str,
    partitions: usize,
    transactional: bool,
    acks: i16,
) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let b = batch(3, if transactional { 7 } else { -1 }, 0, transactional);
    let mut t = TopicProduceData::default();
    t.name = kafka_protocol::messages::TopicName(kafka_protocol::protocol::StrBytes::from_string(
        topic.to_string(),
    ));
    for i in 0..partitions {
        let mut p = PartitionProduceData::default();
        p.index = i as i32;
        p.records = Some(b.clone());
        t.partition_data.push(p);
    }
    let mut r = kafka_protocol::messages::ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 30_000;
    r.topic_data.push(t);
    r
}
