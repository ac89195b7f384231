//! Coordinator-addressed APIs: consumer groups and transactions.
//!
//! FindCoordinator is answered with a virtual node (hash of the key) after
//! asking the upstream which real broker coordinates the key; that answer is
//! cached and every later group or transaction request is routed to it. When
//! the upstream coordinator moves, the upstream answers NOT_COORDINATOR, the
//! client asks FindCoordinator again, and the fresh lookup refreshes the cache.
//!
//! Group requests are forwarded byte for byte, except where leader epochs must
//! be neutralised (OffsetCommit/TxnOffsetCommit requests, OffsetFetch responses).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::{
    offset_commit_response, offset_delete_response, offset_fetch_response, AddOffsetsToTxnRequest,
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, BrokerId, DeleteGroupsRequest,
    DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, EndTxnRequest,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, TopicName, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{forward, forward_frame, forward_rewriting, scatter, Ctx, Outcome, Reply};
use crate::codec::errors;
use crate::codec::errors::{COORDINATOR_LOAD_IN_PROGRESS, UNKNOWN_MEMBER_ID};
use crate::codec::{self, RequestFrame};
use crate::pipeline::holds::{add_partitions_answer, fenced, txn_commit_answer, txn_fenced};
use crate::pipeline::names::Names;
use crate::route::Who;
use crate::upstream::{Coordinator, Target};

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

pub async fn find_coordinator(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: FindCoordinatorRequest = req.decode()?;
    let keys: Vec<StrBytes> = if req.api_version >= 4 {
        body.coordinator_keys.clone()
    } else {
        vec![body.key.clone()]
    };
    let identity = ctx.identity();
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        let site = ctx.site(coordinator_site(ctx, ctx.who(&req), key.as_str()).await?);
        // A client asks again after NOT_COORDINATOR: always look up afresh.
        site.forget_coordinator(body.key_type, key.as_str());
        let mut e = CoordinatorEntry::default();
        match site.coordinator(body.key_type, key.as_str()).await? {
            Coordinator::Broker(_) => {
                let node = identity.coordinator_for(key.as_str());
                e.node_id = BrokerId(node.node_id);
                e.host = StrBytes::from_string(node.host.clone());
                e.port = node.port;
            }
            Coordinator::Error(code, msg) => {
                e.error_code = code;
                e.error_message = msg.map(StrBytes::from_string);
                e.node_id = BrokerId(-1);
            }
        }
        e.key = key;
        entries.push(e);
    }
    let mut resp = FindCoordinatorResponse::default();
    if req.api_version >= 4 {
        resp.coordinators = entries;
    } else if let Some(e) = entries.pop() {
        resp.error_code = e.error_code;
        resp.error_message = e.error_message;
        resp.node_id = e.node_id;
        resp.host = e.host;
        resp.port = e.port;
    }
    let frame = codec::encode_response(req.api_key, req.api_version, req.correlation_id, &resp)?;
    Ok(Outcome::Ready(Reply::Frame(frame)))
}

/// The site whose coordinator serves `key`. While the key's route switches
/// sites, the lookup waits for the switch to end (bounded by the control
/// timeout) and then names the new site: neither site may serve the group
/// meanwhile, and asking the old one could wait on a dead site. A switch
/// that outlasts the wait gets the retriable error its client waits out
/// (`pipeline::unavailable`).
async fn coordinator_site(
    ctx: &Ctx<'_>,
    who: Who<'_>,
    key: &str,
) -> Result<usize, crate::upstream::UpstreamError> {
    let router = &ctx.plane.router;
    if let Some(r) = router.group_route(who, key) {
        if !router.settled(&[r], ctx.plane.site.control_timeout()).await {
            return Err(crate::upstream::UpstreamError::Switching(
                router.routes()[r].name.clone(),
            ));
        }
    }
    Ok(router.coordinator_site(who, key))
}

/// The (site, upstream broker) coordinating `key`, or an error the client can act on.
pub(super) async fn coordinator(
    ctx: &Ctx<'_>,
    who: Who<'_>,
    key_type: i8,
    key: &str,
) -> anyhow::Result<Target> {
    let si = coordinator_site(ctx, who, key).await?;
    match ctx.site(si).coordinator(key_type, key).await? {
        Coordinator::Broker(b) => Ok((si, b)),
        Coordinator::Error(code, msg) => anyhow::bail!(
            "no coordinator for {} `{key}` upstream (error {code}{})",
            if key_type == GROUP {
                "group"
            } else {
                "transactional id"
            },
            msg.map(|m| format!(": {m}")).unwrap_or_default()
        ),
    }
}

/// Renames the topics of a group's offset request to the group site's
/// physical names. Topics living on another site are taken out and returned:
/// a Kafka coordinator only keeps offsets for its own cluster's topics, so
/// they are answered with UNKNOWN_TOPIC_OR_PARTITION (and logged).
fn group_topics<T>(
    ctx: &Ctx<'_>,
    who: Who<'_>,
    group: &str,
    group_site: usize,
    names: &mut Names,
    topics: &mut Vec<T>,
    name_of: impl Fn(&mut T) -> &mut TopicName,
) -> Vec<T> {
    let router = &ctx.plane.router;
    let mut foreign = Vec::new();
    let mut kept = Vec::with_capacity(topics.len());
    for mut t in topics.drain(..) {
        let (site, phys) = names.resolve(router, who, name_of(&mut t));
        if site == group_site {
            *name_of(&mut t) = phys;
            kept.push(t);
        } else {
            warn_cross_site(
                group,
                name_of(&mut t).0.as_str(),
                router.site_name(site),
                router.site_name(group_site),
            );
            foreign.push(t);
        }
    }
    *topics = kept;
    foreign
}

pub(super) fn warn_cross_site(group: &str, topic: &str, topic_site: &str, group_site: &str) {
    // At most one warning per 10 s: consumers commit every few seconds.
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            group,
            topic,
            topic_site,
            group_site,
            "group offsets for a topic of another site refused (UNKNOWN_TOPIC_OR_PARTITION): \
             a group must only consume topics of its own site; see routes[].groups"
        );
    }
}

/// Single-group requests: route to the group's coordinator on the group's
/// site. Offset requests have their topics renamed and leader epochs
/// neutralised; membership requests go byte for byte.
pub async fn by_group(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let who = ctx.who(&req);
    let (listener, client_id) = (who.listener.to_string(), who.client_id.to_string());
    let who = Who {
        listener: &listener,
        client_id: &client_id,
    };
    let (group, member): (GroupId, Option<StrBytes>) = match req.api_key {
        ApiKey::JoinGroup => return join_group(ctx, who, req).await,
        ApiKey::SyncGroup => {
            let b = req.decode::<SyncGroupRequest>()?;
            (b.group_id, Some(b.member_id))
        }
        ApiKey::Heartbeat => {
            let b = req.decode::<HeartbeatRequest>()?;
            (b.group_id, Some(b.member_id))
        }
        ApiKey::LeaveGroup => {
            let b = req.decode::<LeaveGroupRequest>()?;
            let m = if req.api_version < 3 {
                Some(b.member_id)
            } else {
                b.members.first().map(|m| m.member_id.clone())
            };
            (b.group_id, m)
        }
        ApiKey::OffsetCommit => return offset_commit(ctx, who, req).await,
        ApiKey::TxnOffsetCommit => return txn_offset_commit(ctx, who, req).await,
        ApiKey::OffsetDelete => return offset_delete(ctx, who, req).await,
        other => {
            return Err(crate::pipeline::Error::protocol(format!(
                "{other:?} is not a group request"
            )))
        }
    };
    if let Some(m) = &member {
        if let Some(reply) = fenced(&ctx.plane.failover, &req, group.0.as_str(), m.as_str())? {
            return Ok(reply);
        }
        if req.api_key == ApiKey::LeaveGroup {
            ctx.plane.failover.fence.left(group.0.as_str(), m.as_str());
        }
    }
    let target = coordinator(ctx, who, GROUP, group.0.as_str()).await?;
    forward(ctx, target, &req).await
}

/// JoinGroup: forwarded as is; the member id the coordinator hands out is
/// remembered with the route's epoch, so fencing knows it after a switch.
async fn join_group(
    ctx: &mut Ctx<'_>,
    who: Who<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let b = req.decode::<JoinGroupRequest>()?;
    let group = b.group_id.0.to_string();
    let target = coordinator(ctx, who, GROUP, &group).await?;
    let fo = ctx.plane.failover.clone();
    let Some(route) = fo.group_route(&group) else {
        return forward(ctx, target, &req).await;
    };
    let epoch = fo.epoch(route);
    fo.shadow.remember_group(route, &group);
    let key = ctx.client_key(&req);
    let site = target.0;
    forward_rewriting(
        ctx,
        target,
        &req,
        req.frame.clone(),
        move |r: &mut kafka_protocol::messages::JoinGroupResponse| {
            if r.error_code == 0 && !r.member_id.is_empty() {
                fo.fence
                    .joined(route, site, epoch, &group, r.member_id.as_str(), key);
            }
            false
        },
    )
    .await
}

/// What an offset commit asks for, by the client's names (OffsetCommit and
/// TxnOffsetCommit: the same fields in two types): the shadow committer
/// translates the ones that succeed to the other site.
macro_rules! asked_commits {
    ($topics:expr, $names:expr, $site:expr) => {
        $topics
            .iter()
            .flat_map(|t| {
                let virt = $names.virt($site, &t.name).0.to_string();
                t.partitions.iter().map(move |p| {
                    (
                        (virt.clone(), p.partition_index),
                        (
                            p.committed_offset,
                            p.committed_metadata.as_ref().map(|m| m.to_string()),
                        ),
                    )
                })
            })
            .collect()
    };
}

async fn offset_commit(
    ctx: &mut Ctx<'_>,
    who: Who<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let mut b: OffsetCommitRequest = req.decode()?;
    let group = b.group_id.0.to_string();
    let fo = ctx.plane.failover.clone();
    let failover_route = fo.group_route(&group);
    if let Some(route) = failover_route {
        // A member from before a switch commits old-site offsets: refused,
        // and it rejoins. While a switch runs, commits wait (retriable) so the
        // switch translates the group's final offsets.
        let stale = fo
            .fence
            .stale_epoch(fo.epoch(route), &group, b.member_id.as_str());
        let code = if let Some(joined) = stale {
            // After a planned switch its offsets translate exactly: applied
            // on the new site, the commit succeeds (no redelivery).
            let commits: crate::failover::shadow::Commits = b
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().map(move |p| {
                        (
                            (t.name.0.to_string(), p.partition_index),
                            (
                                p.committed_offset,
                                p.committed_metadata.as_ref().map(|m| m.to_string()),
                            ),
                        )
                    })
                })
                .collect();
            if fo.late_commit(route, &group, joined, commits).await {
                Some(0)
            } else {
                Some(UNKNOWN_MEMBER_ID)
            }
        } else if ctx.plane.router.side(route).held() {
            Some(COORDINATOR_LOAD_IN_PROGRESS)
        } else {
            None
        };
        if let Some(code) = code {
            if code == UNKNOWN_MEMBER_ID {
                fo.count_fenced(route, "offset_commit");
            }
            let mut r = OffsetCommitResponse::default();
            r.topics = commit_answer(&b.topics, code);
            return Ok(Outcome::Ready(Reply::Frame(codec::encode_response(
                req.api_key,
                req.api_version,
                req.correlation_id,
                &r,
            )?)));
        }
    }
    let target = coordinator(ctx, who, GROUP, b.group_id.0.as_str()).await?;
    let mut names = Names::default();
    let foreign = group_topics(
        ctx,
        who,
        b.group_id.0.as_str(),
        target.0,
        &mut names,
        &mut b.topics,
        |t| &mut t.name,
    );
    for p in b.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
        p.committed_leader_epoch = -1;
    }
    let refused = commit_answer(&foreign, errors::UNKNOWN_TOPIC_OR_PARTITION);
    let empty = b.topics.is_empty();
    let asked: crate::failover::shadow::Commits = if failover_route.is_some() {
        asked_commits!(b.topics, names, target.0)
    } else {
        Default::default()
    };
    if failover_route.is_none() || empty {
        return finish_offsets(
            ctx,
            &req,
            target,
            &b,
            empty,
            names,
            refused,
            |r: &mut OffsetCommitResponse| &mut r.topics,
            |t| &mut t.name,
            |_| {},
        )
        .await;
    }
    // A failover route's group: the commits that succeed are translated to
    // the other site (inline for sync-tee routes) before the answer goes out.
    let site = target.0;
    let frame = codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), &b)?;
    let pending = ctx.pools.call(target, req.api_key, frame).await?;
    let timeout = ctx.plane.request_timeout();
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    Ok(Outcome::Later(Box::pin(async move {
        let frame = pending.wait(timeout).await?;
        let mut r: OffsetCommitResponse = codec::decode_response_body(api, version, &frame)?;
        let mut done = crate::failover::shadow::Commits::new();
        for t in r.topics.iter_mut() {
            t.name = names.virt(site, &t.name);
            for p in t.partitions.iter().filter(|p| p.error_code == 0) {
                let k = (t.name.0.to_string(), p.partition_index);
                if let Some(v) = asked.get(&k) {
                    done.insert(k, v.clone());
                }
            }
        }
        fo.observe_commit(&group, site, done).await;
        r.topics.extend(refused);
        Ok(Reply::Frame(codec::encode_response(
            api, version, corr, &r,
        )?))
    })))
}

async fn txn_offset_commit(
    ctx: &mut Ctx<'_>,
    who: Who<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let mut b: TxnOffsetCommitRequest = req.decode()?;
    if let Some(reply) = txn_fenced(&ctx.plane.failover, &req, b.transactional_id.0.as_str())? {
        return Ok(reply);
    }
    // To the group's coordinator, as Kafka requires (it writes the offsets
    // into the group's log, pending the transaction's end); only on a
    // single broker is that always the transaction coordinator too. The
    // topics must live on the group's site, which must also be the
    // transaction's (a transaction cannot span clusters).
    let target = coordinator(ctx, who, GROUP, b.group_id.0.as_str()).await?;
    let mut names = Names::default();
    let foreign = group_topics(
        ctx,
        who,
        b.group_id.0.as_str(),
        target.0,
        &mut names,
        &mut b.topics,
        |t| &mut t.name,
    );
    for p in b.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
        p.committed_leader_epoch = -1;
    }
    let refused = txn_commit_answer(&foreign, errors::UNKNOWN_TOPIC_OR_PARTITION);
    let empty = b.topics.is_empty();
    // On a failover route the offsets that succeed are held until the
    // transaction commits, then shadow-committed like an OffsetCommit's
    // (`by_transaction`, EndTxn): an application that commits only inside
    // transactions (Kafka Streams) is translated continuously too.
    let fo = ctx.plane.failover.clone();
    let (txn, group, site) = (
        b.transactional_id.0.to_string(),
        b.group_id.0.to_string(),
        target.0,
    );
    let asked: crate::failover::shadow::Commits = if fo.group_route(&group).is_some() {
        asked_commits!(b.topics, names, site)
    } else {
        Default::default()
    };
    finish_offsets(
        ctx,
        &req,
        target,
        &b,
        empty,
        names,
        refused,
        |r: &mut TxnOffsetCommitResponse| &mut r.topics,
        |t| &mut t.name,
        move |r: &mut TxnOffsetCommitResponse| {
            if asked.is_empty() {
                return;
            }
            let done: crate::failover::shadow::Commits = r
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .filter(|p| p.error_code == 0)
                        .map(move |p| (t.name.0.to_string(), p.partition_index))
                })
                .filter_map(|k| asked.get(&k).map(|v| (k, v.clone())))
                .collect();
            fo.shadow.txn_offsets(&txn, &group, site, done);
        },
    )
    .await
}

async fn offset_delete(
    ctx: &mut Ctx<'_>,
    who: Who<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let mut b: OffsetDeleteRequest = req.decode()?;
    let target = coordinator(ctx, who, GROUP, b.group_id.0.as_str()).await?;
    let mut names = Names::default();
    let foreign = group_topics(
        ctx,
        who,
        b.group_id.0.as_str(),
        target.0,
        &mut names,
        &mut b.topics,
        |t| &mut t.name,
    );
    let refused: Vec<offset_delete_response::OffsetDeleteResponseTopic> = foreign
        .into_iter()
        .map(|t| {
            let mut rt = offset_delete_response::OffsetDeleteResponseTopic::default();
            rt.name = t.name;
            rt.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut rp = offset_delete_response::OffsetDeleteResponsePartition::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                    rp
                })
                .collect();
            rt
        })
        .collect();
    let empty = b.topics.is_empty();
    finish_offsets(
        ctx,
        &req,
        target,
        &b,
        empty,
        names,
        refused,
        |r: &mut OffsetDeleteResponse| &mut r.topics,
        |t| &mut t.name,
        |_| {},
    )
    .await
}

/// Sends a group offset request (its foreign topics already taken out and
/// answered in `refused`) and answers with the upstream's topics under the
/// client's names plus `refused`; with nothing left to send, answers alone.
/// `after` sees the renamed answer (before refused topics are added).
#[allow(clippy::too_many_arguments)]
async fn finish_offsets<Req, Resp, T>(
    ctx: &mut Ctx<'_>,
    req: &RequestFrame,
    target: Target,
    body: &Req,
    nothing_left: bool,
    names: Names,
    refused: Vec<T>,
    topics: fn(&mut Resp) -> &mut Vec<T>,
    name: fn(&mut T) -> &mut TopicName,
    after: impl FnOnce(&mut Resp) + Send + 'static,
) -> crate::pipeline::Result<Outcome>
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable
        + kafka_protocol::protocol::Encodable
        + Default
        + Send
        + 'static,
    T: Send + 'static,
{
    let site = target.0;
    let rename = move |r: &mut Resp| {
        for t in topics(r).iter_mut() {
            let virt = names.virt(site, name(t));
            *name(t) = virt;
        }
        after(r);
        topics(r).extend(refused);
        true
    };
    if nothing_left {
        let mut r = Resp::default();
        rename(&mut r);
        return Ok(Outcome::Ready(Reply::Frame(codec::encode_response(
            req.api_key,
            req.api_version,
            req.correlation_id,
            &r,
        )?)));
    }
    let frame = codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), body)?;
    forward_rewriting(ctx, target, req, frame, rename).await
}

/// OffsetFetch: one group (v0-7) or several (v8+), possibly on different
/// coordinators and sites. Topic names are renamed both ways; "all topics"
/// answers show only topics this client sees, by its names; committed leader
/// epochs are neutralised.
pub async fn offset_fetch(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let mut body: OffsetFetchRequest = req.decode()?;
    let who = ctx.who(&req);
    let (listener, client_id) = (who.listener.to_string(), who.client_id.to_string());
    let who = Who {
        listener: &listener,
        client_id: &client_id,
    };
    let router = ctx.plane.router.clone();
    let mut names = Names::default();
    if req.api_version < 8 {
        let target = coordinator(ctx, who, GROUP, body.group_id.0.as_str()).await?;
        let mut foreign = Vec::new();
        if let Some(topics) = body.topics.as_mut() {
            foreign = group_topics(
                ctx,
                who,
                body.group_id.0.as_str(),
                target.0,
                &mut names,
                topics,
                |t| &mut t.name,
            );
        }
        let frame =
            codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), &body)?;
        let site = target.0;
        return forward_rewriting(
            ctx,
            target,
            &req,
            frame,
            move |r: &mut OffsetFetchResponse| {
                let who = Who {
                    listener: &listener,
                    client_id: &client_id,
                };
                r.topics
                    .retain_mut(|t| match rename_back(&router, who, &names, site, &t.name) {
                        Some(v) => {
                            t.name = v;
                            true
                        }
                        None => false,
                    });
                for t in foreign {
                    let mut rt = offset_fetch_response::OffsetFetchResponseTopic::default();
                    rt.name = t.name;
                    rt.partitions = t
                        .partition_indexes
                        .iter()
                        .map(|&i| {
                            let mut p =
                                offset_fetch_response::OffsetFetchResponsePartition::default();
                            p.partition_index = i;
                            p.committed_offset = -1;
                            p.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                            p
                        })
                        .collect();
                    r.topics.push(rt);
                }
                neutralise(r);
                true
            },
        )
        .await;
    }
    let mut parts: BTreeMap<Target, OffsetFetchRequest> = BTreeMap::new();
    let mut refused: Vec<(
        String,
        Vec<offset_fetch_response::OffsetFetchResponseTopics>,
    )> = Vec::new();
    let groups = std::mem::take(&mut body.groups);
    for mut g in groups {
        let target = coordinator(ctx, who, GROUP, g.group_id.0.as_str()).await?;
        if let Some(topics) = g.topics.as_mut() {
            let foreign = group_topics(
                ctx,
                who,
                g.group_id.0.as_str(),
                target.0,
                &mut names,
                topics,
                |t| &mut t.name,
            );
            if !foreign.is_empty() {
                let entries =
                    foreign
                        .into_iter()
                        .map(|t| {
                            let mut rt =
                                offset_fetch_response::OffsetFetchResponseTopics::default();
                            rt.name = t.name;
                            rt.partitions = t.partition_indexes.iter().map(|&i| {
                        let mut p = offset_fetch_response::OffsetFetchResponsePartitions::default();
                        p.partition_index = i;
                        p.committed_offset = -1;
                        p.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                        p
                    }).collect();
                            rt
                        })
                        .collect();
                refused.push((g.group_id.0.to_string(), entries));
            }
        }
        let sub = parts.entry(target).or_insert_with(|| {
            let mut s = body.clone();
            s.groups.clear();
            s
        });
        sub.groups.push(g);
    }
    scatter(
        ctx,
        &req,
        parts,
        |sub: OffsetFetchRequest| {
            let mut r = OffsetFetchResponse::default();
            for g in sub.groups {
                let mut a = offset_fetch_response::OffsetFetchResponseGroup::default();
                a.group_id = g.group_id;
                a.error_code = errors::COORDINATOR_NOT_AVAILABLE;
                r.groups.push(a);
            }
            Some(r)
        },
        move |resps: Vec<(usize, OffsetFetchResponse)>| {
            let who = Who {
                listener: &listener,
                client_id: &client_id,
            };
            let mut out = OffsetFetchResponse::default();
            for (site, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                for mut g in r.groups {
                    g.topics.retain_mut(|t| {
                        match rename_back(&router, who, &names, site, &t.name) {
                            Some(v) => {
                                t.name = v;
                                true
                            }
                            None => false,
                        }
                    });
                    if let Some((_, extra)) = refused
                        .iter_mut()
                        .find(|(id, _)| id == g.group_id.0.as_str())
                    {
                        g.topics.append(extra);
                    }
                    out.groups.push(g);
                }
            }
            neutralise(&mut out);
            Ok(out)
        },
    )
    .await
}

/// The client's name for a physical topic in a group answer: the request's
/// own mapping, else (an "all topics" answer) what the routes show this client.
fn rename_back(
    router: &crate::route::Router,
    who: Who<'_>,
    names: &Names,
    site: usize,
    phys: &TopicName,
) -> Option<TopicName> {
    if let Some(e) = names.entry(site, phys.0.as_str()) {
        return Some(e.virt.clone());
    }
    router
        .to_virtual(who, site, phys.0.as_str())
        .map(|v| TopicName(StrBytes::from_string(v)))
}

fn neutralise(r: &mut OffsetFetchResponse) {
    for p in r.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
        p.committed_leader_epoch = -1;
    }
    for p in r
        .groups
        .iter_mut()
        .flat_map(|g| g.topics.iter_mut())
        .flat_map(|t| t.partitions.iter_mut())
    {
        p.committed_leader_epoch = -1;
    }
}

/// DescribeGroups / DeleteGroups: several groups, split per coordinator.
/// Member metadata and assignments carry the names clients used (virtual
/// names), so they need no renaming.
pub async fn by_groups(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let who = ctx.who(&req);
    let (listener, client_id) = (who.listener.to_string(), who.client_id.to_string());
    let who = Who {
        listener: &listener,
        client_id: &client_id,
    };
    if req.api_key == ApiKey::DescribeGroups {
        let body: DescribeGroupsRequest = req.decode()?;
        let mut parts: BTreeMap<Target, DescribeGroupsRequest> = BTreeMap::new();
        for g in &body.groups {
            let target = coordinator(ctx, who, GROUP, g.0.as_str()).await?;
            parts
                .entry(target)
                .or_insert_with(|| {
                    let mut s = body.clone();
                    s.groups.clear();
                    s
                })
                .groups
                .push(g.clone());
        }
        return scatter(
            ctx,
            &req,
            parts,
            |sub: DescribeGroupsRequest| {
                let mut r = DescribeGroupsResponse::default();
                for g in sub.groups {
                    let mut a =
                        kafka_protocol::messages::describe_groups_response::DescribedGroup::default(
                        );
                    a.group_id = g;
                    a.error_code = errors::COORDINATOR_NOT_AVAILABLE;
                    r.groups.push(a);
                }
                Some(r)
            },
            |resps: Vec<(usize, DescribeGroupsResponse)>| {
                let mut out = DescribeGroupsResponse::default();
                for (_, r) in resps {
                    out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                    out.groups.extend(r.groups);
                }
                Ok(out)
            },
        )
        .await;
    }
    let body: DeleteGroupsRequest = req.decode()?;
    let mut parts: BTreeMap<Target, DeleteGroupsRequest> = BTreeMap::new();
    for g in &body.groups_names {
        let target = coordinator(ctx, who, GROUP, g.0.as_str()).await?;
        parts
            .entry(target)
            .or_insert_with(|| {
                let mut s = body.clone();
                s.groups_names.clear();
                s
            })
            .groups_names
            .push(g.clone());
    }
    scatter(
        ctx,
        &req,
        parts,
        |sub: DeleteGroupsRequest| {
            let mut r = DeleteGroupsResponse::default();
            for g in sub.groups_names {
                let mut a =
                    kafka_protocol::messages::delete_groups_response::DeletableGroupResult::default(
                    );
                a.group_id = g;
                a.error_code = errors::COORDINATOR_NOT_AVAILABLE;
                r.results.push(a);
            }
            Some(r)
        },
        |resps: Vec<(usize, DeleteGroupsResponse)>| {
            let mut out = DeleteGroupsResponse::default();
            for (_, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                out.results.extend(r.results);
            }
            Ok(out)
        },
    )
    .await
}

/// `body` for every broker of every site that coordinates groups and
/// transactions (the default site and the sites of routes with `groups`):
/// each broker knows only what it coordinates (ListGroups, ListTransactions).
pub(super) async fn every_coordinator<R: Clone>(
    ctx: &Ctx<'_>,
    body: &R,
) -> crate::pipeline::Result<BTreeMap<Target, R>> {
    let router = ctx.plane.router.clone();
    let mut sites = vec![router.default_site()];
    sites.extend(
        router
            .routes()
            .iter()
            .filter(|r| r.groups.is_some())
            .map(|r| r.site),
    );
    sites.sort_unstable();
    sites.dedup();
    let mut parts = BTreeMap::new();
    for si in sites {
        let site = ctx.site(si);
        if site.view().brokers.is_empty() {
            site.refresh().await?;
        }
        for b in site.view().brokers.keys() {
            parts.insert((si, *b), body.clone());
        }
    }
    Ok(parts)
}

/// ListGroups: every broker knows only the groups it coordinates; ask every
/// broker of every site that coordinates groups.
pub async fn list_groups(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let body: kafka_protocol::messages::ListGroupsRequest = req.decode()?;
    let parts = every_coordinator(ctx, &body).await?;
    scatter(
        ctx,
        &req,
        parts,
        // A broker's groups cannot be listed without it: the client hears
        // so (and retries) rather than getting a list with groups missing.
        |_| {
            let mut r = ListGroupsResponse::default();
            r.error_code = errors::COORDINATOR_NOT_AVAILABLE;
            Some(r)
        },
        |resps: Vec<(usize, ListGroupsResponse)>| {
            let mut out = ListGroupsResponse::default();
            for (_, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                if out.error_code == 0 {
                    out.error_code = r.error_code;
                }
                out.groups.extend(r.groups);
            }
            Ok(out)
        },
    )
    .await
}

/// Transactional APIs: route to the transaction coordinator (on the site the
/// routes' `groups` matchers give the transactional id); InitProducerId
/// without a transactional id goes to any broker of the default site.
/// AddPartitionsToTxn names topics: they are renamed, and must live on the
/// transaction's site (a transaction cannot span clusters).
pub async fn by_transaction(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let who = ctx.who(&req);
    let (listener, client_id) = (who.listener.to_string(), who.client_id.to_string());
    let who = Who {
        listener: &listener,
        client_id: &client_id,
    };
    let txn: Option<String> = match req.api_key {
        ApiKey::InitProducerId => {
            let b = req.decode::<InitProducerIdRequest>()?;
            match b.transactional_id {
                Some(t) => Some(t.0.to_string()),
                None => return init_producer_id(ctx, &req, &b).await,
            }
        }
        ApiKey::AddPartitionsToTxn => return add_partitions_to_txn(ctx, who, req).await,
        ApiKey::AddOffsetsToTxn => Some(
            req.decode::<AddOffsetsToTxnRequest>()?
                .transactional_id
                .0
                .to_string(),
        ),
        ApiKey::EndTxn => Some(
            req.decode::<EndTxnRequest>()?
                .transactional_id
                .0
                .to_string(),
        ),
        other => {
            return Err(crate::pipeline::Error::protocol(format!(
                "{other:?} is not a transaction request"
            )))
        }
    };
    let Some(id) = txn else {
        return Err(crate::pipeline::Error::protocol(
            "transaction request without a transactional id",
        ));
    };
    if let Some(reply) = txn_fenced(&ctx.plane.failover, &req, &id)? {
        return Ok(reply);
    }
    let target = coordinator(ctx, who, TRANSACTION, &id).await?;
    let fo = ctx.plane.failover.clone();
    match fo.group_route(&id) {
        Some(route) if req.api_key == ApiKey::InitProducerId => {
            let epoch = fo.epoch(route);
            forward_rewriting(
                ctx,
                target,
                &req,
                req.frame.clone(),
                move |r: &mut kafka_protocol::messages::InitProducerIdResponse| {
                    if r.error_code == 0 {
                        fo.fence.txn_initialised(&id, epoch);
                        // A new session: what an unfinished transaction held
                        // is aborted by the coordinator.
                        fo.shadow.txn_ended(&id, false);
                    }
                    false
                },
            )
            .await
        }
        _ if req.api_key == ApiKey::EndTxn && fo.enabled() => end_txn(ctx, target, req, id).await,
        _ => forward(ctx, target, &req).await,
    }
}

/// EndTxn on a Switchyard with failover routes: once the coordinator
/// committed the transaction, the offsets it committed for groups
/// (TxnOffsetCommit) are noted for shadow commits; an abort, or an error the
/// client cannot retry (the transaction will not commit), forgets them.
async fn end_txn(
    ctx: &mut Ctx<'_>,
    target: Target,
    req: RequestFrame,
    txn: String,
) -> crate::pipeline::Result<Outcome> {
    let committed = req.decode::<EndTxnRequest>()?.committed;
    let fo = ctx.plane.failover.clone();
    let pending = ctx
        .pools
        .call(target, req.api_key, req.frame.clone())
        .await?;
    let timeout = ctx.plane.request_timeout();
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    Ok(Outcome::Later(Box::pin(async move {
        let frame = pending.wait(timeout).await?;
        let r: kafka_protocol::messages::EndTxnResponse =
            codec::decode_response_body(api, version, &frame)?;
        let retriable = matches!(
            r.error_code,
            errors::NOT_COORDINATOR
                | errors::COORDINATOR_NOT_AVAILABLE
                | COORDINATOR_LOAD_IN_PROGRESS
                | errors::CONCURRENT_TRANSACTIONS
        );
        if !retriable {
            let ok = r.error_code == errors::NONE && committed;
            for (group, site, commits) in fo.shadow.txn_ended(&txn, ok) {
                fo.observe_commit(&group, site, commits).await;
            }
        }
        Ok(Reply::Upstream {
            correlation_id: corr,
            frame,
        })
    })))
}

/// A non-transactional InitProducerId is answered here: the id belongs to
/// Switchyard, and every site the producer writes to gets its own id for it
/// (`upstream::producer_ids`), so the producer survives routing to several
/// sites and failovers without colliding with anyone's ids.
async fn init_producer_id(
    ctx: &Ctx<'_>,
    req: &RequestFrame,
    b: &InitProducerIdRequest,
) -> crate::pipeline::Result<Outcome> {
    let (pid, epoch) = ctx
        .plane
        .producer_ids
        .issue((b.producer_id.0, b.producer_epoch));
    // The id on the home site is allocated now, as a direct client's would
    // be, so the first batch does not wait for it. Other sites (and a home
    // site that is down now) allocate on first use.
    let home = ctx.plane.router.home_site();
    if let Err(e) = ctx
        .plane
        .producer_ids
        .on_site(&ctx.site(home), home, pid, epoch)
        .await
    {
        tracing::debug!(site = %ctx.site(home).name, error = %e, "producer id not allocated yet; on first use");
    }
    let mut r = kafka_protocol::messages::InitProducerIdResponse::default();
    r.producer_id = kafka_protocol::messages::ProducerId(pid);
    r.producer_epoch = epoch;
    Ok(Outcome::Ready(Reply::Frame(codec::encode_response(
        req.api_key,
        req.api_version,
        req.correlation_id,
        &r,
    )?)))
}

async fn add_partitions_to_txn(
    ctx: &mut Ctx<'_>,
    who: Who<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let mut b: AddPartitionsToTxnRequest = req.decode()?;
    let txn = b.v3_and_below_transactional_id.0.to_string();
    if let Some(reply) = txn_fenced(&ctx.plane.failover, &req, &txn)? {
        return Ok(reply);
    }
    let target = coordinator(ctx, who, TRANSACTION, &txn).await?;
    let router = ctx.plane.router.clone();
    let mut names = Names::default();
    let mut foreign = Vec::new();
    let mut kept = Vec::new();
    for mut t in b.v3_and_below_topics.drain(..) {
        let (site, phys) = names.resolve(&router, who, &t.name);
        if site == target.0 {
            t.name = phys;
            kept.push(t);
        } else {
            foreign.push(t);
        }
    }
    b.v3_and_below_topics = kept;
    if !foreign.is_empty() {
        // All or nothing, as Kafka does: one bad partition fails the rest
        // with OPERATION_NOT_ATTEMPTED.
        use crate::codec::errors::OPERATION_NOT_ATTEMPTED;
        let all = b
            .v3_and_below_topics
            .iter()
            .map(|t| {
                (
                    names.virt(target.0, &t.name),
                    &t.partitions,
                    OPERATION_NOT_ATTEMPTED,
                )
            })
            .chain(foreign.iter().map(|t| {
                (
                    t.name.clone(),
                    &t.partitions,
                    errors::UNKNOWN_TOPIC_OR_PARTITION,
                )
            }));
        let r = add_partitions_answer(all);
        return Ok(Outcome::Ready(Reply::Frame(codec::encode_response(
            req.api_key,
            req.api_version,
            req.correlation_id,
            &r,
        )?)));
    }
    if !names.renamed() {
        return forward_frame(ctx, target, &req, req.frame.clone()).await;
    }
    let frame = codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), &b)?;
    let site = target.0;
    forward_rewriting(
        ctx,
        target,
        &req,
        frame,
        move |r: &mut AddPartitionsToTxnResponse| {
            for t in &mut r.results_by_topic_v3_and_below {
                t.name = names.virt(site, &t.name);
            }
            true
        },
    )
    .await
}

/// OffsetCommit answers for `topics`, every partition with `code`.
pub fn commit_answer(
    topics: &[kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic],
    code: i16,
) -> Vec<offset_commit_response::OffsetCommitResponseTopic> {
    topics
        .iter()
        .map(|t| {
            let mut rt = offset_commit_response::OffsetCommitResponseTopic::default();
            rt.name = t.name.clone();
            rt.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut rp = offset_commit_response::OffsetCommitResponsePartition::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = code;
                    rp
                })
                .collect();
            rt
        })
        .collect()
}
