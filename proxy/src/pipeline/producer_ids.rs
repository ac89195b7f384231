//! The producer-ids stage (Produce): idempotent, non-transactional batches
//! get the producer id and epoch the target site knows the client by
//! (`upstream::producer_ids`: the client's ids are Switchyard's own, and
//! every site has its own per client) and the site's sequence numbers; the
//! batch CRC covers those fields and is recomputed (`codec::batch`).
//! Transactional batches keep their coordinator's ids. A rewrite touches the
//! request.

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ProduceRequest;

use super::plugins::ProduceHook;
use super::{Api, Exchange};
use crate::codec::batch;
use crate::upstream::producer_ids::{ProducerIds, SiteProducer};
use crate::upstream::{Site, UpstreamError};

/// Maps the request's idempotent batches to their sites' producers,
/// allocating on a site the first time a client producer writes there.
pub async fn map<A: Api<Req = ProduceRequest>>(
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
    A: Api<Req = ProduceRequest>,
    F: Fn(usize, i64, i16) -> Fut,
    Fut: Future<Output = Result<Arc<SiteProducer>, UpstreamError>>,
{
    let mut changed = false;
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
            if let Some(rewritten) = remap(records, target, client, &lookup).await? {
                p.records = Some(rewritten);
                changed = true;
            }
        }
    }
    if changed {
        x.touch("producer_ids");
    }
    Ok(())
}

/// One partition's record set with its idempotent batches mapped to the
/// site's producer; `None` when no batch needed it (the bytes stay the
/// client's).
async fn remap<F, Fut>(
    records: &Bytes,
    (site, topic, partition): (usize, &str, i32),
    client: (&str, i32),
    lookup: &F,
) -> anyhow::Result<Option<Bytes>>
where
    F: Fn(usize, i64, i16) -> Fut,
    Fut: Future<Output = Result<Arc<SiteProducer>, UpstreamError>>,
{
    let mut out: Option<BytesMut> = None;
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
    }
    Ok(out.map(BytesMut::freeze))
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
