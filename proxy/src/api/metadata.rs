//! Metadata (key 3): the heart of the virtual cluster.
//!
//! Forwarded to an upstream broker (so auto-creation, authorisation and errors
//! behave as upstream decides), then every identity in the answer is replaced:
//! brokers become Switchyard's virtual nodes, partition leaders and replicas
//! become virtual node ids, topic ids become virtual ids, leader epochs become
//! -1, and the cluster and controller ids become ours. The answer also refreshes
//! Switchyard's own view of the upstream, for free.

use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{forward_rewriting, Ctx, Outcome};
use crate::codec::{self, RequestFrame};
use crate::identity::Identity;

pub async fn route(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let site = ctx.site();
    let broker = site.any_broker().await?;
    let mut frame = req.frame.clone();
    if req.api_version >= 10 {
        // Topics may be asked for by (virtual) id: swap in names the upstream knows.
        let mut body: MetadataRequest = req.decode()?;
        let mut changed = false;
        for t in body.topics.iter_mut().flatten() {
            if !t.topic_id.is_nil() {
                if let Some(name) = site.topic_for_virtual_id(&t.topic_id) {
                    t.name = Some(TopicName(StrBytes::from_string(name)));
                }
                t.topic_id = uuid::Uuid::nil();
                changed = true;
            }
        }
        if changed {
            frame = codec::encode_request(
                ApiKey::Metadata,
                req.api_version,
                req.client_id.clone(),
                &body,
            )?;
        }
    }
    let identity = ctx.proxy.identity.clone();
    forward_rewriting(
        ctx,
        broker,
        &req,
        frame,
        move |resp: &mut MetadataResponse| {
            site.absorb_metadata(resp);
            virtualise(&identity, resp);
            true
        },
    )
    .await
}

/// Replaces every upstream identity in a Metadata response with the virtual one.
pub fn virtualise(id: &Identity, resp: &mut MetadataResponse) {
    resp.brokers = id
        .nodes
        .iter()
        .map(|n| {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(n.node_id);
            b.host = StrBytes::from_string(n.host.clone());
            b.port = n.port;
            b.rack = id.rack.clone().map(StrBytes::from_string);
            b
        })
        .collect();
    resp.cluster_id = Some(StrBytes::from_string(id.cluster_id.clone()));
    resp.controller_id = BrokerId(id.controller_id());
    for t in &mut resp.topics {
        let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        if !t.topic_id.is_nil() {
            t.topic_id = id.topic_id(&name);
        }
        for p in &mut t.partitions {
            let replicas = id.replicas_for(&name, p.partition_index, p.replica_nodes.len());
            let isr_len = p.isr_nodes.len().min(replicas.len());
            p.leader_id = if p.leader_id.0 >= 0 {
                BrokerId(id.leader_for(&name, p.partition_index).node_id)
            } else {
                BrokerId(-1)
            };
            p.leader_epoch = -1;
            p.isr_nodes = replicas[..isr_len.max(usize::from(p.leader_id.0 >= 0))]
                .iter()
                .map(|r| BrokerId(*r))
                .collect();
            p.replica_nodes = replicas.into_iter().map(BrokerId).collect();
            p.offline_replicas.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponsePartition, MetadataResponseTopic,
    };

    #[test]
    fn nothing_upstream_survives() {
        let id = Identity::new("virt", "127.0.0.1:9092".parse().unwrap(), "proxy", 3, None);
        let mut resp = MetadataResponse::default();
        let mut b = MetadataResponseBroker::default();
        b.node_id = BrokerId(42);
        b.host = StrBytes::from_static_str("upstream-host");
        b.port = 19092;
        resp.brokers.push(b);
        resp.cluster_id = Some(StrBytes::from_static_str("real"));
        resp.controller_id = BrokerId(42);
        let mut t = MetadataResponseTopic::default();
        t.name = Some(TopicName(StrBytes::from_static_str("orders")));
        t.topic_id = uuid::Uuid::from_u128(99);
        for i in 0..4 {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i;
            p.leader_id = BrokerId(42);
            p.leader_epoch = 7;
            p.replica_nodes = vec![BrokerId(42)];
            p.isr_nodes = vec![BrokerId(42)];
            t.partitions.push(p);
        }
        resp.topics.push(t);
        virtualise(&id, &mut resp);
        assert_eq!(resp.brokers.len(), 3);
        assert!(resp
            .brokers
            .iter()
            .all(|b| b.host.as_str() == "proxy" && b.port > 9092));
        assert_eq!(resp.cluster_id.as_ref().map(|c| c.as_str()), Some("virt"));
        assert_eq!(resp.controller_id, BrokerId(0));
        let t = &resp.topics[0];
        assert_eq!(t.topic_id, id.topic_id("orders"));
        for p in &t.partitions {
            assert!((0..3).contains(&p.leader_id.0));
            assert_eq!(p.leader_epoch, -1);
            assert_eq!(p.replica_nodes, vec![p.leader_id]);
            assert_eq!(p.isr_nodes, vec![p.leader_id]);
        }
    }
}
