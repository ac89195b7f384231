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

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, BrokerId, DeleteGroupsRequest,
    DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, EndTxnRequest,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::{forward, forward_frame, forward_rewriting, scatter, Ctx, Outcome, Reply};
use crate::codec::{self, RequestFrame};
use crate::upstream::Coordinator;

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

pub async fn find_coordinator(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let body: FindCoordinatorRequest = req.decode()?;
    let keys: Vec<StrBytes> = if req.api_version >= 4 {
        body.coordinator_keys.clone()
    } else {
        vec![body.key.clone()]
    };
    let site = ctx.site();
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        // A client asks again after NOT_COORDINATOR: always look up afresh.
        site.forget_coordinator(body.key_type, key.as_str());
        let mut e = CoordinatorEntry::default();
        match site.coordinator(body.key_type, key.as_str()).await? {
            Coordinator::Broker(_) => {
                let node = ctx.proxy.identity.coordinator_for(key.as_str());
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

/// The upstream broker coordinating `key`, or an error the client can act on.
async fn coordinator(ctx: &Ctx<'_>, key_type: i8, key: &str) -> anyhow::Result<i32> {
    match ctx.site().coordinator(key_type, key).await? {
        Coordinator::Broker(b) => Ok(b),
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

/// Single-group requests: route to the group's coordinator.
pub async fn by_group(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let (group, frame): (GroupId, Option<Bytes>) = match req.api_key {
        ApiKey::JoinGroup => (req.decode::<JoinGroupRequest>()?.group_id, None),
        ApiKey::SyncGroup => (req.decode::<SyncGroupRequest>()?.group_id, None),
        ApiKey::Heartbeat => (req.decode::<HeartbeatRequest>()?.group_id, None),
        ApiKey::LeaveGroup => (req.decode::<LeaveGroupRequest>()?.group_id, None),
        ApiKey::OffsetDelete => (req.decode::<OffsetDeleteRequest>()?.group_id, None),
        ApiKey::OffsetCommit => {
            let mut b: OffsetCommitRequest = req.decode()?;
            let mut changed = false;
            for p in b.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                changed |= p.committed_leader_epoch != -1;
                p.committed_leader_epoch = -1;
            }
            let frame = if changed {
                Some(codec::encode_request(
                    req.api_key,
                    req.api_version,
                    req.client_id.clone(),
                    &b,
                )?)
            } else {
                None
            };
            (b.group_id, frame)
        }
        ApiKey::TxnOffsetCommit => {
            let mut b: TxnOffsetCommitRequest = req.decode()?;
            let mut changed = false;
            for p in b.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                changed |= p.committed_leader_epoch != -1;
                p.committed_leader_epoch = -1;
            }
            let frame = if changed {
                Some(codec::encode_request(
                    req.api_key,
                    req.api_version,
                    req.client_id.clone(),
                    &b,
                )?)
            } else {
                None
            };
            (b.group_id, frame)
        }
        other => anyhow::bail!("{other:?} is not a group request"),
    };
    let broker = coordinator(ctx, GROUP, group.0.as_str()).await?;
    let frame = frame.unwrap_or_else(|| req.frame.clone());
    forward_frame(ctx, broker, &req, frame).await
}

/// OffsetFetch: one group (v0-7) or several (v8+), possibly on different
/// coordinators; committed leader epochs in the answer are neutralised.
pub async fn offset_fetch(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let body: OffsetFetchRequest = req.decode()?;
    let neutralise = |r: &mut OffsetFetchResponse| {
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
    };
    if req.api_version < 8 {
        let broker = coordinator(ctx, GROUP, body.group_id.0.as_str()).await?;
        let frame = req.frame.clone();
        return forward_rewriting(
            ctx,
            broker,
            &req,
            frame,
            move |r: &mut OffsetFetchResponse| {
                neutralise(r);
                true
            },
        )
        .await;
    }
    let mut parts: BTreeMap<i32, OffsetFetchRequest> = BTreeMap::new();
    for g in &body.groups {
        let broker = coordinator(ctx, GROUP, g.group_id.0.as_str()).await?;
        let sub = parts.entry(broker).or_insert_with(|| {
            let mut s = body.clone();
            s.groups.clear();
            s
        });
        sub.groups.push(g.clone());
    }
    scatter(ctx, &req, parts, move |resps: Vec<OffsetFetchResponse>| {
        let mut out = OffsetFetchResponse::default();
        for r in resps {
            out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
            out.groups.extend(r.groups);
        }
        neutralise(&mut out);
        Ok(out)
    })
    .await
}

/// DescribeGroups / DeleteGroups: several groups, split per coordinator.
pub async fn by_groups(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    if req.api_key == ApiKey::DescribeGroups {
        let body: DescribeGroupsRequest = req.decode()?;
        let mut parts: BTreeMap<i32, DescribeGroupsRequest> = BTreeMap::new();
        for g in &body.groups {
            let broker = coordinator(ctx, GROUP, g.0.as_str()).await?;
            parts
                .entry(broker)
                .or_insert_with(|| {
                    let mut s = body.clone();
                    s.groups.clear();
                    s
                })
                .groups
                .push(g.clone());
        }
        return scatter(ctx, &req, parts, |resps: Vec<DescribeGroupsResponse>| {
            let mut out = DescribeGroupsResponse::default();
            for r in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                out.groups.extend(r.groups);
            }
            Ok(out)
        })
        .await;
    }
    let body: DeleteGroupsRequest = req.decode()?;
    let mut parts: BTreeMap<i32, DeleteGroupsRequest> = BTreeMap::new();
    for g in &body.groups_names {
        let broker = coordinator(ctx, GROUP, g.0.as_str()).await?;
        parts
            .entry(broker)
            .or_insert_with(|| {
                let mut s = body.clone();
                s.groups_names.clear();
                s
            })
            .groups_names
            .push(g.clone());
    }
    scatter(ctx, &req, parts, |resps: Vec<DeleteGroupsResponse>| {
        let mut out = DeleteGroupsResponse::default();
        for r in resps {
            out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
            out.results.extend(r.results);
        }
        Ok(out)
    })
    .await
}

/// ListGroups: every broker knows only the groups it coordinates; ask all.
pub async fn list_groups(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let site = ctx.site();
    if site.view().brokers.is_empty() {
        site.refresh().await?;
    }
    let brokers: Vec<i32> = site.view().brokers.keys().copied().collect();
    let body: kafka_protocol::messages::ListGroupsRequest = req.decode()?;
    let parts: BTreeMap<i32, _> = brokers.into_iter().map(|b| (b, body.clone())).collect();
    scatter(ctx, &req, parts, |resps: Vec<ListGroupsResponse>| {
        let mut out = ListGroupsResponse::default();
        for r in resps {
            out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
            if out.error_code == 0 {
                out.error_code = r.error_code;
            }
            out.groups.extend(r.groups);
        }
        Ok(out)
    })
    .await
}

/// Transactional APIs: route to the transaction coordinator; InitProducerId
/// without a transactional id may go to any broker.
pub async fn by_transaction(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let txn: Option<String> = match req.api_key {
        ApiKey::InitProducerId => req
            .decode::<InitProducerIdRequest>()?
            .transactional_id
            .map(|t| t.0.to_string()),
        ApiKey::AddPartitionsToTxn => Some(
            req.decode::<AddPartitionsToTxnRequest>()?
                .v3_and_below_transactional_id
                .0
                .to_string(),
        ),
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
        other => anyhow::bail!("{other:?} is not a transaction request"),
    };
    let broker = match txn {
        Some(id) => coordinator(ctx, TRANSACTION, &id).await?,
        None => ctx.site().any_broker().await?,
    };
    forward(ctx, broker, &req).await
}
