//! Metadata (key 3): the heart of the virtual cluster.
//!
//! Forwarded to an upstream broker (so auto-creation, authorisation and errors
//! behave as upstream decides), then every identity in the answer is replaced:
//! brokers become Switchyard's virtual nodes, partition leaders and replicas
//! become virtual node ids, topic ids become virtual ids, leader epochs become
//! -1, and the cluster and controller ids become ours. The answer also refreshes
//! Switchyard's own view of the upstream, for free.
//!
//! With several sites, each site is asked for its own topics (under their
//! physical names) and the answers are merged under the clients' names; a
//! listing of all topics shows exactly the topics the routes give this client.

use std::collections::BTreeMap;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{rewrite_or_pass, Ctx, Outcome, Reply};
use crate::codec::{self, RequestFrame};
use crate::pipeline::identity::metadata_answer as virtualise;
use crate::pipeline::names::Names;
use crate::upstream::PendingResponse;

/// Retriable; the answer for topics of a site that is unreachable right now.
use crate::codec::errors::LEADER_NOT_AVAILABLE;

pub async fn route(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let mut body: MetadataRequest = req.decode()?;
    let proxy = ctx.plane.clone();
    let router = proxy.router.clone();
    let who = ctx.who(&req);
    let (listener, client_id) = (who.listener.to_string(), who.client_id.to_string());

    // Topics may be asked for by (virtual) id: swap in their names.
    for t in body.topics.iter_mut().flatten() {
        if !t.topic_id.is_nil() {
            if let Some(name) = proxy.topic_for_virtual_id(&t.topic_id).await {
                t.name = Some(TopicName(StrBytes::from_string(name)));
            }
            t.topic_id = uuid::Uuid::nil();
        }
    }

    // A route switching sites: neither site may serve its topics until the
    // switch ends, so the lookup waits for that (bounded) and asks the new
    // site. Asking the old one could wait on a dead site; a retriable error
    // instead makes some clients (kafka-python) take the topic for gone and
    // rebalance. Topics of a switch that outlasts the wait get that error.
    let switching_now: Vec<usize> = (0..router.routes().len())
        .filter(|&r| router.side(r).held())
        .collect();
    // Nearly always none: then no topic is resolved twice.
    let switching: Vec<usize> = match body.topics.as_deref() {
        _ if switching_now.is_empty() => switching_now,
        Some(topics) if !topics.is_empty() => topics
            .iter()
            .filter_map(|t| t.name.as_ref())
            .filter_map(|n| router.resolve(ctx.who(&req), n.0.as_str()).route)
            .filter(|r| switching_now.contains(r))
            .collect(),
        // A listing, or brokers only: every route's site may be asked.
        _ => switching_now,
    };
    router
        .settled(&switching, proxy.site.control_timeout())
        .await;

    // Which sites to ask, and for which (physical) topics.
    let mut names = Names::default();
    let mut per_site: BTreeMap<usize, Option<Vec<MetadataRequestTopic>>> = BTreeMap::new();
    let mut held: Vec<TopicName> = Vec::new();
    match &body.topics {
        None => {
            // Every topic: ask every site that can hold a visible topic now:
            // the default site (topics no route selects) and the site each
            // route serves from (its standby after a failover). A site that
            // does not answer is left out of the listing (below).
            per_site.insert(router.default_site(), None);
            per_site.insert(router.home_site(), None);
            for i in 0..router.routes().len() {
                if let Some((site, _, _)) = router.serving(i) {
                    per_site.insert(site, None);
                }
            }
        }
        Some(topics) => {
            for t in topics {
                let Some(virt) = &t.name else { continue };
                let (site, phys) = names.resolve(&router, ctx.who(&req), virt);
                if names.is_held(site, phys.0.as_str()) {
                    held.push(virt.clone());
                    continue;
                }
                let mut sub = t.clone();
                sub.name = Some(phys);
                per_site.entry(site).or_insert_with(|| Some(Vec::new()));
                if let Some(Some(list)) = per_site.get_mut(&site) {
                    list.push(sub);
                }
            }
            // No topic to ask for: brokers and cluster only, from the site
            // that serves the default route now (none while it switches:
            // the brokers are Switchyard's own, the answer needs no site).
            let home = router.home_site();
            if per_site.is_empty() && held.is_empty() && !router.site_held(home) {
                per_site.insert(home, Some(Vec::new()));
            }
        }
    }

    let identity = ctx.identity();
    if per_site.is_empty() {
        let mut out = MetadataResponse::default();
        out.topics = held.into_iter().map(unavailable_topic).collect();
        virtualise(&identity, &mut out);
        return Ok(Outcome::Ready(Reply::Frame(codec::encode_response(
            req.api_key,
            req.api_version,
            req.correlation_id,
            &out,
        )?)));
    }
    // One site under the client's own names: forward as is and rewrite.
    if per_site.len() == 1 && held.is_empty() && !names.renamed() && router.is_identity() {
        if let Some((&si, _)) = per_site.iter().next() {
            let site = ctx.site(si);
            let frame = codec::encode_request(
                ApiKey::Metadata,
                req.api_version,
                req.client_id.clone(),
                &body,
            )?;
            let pending = call_any(ctx, si, frame.clone()).await?;
            let timeout = site.control_timeout();
            let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
            return Ok(Outcome::Later(Box::pin(async move {
                let answer = match pending.wait(timeout).await {
                    Ok(f) => f,
                    // Any broker can answer: ask another one (the control
                    // connection avoids brokers that failed lately).
                    Err(e) => {
                        tracing::debug!(site = %site.name, error = %e, "metadata retried on another broker");
                        site.control_forward(api, frame).await?
                    }
                };
                rewrite_or_pass(api, version, corr, answer, |resp: &mut MetadataResponse| {
                    site.absorb_metadata(resp);
                    virtualise(&identity, resp);
                    true
                })
            })));
        }
    }

    let mut pending: Vec<(usize, Result<PendingResponse, String>, Vec<TopicName>)> = Vec::new();
    for (si, topics) in per_site {
        let asked: Vec<TopicName> = topics
            .iter()
            .flatten()
            .filter_map(|t| t.name.clone())
            .collect();
        let mut sub = body.clone();
        sub.topics = topics;
        let sent = async {
            let frame = codec::encode_request(
                ApiKey::Metadata,
                req.api_version,
                req.client_id.clone(),
                &sub,
            )?;
            anyhow::Ok(call_any(ctx, si, frame).await?)
        }
        .await
        .map_err(|e| format!("{e:#}"));
        pending.push((si, sent, asked));
    }
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    // One bound for the whole listing, not one per site in turn.
    let deadline = tokio::time::Instant::now() + proxy.site.control_timeout();
    Ok(Outcome::Later(Box::pin(async move {
        let who = crate::route::Who {
            listener: &listener,
            client_id: &client_id,
        };
        let mut out = MetadataResponse::default();
        out.topics.extend(held.into_iter().map(unavailable_topic));
        for (si, sent, asked) in pending {
            let site = &proxy.sites[si];
            let resp = match sent {
                Ok(p) => match p.wait_until(deadline).await {
                    Ok(frame) => {
                        codec::decode_response_body::<MetadataResponse>(api, version, &frame)
                            .map_err(|e| format!("{e:#}"))
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e),
            };
            let r = match resp {
                Ok(r) => r,
                Err(e) => {
                    // One unreachable site must not hide every other site's
                    // topics: its asked-for topics get a retriable error,
                    // a listing simply lacks them.
                    tracing::warn!(site = %site.name, error = %e, "metadata from site failed");
                    out.topics.extend(
                        asked
                            .iter()
                            .map(|phys| unavailable_topic(names.virt(si, phys))),
                    );
                    continue;
                }
            };
            site.absorb_metadata(&r);
            out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
            for mut t in r.topics {
                let Some(phys) = t.name.clone() else { continue };
                let virt = if names.entries().is_empty() {
                    // A listing: only what this client may see, by its name.
                    match router.to_virtual(who, si, phys.0.as_str()) {
                        Some(v) => TopicName(StrBytes::from_string(v)),
                        None => continue,
                    }
                } else {
                    names.virt(si, &phys)
                };
                t.name = Some(virt);
                out.topics.push(t);
            }
        }
        virtualise(&identity, &mut out);
        Ok(Reply::Frame(codec::encode_response(
            api, version, corr, &out,
        )?))
    })))
}

/// A topic its site cannot answer for right now (unreachable, or its route
/// switching sites): retriable, the client asks again shortly.
fn unavailable_topic(name: TopicName) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(name);
    t.error_code = LEADER_NOT_AVAILABLE;
    t
}

/// Sends a request any broker can answer to a live broker of site `si`.
async fn call_any(
    ctx: &mut Ctx<'_>,
    si: usize,
    frame: bytes::Bytes,
) -> Result<PendingResponse, crate::upstream::UpstreamError> {
    let broker = ctx.pools.any_live(si).await?;
    ctx.pools.call((si, broker), ApiKey::Metadata, frame).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::BrokerId;

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
