//! The holds stage: what clients get around a failover switch (see
//! `failover::fence` for the state it reads).
//!
//! * A route switching sites right now is held: the names stage marks its
//!   topics, and `split::plan` answers their partitions
//!   NOT_LEADER_OR_FOLLOWER (retriable) instead of sending them.
//! * A consumer that was a group member before its route switched still
//!   holds positions in the old site's offset space: its fetches for the
//!   route are held the same way until it rejoined ([`fetch`]).
//! * A fetch long-polls, so its answer may come back after its route
//!   switched: such an answer carries none of the route's records
//!   ([`Withhold`], a site stage).
//! * Group members that joined on the old site, and transactional producers
//!   initialised there, get what their library treats as "you are out, start
//!   over" ([`fenced`], [`txn_fenced`], for the coordinator-routed APIs):
//!   UNKNOWN_MEMBER_ID for a member (it rejoins and re-reads committed
//!   offsets), INVALID_PRODUCER_EPOCH for a transactional producer (fatal: the
//!   application creates a new producer, which initialises on the new site).

use std::sync::Arc;

use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, FetchRequest, FetchResponse, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};

use super::names::fetch_physical;
use super::{Api, At, Exchange, Outcome, Reply, SiteStage};
use crate::codec::errors::{INVALID_PRODUCER_EPOCH, NOT_LEADER_OR_FOLLOWER, UNKNOWN_MEMBER_ID};
use crate::codec::{self, RequestFrame};
use crate::failover::fence::ClientKey;
use crate::failover::{Epochs, Failover};

/// Holds the request's routes for a consumer fenced after a switch, until
/// it rejoined its group.
pub fn fetch<A: Api<Req = FetchRequest>>(x: &mut Exchange<A>, fo: &Failover, key: &ClientKey) {
    if !fo.enabled() {
        return;
    }
    let routes: Vec<usize> = x.names.entries().iter().filter_map(|e| e.route).collect();
    for r in routes {
        if fo.fence.fetch_held(r, key) && x.names.hold_route(r) > 0 {
            fo.count_fenced(r, "fetch");
        }
    }
}

/// The failover routes' epochs when a fetch was routed: an answer whose
/// route switched since (or is switching) carries none of that route's
/// records. By then the old site may hold records written after the switch
/// (the reverse tee copies the new site's writes there) at offsets a fenced
/// member can no longer commit: handed over, they would be processed again
/// after it rejoins. Its partitions say NOT_LEADER_OR_FOLLOWER instead
/// (retriable): the position does not move, the client refetches on the new
/// site, nothing is lost.
pub struct Withhold {
    failover: Arc<Failover>,
    at: Epochs,
}

/// Registers [`Withhold`] on a fetch (before routing: a switch after this
/// point withholds the route's records from the answer).
pub fn withhold<A: Api<Resp = FetchResponse>>(x: &mut Exchange<A>, fo: &Arc<Failover>) {
    if fo.enabled() {
        x.on_site_answer(Arc::new(Withhold {
            failover: fo.clone(),
            at: fo.epochs(),
        }));
    }
}

impl SiteStage<FetchResponse> for Withhold {
    fn name(&self) -> &'static str {
        "holds"
    }

    /// Only while some route switched since the fetch was routed.
    fn looks(&self, _: &At) -> bool {
        !self.failover.moved_since(&self.at).is_empty()
    }

    fn rewrite(&self, at: &At, r: &mut FetchResponse) {
        let moved = self.failover.moved_since(&self.at);
        if moved.is_empty() {
            return;
        }
        for t in &mut r.responses {
            let Some(route) = fetch_physical(&at.view, at.version, t)
                .and_then(|n| at.names.entry(at.site, &n))
                .and_then(|e| e.route)
                .filter(|r| moved.contains(r))
            else {
                continue;
            };
            self.failover.count_fenced(route, "fetch_answer");
            for p in &mut t.partitions {
                p.error_code = NOT_LEADER_OR_FOLLOWER;
                p.records = Some(bytes::Bytes::new());
                p.high_watermark = -1;
                p.last_stable_offset = -1;
                p.log_start_offset = -1;
                p.aborted_transactions = None;
            }
        }
    }
}

/// After a failover, a member that joined on the old site gets
/// UNKNOWN_MEMBER_ID from here (not from the new site's coordinator, whose
/// answer for a stranger could differ between brokers): the client then
/// treats its partitions as lost, rejoins and re-reads committed offsets,
/// which the switch translated into the new site's offsets.
pub fn fenced(
    fo: &Failover,
    req: &RequestFrame,
    group: &str,
    member: &str,
) -> crate::pipeline::Result<Option<Outcome>> {
    let Some(route) = fo.group_route(group) else {
        return Ok(None);
    };
    if !fo.fence.is_stale(fo.epoch(route), group, member) {
        return Ok(None);
    }
    let what = match req.api_key {
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::LeaveGroup => "leave_group",
        _ => "offset_commit",
    };
    fo.count_fenced(route, what);
    tracing::info!(
        group,
        member,
        request = what,
        "fenced a group member from before the failover"
    );
    let (api, v, corr) = (req.api_key, req.api_version, req.correlation_id);
    let frame = match api {
        ApiKey::Heartbeat => {
            let mut r = kafka_protocol::messages::HeartbeatResponse::default();
            r.error_code = UNKNOWN_MEMBER_ID;
            codec::encode_response(api, v, corr, &r)?
        }
        ApiKey::SyncGroup => {
            let mut r = kafka_protocol::messages::SyncGroupResponse::default();
            r.error_code = UNKNOWN_MEMBER_ID;
            codec::encode_response(api, v, corr, &r)?
        }
        ApiKey::LeaveGroup => {
            // It is leaving a group it is no longer in: nothing to do.
            fo.fence.left(group, member);
            let r = kafka_protocol::messages::LeaveGroupResponse::default();
            codec::encode_response(api, v, corr, &r)?
        }
        _ => return Ok(None),
    };
    Ok(Some(Outcome::Ready(Reply::Frame(frame))))
}

/// A transactional producer from before a switch: its producer id and open
/// transaction live in the old site's coordinator, and the new site cannot
/// complete or abort them. It is fenced the way Kafka fences a zombie
/// producer (INVALID_PRODUCER_EPOCH, fatal for the client): the application
/// creates a new producer, whose InitProducerId goes to the new site; the
/// open transaction's records never become visible there.
pub fn txn_fenced(
    fo: &Failover,
    req: &RequestFrame,
    txn: &str,
) -> crate::pipeline::Result<Option<Outcome>> {
    let Some(route) = fo.group_route(txn) else {
        return Ok(None);
    };
    if req.api_key == ApiKey::InitProducerId || !fo.fence.txn_is_stale(txn, fo.epoch(route)) {
        return Ok(None);
    }
    fo.count_fenced(route, "transaction");
    tracing::info!(
        transactional_id = txn,
        api = crate::codec::api_name(req.api_key),
        "fenced a transactional producer from before the failover"
    );
    let (api, v, corr) = (req.api_key, req.api_version, req.correlation_id);
    let frame = match api {
        ApiKey::AddOffsetsToTxn => {
            let mut r = kafka_protocol::messages::AddOffsetsToTxnResponse::default();
            r.error_code = INVALID_PRODUCER_EPOCH;
            codec::encode_response(api, v, corr, &r)?
        }
        ApiKey::EndTxn => {
            let mut r = kafka_protocol::messages::EndTxnResponse::default();
            r.error_code = INVALID_PRODUCER_EPOCH;
            codec::encode_response(api, v, corr, &r)?
        }
        ApiKey::AddPartitionsToTxn => {
            let b: AddPartitionsToTxnRequest = req.decode()?;
            let r = add_partitions_answer(
                b.v3_and_below_topics
                    .iter()
                    .map(|t| (t.name.clone(), &t.partitions, INVALID_PRODUCER_EPOCH)),
            );
            codec::encode_response(api, v, corr, &r)?
        }
        ApiKey::TxnOffsetCommit => {
            let b: TxnOffsetCommitRequest = req.decode()?;
            let mut r = TxnOffsetCommitResponse::default();
            r.topics = txn_commit_answer(&b.topics, INVALID_PRODUCER_EPOCH);
            codec::encode_response(api, v, corr, &r)?
        }
        _ => return Ok(None),
    };
    Ok(Some(Outcome::Ready(Reply::Frame(frame))))
}

/// TxnOffsetCommit answers for `topics`, every partition with `code`.
pub fn txn_commit_answer(
    topics: &[kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequestTopic],
    code: i16,
) -> Vec<kafka_protocol::messages::txn_offset_commit_response::TxnOffsetCommitResponseTopic> {
    topics
        .iter()
        .map(|t| {
            let mut rt = kafka_protocol::messages::txn_offset_commit_response::TxnOffsetCommitResponseTopic::default();
            rt.name = t.name.clone();
            rt.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut rp =
                        kafka_protocol::messages::txn_offset_commit_response::TxnOffsetCommitResponsePartition::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = code;
                    rp
                })
                .collect();
            rt
        })
        .collect()
}

/// An AddPartitionsToTxn (v0-3) answer with one error code per topic.
pub fn add_partitions_answer<'a>(
    topics: impl IntoIterator<Item = (kafka_protocol::messages::TopicName, &'a Vec<i32>, i16)>,
) -> kafka_protocol::messages::AddPartitionsToTxnResponse {
    use kafka_protocol::messages::add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
    };
    let mut r = kafka_protocol::messages::AddPartitionsToTxnResponse::default();
    for (name, parts, code) in topics {
        let mut rt = AddPartitionsToTxnTopicResult::default();
        rt.name = name;
        rt.results_by_partition = parts
            .iter()
            .map(|&i| {
                let mut p = AddPartitionsToTxnPartitionResult::default();
                p.partition_index = i;
                p.partition_error_code = code;
                p
            })
            .collect();
        r.results_by_topic_v3_and_below.push(rt);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fetch::Fetch;
    use crate::pipeline::names::Names;
    use crate::pipeline::testing::{at, exchange, plane};
    use crate::route::Side;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    const FAILOVER: &str = "  - name: main
    topics: {regex: 'orders'}
    groups: {regex: '.*'}
    site: a
    tee: [{site: b, mode: sync}]
    failover: {standby: b}
";

    fn answer(topic: &str) -> FetchResponse {
        let mut p = PartitionData::default();
        p.records = Some(bytes::Bytes::from_static(b"records"));
        p.high_watermark = 10;
        let mut t = FetchableTopicResponse::default();
        t.topic = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions.push(p);
        let mut r = FetchResponse::default();
        r.responses.push(t);
        r
    }

    #[test]
    fn an_answer_from_before_a_switch_carries_none_of_the_routes_records() {
        let plane = plane(FAILOVER);
        let mut x = exchange::<Fetch>(FetchRequest::default());
        withhold(&mut x, &plane.failover);
        assert_eq!(x.answer_stages(), ["holds"]);
        let stage = x.site_stages.pop().unwrap();
        let mut names = Names::default();
        names.resolve(
            &plane.router,
            crate::pipeline::testing::WHO,
            &TopicName(StrBytes::from_static_str("orders")),
        );
        names.resolve(
            &plane.router,
            crate::pipeline::testing::WHO,
            &TopicName(StrBytes::from_static_str("clicks")),
        );
        let here = at::<Fetch>(0, 12, names, Default::default());
        assert!(
            !stage.looks(&here),
            "nothing switched: the answer may pass untouched"
        );

        plane.router.set_side(0, Side::FailingOver);
        assert!(stage.looks(&here));
        let mut r = answer("orders");
        stage.rewrite(&here, &mut r);
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, NOT_LEADER_OR_FOLLOWER);
        assert_eq!(p.records.as_deref(), Some(&b""[..]));
        assert_eq!(p.high_watermark, -1);

        let mut other = answer("clicks");
        stage.rewrite(&here, &mut other);
        assert_eq!(
            other.responses[0].partitions[0].error_code, 0,
            "not on the switched route"
        );
    }

    #[test]
    fn a_member_from_before_a_switch_has_its_fetches_held_until_it_rejoins() {
        let plane = plane(FAILOVER);
        let fo = &plane.failover;
        let key: ClientKey = ("app".into(), std::net::Ipv4Addr::LOCALHOST.into());
        fo.fence.joined(0, 0, 0, "g", "m1", key.clone());
        fo.fence.switched(0, 1, std::time::Duration::from_secs(30));
        let resolved = |x: &mut Exchange<Fetch>| {
            for t in ["orders", "clicks"] {
                x.names.resolve(
                    &plane.router,
                    crate::pipeline::testing::WHO,
                    &TopicName(StrBytes::from_static_str(t)),
                );
            }
        };
        let mut x = exchange::<Fetch>(FetchRequest::default());
        resolved(&mut x);
        fetch(&mut x, fo, &key);
        assert!(
            x.names.is_held(0, "orders"),
            "the switched route's topics are held"
        );
        assert!(
            !x.names.is_held(0, "clicks"),
            "other routes' topics are not"
        );

        let other: ClientKey = ("other".into(), std::net::Ipv4Addr::LOCALHOST.into());
        let mut y = exchange::<Fetch>(FetchRequest::default());
        resolved(&mut y);
        fetch(&mut y, fo, &other);
        assert!(
            !y.names.is_held(0, "orders"),
            "a client with no member from before"
        );

        // Rejoined at the new epoch: fetches flow again.
        fo.fence.joined(0, 1, 1, "g", "m2", key.clone());
        let mut z = exchange::<Fetch>(FetchRequest::default());
        resolved(&mut z);
        fetch(&mut z, fo, &key);
        assert!(!z.names.is_held(0, "orders"));
    }

    #[test]
    fn without_failover_routes_nothing_is_registered() {
        let plane = plane("  - name: main\n    topics: {regex: '.*'}\n    site: a\n");
        let mut x = exchange::<Fetch>(FetchRequest::default());
        withhold(&mut x, &plane.failover);
        fetch(
            &mut x,
            &plane.failover,
            &("app".into(), std::net::Ipv4Addr::LOCALHOST.into()),
        );
        assert!(x.answer_stages().is_empty());
        assert!(x.touched().is_empty());
    }
}
