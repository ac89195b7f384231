//! Produce (key 0): per-partition routing to the upstream leaders.
//!
//! The common case, every partition of the request led by one upstream broker,
//! forwards the client's frame byte for byte: record batches are not decoded,
//! copied or re-encoded. Only when partitions live on several brokers is the
//! request split (the batches are still opaque `Bytes` slices of the client's
//! frame) and the responses merged.
//!
//! `acks=0` requests have no response, neither from the upstream nor to the
//! client, so nothing is queued for them.
//!
//! Responses are rewritten only when they carry upstream identities: the
//! KIP-951 `CurrentLeader` hint and `NodeEndpoints` (v10+), which become the
//! partition's virtual leader and that node's endpoint, or when topic names
//! were renamed for the site.
//!
//! Sync tee: partitions of routes with `sync` tee targets are acked only once
//! the tee has written their records to every sync target (`tee`); an
//! `acks=0` produce has no ack to hold, so its records are teed like async.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::names::Names;
use super::plugins::{self, ProduceHook};
use super::{rewrite_or_pass, split, unavailable, Ctx, Outcome, Reply};
use crate::codec::errors;
use crate::codec::errors::DUPLICATE_SEQUENCE_NUMBER;
use crate::codec::{self, RequestFrame};
use crate::identity::Identity;
use crate::upstream::{PendingResponse, Site};

/// A partition whose ack must also wait for its route's sync tee targets.
struct SyncWait {
    route: usize,
    /// The site the records were written to.
    site: usize,
    /// Physical topic on the source site.
    topic: String,
    partition: i32,
    /// `lastOffsetDelta` of the partition's batch: the ack covers
    /// `base_offset ..= base_offset + last_delta`.
    last_delta: i64,
}

pub async fn route(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let mut body: ProduceRequest = req.decode()?;
    // Plugins first: they see the client's names and may rename or route.
    let hook = plugins::produce(ctx, &req, &mut body).await;
    let plugged = hook.as_ref().is_some_and(|h| h.changed);
    let router = ctx.proxy.router.clone();
    let mut names = Names::default();
    for (topic, site) in hook.iter().flat_map(|h| h.pinned.iter()) {
        names.pin(topic, *site);
    }
    let site_of = split::resolve(&mut body, &mut names, &router, ctx.who(&req), &[]);
    let remapped = map_producer_ids(ctx, &mut body, &site_of, &names, hook.as_ref()).await?;
    let (plan, missing) = split::plan(&ctx.proxy.sites, &body, &site_of, &names).await;
    let acks = body.acks;
    let identity = ctx.identity();
    let sync = sync_waits(ctx, &names, &body);

    // Everything on one broker under the client's own names and no sync tee:
    // the client's bytes go upstream untouched.
    if missing.is_empty()
        && plan.len() == 1
        && !names.renamed()
        && sync.is_empty()
        && !remapped
        && !plugged
    {
        if let Some(&target) = plan.keys().next() {
            if acks == 0 {
                send_unacked(ctx, target, &req, req.frame.clone()).await;
                return Ok(Outcome::NoResponse);
            }
            let site = ctx.site(target.0);
            // Counted until answered: a failover drains these first.
            let in_flight = site.write_started();
            // A broker that cannot be reached: the session answers the whole
            // request for it (`unavailable`), as for every API.
            let pending = ctx
                .pools
                .call(target, req.api_key, req.frame.clone())
                .await?;
            // The answer if the broker fails before answering (names copied:
            // borrowed ones would keep the records' buffer alive).
            let fallback = detached(unavailable::produce(&body));
            let proxy = ctx.proxy.clone();
            let timeout = proxy.request_timeout();
            let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
            return Ok(Outcome::Later(Box::pin(async move {
                let frame = pending.wait(timeout).await;
                drop(in_flight);
                match frame {
                    Ok(frame) => {
                        rewrite_or_pass(api, version, corr, frame, |r: &mut ProduceResponse| {
                            note_errors(&site, r);
                            virtualise(&identity, r)
                        })
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "produce answered NOT_LEADER_OR_FOLLOWER for a failed broker");
                        unavailable::count(&proxy.metrics, api, errors::NOT_LEADER_OR_FOLLOWER);
                        Ok(Reply::Frame(codec::encode_response(
                            api, version, corr, &fallback,
                        )?))
                    }
                }
            })));
        }
    }

    let parts = split::split(&body, &plan);
    if acks == 0 {
        for (target, sub) in parts {
            let frame =
                codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), &sub)?;
            send_unacked(ctx, target, &req, frame).await;
        }
        if !missing.is_empty() {
            tracing::debug!(
                partitions = missing.len(),
                "acks=0 produce to unknown partitions dropped"
            );
        }
        return Ok(Outcome::NoResponse);
    }
    let mut missing = missing;
    // Per broker: its answer to come, and its partitions to answer
    // NOT_LEADER_OR_FOLLOWER for if it fails.
    let mut pending: Vec<(usize, PendingResponse, split::Slots)> = Vec::with_capacity(parts.len());
    let mut in_flight = Vec::with_capacity(parts.len());
    for (target, sub) in parts {
        let frame =
            codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), &sub)?;
        let slots = split::partitions_of(&sub);
        match ctx.pools.call(target, req.api_key, frame).await {
            Ok(p) => {
                in_flight.push(ctx.site(target.0).write_started());
                pending.push((target.0, p, slots));
            }
            Err(e) => {
                tracing::debug!(error = %e, "produce partitions of a failed broker answered NOT_LEADER_OR_FOLLOWER");
                unavailable::count(
                    &ctx.proxy.metrics,
                    req.api_key,
                    errors::NOT_LEADER_OR_FOLLOWER,
                );
                missing.extend(
                    slots
                        .into_iter()
                        .map(|(t, p)| (target.0, t, p, errors::NOT_LEADER_OR_FOLLOWER)),
                );
            }
        }
    }
    let proxy = ctx.proxy.clone();
    let deadline = tokio::time::Instant::now() + proxy.request_timeout();
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    // The client gives up after its own timeout; so do the sync waits.
    let sync_deadline = Instant::now()
        + proxy
            .tee
            .sync_timeout()
            .min(Duration::from_millis(body.timeout_ms.max(0) as u64));
    Ok(Outcome::Later(Box::pin(async move {
        let mut out = ProduceResponse::default();
        let mut in_flight = in_flight.into_iter();
        for (site, p, slots) in pending {
            let frame = p.wait_until(deadline).await;
            drop(in_flight.next());
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, "produce partitions of a failed broker answered NOT_LEADER_OR_FOLLOWER");
                    unavailable::count(&proxy.metrics, api, errors::NOT_LEADER_OR_FOLLOWER);
                    missing.extend(
                        slots
                            .into_iter()
                            .map(|(t, p)| (site, t, p, errors::NOT_LEADER_OR_FOLLOWER)),
                    );
                    continue;
                }
            };
            let r: ProduceResponse = codec::decode_response_body(api, version, &frame)?;
            // Upstream answers only: our own "no leader" answers must not
            // count, or a client hammering a missing topic defeats the
            // refresh rate limit.
            if let Some(s) = proxy.sites.get(site) {
                note_errors(s, &r);
            }
            out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
            for mut t in r.responses {
                if !sync.is_empty() {
                    await_sync(
                        &proxy,
                        &sync,
                        &t.name.0,
                        &mut t.partition_responses,
                        sync_deadline,
                    )
                    .await;
                }
                t.name = names.virt(site, &t.name);
                push_topic(&mut out.responses, t, hook.as_ref());
            }
        }
        for (site, name, index, code) in missing {
            let mut p = PartitionProduceResponse::default();
            p.index = index;
            p.error_code = code;
            p.base_offset = -1;
            let mut t = TopicProduceResponse::default();
            t.name = names.virt(site, &name);
            t.partition_responses.push(p);
            push_topic(&mut out.responses, t, hook.as_ref());
        }
        for (topic, index, code, msg) in hook.iter().flat_map(|h| h.answered.iter()) {
            let mut p = PartitionProduceResponse::default();
            p.index = *index;
            p.error_code = *code;
            p.base_offset = -1;
            p.error_message = msg.clone().map(StrBytes::from_string);
            let mut t = TopicProduceResponse::default();
            t.name = TopicName(StrBytes::from_string(topic.clone()));
            t.partition_responses.push(p);
            push_topic(&mut out.responses, t, None);
        }
        virtualise(&identity, &mut out);
        Ok(Reply::Frame(codec::encode_response(
            api, version, corr, &out,
        )?))
    })))
}

/// Idempotent, non-transactional batches get the producer id and epoch the
/// target site knows the client by (`upstream::producer_ids`: client ids are
/// Switchyard's own, every site has its own per client); the batch CRC
/// covers those fields and is recomputed. Sequences stay the client's.
/// Returns whether anything was rewritten.
async fn map_producer_ids(
    ctx: &Ctx<'_>,
    body: &mut ProduceRequest,
    site_of: &[Option<usize>],
    names: &Names,
    hook: Option<&ProduceHook>,
) -> anyhow::Result<bool> {
    let mut changed = false;
    for (t, site) in body.topic_data.iter_mut().zip(site_of) {
        let Some(site) = *site else {
            continue;
        };
        if names.is_held(site, t.name.0.as_str()) {
            continue; // answered with a retriable error, never sent
        }
        let virt = names.virt(site, &t.name);
        for p in &mut t.partition_data {
            let Some(records) = p.records.as_ref() else {
                continue;
            };
            // Sequences are numbered per batch as the client sent it.
            let client = match hook {
                Some(h) => h.origin(virt.0.as_str(), p.index),
                None => (virt.0.as_str(), p.index),
            };
            if let Some(rewritten) =
                remap_batches(ctx, site, t.name.0.as_str(), p.index, client, records).await?
            {
                p.records = Some(rewritten);
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// Offsets in a v2 batch header.
const ATTRIBUTES_AT: usize = 21;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;
const BATCH_HEADER: usize = 61;
const TRANSACTIONAL: i16 = 0x10;

async fn remap_batches(
    ctx: &Ctx<'_>,
    site: usize,
    topic: &str,
    partition: i32,
    client: (&str, i32),
    records: &bytes::Bytes,
) -> anyhow::Result<Option<bytes::Bytes>> {
    let mut out: Option<bytes::BytesMut> = None;
    let mut at = 0usize;
    while at + BATCH_HEADER <= records.len() {
        let b = &records[at..];
        let len = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let total = usize::try_from(len).unwrap_or(0) + 12;
        if total < BATCH_HEADER || at + total > records.len() || b[16] != 2 {
            break; // not a whole v2 batch: the broker will say what is wrong
        }
        let attrs = i16::from_be_bytes([b[ATTRIBUTES_AT], b[ATTRIBUTES_AT + 1]]);
        let pid = i64::from_be_bytes(b[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].try_into()?);
        let epoch = i16::from_be_bytes([b[PRODUCER_EPOCH_AT], b[PRODUCER_EPOCH_AT + 1]]);
        if pid >= 0 && attrs & TRANSACTIONAL == 0 {
            let sp = ctx
                .proxy
                .producer_ids
                .on_site(&ctx.site(site), site, pid, epoch)
                .await?;
            let seq = i32::from_be_bytes([
                b[BASE_SEQUENCE_AT],
                b[BASE_SEQUENCE_AT + 1],
                b[BASE_SEQUENCE_AT + 2],
                b[BASE_SEQUENCE_AT + 3],
            ]);
            let count = i32::from_be_bytes([
                b[RECORDS_COUNT_AT],
                b[RECORDS_COUNT_AT + 1],
                b[RECORDS_COUNT_AT + 2],
                b[RECORDS_COUNT_AT + 3],
            ]);
            let site_seq = sp.sequence(topic, partition, (client.0, client.1, seq), count.max(1));
            tracing::debug!(
                topic,
                partition,
                client_pid = pid,
                client_seq = seq,
                site,
                site_pid = sp.pid,
                site_seq,
                "idempotent batch mapped"
            );
            let seq = site_seq;
            let buf = out.get_or_insert_with(|| bytes::BytesMut::from(&records[..]));
            set_producer(&mut buf[at..at + total], sp.pid, sp.epoch, seq);
        }
        at += total;
    }
    Ok(out.map(bytes::BytesMut::freeze))
}

/// Writes producer id, epoch and base sequence into a whole v2 batch and
/// recomputes its CRC-32C (which covers everything from the attributes on).
fn set_producer(batch: &mut [u8], pid: i64, epoch: i16, seq: i32) {
    if batch.len() < BATCH_HEADER {
        return;
    }
    batch[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&pid.to_be_bytes());
    batch[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&epoch.to_be_bytes());
    batch[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&seq.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// The partitions of `body` (physical names) on routes with sync tee targets.
fn sync_waits(ctx: &Ctx<'_>, names: &Names, body: &ProduceRequest) -> Vec<SyncWait> {
    let router = &ctx.proxy.router;
    let mut out = Vec::new();
    for t in &body.topic_data {
        let Some((route, site)) = names
            .entries()
            .iter()
            .find(|e| e.phys == t.name)
            .and_then(|e| Some((e.route?, e.site)))
        else {
            continue;
        };
        if !router.routes().get(route).is_some_and(|r| r.has_sync_tee()) {
            continue;
        }
        for p in &t.partition_data {
            // Transactional records become visible to the tee (which reads
            // committed data only) when the transaction commits, long after
            // this ack: waiting would deadlock the transaction. They are
            // copied once committed, like an async tee's.
            let transactional = p
                .records
                .as_ref()
                .and_then(|r| r.get(ATTRIBUTES_AT..ATTRIBUTES_AT + 2))
                .is_some_and(|a| i16::from_be_bytes([a[0], a[1]]) & TRANSACTIONAL != 0);
            if transactional {
                continue;
            }
            // lastOffsetDelta sits at bytes 23..27 of a v2 batch header; a
            // batch too short to have one is the broker's to reject.
            let last_delta = p
                .records
                .as_ref()
                .and_then(|r| r.get(23..27))
                .map(|b| i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])))
                .unwrap_or(0);
            out.push(SyncWait {
                route,
                site,
                topic: t.name.0.to_string(),
                partition: p.index,
                last_delta,
            });
        }
    }
    out
}

/// Holds the acks of sync-teed partitions until every sync target has the
/// records; a target that fails or times out turns the partition's answer
/// into that error (the records are on the source: an idempotent client's
/// retry is deduplicated there and waits for the tee again).
async fn await_sync(
    proxy: &Arc<crate::shared::Proxy>,
    sync: &[SyncWait],
    topic: &str,
    parts: &mut [PartitionProduceResponse],
    deadline: Instant,
) {
    for p in parts.iter_mut() {
        // DUPLICATE_SEQUENCE_NUMBER: an idempotent retry of a batch the source
        // already has; the client counts it as success, so it must wait too.
        if p.error_code != 0 && p.error_code != DUPLICATE_SEQUENCE_NUMBER {
            continue;
        }
        let Some(w) = sync
            .iter()
            .find(|w| w.topic == topic && w.partition == p.index)
        else {
            continue;
        };
        // base_offset -1: offsets unknown (see `Tee::wait_synced`).
        if p.error_code == DUPLICATE_SEQUENCE_NUMBER {
            p.base_offset = -1;
        }
        let through = if p.base_offset < 0 {
            -1
        } else {
            p.base_offset + w.last_delta
        };
        let waited = proxy
            .tee
            .wait_synced(
                w.route,
                &proxy.sites[w.site],
                &w.topic,
                w.partition,
                (p.base_offset, through),
                deadline,
            )
            .await;
        tracing::debug!(
            topic,
            partition = p.index,
            base = p.base_offset,
            through,
            ?waited,
            "sync tee ack"
        );
        if let Err((code, msg)) = waited {
            p.error_code = code;
            p.error_message = Some(StrBytes::from_string(msg));
        }
    }
}

/// Sends an acks=0 request; a failed broker loses it, as it would for a
/// client connected directly (nothing is answered either way).
async fn send_unacked(
    ctx: &mut Ctx<'_>,
    target: crate::upstream::Target,
    req: &RequestFrame,
    frame: bytes::Bytes,
) {
    if let Err(e) = ctx.pools.send(target, req.api_key, frame, false).await {
        tracing::debug!(error = %e, "acks=0 produce to a failed broker dropped");
    }
}

/// Copies topic names out of the request's buffer.
fn detached(mut r: ProduceResponse) -> ProduceResponse {
    for t in &mut r.responses {
        t.name = TopicName(StrBytes::from_string(t.name.0.to_string()));
    }
    r
}

fn note_errors(site: &Arc<Site>, r: &ProduceResponse) {
    for p in r
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
    {
        site.note_partition_error(p.error_code);
    }
}

/// Adds a topic's answers, under the client's own topic and partition when
/// a produce plugin moved the records; two answers for one client
/// partition (records kept and records moved) become one: the first error,
/// else the kept records' offset.
fn push_topic(
    out: &mut Vec<TopicProduceResponse>,
    t: TopicProduceResponse,
    hook: Option<&ProduceHook>,
) {
    for mut p in t.partition_responses {
        let (topic, index) = match hook {
            Some(h) => h.origin(t.name.0.as_str(), p.index),
            None => (t.name.0.as_str(), p.index),
        };
        let moved = topic != t.name.0.as_str();
        p.index = index;
        let o = match out.iter_mut().position(|o| o.name.0.as_str() == topic) {
            Some(i) => &mut out[i],
            None => {
                let mut n = TopicProduceResponse::default();
                n.name = TopicName(StrBytes::from_string(topic.to_string()));
                out.push(n);
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        match o.partition_responses.iter_mut().find(|q| q.index == index) {
            None => o.partition_responses.push(p),
            Some(q) => {
                if q.error_code == 0 && p.error_code != 0 {
                    *q = p;
                } else if q.error_code == 0 && !moved && p.error_code == 0 {
                    q.base_offset = p.base_offset;
                }
            }
        }
    }
}

/// Replaces upstream leader hints with virtual ones. Returns whether anything changed.
pub fn virtualise(id: &Identity, r: &mut ProduceResponse) -> bool {
    let mut changed = !r.node_endpoints.is_empty();
    let mut nodes = BTreeSet::new();
    for t in &mut r.responses {
        for p in &mut t.partition_responses {
            if p.current_leader.leader_id.0 >= 0 || p.current_leader.leader_epoch >= 0 {
                let leader = id.leader_for(t.name.0.as_str(), p.index).node_id;
                let mut cl = LeaderIdAndEpoch::default();
                cl.leader_id = BrokerId(leader);
                cl.leader_epoch = -1;
                p.current_leader = cl;
                nodes.insert(leader);
                changed = true;
            }
        }
    }
    if changed {
        r.node_endpoints = nodes
            .into_iter()
            .filter_map(|n| id.node(n))
            .map(|n| {
                let mut e = NodeEndpoint::default();
                e.node_id = BrokerId(n.node_id);
                e.host = StrBytes::from_string(n.host.clone());
                e.port = n.port;
                e.rack = id.rack.clone().map(StrBytes::from_string);
                e
            })
            .collect();
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::batch::{self, BatchParams, Compression, WireRecord};

    #[test]
    fn producer_rewrite_keeps_the_batch_valid() {
        let rec = WireRecord {
            offset: 0,
            timestamp: 1_700_000_000_000,
            key: Some(bytes::Bytes::from_static(b"k")),
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: vec![(bytes::Bytes::from_static(b"h"), None)],
        };
        for compression in [Compression::None, Compression::Zstd] {
            let params = BatchParams {
                compression,
                producer_id: 7,
                producer_epoch: 1,
                base_sequence: 42,
            };
            let original = batch::encode(&[rec.clone(), rec.clone()], &params).unwrap();
            let mut b = original.to_vec();
            set_producer(&mut b, 9001, 3, 40);
            // `batches` checks the CRC: a stale one would be an error.
            let parsed = batch::batches(&bytes::Bytes::from(b)).unwrap();
            assert_eq!(parsed.len(), 1);
            assert_eq!((parsed[0].producer_id, parsed[0].producer_epoch), (9001, 3));
            assert_eq!(parsed[0].base_sequence, 40);
            assert_eq!(batch::decode(&parsed[0]).unwrap().len(), 2);
        }
    }
}
