//! The plugins stage of Produce and Fetch: a route's produce chain runs on
//! a client's batches before they are routed (and teed), its fetch chain on
//! the records of a Fetch answer before the consumer sees them
//! (`plugin::chain` says what plugins may decide and how failures apply).
//!
//! On Produce it is the first request stage (plugins see the client's own
//! names and may rename or route), and a client stage ([`Origins`]) answers
//! the client for its own topics and partitions. On Fetch it is a site stage
//! ([`FetchChains`]) that runs on the plugins' blocking pool.
//!
//! Batches no plugin changed keep their bytes (zero-copy on produce: the
//! client's frame still goes upstream untouched when nothing else changes).
//! Changed batches are re-encoded: on produce as the client's batch (same
//! producer fields and codec, records renumbered; the site's sequence
//! numbers follow the records actually sent), on fetch in place (same base
//! offset, offsets and lastOffsetDelta, codec, timestamps type, producer
//! fields; records taken out leave offset gaps, as compaction does).

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{FetchResponse, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::names::{fetch_physical, Names};
use super::{Api, At, ClientStage, Exchange, SiteStage};
use crate::codec::batch::{self, Layout, WireRecord};
use crate::codec::errors::KAFKA_STORAGE_ERROR;
use crate::plugin::chain::{self, Scope};
use crate::plugin::registry::{Registry, Which};
use crate::plugin::{BatchMeta, Loaded, Stage};
use crate::route::{Router, Who};

// What a batch a fail-closed plugin could not process is answered with:
// to a producer POLICY_VIOLATION (not retriable: the producer reports it
// instead of retrying until its delivery timeout), to a consumer
// KAFKA_STORAGE_ERROR (retriable: it carries on once the plugin works again).
use crate::codec::errors::POLICY_VIOLATION;

/// What the produce hook did to a request.
#[derive(Debug, Default)]
pub struct ProduceHook {
    /// True when the request body differs from the client's frame.
    pub changed: bool,
    /// `(topic, partition)` now in the request → the client's own
    /// `(topic, partition)` it came from (virtual names).
    origins: Vec<((String, i32), (String, i32))>,
    /// Partitions answered without a write: the client's topic and
    /// partition, error code (0: every record dropped), message.
    pub answered: Vec<(String, i32, i16, Option<String>)>,
    /// Records routed to another site: virtual topic → site.
    pub pinned: Vec<(String, usize)>,
}

impl ProduceHook {
    /// Answers every partition of a topic with POLICY_VIOLATION (nothing
    /// of it is written).
    fn refuse(&mut self, topic: &str, parts: &mut Vec<PartitionProduceData>, why: &str) {
        self.changed = true;
        for p in parts.drain(..) {
            self.answered.push((
                topic.to_string(),
                p.index,
                POLICY_VIOLATION,
                Some(why.to_string()),
            ));
        }
    }

    /// The client's `(topic, partition)` for one now in the request.
    pub fn origin<'a>(&'a self, topic: &'a str, partition: i32) -> (&'a str, i32) {
        self.origins
            .iter()
            .find(|((t, p), _)| t == topic && *p == partition)
            .map(|(_, (t, p))| (t.as_str(), *p))
            .unwrap_or((topic, partition))
    }
}

/// The produce stage, before the names are resolved: runs the produce
/// chains of the request's routes, pins topics a plugin routed elsewhere,
/// and registers [`Origins`] when it changed the request (which it then
/// touches). `None`: no route of the request has produce plugins (nothing
/// was looked at).
pub async fn produce<A: Api<Req = ProduceRequest, Resp = ProduceResponse>>(
    x: &mut Exchange<A>,
    reg: Option<&Arc<Registry>>,
    router: &Router,
    who: Who<'_>,
) -> Option<Arc<ProduceHook>> {
    let reg = reg?;
    if !reg.any_produce() {
        return None;
    }
    let client_id = x.req.client_id.as_ref().map(|c| c.to_string());
    let hook = Arc::new(run_chains(&mut x.body, reg, router, who, client_id).await);
    for (topic, site) in &hook.pinned {
        x.names.pin(topic, *site);
    }
    if hook.changed {
        x.touch("plugins");
        x.on_client_answer(Arc::new(Origins(hook.clone())));
    }
    Some(hook)
}

async fn run_chains(
    body: &mut ProduceRequest,
    reg: &Arc<Registry>,
    router: &Router,
    who: Who<'_>,
    client_id: Option<String>,
) -> ProduceHook {
    let mut hook = ProduceHook::default();
    let mut added: Vec<TopicProduceData> = Vec::new();
    for t in &mut body.topic_data {
        let virt = t.name.0.to_string();
        let Some(route) = router.route_of(who, &virt) else {
            continue;
        };
        let plugins = match reg.chain(route, Which::Produce) {
            Ok(p) if p.is_empty() => continue,
            Ok(p) => p,
            Err(missing) => {
                hook.refuse(&virt, &mut t.partition_data, &missing.0);
                continue;
            }
        };
        // Whole-topic renames first (`topic-name`): the batches move under
        // the new name untouched, and leave the chain.
        match rename_topic(&plugins, &virt) {
            Ok(None) => {}
            Ok(Some(new)) => {
                hook.changed = true;
                for p in t.partition_data.drain(..) {
                    hook.origins
                        .push(((new.clone(), p.index), (virt.clone(), p.index)));
                    add_partition(&mut added, &new, p);
                }
                continue;
            }
            Err(msg) => {
                hook.refuse(&virt, &mut t.partition_data, &msg);
                continue;
            }
        }
        let resolved = router.resolve(who, &virt);
        let site = resolved.site;
        let physical = resolved.physical.to_string();
        let mut keep = Vec::with_capacity(t.partition_data.len());
        for mut p in std::mem::take(&mut t.partition_data) {
            let Some(records) = p.records.clone() else {
                keep.push(p);
                continue;
            };
            let meta = BatchMeta {
                stage: Stage::Produce,
                topic: virt.clone(),
                partition: p.index,
                origin_site: site as u16,
                local_site: site as u16,
                target_site: None,
                client_id: client_id.clone(),
                base_offset: -1,
            };
            match run_produce(reg, &plugins, meta, &physical, site, &records).await {
                Produced::Unchanged => keep.push(p),
                Produced::Refused(msg) => {
                    hook.changed = true;
                    hook.answered
                        .push((virt.clone(), p.index, POLICY_VIOLATION, Some(msg)));
                }
                Produced::Changed { kept, moved } => {
                    hook.changed = true;
                    let index = p.index;
                    match kept {
                        Some(b) => {
                            p.records = Some(b);
                            keep.push(p);
                        }
                        // Every record dropped (or moved): acknowledged
                        // here, there is nothing to write.
                        None if moved.is_empty() => {
                            hook.answered.push((virt.clone(), index, 0, None))
                        }
                        None => {}
                    }
                    for (to_site, topic, b) in moved {
                        if let Some(s) = to_site {
                            hook.pinned.push((topic.clone(), s));
                        }
                        hook.origins
                            .push(((topic.clone(), index), (virt.clone(), index)));
                        let mut part = PartitionProduceData::default();
                        part.index = index;
                        part.records = Some(b);
                        add_partition(&mut added, &topic, part);
                    }
                }
            }
        }
        t.partition_data = keep;
    }
    if !hook.changed {
        return hook;
    }
    // Moved records may not land in a partition the request also writes:
    // Kafka takes one batch per partition, and merging two producers'
    // numbering is not possible. Refused per the record's origin.
    for a in added {
        for p in a.partition_data {
            let clash = body
                .topic_data
                .iter()
                .any(|t| t.name == a.name && t.partition_data.iter().any(|q| q.index == p.index));
            if clash {
                let (ot, op) = hook.origin(a.name.0.as_str(), p.index);
                let (ot, op) = (ot.to_string(), op);
                hook.answered.push((
                    ot,
                    op,
                    POLICY_VIOLATION,
                    Some(format!(
                        "a plugin moved records to {}-{}, which this request also writes",
                        a.name.0, p.index
                    )),
                ));
                continue;
            }
            match body.topic_data.iter_mut().find(|t| t.name == a.name) {
                Some(t) => t.partition_data.push(p),
                None => {
                    let mut t = TopicProduceData::default();
                    t.name = a.name.clone();
                    t.partition_data.push(p);
                    body.topic_data.push(t);
                }
            }
        }
    }
    body.topic_data.retain(|t| !t.partition_data.is_empty());
    hook
}

/// The client stage of a produce the plugins changed: answers under the
/// client's own topics and partitions (two answers for one client
/// partition, records kept and records moved, become one: the first error,
/// else the kept records' offset), then the partitions the plugins answered
/// themselves.
pub struct Origins(pub Arc<ProduceHook>);

impl ClientStage<ProduceResponse> for Origins {
    fn name(&self) -> &'static str {
        "plugins"
    }

    fn rewrite(&self, r: &mut ProduceResponse) {
        let mut out: Vec<TopicProduceResponse> = Vec::with_capacity(r.responses.len());
        for t in std::mem::take(&mut r.responses) {
            self.push(&mut out, t);
        }
        for (topic, index, code, msg) in &self.0.answered {
            let mut p = PartitionProduceResponse::default();
            p.index = *index;
            p.error_code = *code;
            p.base_offset = -1;
            p.error_message = msg.clone().map(StrBytes::from_string);
            push_partition(&mut out, topic, *index, p, false);
        }
        r.responses = out;
    }
}

impl Origins {
    fn push(&self, out: &mut Vec<TopicProduceResponse>, t: TopicProduceResponse) {
        for p in t.partition_responses {
            let (topic, index) = self.0.origin(t.name.0.as_str(), p.index);
            let moved = topic != t.name.0.as_str();
            push_partition(out, topic, index, p, moved);
        }
    }
}

/// Adds one partition's answer under `topic` and `index`; a second answer
/// for a partition keeps the first error, else the kept (not `moved`)
/// records' offset.
fn push_partition(
    out: &mut Vec<TopicProduceResponse>,
    topic: &str,
    index: i32,
    mut p: PartitionProduceResponse,
    moved: bool,
) {
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

fn add_partition(added: &mut Vec<TopicProduceData>, topic: &str, part: PartitionProduceData) {
    match added.iter_mut().find(|a| a.name.0.as_str() == topic) {
        Some(a) => a.partition_data.push(part),
        None => {
            let mut a = TopicProduceData::default();
            a.name = TopicName(StrBytes::from_string(topic.to_string()));
            a.partition_data.push(part);
            added.push(a);
        }
    }
}

/// The first `topic-name` answer of the chain that renames `topic`
/// (cached per plugin version, so this is a map lookup after the first
/// batch). `Err`: a fail-closed plugin could not answer.
fn rename_topic(plugins: &[Arc<Loaded>], topic: &str) -> Result<Option<String>, String> {
    for p in plugins.iter().filter(|p| p.caps.topic_name) {
        match p.topic_name(topic, crate::plugin::Direction::ToSite) {
            Ok(Some(n)) if n != topic => return Ok(Some(n)),
            Ok(_) => {}
            Err(e) => {
                let msg = format!("plugin {} ({}) {e}", p.name, p.info.version);
                p.warn_limited(&msg);
                if p.policy == crate::plugin::FailurePolicy::FailClosed {
                    return Err(msg);
                }
            }
        }
    }
    Ok(None)
}

enum Produced {
    Unchanged,
    Refused(String),
    Changed {
        kept: Option<Bytes>,
        moved: Vec<(Option<usize>, String, Bytes)>,
    },
}

async fn run_produce(
    reg: &Arc<Registry>,
    plugins: &[Arc<Loaded>],
    meta: BatchMeta,
    physical: &str,
    site: usize,
    records: &Bytes,
) -> Produced {
    let first = match batch::batches(records) {
        Ok(b) if b.len() == 1 && !b[0].is_control => b.into_iter().next(),
        // Not one data batch: not ours to judge; the broker answers.
        _ => None,
    };
    let Some(first) = first else {
        return Produced::Unchanged;
    };
    let scope_site = site as u16;
    let state = chain::restore(reg.conflicts(), plugins, &meta, scope_site).await;
    // The plugin calls and the re-encoding, off the async workers.
    let (r, plugins, topic) = (reg.clone(), plugins.to_vec(), physical.to_string());
    let job = reg
        .offload(move || {
            let scope = Scope {
                site: scope_site,
                topic: &topic,
            };
            let out = chain::run_ready(
                r.conflicts(),
                &plugins,
                meta,
                scope,
                chain::Input::Batch(&first),
                state,
            );
            let produced = match out.refused {
                Some(_) => Produced::Unchanged,
                None => reencode(out.applied, &first),
            };
            (out.refused, out.versions, produced)
        })
        .await;
    let (refused, versions, produced) = match job {
        Ok(j) => j,
        Err(e) => return Produced::Refused(e),
    };
    if let Some(msg) = refused {
        return Produced::Refused(msg);
    }
    // Versions first: a restart must never forget a version whose record
    // may already be on the site (`plugin::conflict`).
    if let Err(e) = reg.conflicts().save(scope_site, physical, &versions).await {
        return Produced::Refused(format!("conflict state not saved: {e}"));
    }
    produced
}

/// The batch as the plugins left it, encoded again (kept and moved records).
fn reencode(a: crate::plugin::records::Applied, first: &batch::BatchRef) -> Produced {
    let total = usize::try_from(first.records_count).unwrap_or(0);
    if !a.changed {
        return Produced::Unchanged;
    }
    if first.is_transactional && (a.kept.len() != total) {
        // A transaction's batches are numbered by its coordinator's
        // producer id, which Switchyard does not renumber.
        return Produced::Refused(
            "a produce plugin dropped or moved records of a transactional producer; only keep and replace-value are possible there"
                .into(),
        );
    }
    let layout = Layout {
        last_offset_delta: None,
        base_offset: 0,
        ..first.layout()
    };
    let encode = |recs: &[WireRecord]| batch::encode_as(recs, &layout);
    let kept = if a.kept.is_empty() {
        None
    } else {
        match encode(&a.kept) {
            Ok(b) => Some(b),
            Err(e) => return Produced::Refused(format!("re-encoding the batch: {e}")),
        }
    };
    let mut moved = Vec::with_capacity(a.moved.len());
    for (s, topic, recs) in a.moved {
        match encode(&recs) {
            Ok(b) => moved.push((s.map(usize::from), topic, b)),
            Err(e) => return Produced::Refused(format!("re-encoding moved records: {e}")),
        }
    }
    Produced::Changed { kept, moved }
}

/// What the fetch hook did to one partition's records.
pub enum Fetched {
    Unchanged,
    Replaced(Bytes),
    /// A fail-closed plugin failed: the partition gets an error, no records.
    Refused(String),
}

/// Runs a fetch chain over one partition's records (a Fetch answer's
/// record set: batches back to back, maybe a cut-off batch at the end).
/// Control batches pass untouched; each data batch is re-encoded in place
/// when a plugin changed it.
pub fn fetch_records(
    reg: &Registry,
    plugins: &[Arc<Loaded>],
    meta: BatchMeta,
    records: &Bytes,
) -> Fetched {
    let Ok(batches) = batch::batches(records) else {
        // Not ours to judge; the consumer reports corrupt data itself.
        return Fetched::Unchanged;
    };
    let mut out: Option<bytes::BytesMut> = None;
    let mut used = 0usize;
    for (i, b) in batches.iter().enumerate() {
        let replaced = if b.is_control {
            None
        } else {
            let mut m = meta.clone();
            m.base_offset = b.base_offset;
            let o = chain::run_fetch(reg.conflicts(), plugins, m, chain::Input::Batch(b));
            if let Some(msg) = o.refused {
                return Fetched::Refused(msg);
            }
            if o.applied.changed {
                match batch::encode_as(&o.applied.kept, &b.layout()) {
                    Ok(bytes) => Some(bytes),
                    Err(e) => return Fetched::Refused(format!("re-encoding a batch: {e}")),
                }
            } else {
                None
            }
        };
        match (replaced, out.as_mut()) {
            (Some(new), Some(buf)) => buf.extend_from_slice(&new),
            (Some(new), None) => {
                // The first change: the batches before it are copied as they are.
                let mut buf = bytes::BytesMut::with_capacity(records.len());
                for earlier in &batches[..i] {
                    buf.extend_from_slice(&earlier.bytes);
                }
                buf.extend_from_slice(&new);
                out = Some(buf);
            }
            (None, Some(buf)) => buf.extend_from_slice(&b.bytes),
            (None, None) => {}
        }
        used += b.bytes.len();
    }
    match out {
        Some(mut buf) => {
            // A batch cut off by the size limit stays at the end, as sent.
            if let Some(rest) = records.get(used..) {
                buf.extend_from_slice(rest);
            }
            Fetched::Replaced(buf.freeze())
        }
        None => Fetched::Unchanged,
    }
}

/// A route's fetch plugins for one topic of the request (snapshot taken
/// when the request is routed: a reload mid-request does not mix versions).
struct FetchChain {
    site: usize,
    physical: String,
    virt: String,
    plugins: Vec<Arc<Loaded>>,
}

/// The fetch site stage: the fetch chains of the request's topics over
/// each site's answer, on the plugins' blocking pool. A chain naming a
/// plugin that is not loaded cannot run: its partitions' records are
/// refused (KAFKA_STORAGE_ERROR, retriable; fail closed: records a filter
/// should have seen are never shown unfiltered).
pub struct FetchChains {
    reg: Arc<Registry>,
    chains: Vec<FetchChain>,
}

/// Registers [`FetchChains`] when a topic of the request has fetch
/// plugins.
pub fn fetch<A: Api<Resp = FetchResponse>>(x: &mut Exchange<A>, reg: Option<&Arc<Registry>>) {
    let Some(reg) = reg.filter(|r| r.any_fetch()) else {
        return;
    };
    let chains = fetch_chains(reg, &x.names);
    if chains.is_empty() {
        return;
    }
    x.offload = Some(reg.clone());
    x.on_site_answer(Arc::new(FetchChains {
        reg: reg.clone(),
        chains,
    }));
}

fn fetch_chains(reg: &Registry, names: &Names) -> Vec<FetchChain> {
    let mut out = Vec::new();
    for e in names.entries() {
        let Some(route) = e.route else { continue };
        // A missing plugin leaves the chain empty here; it is refused on
        // the answer.
        let plugins = match reg.chain(route, Which::Fetch) {
            Ok(p) if p.is_empty() => continue,
            Ok(p) => p,
            Err(_) => Vec::new(),
        };
        out.push(FetchChain {
            site: e.site,
            physical: e.phys.0.to_string(),
            virt: e.virt.0.to_string(),
            plugins,
        });
    }
    out
}

impl SiteStage<FetchResponse> for FetchChains {
    fn name(&self) -> &'static str {
        "plugins"
    }

    fn blocking(&self) -> bool {
        true
    }

    fn rewrite(&self, at: &At, r: &mut FetchResponse) {
        for t in &mut r.responses {
            let Some(c) = fetch_physical(&at.view, at.version, t).and_then(|n| {
                self.chains
                    .iter()
                    .find(|c| c.site == at.site && c.physical == n)
            }) else {
                continue;
            };
            for p in &mut t.partitions {
                let Some(records) = p.records.as_ref().filter(|r| !r.is_empty()) else {
                    continue;
                };
                let meta = BatchMeta {
                    stage: Stage::Fetch,
                    topic: c.virt.clone(),
                    partition: p.partition_index,
                    origin_site: at.site as u16,
                    local_site: at.site as u16,
                    target_site: None,
                    client_id: None,
                    base_offset: -1,
                };
                let outcome = if c.plugins.is_empty() {
                    Fetched::Refused(format!("a fetch plugin of topic {} is not loaded", c.virt))
                } else {
                    fetch_records(&self.reg, &c.plugins, meta, records)
                };
                match outcome {
                    Fetched::Unchanged => {}
                    Fetched::Replaced(b) => p.records = Some(b),
                    Fetched::Refused(msg) => {
                        tracing::debug!(topic = %c.virt, partition = p.partition_index, "{msg}");
                        p.error_code = KAFKA_STORAGE_ERROR;
                        p.records = Some(Bytes::new());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod stage_tests {
    use super::*;
    use crate::api::fetch::Fetch;
    use crate::pipeline::testing::{at, plane};
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};

    fn partition(index: i32, code: i16, offset: i64) -> PartitionProduceResponse {
        let mut p = PartitionProduceResponse::default();
        p.index = index;
        p.error_code = code;
        p.base_offset = offset;
        p
    }

    fn topic(name: &str, parts: Vec<PartitionProduceResponse>) -> TopicProduceResponse {
        let mut t = TopicProduceResponse::default();
        t.name = TopicName(StrBytes::from_string(name.to_string()));
        t.partition_responses = parts;
        t
    }

    #[test]
    fn origins_answer_the_client_for_its_own_partitions() {
        let mut hook = ProduceHook {
            changed: true,
            ..Default::default()
        };
        // Records of orders-0 kept; some moved to audit-3 by a plugin.
        hook.origins
            .push((("audit".into(), 3), ("orders".into(), 0)));
        hook.answered
            .push(("orders".into(), 1, POLICY_VIOLATION, Some("refused".into())));
        let stage = Origins(Arc::new(hook));
        let mut r = ProduceResponse::default();
        r.responses
            .push(topic("orders", vec![partition(0, 0, 100)]));
        r.responses.push(topic("audit", vec![partition(3, 0, 7)]));
        stage.rewrite(&mut r);
        assert_eq!(r.responses.len(), 1, "the client never wrote to audit");
        let parts = &r.responses[0].partition_responses;
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].index, parts[0].error_code, parts[0].base_offset),
            (0, 0, 100),
            "the kept records' offset"
        );
        assert_eq!((parts[1].index, parts[1].error_code), (1, POLICY_VIOLATION));
        assert_eq!(parts[1].error_message.as_deref(), Some("refused"));

        // The moved records failed: the client's partition says so.
        let mut r = ProduceResponse::default();
        r.responses
            .push(topic("orders", vec![partition(0, 0, 100)]));
        r.responses.push(topic("audit", vec![partition(3, 6, -1)]));
        stage.rewrite(&mut r);
        assert_eq!(r.responses[0].partition_responses[0].error_code, 6);
    }

    #[test]
    fn a_fetch_chain_whose_plugin_is_missing_refuses_the_records() {
        let plane = plane("  - name: main\n    topics: {regex: '.*'}\n    site: a\n");
        let Some(reg) = plane.plugins.clone() else {
            return; // no plugin host on this machine: nothing to run
        };
        let stage = FetchChains {
            reg,
            chains: vec![FetchChain {
                site: 0,
                physical: "orders".into(),
                virt: "orders".into(),
                plugins: Vec::new(),
            }],
        };
        assert!(stage.blocking(), "plugins run off the async workers");
        let mut r = FetchResponse::default();
        for name in ["orders", "clicks"] {
            let mut p = PartitionData::default();
            p.records = Some(Bytes::from_static(b"not even batches"));
            let mut t = FetchableTopicResponse::default();
            t.topic = TopicName(StrBytes::from_static_str(name));
            t.partitions.push(p);
            r.responses.push(t);
        }
        stage.rewrite(
            &at::<Fetch>(0, 12, Names::default(), Default::default()),
            &mut r,
        );
        let orders = &r.responses[0].partitions[0];
        assert_eq!(orders.error_code, KAFKA_STORAGE_ERROR);
        assert_eq!(orders.records.as_deref(), Some(&b""[..]));
        let clicks = &r.responses[1].partitions[0];
        assert_eq!(clicks.error_code, 0, "no chain on clicks");
    }
}
