//! The identity stage: requests and answers of the partitioned APIs in the
//! virtual cluster's terms (`crate::identity`).
//!
//! * Requests: the client's leader epochs (of virtual leaders, meaningless
//!   upstream) are replaced by the epochs the site's view knows, as Kafka's
//!   clients send them (KIP-320): a broker that lost leadership then says
//!   so instead of serving a stale log; Fetch goes upstream as a
//!   full fetch (`session_id 0`, `epoch -1`: a fetch session is state on one
//!   upstream broker and would not survive a split request or a failover)
//!   and, from v13, with the site's real topic ids for the client's virtual
//!   ones.
//! * Answers: KIP-951 leader hints (`CurrentLeader`, `NodeEndpoints`) become
//!   the partition's virtual leader and that node's endpoint; Fetch topic ids
//!   become virtual, `session_id` 0, no preferred read replica; ListOffsets
//!   leader epochs -1; epoch errors NOT_LEADER_OR_FOLLOWER ([`client_error`]);
//!   Metadata's brokers, cluster id, controller, leaders,
//!   replicas and topic ids are all virtual. A single broker's Fetch answer is patched in place
//!   (`codec::fetch_patch`) without copying its records.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{Api, At, Exchange, Reply, Unanswered};
use crate::codec::errors::{
    FENCED_LEADER_EPOCH, NOT_LEADER_OR_FOLLOWER, UNKNOWN_LEADER_EPOCH, UNKNOWN_TOPIC_ID,
};
use crate::codec::fetch_patch;
use crate::identity::Identity;
use crate::shared::DataPlane;

/// Fetch v13+, before the names stage: topics come by virtual id; find
/// their names. Unknown ids are answered UNKNOWN_TOPIC_ID under the
/// client's own id. Returns the topics so answered (not to be routed).
pub async fn fetch_topic_names<A: Api<Req = FetchRequest>>(
    x: &mut Exchange<A>,
    plane: &DataPlane,
) -> Vec<usize> {
    let mut skip = Vec::new();
    if x.req.api_version < 13 {
        return skip;
    }
    // A lookup may have refreshed a site: the real ids sent upstream come
    // from the views as they are now.
    let views_now = |x: &mut Exchange<A>| x.views = plane.sites.iter().map(|s| s.view()).collect();
    for (ti, t) in x.body.topics.iter_mut().enumerate() {
        match plane.topic_for_virtual_id(&t.topic_id).await {
            Some(n) => t.topic = TopicName(StrBytes::from_string(n)),
            None => {
                skip.push(ti);
                for p in &t.partitions {
                    x.unanswered.push(Unanswered {
                        topic: t.topic.clone(),
                        topic_id: Some(t.topic_id),
                        partition: p.partition,
                        code: UNKNOWN_TOPIC_ID,
                        message: None,
                    });
                }
            }
        }
    }
    views_now(x);
    skip
}

/// Fetch, after the names stage: a full fetch, each partition with its
/// leader's epoch as the site's view knows it and, from v13, each site's real
/// topic ids (from the views the request is routed with). Always touches
/// the request.
pub fn fetch_request<A: Api<Req = FetchRequest>>(x: &mut Exchange<A>) {
    let b = &mut x.body;
    let version = x.req.api_version;
    for (t, site) in b.topics.iter_mut().zip(&x.site_of) {
        let view = site.and_then(|s| x.views.get(s));
        // One lookup per topic for its epochs and its id.
        let topic = view.and_then(|v| v.topics.get(t.topic.0.as_str()));
        for p in &mut t.partitions {
            p.current_leader_epoch = topic.map_or(-1, |tv| tv.leader_epoch(p.partition));
            p.last_fetched_epoch = -1;
        }
        if version >= 13 && view.is_some() {
            t.topic_id = topic.map(|tv| tv.id).unwrap_or_default();
        }
    }
    b.session_id = 0;
    b.session_epoch = -1;
    b.forgotten_topics_data.clear();
    x.touch("identity");
}

/// ListOffsets, after the names stage: each partition with its leader's
/// epoch as the site's view knows it. Touches the request when that is not
/// what the client sent.
pub fn list_offsets_request<A: Api<Req = ListOffsetsRequest>>(x: &mut Exchange<A>) {
    let mut changed = false;
    for (t, site) in x.body.topics.iter_mut().zip(&x.site_of) {
        let view = site.and_then(|s| x.views.get(s));
        for p in &mut t.partitions {
            let epoch = view.map_or(-1, |v| v.leader_epoch(t.name.0.as_str(), p.partition_index));
            changed |= p.current_leader_epoch != epoch;
            p.current_leader_epoch = epoch;
        }
    }
    if changed {
        x.touch("identity");
    }
}

/// The partition error a client gets for an upstream one. Leader epochs in
/// requests upstream are Switchyard's (the client's, of virtual leaders,
/// mean nothing there), so an epoch error says Switchyard's view was out of
/// date: the client hears NOT_LEADER_OR_FOLLOWER, which every client
/// retries after a metadata refresh, as it would for a leader that moved.
pub fn client_error(code: i16) -> i16 {
    match code {
        FENCED_LEADER_EPOCH | UNKNOWN_LEADER_EPOCH => NOT_LEADER_OR_FOLLOWER,
        c => c,
    }
}

/// ListOffsets answers: leader epochs -1, epoch errors as the client's.
pub fn list_offsets_answer(r: &mut ListOffsetsResponse) -> bool {
    let mut changed = false;
    for p in r.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
        let code = client_error(p.error_code);
        changed |= p.leader_epoch != -1 || code != p.error_code;
        p.leader_epoch = -1;
        p.error_code = code;
    }
    changed
}

/// KIP-951 leader hints of one answer (Produce and Fetch have their own
/// types for them): each hint set upstream names the partition's virtual
/// leader instead, without an epoch (virtual leaders have none), and the
/// answer then carries those leaders' endpoints.
struct LeaderHints {
    nodes: BTreeSet<i32>,
    changed: bool,
}

impl LeaderHints {
    fn new(changed: bool) -> Self {
        LeaderHints {
            nodes: BTreeSet::new(),
            changed,
        }
    }

    fn rewrite(
        &mut self,
        id: &Identity,
        topic: &str,
        partition: i32,
        leader_id: &mut BrokerId,
        leader_epoch: &mut i32,
    ) {
        if leader_id.0 < 0 && *leader_epoch < 0 {
            return;
        }
        let leader = id.leader_for(topic, partition).node_id;
        *leader_id = BrokerId(leader);
        *leader_epoch = -1;
        self.nodes.insert(leader);
        self.changed = true;
    }
}

/// The endpoints of the virtual `nodes` as the answer's `NodeEndpoint` type.
macro_rules! node_endpoints {
    ($ty:ty, $id:expr, $nodes:expr) => {
        endpoints($id, $nodes, |n, host, port, rack| {
            let mut e = <$ty>::default();
            e.node_id = BrokerId(n);
            e.host = host;
            e.port = port;
            e.rack = rack;
            e
        })
    };
}
/// Produce answers: upstream leader hints become virtual ones.
pub fn produce_answer(id: &Identity, r: &mut ProduceResponse) -> bool {
    use kafka_protocol::messages::produce_response::NodeEndpoint;
    let mut hints = LeaderHints::new(!r.node_endpoints.is_empty());
    for t in &mut r.responses {
        for p in &mut t.partition_responses {
            let l = &mut p.current_leader;
            hints.rewrite(
                id,
                t.name.0.as_str(),
                p.index,
                &mut l.leader_id,
                &mut l.leader_epoch,
            );
        }
    }
    if hints.changed {
        r.node_endpoints = node_endpoints!(NodeEndpoint, id, hints.nodes);
    }
    hints.changed
}

/// One site's Fetch answer for the client: each topic under its client
/// name (before v13) or virtual id (v13+), leader hints virtual, no
/// preferred read replica, `session_id` 0. True if anything changed.
pub fn fetch_answer(at: &At, id: &Identity, r: &mut FetchResponse) -> bool {
    use kafka_protocol::messages::fetch_response::NodeEndpoint;
    let version = at.version;
    let mut hints = LeaderHints::new(r.session_id != 0 || !r.node_endpoints.is_empty());
    r.session_id = 0;
    for t in &mut r.responses {
        let before = (t.topic.clone(), t.topic_id);
        let name = fetch_client_name(at, t);
        if version >= 13 {
            t.topic_id = id.topic_id(&name);
        }
        hints.changed |= before != (t.topic.clone(), t.topic_id);
        for p in &mut t.partitions {
            if p.preferred_read_replica.0 >= 0 {
                p.preferred_read_replica = BrokerId(-1);
                hints.changed = true;
            }
            let code = client_error(p.error_code);
            if code != p.error_code {
                p.error_code = code;
                hints.changed = true;
            }
            let l = &mut p.current_leader;
            hints.rewrite(
                id,
                &name,
                p.partition_index,
                &mut l.leader_id,
                &mut l.leader_epoch,
            );
        }
    }
    if hints.changed {
        r.node_endpoints = node_endpoints!(NodeEndpoint, id, hints.nodes);
    }
    hints.changed
}

/// Gives one topic of a site's Fetch answer its client name (before v13;
/// from v13 the name is not on the wire) and returns it.
fn fetch_client_name(at: &At, t: &mut FetchableTopicResponse) -> String {
    let phys = match super::names::fetch_physical(&at.view, at.version, t) {
        Some(n) => TopicName(StrBytes::from_string(n)),
        None => t.topic.clone(),
    };
    let virt = at.names.virt(at.site, &phys);
    if at.version < 13 {
        t.topic = virt.clone();
    }
    virt.0.to_string()
}

/// A partition of a Fetch answered here: from v13 under its topic's virtual
/// id, or the client's own id when we could not resolve it.
pub fn fetch_topic_id(id: &Identity, version: i16, u: &Unanswered) -> Uuid {
    match u.topic_id {
        Some(client) => client,
        None if version >= 13 => id.topic_id(u.topic.0.as_str()),
        None => Uuid::nil(),
    }
}

/// A single broker's Fetch answer: patched in place when nothing but ids,
/// the session and read replicas changes (no copy of the records), else
/// decoded and rewritten.
pub fn fetch_single<A: Api<Resp = FetchResponse>>(
    at: &At,
    id: &Identity,
    corr: i32,
    frame: Bytes,
) -> crate::pipeline::Result<Reply> {
    // Before v13 the answer carries names, which cannot be renamed in place.
    if at.version < 13 && at.names.renamed() {
        return super::single_decoded::<A>(at, id, corr, frame);
    }
    // The frame is uniquely owned here, so this takes no copy.
    let mut buf = frame
        .try_into_mut()
        .unwrap_or_else(|f| BytesMut::from(&f[..]));
    let to_virtual = |real: &[u8; 16]| {
        at.view
            .names_by_id
            .get(&Uuid::from_bytes(*real))
            .map(|phys| {
                let virt = at.names.entry(at.site, phys).map(|e| e.virt.0.to_string());
                let name = virt.unwrap_or_else(|| phys.clone());
                (*id.topic_id(&name).as_bytes(), name)
            })
    };
    let leader = |topic: &str, partition: i32| id.leader_for(topic, partition).node_id;
    if let Some(p) =
        fetch_patch::patch_fetch_response(&mut buf, at.version, to_virtual, leader, client_error)
    {
        for code in p.partition_errors {
            at.note(code);
        }
        return Ok(Reply::Upstream {
            correlation_id: corr,
            frame: buf.freeze(),
        });
    }
    tracing::trace!(
        version = at.version,
        bytes = buf.len(),
        "fetch response needs the full rewrite"
    );
    super::single_decoded::<A>(at, id, corr, buf.freeze())
}

/// Replaces every upstream identity in a Metadata response with the virtual one.
pub fn metadata_answer(id: &Identity, resp: &mut kafka_protocol::messages::MetadataResponse) {
    resp.brokers = id
        .nodes
        .iter()
        .map(|n| {
            let mut b =
                kafka_protocol::messages::metadata_response::MetadataResponseBroker::default();
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

/// The endpoints of the virtual `nodes`, built by `make`.
fn endpoints<E>(
    id: &Identity,
    nodes: BTreeSet<i32>,
    make: impl Fn(i32, StrBytes, i32, Option<StrBytes>) -> E,
) -> Vec<E> {
    nodes
        .into_iter()
        .filter_map(|n| id.node(n))
        .map(|n| {
            make(
                n.node_id,
                StrBytes::from_string(n.host.clone()),
                n.port,
                id.rack.clone().map(StrBytes::from_string),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fetch::Fetch;
    use crate::api::partitions::ListOffsets;
    use crate::pipeline::names::Names;
    use crate::pipeline::testing::{at, exchange, exchange_at};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::fetch_response::PartitionData;
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    fn id() -> Identity {
        Identity::new("virt", "127.0.0.1:9092".parse().unwrap(), "proxy", 3, None)
    }

    /// A site's view where "orders" partition 0 is led at epoch 7.
    fn view_with_epoch() -> std::sync::Arc<crate::upstream::ClusterView> {
        let mut v = crate::upstream::ClusterView::default();
        v.topics.insert(
            "orders".to_string(),
            crate::upstream::view::TopicView {
                leaders: vec![1],
                epochs: vec![7],
                replicas: vec![3],
                ..Default::default()
            },
        );
        std::sync::Arc::new(v)
    }

    #[test]
    fn fetch_goes_upstream_as_a_full_fetch_with_the_views_epochs() {
        let mut req = FetchRequest::default();
        req.session_id = 42;
        req.session_epoch = 7;
        for name in ["orders", "unknown"] {
            let mut t = FetchTopic::default();
            t.topic = TopicName(StrBytes::from_static_str(name));
            let mut p = FetchPartition::default();
            p.current_leader_epoch = 5;
            p.last_fetched_epoch = 4;
            t.partitions.push(p);
            req.topics.push(t);
        }
        let mut x = exchange_at::<Fetch>(req, Some(12));
        x.site_of = vec![Some(0), Some(0)];
        x.views = vec![view_with_epoch()];
        fetch_request(&mut x);
        assert_eq!((x.body.session_id, x.body.session_epoch), (0, -1));
        // The client's epochs are of virtual leaders; the view's are real.
        let p = &x.body.topics[0].partitions[0];
        assert_eq!((p.current_leader_epoch, p.last_fetched_epoch), (7, -1));
        let p = &x.body.topics[1].partitions[0];
        assert_eq!((p.current_leader_epoch, p.last_fetched_epoch), (-1, -1));
        assert_eq!(x.touched(), ["identity"]);
    }

    #[test]
    fn list_offsets_carries_the_views_epochs() {
        let req = |epoch| {
            let mut r = ListOffsetsRequest::default();
            let mut t = ListOffsetsTopic::default();
            t.name = TopicName(StrBytes::from_static_str("orders"));
            let mut p = ListOffsetsPartition::default();
            p.current_leader_epoch = epoch;
            t.partitions.push(p);
            r.topics.push(t);
            r
        };
        let routed = |epoch, view: bool| {
            let mut x = exchange::<ListOffsets>(req(epoch));
            x.site_of = vec![Some(0)];
            if view {
                x.views = vec![view_with_epoch()];
            }
            list_offsets_request(&mut x);
            let sent = x.body.topics[0].partitions[0].current_leader_epoch;
            (x.touched().len(), sent)
        };
        assert_eq!(routed(-1, true), (1, 7));
        assert_eq!(routed(7, true), (0, 7));
        assert_eq!(routed(-1, false), (0, -1));
        assert_eq!(routed(3, false), (1, -1));
    }

    #[test]
    fn epoch_errors_reach_the_client_as_not_leader() {
        use kafka_protocol::messages::list_offsets_response::{
            ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
        };
        for (upstream, client) in [(74, 6), (75, 6), (6, 6), (1, 1), (0, 0)] {
            assert_eq!(client_error(upstream), client);
        }
        let mut r = ListOffsetsResponse::default();
        let mut t = ListOffsetsTopicResponse::default();
        let mut p = ListOffsetsPartitionResponse::default();
        p.error_code = FENCED_LEADER_EPOCH;
        p.leader_epoch = -1;
        t.partitions.push(p);
        r.topics.push(t);
        assert!(list_offsets_answer(&mut r));
        assert_eq!(r.topics[0].partitions[0].error_code, NOT_LEADER_OR_FOLLOWER);
    }

    #[test]
    fn produce_leader_hints_point_at_virtual_brokers() {
        let id = id();
        let mut r = ProduceResponse::default();
        let mut t = TopicProduceResponse::default();
        t.name = TopicName(StrBytes::from_static_str("orders"));
        let mut p = PartitionProduceResponse::default();
        p.index = 1;
        p.current_leader.leader_id = BrokerId(1001);
        p.current_leader.leader_epoch = 9;
        t.partition_responses.push(p);
        r.responses.push(t);
        assert!(produce_answer(&id, &mut r));
        let leader = id.leader_for("orders", 1).node_id;
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(
            (p.current_leader.leader_id.0, p.current_leader.leader_epoch),
            (leader, -1)
        );
        assert_eq!(r.node_endpoints.len(), 1);
        assert_eq!(r.node_endpoints[0].node_id.0, leader);
        assert_eq!(
            Some(r.node_endpoints[0].port),
            id.node(leader).map(|n| n.port)
        );

        let mut plain = ProduceResponse::default();
        plain.responses.push(TopicProduceResponse::default());
        assert!(
            !produce_answer(&id, &mut plain),
            "no hint: the upstream bytes may pass"
        );
    }

    #[test]
    fn fetch_answers_take_client_names_and_virtual_ids() {
        let id = id();
        let real = Uuid::from_u128(77);
        let mut view = crate::upstream::ClusterView::default();
        view.names_by_id.insert(real, "orders-b".to_string());
        let mut names = Names::default();
        let plane = crate::pipeline::testing::plane(
            "  - name: west\n    topics: {regex: 'orders'}\n    site: b\n    naming: suffix\n",
        );
        names.resolve(
            &plane.router,
            crate::pipeline::testing::WHO,
            &TopicName(StrBytes::from_static_str("orders")),
        );
        for version in [12, 13] {
            let here = at::<Fetch>(1, version, names.clone(), view.clone());
            let mut r = FetchResponse::default();
            r.session_id = 5;
            let mut t = FetchableTopicResponse::default();
            t.topic = TopicName(StrBytes::from_static_str("orders-b"));
            t.topic_id = if version >= 13 { real } else { Uuid::nil() };
            let mut p = PartitionData::default();
            p.preferred_read_replica = BrokerId(2);
            t.partitions.push(p);
            r.responses.push(t);
            assert!(fetch_answer(&here, &id, &mut r));
            let t = &r.responses[0];
            assert_eq!(r.session_id, 0);
            assert_eq!(t.partitions[0].preferred_read_replica.0, -1);
            if version >= 13 {
                assert_eq!(t.topic_id, id.topic_id("orders"), "v{version}");
            } else {
                assert_eq!(t.topic.0.as_str(), "orders", "v{version}");
            }
        }
    }
}
