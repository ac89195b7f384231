//! Fetch (key 1): per-partition routing, topic-id mapping, no fetch sessions.
//!
//! Requests upstream are always full fetches (`session_id 0`, `epoch -1`) and
//! clients are answered with `session_id 0`, which keeps them on full fetches:
//! a session is state on one upstream broker and would not survive a split
//! request or a failover. Leader epochs in the request are neutralised (see
//! `identity`). From v13 topics are addressed by id: virtual ids from the client
//! become the upstream's real ids and back.
//!
//! Record batches in the response are never parsed. When one broker answers
//! the whole request (the common case), the few fields to rewrite (topic ids,
//! session id, preferred read replica) are patched in place in the upstream
//! frame (`codec::fetch_patch`) and the frame is forwarded without a copy.
//! Responses carrying KIP-951 leader hints, and merged responses from several
//! brokers, are decoded and re-encoded (records are then copied, not parsed).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::names::Names;
use super::{rewrite_or_pass, scatter_partitioned, split, Ctx, Outcome, Reply};
use crate::codec::errors;
use crate::codec::{self, fetch_patch, RequestFrame};
use crate::failover::{Epochs, Failover};
use crate::identity::Identity;
use crate::upstream::{ClusterView, Site};

/// How long past its `max_wait_ms` a fetch's broker may take to answer.
const FETCH_GRACE: Duration = Duration::from_secs(3);

pub async fn route(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let mut body: FetchRequest = req.decode()?;
    let by_id = req.api_version >= 13;
    let identity = ctx.identity();

    // v13+: topics come by virtual id; find their names. Unknown ids are
    // answered with UNKNOWN_TOPIC_ID and not routed.
    let mut errors: Vec<(TopicName, Uuid, i32, i16)> = Vec::new();
    let mut skip = Vec::new();
    if by_id {
        for (ti, t) in body.topics.iter_mut().enumerate() {
            match ctx.proxy.topic_for_virtual_id(&t.topic_id).await {
                Some(n) => t.topic = TopicName(StrBytes::from_string(n)),
                None => {
                    skip.push(ti);
                    for p in &t.partitions {
                        errors.push((
                            t.topic.clone(),
                            t.topic_id,
                            p.partition,
                            errors::UNKNOWN_TOPIC_ID,
                        ));
                    }
                }
            }
        }
    }
    for p in body.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
        p.current_leader_epoch = -1;
        p.last_fetched_epoch = -1;
    }
    let router = ctx.proxy.router.clone();
    // Taken before routing: a switch after this point withholds the route's
    // records from the answer.
    let routed = Routed::now(&ctx.proxy.failover);
    let mut names = Names::default();
    let site_of = split::resolve(&mut body, &mut names, &router, ctx.who(&req), &skip);
    fence(ctx, &req, &mut names);
    let (plan, missing) = split::plan(&ctx.proxy.sites, &body, &site_of, &names).await;
    errors.extend(client_errors(&names, &identity, by_id, missing));
    body.session_id = 0;
    body.session_epoch = -1;
    body.forgotten_topics_data.clear();
    // Each site's view as routed now: real ids in, real ids back out.
    let views: Vec<Arc<ClusterView>> = ctx.proxy.sites.iter().map(|s| s.view()).collect();
    if by_id {
        for (t, site) in body.topics.iter_mut().zip(&site_of) {
            if let Some(v) = site.and_then(|s| views.get(s)) {
                t.topic_id = v
                    .topics
                    .get(t.topic.0.as_str())
                    .map(|v| v.id)
                    .unwrap_or_default();
            }
        }
    }

    let version = req.api_version;
    let chains = fetch_chains(ctx, &names);
    // A fetch long-polls for at most max_wait_ms; a broker that has not
    // answered well after that is frozen or gone. Giving up then (rather
    // than at the request timeout) keeps its partitions from holding up
    // every answer queued behind this one on the client's connection.
    let timeout = ctx
        .proxy
        .request_timeout()
        .min(Duration::from_millis(body.max_wait_ms.max(0) as u64) + FETCH_GRACE);
    // Everything on one broker: patch the answer in place, records untouched.
    // Before v13 the answer carries names, which cannot be renamed in place.
    let single =
        if errors.is_empty() && plan.len() == 1 && (by_id || !names.renamed()) && chains.is_empty()
        {
            plan.keys().next().copied()
        } else {
            None
        };
    if let Some(target) = single {
        let site = ctx.site(target.0);
        let view = views.get(target.0).cloned().unwrap_or_else(|| site.view());
        let frame = codec::encode_request(req.api_key, version, req.client_id.clone(), &body)?;
        let pending = ctx.pools.call(target, req.api_key, frame).await?;
        let (api, corr) = (req.api_key, req.correlation_id);
        return Ok(Outcome::Later(Box::pin(async move {
            let frame = pending.wait(timeout).await?;
            let moved = routed.moved();
            if !moved.is_empty() {
                return rewrite_or_pass(api, version, corr, frame, |r: &mut FetchResponse| {
                    note_errors(&site, r);
                    routed.withhold(r, version, &view, target.0, &names, &moved);
                    virtualise(&identity, version, r, |t| {
                        rename_topic(&names, &view, target.0, version, t)
                    });
                    true
                });
            }
            // The frame is uniquely owned here, so this takes no copy.
            let mut buf = frame
                .try_into_mut()
                .unwrap_or_else(|f| BytesMut::from(&f[..]));
            let to_virtual = |id: &[u8; 16]| {
                view.names_by_id.get(&Uuid::from_bytes(*id)).map(|phys| {
                    let virt = names.entry(target.0, phys).map(|e| e.virt.0.to_string());
                    let name = virt.unwrap_or_else(|| phys.clone());
                    (*identity.topic_id(&name).as_bytes(), name)
                })
            };
            let leader =
                |topic: &str, partition: i32| identity.leader_for(topic, partition).node_id;
            if let Some(p) =
                fetch_patch::patch_fetch_response(&mut buf, version, to_virtual, leader)
            {
                for code in p.partition_errors {
                    site.note_partition_error(code);
                }
                return Ok(Reply::Upstream {
                    correlation_id: corr,
                    frame: buf.freeze(),
                });
            }
            let frame = buf.freeze();
            tracing::trace!(
                version,
                bytes = frame.len(),
                "fetch response needs the full rewrite"
            );
            rewrite_or_pass(api, version, corr, frame, |r: &mut FetchResponse| {
                note_errors(&site, r);
                let site_idx = target.0;
                virtualise(&identity, version, r, |t| {
                    rename_topic(&names, &view, site_idx, version, t)
                })
            })
        })));
    }

    let parts = split::split(&body, &plan);
    let proxy = ctx.proxy.clone();
    // Plugin chains make the merge CPU work: off the async workers with it.
    let offload = if chains.is_empty() {
        None
    } else {
        proxy.plugins.clone()
    };
    scatter_partitioned(
        ctx,
        &req,
        parts,
        timeout,
        offload,
        move |resps: Vec<(usize, FetchResponse)>, failed| {
            let mut out = FetchResponse::default();
            let moved = routed.moved();
            for (site, mut r) in resps {
                if let Some(s) = proxy.sites.get(site) {
                    note_errors(s, &r);
                }
                let view = views.get(site).cloned().unwrap_or_default();
                routed.withhold(&mut r, version, &view, site, &names, &moved);
                if !chains.is_empty() {
                    run_chains(&proxy, &chains, site, &view, version, &mut r);
                }
                virtualise(&identity, version, &mut r, |t| {
                    rename_topic(&names, &view, site, version, t)
                });
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                if out.error_code == 0 {
                    out.error_code = r.error_code;
                }
                for t in r.responses {
                    push_topic(&mut out.responses, t);
                }
            }
            out.session_id = 0;
            errors.extend(client_errors(&names, &identity, by_id, failed));
            for (topic, topic_id, partition, code) in errors {
                let mut p = PartitionData::default();
                p.partition_index = partition;
                p.error_code = code;
                p.high_watermark = -1;
                p.last_stable_offset = -1;
                p.log_start_offset = -1;
                let mut t = FetchableTopicResponse::default();
                t.topic = topic;
                // Keep the client's own id so it can match the error (v13+).
                t.topic_id = topic_id;
                t.partitions.push(p);
                push_topic(&mut out.responses, t);
            }
            Ok(out)
        },
    )
    .await
}

/// Gives one topic of a site's answer its client-facing name (before v13) or
/// virtual id (v13+); returns the virtual name.
fn rename_topic(
    names: &Names,
    view: &ClusterView,
    site: usize,
    version: i16,
    t: &mut FetchableTopicResponse,
) -> String {
    let phys = if version >= 13 {
        match view.names_by_id.get(&t.topic_id) {
            Some(n) => TopicName(StrBytes::from_string(n.clone())),
            None => t.topic.clone(),
        }
    } else {
        t.topic.clone()
    };
    let virt = names.virt(site, &phys);
    if version < 13 {
        t.topic = virt.clone();
    }
    virt.0.to_string()
}

/// Partition errors (physical names) under the client's topic names and,
/// from v13, virtual topic ids.
fn client_errors<'a>(
    names: &'a Names,
    identity: &'a Identity,
    by_id: bool,
    errors: Vec<split::Unroutable>,
) -> impl Iterator<Item = (TopicName, Uuid, i32, i16)> + 'a {
    errors
        .into_iter()
        .map(move |(site, name, partition, code)| {
            let virt = names.virt(site, &name);
            let id = if by_id {
                identity.topic_id(virt.0.as_str())
            } else {
                Uuid::nil()
            };
            (virt, id, partition, code)
        })
}

fn push_topic(out: &mut Vec<FetchableTopicResponse>, t: FetchableTopicResponse) {
    match out
        .iter_mut()
        .find(|o| o.topic == t.topic && o.topic_id == t.topic_id)
    {
        Some(o) => o.partitions.extend(t.partitions),
        None => out.push(t),
    }
}

fn note_errors(site: &Arc<Site>, r: &FetchResponse) {
    for p in r.responses.iter().flat_map(|t| t.partitions.iter()) {
        site.note_partition_error(p.error_code);
    }
}

/// Rewrites a response for the client: `rename` gives each topic its client
/// name and returns it; topic ids (v13+) become virtual, leader hints point
/// at virtual nodes. Returns whether anything changed.
pub fn virtualise(
    id: &Identity,
    version: i16,
    r: &mut FetchResponse,
    mut rename: impl FnMut(&mut FetchableTopicResponse) -> String,
) -> bool {
    let mut changed = r.session_id != 0 || !r.node_endpoints.is_empty();
    r.session_id = 0;
    let mut nodes = BTreeSet::new();
    for t in &mut r.responses {
        let before = (t.topic.clone(), t.topic_id);
        let name = rename(t);
        if version >= 13 {
            t.topic_id = id.topic_id(&name);
        }
        changed |= before != (t.topic.clone(), t.topic_id);
        for p in &mut t.partitions {
            if p.preferred_read_replica.0 >= 0 {
                p.preferred_read_replica = BrokerId(-1);
                changed = true;
            }
            if p.current_leader.leader_id.0 >= 0 || p.current_leader.leader_epoch >= 0 {
                let leader = id.leader_for(&name, p.partition_index).node_id;
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

/// The physical name of a topic in a site's answer (by real id from v13).
fn physical(view: &ClusterView, version: i16, t: &FetchableTopicResponse) -> Option<String> {
    if version >= 13 {
        view.names_by_id.get(&t.topic_id).cloned()
    } else {
        Some(t.topic.0.to_string())
    }
}

/// Where the failover routes stood when a fetch was routed. A fetch
/// long-polls, so its answer may come back after its route switched sites
/// (or while it switches). By then the old site may hold records written
/// after the switch (the reverse tee copies the new site's writes there) at
/// offsets a fenced member can no longer commit: handed over, they would be
/// processed again after it rejoins. Such an answer carries none of the
/// route's records; its partitions say NOT_LEADER_OR_FOLLOWER instead
/// (retriable): the position does not move, the client refetches on the new
/// site, nothing is lost.
struct Routed {
    failover: Arc<Failover>,
    /// `None` without failover routes (nothing to check on the answer).
    at: Option<Epochs>,
}

impl Routed {
    fn now(failover: &Arc<Failover>) -> Self {
        Routed {
            failover: failover.clone(),
            at: failover.enabled().then(|| failover.epochs()),
        }
    }

    /// The routes that switched since, or are switching now.
    fn moved(&self) -> Vec<usize> {
        self.at
            .as_ref()
            .map(|e| self.failover.moved_since(e))
            .unwrap_or_default()
    }

    /// Takes the records of `moved` routes out of one site's answer.
    fn withhold(
        &self,
        r: &mut FetchResponse,
        version: i16,
        view: &ClusterView,
        site: usize,
        names: &Names,
        moved: &[usize],
    ) {
        if moved.is_empty() {
            return;
        }
        for t in &mut r.responses {
            let Some(route) = physical(view, version, t)
                .and_then(|n| names.entry(site, &n))
                .and_then(|e| e.route)
                .filter(|r| moved.contains(r))
            else {
                continue;
            };
            self.failover.count_fenced(route, "fetch_answer");
            for p in &mut t.partitions {
                p.error_code = errors::NOT_LEADER_OR_FOLLOWER;
                p.records = Some(bytes::Bytes::new());
                p.high_watermark = -1;
                p.last_stable_offset = -1;
                p.log_start_offset = -1;
                p.aborted_transactions = None;
            }
        }
    }
}

/// A consumer that was a group member before its route switched sites still
/// holds positions in the old site's offset space: its fetches for the
/// route are held (NOT_LEADER_OR_FOLLOWER, retriable) until it rejoined its
/// group (see `failover::fence`).
fn fence(ctx: &Ctx<'_>, req: &RequestFrame, names: &mut Names) {
    let fo = &ctx.proxy.failover;
    if !fo.enabled() {
        return;
    }
    let key = ctx.client_key(req);
    let routes: Vec<usize> = names.entries().iter().filter_map(|e| e.route).collect();
    for r in routes {
        if fo.fence.fetch_held(r, &key) && names.hold_route(r) > 0 {
            fo.count_fenced(r, "fetch");
        }
    }
}

/// A route's fetch plugins for one topic of the request (snapshot taken
/// when the request is routed: a reload mid-request does not mix versions).
struct FetchChain {
    site: usize,
    physical: String,
    virt: String,
    plugins: Vec<Arc<crate::plugin::Loaded>>,
}

/// The fetch chains of the request's topics. A chain naming a plugin that
/// is not loaded cannot run: its partitions' records are refused when the
/// answer comes back.
fn fetch_chains(ctx: &Ctx<'_>, names: &Names) -> Vec<FetchChain> {
    let Some(reg) = ctx.proxy.plugins.as_ref() else {
        return Vec::new();
    };
    if !reg.any_fetch() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for e in names.entries() {
        let Some(route) = e.route else { continue };
        // A missing plugin leaves the chain empty here; `run_chains` refuses
        // such topics (fail closed: records a filter should have seen are
        // never shown unfiltered).
        let plugins = match reg.chain(route, crate::plugin::registry::Which::Fetch) {
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

/// Runs the fetch chains over one site's answer (physical names, real ids).
fn run_chains(
    proxy: &Arc<crate::shared::Proxy>,
    chains: &[FetchChain],
    site: usize,
    view: &ClusterView,
    version: i16,
    r: &mut FetchResponse,
) {
    use super::plugins::{fetch_records, Fetched};
    use crate::codec::errors::KAFKA_STORAGE_ERROR;
    let Some(reg) = proxy.plugins.as_ref() else {
        return;
    };
    for t in &mut r.responses {
        let Some(c) = physical(view, version, t)
            .and_then(|n| chains.iter().find(|c| c.site == site && c.physical == n))
        else {
            continue;
        };
        for p in &mut t.partitions {
            let Some(records) = p.records.as_ref().filter(|r| !r.is_empty()) else {
                continue;
            };
            let meta = crate::plugin::BatchMeta {
                stage: crate::plugin::Stage::Fetch,
                topic: c.virt.clone(),
                partition: p.partition_index,
                origin_site: site as u16,
                local_site: site as u16,
                target_site: None,
                client_id: None,
                base_offset: -1,
            };
            let outcome = if c.plugins.is_empty() {
                Fetched::Refused(format!("a fetch plugin of topic {} is not loaded", c.virt))
            } else {
                fetch_records(reg, &c.plugins, meta, records)
            };
            match outcome {
                Fetched::Unchanged => {}
                Fetched::Replaced(b) => p.records = Some(b),
                Fetched::Refused(msg) => {
                    tracing::debug!(topic = %c.virt, partition = p.partition_index, "{msg}");
                    p.error_code = KAFKA_STORAGE_ERROR;
                    p.records = Some(bytes::Bytes::new());
                }
            }
        }
    }
}
