//! Answers Switchyard gives itself to clients from before a failover switch
//! (see `failover::fence`): group members that joined on the old site, and
//! transactional producers initialised there. Each answer is what the
//! client's library treats as "you are out, start over": UNKNOWN_MEMBER_ID
//! for a member (it rejoins and re-reads committed offsets), and
//! INVALID_PRODUCER_EPOCH for a transactional producer (fatal: the
//! application creates a new producer, which initialises on the new site).

use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};

use super::{Ctx, Outcome, Reply};
use crate::codec::errors::{INVALID_PRODUCER_EPOCH, UNKNOWN_MEMBER_ID};
use crate::codec::{self, RequestFrame};

/// After a failover, a member that joined on the old site gets
/// UNKNOWN_MEMBER_ID from here (not from the new site's coordinator, whose
/// answer for a stranger could differ between brokers): the client then
/// treats its partitions as lost, rejoins and re-reads committed offsets,
/// which the switch translated into the new site's offsets.
pub fn fenced(
    ctx: &Ctx<'_>,
    req: &RequestFrame,
    group: &str,
    member: &str,
) -> anyhow::Result<Option<Outcome>> {
    let fo = &ctx.proxy.failover;
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
pub fn txn_fenced(ctx: &Ctx<'_>, req: &RequestFrame, txn: &str) -> anyhow::Result<Option<Outcome>> {
    let fo = &ctx.proxy.failover;
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
            let r = super::groups::add_partitions_answer(
                b.v3_and_below_topics
                    .iter()
                    .map(|t| (t.name.clone(), &t.partitions, INVALID_PRODUCER_EPOCH)),
            );
            codec::encode_response(api, v, corr, &r)?
        }
        ApiKey::TxnOffsetCommit => {
            let b: TxnOffsetCommitRequest = req.decode()?;
            let mut r = TxnOffsetCommitResponse::default();
            r.topics = super::groups::txn_commit_answer(&b.topics, INVALID_PRODUCER_EPOCH);
            codec::encode_response(api, v, corr, &r)?
        }
        _ => return Ok(None),
    };
    Ok(Some(Outcome::Ready(Reply::Frame(frame))))
}
