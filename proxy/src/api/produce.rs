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
//! partition's virtual leader and that node's endpoint.

use std::collections::BTreeSet;
use std::sync::Arc;

use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use super::{forward_rewriting, scatter, split, Ctx, Outcome};
use crate::codec::RequestFrame;
use crate::identity::Identity;
use crate::upstream::Site;

pub async fn route(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let body: ProduceRequest = req.decode()?;
    let site = ctx.site();

    let (plan, missing) = split::plan(&site, &body, &[]).await;
    let acks = body.acks;
    let identity = ctx.proxy.identity.clone();

    // Everything on one broker: no split, and for Produce the client's bytes
    // go upstream untouched.
    let single = if missing.is_empty() && plan.len() == 1 {
        plan.keys().next().copied()
    } else {
        None
    };
    if let Some(broker) = single {
        if acks == 0 {
            ctx.pool
                .send(broker, req.api_key, req.frame.clone(), false)
                .await?;
            return Ok(Outcome::NoResponse);
        }
        return forward_rewriting(
            ctx,
            broker,
            &req,
            req.frame.clone(),
            move |r: &mut ProduceResponse| {
                note_errors(&site, r);
                virtualise(&identity, r)
            },
        )
        .await;
    }

    let parts = split::split(&body, &plan);
    if acks == 0 {
        for (broker, sub) in parts {
            let frame = crate::codec::encode_request(
                req.api_key,
                req.api_version,
                req.client_id.clone(),
                &sub,
            )?;
            ctx.pool.send(broker, req.api_key, frame, false).await?;
        }
        if !missing.is_empty() {
            tracing::debug!(
                partitions = missing.len(),
                "acks=0 produce to unknown partitions dropped"
            );
        }
        return Ok(Outcome::NoResponse);
    }
    scatter(ctx, &req, parts, move |resps: Vec<ProduceResponse>| {
        let mut out = ProduceResponse::default();
        for r in resps {
            // Upstream answers only: our own "no leader" answers must not
            // count, or a client hammering a missing topic defeats the
            // refresh rate limit.
            note_errors(&site, &r);
            out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
            for t in r.responses {
                push_topic(&mut out.responses, t);
            }
        }
        for (name, index, code) in missing {
            let mut p = PartitionProduceResponse::default();
            p.index = index;
            p.error_code = code;
            p.base_offset = -1;
            let mut t = TopicProduceResponse::default();
            t.name = name;
            t.partition_responses.push(p);
            push_topic(&mut out.responses, t);
        }
        virtualise(&identity, &mut out);
        Ok(out)
    })
    .await
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

fn push_topic(out: &mut Vec<TopicProduceResponse>, t: TopicProduceResponse) {
    match out.iter_mut().find(|o| o.name == t.name) {
        Some(o) => o.partition_responses.extend(t.partition_responses),
        None => out.push(t),
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
