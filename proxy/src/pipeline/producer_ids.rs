//! The producer-ids stage (Produce): idempotent, non-transactional batches
//! get the producer id and epoch the target site knows the client by
//! (`upstream::producer_ids`: the client's ids are Switchyard's own, and
//! every site has its own per client) and the site's sequence numbers; the
//! batch CRC covers those fields and is recomputed (`codec::batch`).
//! Transactional batches keep their coordinator's ids. A rewrite touches the
//! request.
//!
//! The same stage keeps each partition's idempotent batches on one broker at
//! a time and in order, as the client would (`upstream::producer_ids`, "One
//! broker at a time per partition"): it admits each partition once the plan
//! names its broker ([`PlanStage`]), and learns from the answers which
//! batches failed ([`SiteStage`]).

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};

use super::plugins::ProduceHook;
use super::{Api, At, Exchange, PlanStage, SiteStage};
use crate::codec::{batch, errors};
use crate::upstream::producer_ids::{ProducerIds, Settled, SiteProducer};
use crate::upstream::{Site, Target, UpstreamError};

/// Maps the request's idempotent batches to their sites' producers,
/// allocating on a site the first time a client producer writes there.
pub async fn map<A: Api<Req = ProduceRequest, Resp = ProduceResponse>>(
    x: &mut Exchange<A>,
    ids: &ProducerIds,
    sites: &[Arc<Site>],
    hook: Option<&ProduceHook>,
) -> anyhow::Result<()> {
    let lookup = |si: usize, pid: i64, epoch: i16| async move {
        let site = sites
            .get(si)
            .ok_or_else(|| UpstreamError::NoBroker(format!("site {si}")))?;
        ids.on_site(site, si, pid, epoch).await
    };
    map_with(x, hook, lookup).await
}

/// [`map`] with the site producers found by `lookup` (site index, client
/// producer id, client epoch).
pub async fn map_with<A, F, Fut>(
    x: &mut Exchange<A>,
    hook: Option<&ProduceHook>,
    lookup: F,
) -> anyhow::Result<()>
where
    A: Api<Req = ProduceRequest, Resp = ProduceResponse>,
    F: Fn(usize, i64, i16) -> Fut,
    Fut: Future<Output = Result<Arc<SiteProducer>, UpstreamError>>,
{
    let mut changed = false;
    let mut claims = Vec::new();
    for (t, site) in x.body.topic_data.iter_mut().zip(&x.site_of) {
        let Some(site) = *site else {
            continue;
        };
        if x.names.is_held(site, t.name.0.as_str()) {
            continue; // answered with a retriable error, never sent
        }
        let virt = x.names.virt(site, &t.name);
        for p in &mut t.partition_data {
            let Some(records) = p.records.as_ref() else {
                continue;
            };
            // Sequences are numbered per batch as the client sent it.
            let client = match hook {
                Some(h) => h.origin(virt.0.as_str(), p.index),
                None => (virt.0.as_str(), p.index),
            };
            let target = (site, t.name.0.as_str(), p.index);
            let (rewritten, first) = remap(records, target, client, &lookup).await?;
            if let Some(rewritten) = rewritten {
                p.records = Some(rewritten);
                changed = true;
            }
            if let Some((producer, seq)) = first {
                claims.push(Claim {
                    site,
                    topic: t.name.clone(),
                    partition: p.index,
                    seq,
                    producer,
                    state: AtomicU8::new(UNSENT),
                });
            }
        }
    }
    if changed {
        x.touch("producer_ids");
    }
    // Without an answer (acks=0, never idempotent) nothing could settle.
    if !claims.is_empty() && !x.no_response {
        let order = Arc::new(Order::new(claims));
        x.on_plan(order.clone());
        x.on_site_answer(order);
    }
    Ok(())
}

const UNSENT: u8 = 0;
const IN_FLIGHT: u8 = 1;
const SETTLED: u8 = 2;

/// One partition's idempotent batches in a request: the site producer and
/// the site sequence of its first batch (the one the order is kept by).
struct Claim {
    site: usize,
    topic: TopicName,
    partition: i32,
    seq: i32,
    producer: Arc<SiteProducer>,
    state: AtomicU8,
}

/// A request's claims: admitted when planned, settled by the answers, and
/// on drop (the request finished or was abandoned) whatever was not answered
/// counts as failed, as the client was told.
struct Order {
    claims: Vec<Claim>,
    /// (site, topic, partition) → claim: every planned partition and every
    /// answered one is looked up (requests of thousands of partitions).
    index: std::collections::HashMap<(usize, TopicName, i32), usize>,
}

impl Order {
    fn new(claims: Vec<Claim>) -> Order {
        let index = claims
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.site, c.topic.clone(), c.partition), i))
            .collect();
        Order { claims, index }
    }

    fn claim(&self, site: usize, topic: &TopicName, partition: i32) -> Option<&Claim> {
        self.index
            .get(&(site, topic.clone(), partition))
            .and_then(|&i| self.claims.get(i))
    }
}

impl PlanStage for Order {
    fn name(&self) -> &'static str {
        "producer_ids"
    }

    fn admit(&self, (site, broker): Target, topic: &TopicName, partition: i32) -> Option<i16> {
        let c = self.claim(site, topic, partition)?;
        match c.producer.admit(topic.0.as_str(), partition, c.seq, broker) {
            Ok(()) => {
                c.state.store(IN_FLIGHT, Ordering::Release);
                None
            }
            Err(why) => {
                c.state.store(SETTLED, Ordering::Release);
                tracing::debug!(topic = %topic.0, partition, site, broker, seq = c.seq, ?why,
                    "idempotent batch held back: answered NOT_LEADER_OR_FOLLOWER unsent");
                Some(errors::NOT_LEADER_OR_FOLLOWER)
            }
        }
    }

    fn unsent(&self, site: usize, topic: &TopicName, partition: i32) {
        if let Some(c) = self.claim(site, topic, partition) {
            if c.state.swap(SETTLED, Ordering::AcqRel) == UNSENT {
                c.producer.unsent(topic.0.as_str(), partition, c.seq);
            }
        }
    }
}

impl SiteStage<ProduceResponse> for Order {
    fn name(&self) -> &'static str {
        "producer_ids"
    }

    fn rewrite(&self, at: &At, r: &mut ProduceResponse) {
        for t in &r.responses {
            for p in &t.partition_responses {
                let Some(c) = self.claim(at.site, &t.name, p.index) else {
                    continue;
                };
                if c.state.swap(SETTLED, Ordering::AcqRel) == IN_FLIGHT {
                    c.producer
                        .settle(t.name.0.as_str(), p.index, c.seq, settled(p.error_code));
                }
            }
        }
    }
}

impl Drop for Order {
    fn drop(&mut self) {
        for c in &self.claims {
            let (topic, partition) = (c.topic.0.as_str(), c.partition);
            match c.state.swap(SETTLED, Ordering::AcqRel) {
                // Its broker failed or the deadline passed: answered
                // NOT_LEADER_OR_FOLLOWER, and possibly written.
                IN_FLIGHT => c.producer.settle(topic, partition, c.seq, Settled::Retried),
                UNSENT => c.producer.unsent(topic, partition, c.seq),
                _ => {}
            }
        }
    }
}

/// What a partition's answer means for the order: written (a duplicate too:
/// the broker had it), retried by the client with the same sequence, or
/// neither.
fn settled(code: i16) -> Settled {
    match code {
        errors::NONE | errors::DUPLICATE_SEQUENCE_NUMBER => Settled::Written,
        c if ResponseError::try_from_code(c).is_some_and(|e| e.is_retriable()) => Settled::Retried,
        _ => Settled::Other,
    }
}

/// One partition's record set with its idempotent batches mapped to the
/// site's producer; `None` when no batch needed it (the bytes stay the
/// client's).
async fn remap<F, Fut>(
    records: &Bytes,
    (site, topic, partition): (usize, &str, i32),
    client: (&str, i32),
    lookup: &F,
) -> anyhow::Result<(Option<Bytes>, Option<(Arc<SiteProducer>, i32)>)>
where
    F: Fn(usize, i64, i16) -> Fut,
    Fut: Future<Output = Result<Arc<SiteProducer>, UpstreamError>>,
{
    let mut out: Option<BytesMut> = None;
    let mut first = None;
    for b in batch::producer_fields(records) {
        if b.producer_id < 0 || b.transactional {
            continue;
        }
        let sp = lookup(site, b.producer_id, b.producer_epoch).await?;
        let seq = sp.sequence(
            topic,
            partition,
            (client.0, client.1, b.base_sequence),
            b.records_count.max(1),
        );
        tracing::debug!(
            topic,
            partition,
            client_pid = b.producer_id,
            client_seq = b.base_sequence,
            site,
            site_pid = sp.pid,
            site_seq = seq,
            "idempotent batch mapped"
        );
        let buf = out.get_or_insert_with(|| BytesMut::from(&records[..]));
        batch::set_producer(&mut buf[b.at..b.at + b.len], sp.pid, sp.epoch, seq);
        first.get_or_insert((sp, seq));
    }
    Ok((out.map(BytesMut::freeze), first))
}

/// DescribeProducers: the idempotent producers a site lists under the ids
/// it issued to Switchyard are shown under the ids their clients know
/// (`ProducerIds::client_of`). Transactional producers (their coordinator's
/// ids) and producers that did not write through Switchyard keep theirs.
/// Sequence numbers stay the site's (Switchyard renumbers per site).
pub struct Described(pub Arc<ProducerIds>);

/// Registers [`Described`] on a DescribeProducers.
pub fn describe<A: Api<Resp = kafka_protocol::messages::DescribeProducersResponse>>(
    x: &mut Exchange<A>,
    ids: &Arc<ProducerIds>,
) {
    x.on_site_answer(Arc::new(Described(ids.clone())));
}

impl SiteStage<kafka_protocol::messages::DescribeProducersResponse> for Described {
    fn name(&self) -> &'static str {
        "producer_ids"
    }

    fn rewrite(&self, at: &At, r: &mut kafka_protocol::messages::DescribeProducersResponse) {
        for p in r.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
            for s in &mut p.active_producers {
                if let Some((pid, epoch)) = self.0.client_of(at.site, s.producer_id.0) {
                    s.producer_id = kafka_protocol::messages::ProducerId(pid);
                    s.producer_epoch = i32::from(epoch);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::produce::Produce;
    use crate::codec::batch::{BatchParams, Compression, WireRecord};
    use crate::pipeline::testing::exchange;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    fn records(n: usize, pid: i64, transactional: bool) -> Bytes {
        let rec = WireRecord {
            offset: 0,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![(Bytes::from_static(b"h"), None)],
        };
        let params = BatchParams {
            compression: Compression::Zstd,
            producer_id: pid,
            producer_epoch: 1,
            base_sequence: 42,
        };
        let b = batch::encode(&vec![rec; n], &params).unwrap();
        if !transactional {
            return b;
        }
        // The transactional bit sits in the attributes; the CRC covers them.
        let mut m = BytesMut::from(&b[..]);
        m[22] |= 0x10;
        let crc = crc32c::crc32c(&m[21..]);
        m[17..21].copy_from_slice(&crc.to_be_bytes());
        m.freeze()
    }

    fn request(parts: Vec<Bytes>) -> ProduceRequest {
        let mut t = TopicProduceData::default();
        t.name = TopicName(StrBytes::from_static_str("orders"));
        for (i, r) in parts.into_iter().enumerate() {
            let mut p = PartitionProduceData::default();
            p.index = i as i32;
            p.records = Some(r);
            t.partition_data.push(p);
        }
        let mut req = ProduceRequest::default();
        req.topic_data.push(t);
        req
    }

    #[tokio::test]
    async fn idempotent_batches_take_the_sites_producer_and_stay_valid() {
        let ids = ProducerIds::new();
        let lookup = |si: usize, pid: i64, epoch: i16| {
            let ids = &ids;
            async move {
                ids.mapped((si, pid, epoch), || async { Ok((9001, 3)) })
                    .await
            }
        };
        let mut x = exchange::<Produce>(request(vec![records(2, 7, false), records(3, 7, false)]));
        x.site_of = vec![Some(1)];
        map_with(&mut x, None, lookup).await.unwrap();
        assert_eq!(x.touched(), ["producer_ids"]);
        let mut seqs = Vec::new();
        for p in &x.body.topic_data[0].partition_data {
            // `batches` checks the CRC: a stale one would be an error.
            let parsed = batch::batches(p.records.as_ref().unwrap()).unwrap();
            assert_eq!((parsed[0].producer_id, parsed[0].producer_epoch), (9001, 3));
            assert!(!batch::decode(&parsed[0]).unwrap().is_empty());
            seqs.push(parsed[0].base_sequence);
        }
        assert_eq!(seqs, [0, 0], "each partition numbered from 0 on the site");

        // A retry of the same client batch gets the same site sequence.
        let mut again = exchange::<Produce>(request(vec![records(2, 7, false)]));
        again.site_of = vec![Some(1)];
        map_with(&mut again, None, lookup).await.unwrap();
        let p = &again.body.topic_data[0].partition_data[0];
        assert_eq!(
            batch::batches(p.records.as_ref().unwrap()).unwrap()[0].base_sequence,
            0
        );
    }

    #[tokio::test]
    async fn plain_and_transactional_batches_are_left_alone() {
        let lookup = |_: usize, _: i64, _: i16| async {
            Err::<Arc<SiteProducer>, _>(UpstreamError::NoBroker("must not be asked".into()))
        };
        let plain = records(1, -1, false);
        let txn = records(1, 7, true);
        let mut x = exchange::<Produce>(request(vec![plain.clone(), txn.clone()]));
        x.site_of = vec![Some(0)];
        map_with(&mut x, None, lookup).await.unwrap();
        assert!(
            x.touched().is_empty(),
            "nothing rewritten: zero-copy stays possible"
        );
        let parts = &x.body.topic_data[0].partition_data;
        assert_eq!(parts[0].records.as_ref(), Some(&plain));
        assert_eq!(parts[1].records.as_ref(), Some(&txn));
    }
}
