//! The authorize stage: every request checked against the `authorization`
//! rules (`authz`) for its client's principal, before anything reaches a
//! site, with Kafka's answers.
//!
//! What each API needs is Kafka's own (`KafkaApis`): the resource, the
//! operation and the code a denial answers with.
//!
//! | API | needs | denied |
//! |---|---|---|
//! | Produce | WRITE topic; with a transactional id, WRITE on it | TOPIC_ / TRANSACTIONAL_ID_AUTHORIZATION_FAILED |
//! | Fetch, ListOffsets, DeleteRecords | READ, DESCRIBE, DELETE topic | TOPIC_AUTHORIZATION_FAILED |
//! | Metadata | DESCRIBE topic (auto-creation: CREATE) | asked for: TOPIC_AUTHORIZATION_FAILED; listed: hidden |
//! | FindCoordinator | DESCRIBE group / transactional id | GROUP_ / TRANSACTIONAL_ID_… |
//! | JoinGroup, SyncGroup, Heartbeat, LeaveGroup | READ group | GROUP_AUTHORIZATION_FAILED |
//! | ConsumerGroupHeartbeat (KIP-848) | READ group, DESCRIBE subscribed topics | GROUP_ / TOPIC_… |
//! | ConsumerGroupDescribe | DESCRIBE group | GROUP_AUTHORIZATION_FAILED |
//! | OffsetCommit | READ group, READ topic | GROUP_ / TOPIC_… |
//! | TxnOffsetCommit | WRITE transactional id, READ group, READ topic | TRANSACTIONAL_ID_ / GROUP_ / TOPIC_… |
//! | OffsetDelete | DELETE group, READ topic | GROUP_ / TOPIC_… |
//! | OffsetFetch | DESCRIBE group, DESCRIBE topic | GROUP_…; topics asked for: TOPIC_…, all topics: hidden |
//! | DescribeGroups, DeleteGroups | DESCRIBE, DELETE group | GROUP_AUTHORIZATION_FAILED |
//! | ListGroups | DESCRIBE cluster, else DESCRIBE per group | hidden |
//! | InitProducerId | WRITE transactional id; idempotent: IDEMPOTENT_WRITE cluster or WRITE on some topic | TRANSACTIONAL_ID_ / CLUSTER_… |
//! | AddPartitionsToTxn | WRITE transactional id, WRITE topic | TRANSACTIONAL_ID_…; TOPIC_… and OPERATION_NOT_ATTEMPTED for the rest |
//! | AddOffsetsToTxn | WRITE transactional id, READ group | TRANSACTIONAL_ID_ / GROUP_… |
//! | EndTxn | WRITE transactional id | TRANSACTIONAL_ID_… |
//! | DescribeProducers | READ topic | TOPIC_… |
//! | ListTransactions | DESCRIBE transactional id | hidden |
//! | DescribeTransactions | DESCRIBE transactional id (its topics: DESCRIBE) | TRANSACTIONAL_ID_…; topics hidden |
//! | CreateTopics | CREATE cluster or topic | TOPIC_… |
//! | DeleteTopics, CreatePartitions | DELETE, ALTER topic | TOPIC_… |
//! | DescribeConfigs, AlterConfigs, IncrementalAlterConfigs | DESCRIBE_CONFIGS, ALTER_CONFIGS on the topic, group or cluster (brokers) | TOPIC_ / GROUP_ / CLUSTER_… |
//! | ApiVersions, SASL, DescribeCluster | nothing | — |
//!
//! Where a client asks for its authorized operations (Metadata,
//! DescribeGroups, DescribeCluster), the answer carries the principal's
//! under these rules.
//!
//! A request denied as a whole, or in every part, is answered here
//! ([`Gate::Answer`]); one denied in part goes on without the denied parts,
//! and its answer gets them back with their code ([`Gate::Trim`]). Listings
//! (Metadata of all topics, ListGroups, OffsetFetch of all topics) hide what
//! the principal may not describe. The partitioned APIs are checked in their
//! own pipelines ([`topics`]), on the request they already decoded. An API
//! not in the table is denied.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::split::Partitioned;
use super::{Api, Exchange, Outcome, Reply, Unanswered};
use crate::authz::{Authorizer, Check, Operation, Resource};
use crate::codec::errors::{
    CLUSTER_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED, OPERATION_NOT_ATTEMPTED,
    TOPIC_AUTHORIZATION_FAILED, TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
};
use crate::codec::{self, RequestFrame};
use crate::identity::Identity;

/// What the stage decided about one request.
pub enum Gate {
    /// Allowed as it came.
    Pass(RequestFrame),
    /// Denied in part: the rest goes on, and the answer is amended.
    Trim(RequestFrame, Amend),
    /// Denied as a whole or in every part: this is the answer.
    Answer(Bytes),
}

/// What the answer to a trimmed request gets: the denied parts back with
/// their codes, and what the principal may not see taken out.
pub struct Amend(Box<dyn FnOnce(Reply) -> super::Result<Reply> + Send>);

impl Amend {
    /// The handler's outcome, amended once its answer is in.
    pub fn outcome(self, out: Outcome) -> super::Result<Outcome> {
        Ok(match out {
            Outcome::NoResponse => Outcome::NoResponse,
            Outcome::Ready(r) => Outcome::Ready((self.0)(r)?),
            Outcome::Later(f) => Outcome::Later(Box::pin(async move { (self.0)(f.await?) })),
        })
    }
}

/// Amends the answer to `req` (our frame or an upstream's) by `f`.
fn amend<R>(req: &RequestFrame, f: impl FnOnce(&mut R) + Send + 'static) -> Amend
where
    R: Decodable + Encodable + Send + 'static,
{
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    Amend(Box::new(move |reply| {
        let frame = match &reply {
            Reply::Frame(f) => f,
            Reply::Upstream { frame, .. } => frame,
        };
        let mut r: R = codec::decode_response_body(api, version, frame)?;
        f(&mut r);
        Ok(Reply::Frame(codec::encode_response(
            api, version, corr, &r,
        )?))
    }))
}

/// The request with a new body, under the client's header (its correlation
/// id too: the handler answers with it).
fn reencode<T: Encodable>(req: &RequestFrame, body: &T) -> super::Result<RequestFrame> {
    let frame = codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), body)?;
    let mut f = bytes::BytesMut::from(&frame[..]);
    // The header starts with key (2), version (2), correlation id (4).
    f[4..8].copy_from_slice(&req.correlation_id.to_be_bytes());
    RequestFrame::parse(f.freeze())
        .map_err(|e| super::Error::protocol(format!("re-encoded request: {e}")))
}

/// Denied as a whole: every slot of the answer carries `code`.
fn deny(req: &RequestFrame, identity: &Identity, code: i16) -> super::Result<Gate> {
    match super::answers::every_slot(req, identity, code, None)? {
        Some((_, frame)) => Ok(Gate::Answer(frame)),
        None => Err(super::Error::Denied(format!(
            "{} denied and it has no answer to carry {}",
            codec::api_name(req.api_key),
            codec::errors::name(code)
        ))),
    }
}

/// Some parts denied (`denied`), the rest in `body`: answered here when
/// nothing is left to send, else sent, with `add` putting the denied parts
/// into the answer.
fn trim<Req, Resp>(
    req: RequestFrame,
    body: &Req,
    left: bool,
    add: impl FnOnce(&mut Resp) + Send + 'static,
) -> super::Result<Gate>
where
    Req: Encodable,
    Resp: Decodable + Encodable + Default + Send + 'static,
{
    if !left {
        let mut r = Resp::default();
        add(&mut r);
        let frame = codec::encode_response(req.api_key, req.api_version, req.correlation_id, &r)?;
        return Ok(Gate::Answer(frame));
    }
    let sent = reencode(&req, body)?;
    Ok(Gate::Trim(sent, amend::<Resp>(&req, add)))
}

/// Splits `items` into those allowed (kept) and those denied (returned).
fn denied<T>(items: &mut Vec<T>, mut allowed: impl FnMut(&T) -> bool) -> Vec<T> {
    let mut out = Vec::new();
    let mut kept = Vec::with_capacity(items.len());
    for i in items.drain(..) {
        if allowed(&i) {
            kept.push(i);
        } else {
            out.push(i);
        }
    }
    *items = kept;
    out
}

/// Checks a request that is not partitioned (those are checked in their
/// pipelines, [`topics`]) for the session's `principal`.
pub fn gate(
    authz: &Arc<Authorizer>,
    principal: Option<&str>,
    identity: &Identity,
    req: RequestFrame,
) -> super::Result<Gate> {
    use ApiKey as K;
    if matches!(
        req.api_key,
        K::ApiVersions
            | K::SaslHandshake
            | K::SaslAuthenticate
            | K::Produce
            | K::Fetch
            | K::ListOffsets
            | K::DeleteRecords
            | K::DescribeProducers
    ) {
        return Ok(Gate::Pass(req));
    }
    let Some(c) = authz.request(principal, req.api_key) else {
        return Ok(Gate::Pass(req));
    };
    let group = |c: &Check, id: &str, op| c.may(Resource::Group, id, op);
    let txn = |c: &Check, id: &str| c.may(Resource::TransactionalId, id, Operation::Write);
    let whole = |ok: bool, code| {
        if ok {
            Ok(None)
        } else {
            deny(&req, identity, code).map(Some)
        }
    };
    macro_rules! group_read {
        ($ty:ty) => {{
            let b: $ty = req.decode()?;
            if let Some(g) = whole(
                group(&c, &b.group_id, Operation::Read),
                GROUP_AUTHORIZATION_FAILED,
            )? {
                return Ok(g);
            }
            Ok(Gate::Pass(req))
        }};
    }
    // The group's offsets by topic (OffsetCommit, TxnOffsetCommit,
    // OffsetDelete): the group first, then READ on each topic, a denied
    // topic's partitions answered TOPIC_AUTHORIZATION_FAILED.
    macro_rules! offsets {
        ($req:ty, $resp:ty, $topic:ty, $partition:ty, $group_op:expr) => {{
            let mut b: $req = req.decode()?;
            if let Some(g) = whole(
                group(&c, &b.group_id, $group_op),
                GROUP_AUTHORIZATION_FAILED,
            )? {
                return Ok(g);
            }
            let out = denied(&mut b.topics, |t| {
                c.may(Resource::Topic, &t.name, Operation::Read)
            });
            if out.is_empty() {
                return Ok(Gate::Pass(req));
            }
            let left = !b.topics.is_empty();
            trim(req, &b, left, move |r: &mut $resp| {
                for t in out {
                    let mut rt = <$topic>::default();
                    rt.name = t.name;
                    rt.partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let mut rp = <$partition>::default();
                            rp.partition_index = p.partition_index;
                            rp.error_code = TOPIC_AUTHORIZATION_FAILED;
                            rp
                        })
                        .collect();
                    r.topics.push(rt);
                }
            })
        }};
    }
    // The config APIs: per resource (topic, group, broker), each denied one
    // answered with its type's code.
    macro_rules! configs {
        ($req:ty, $resp:ty, $list:ident, $result:ty, $op:expr) => {{
            let mut b: $req = req.decode()?;
            let out = denied(&mut b.resources, |r| {
                may_config(&c, r.resource_type, &r.resource_name, $op)
            });
            if out.is_empty() {
                return Ok(Gate::Pass(req));
            }
            let left = !b.resources.is_empty();
            trim(req, &b, left, move |r: &mut $resp| {
                for d in out {
                    let mut rr = <$result>::default();
                    rr.error_code = config_code(d.resource_type);
                    rr.resource_type = d.resource_type;
                    rr.resource_name = d.resource_name;
                    r.$list.push(rr);
                }
            })
        }};
    }
    match req.api_key {
        // Needs nothing; the cluster's operations are the principal's.
        K::DescribeCluster => {
            let b: DescribeClusterRequest = req.decode()?;
            if !b.include_cluster_authorized_operations {
                return Ok(Gate::Pass(req));
            }
            let a = amend(&req, move |r: &mut DescribeClusterResponse| {
                r.cluster_authorized_operations = c.operations(Resource::Cluster, "kafka-cluster");
            });
            Ok(Gate::Trim(req, a))
        }
        K::Metadata => metadata(c, req),
        K::FindCoordinator => find_coordinator(&c, req, identity),
        K::JoinGroup => group_read!(JoinGroupRequest),
        K::ConsumerGroupHeartbeat => {
            let b: ConsumerGroupHeartbeatRequest = req.decode()?;
            if let Some(g) = whole(
                group(&c, &b.group_id, Operation::Read),
                GROUP_AUTHORIZATION_FAILED,
            )? {
                return Ok(g);
            }
            // Kafka refuses a subscription naming a topic the member may
            // not describe.
            let all_seen = b
                .subscribed_topic_names
                .iter()
                .flatten()
                .all(|t| c.may(Resource::Topic, t, Operation::Describe));
            Ok(whole(all_seen, TOPIC_AUTHORIZATION_FAILED)?.unwrap_or(Gate::Pass(req)))
        }
        K::ConsumerGroupDescribe => {
            let mut b: ConsumerGroupDescribeRequest = req.decode()?;
            let out = denied(&mut b.group_ids, |g| group(&c, g, Operation::Describe));
            let ops = b.include_authorized_operations;
            if out.is_empty() && !ops {
                return Ok(Gate::Pass(req));
            }
            let left = !b.group_ids.is_empty();
            trim(
                req,
                &b,
                left,
                move |r: &mut ConsumerGroupDescribeResponse| {
                    if ops {
                        for g in &mut r.groups {
                            g.authorized_operations = c.operations(Resource::Group, &g.group_id);
                        }
                    }
                    for g in out {
                        let mut rg = consumer_group_describe_response::DescribedGroup::default();
                        rg.group_id = g;
                        rg.error_code = GROUP_AUTHORIZATION_FAILED;
                        rg.authorized_operations = i32::MIN;
                        r.groups.push(rg);
                    }
                },
            )
        }
        K::SyncGroup => group_read!(SyncGroupRequest),
        K::Heartbeat => group_read!(HeartbeatRequest),
        K::LeaveGroup => group_read!(LeaveGroupRequest),
        K::OffsetCommit => offsets!(
            OffsetCommitRequest,
            OffsetCommitResponse,
            offset_commit_response::OffsetCommitResponseTopic,
            offset_commit_response::OffsetCommitResponsePartition,
            Operation::Read
        ),
        K::TxnOffsetCommit => {
            let b: TxnOffsetCommitRequest = req.decode()?;
            if let Some(g) = whole(
                txn(&c, &b.transactional_id),
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            )? {
                return Ok(g);
            }
            offsets!(
                TxnOffsetCommitRequest,
                TxnOffsetCommitResponse,
                txn_offset_commit_response::TxnOffsetCommitResponseTopic,
                txn_offset_commit_response::TxnOffsetCommitResponsePartition,
                Operation::Read
            )
        }
        K::OffsetDelete => offsets!(
            OffsetDeleteRequest,
            OffsetDeleteResponse,
            offset_delete_response::OffsetDeleteResponseTopic,
            offset_delete_response::OffsetDeleteResponsePartition,
            Operation::Delete
        ),
        K::OffsetFetch => offset_fetch(c, req, identity),
        K::DescribeGroups | K::DeleteGroups => {
            let (op, delete) = match req.api_key {
                K::DeleteGroups => (Operation::Delete, true),
                _ => (Operation::Describe, false),
            };
            if delete {
                let mut b: DeleteGroupsRequest = req.decode()?;
                let out = denied(&mut b.groups_names, |g| group(&c, g, op));
                if out.is_empty() {
                    return Ok(Gate::Pass(req));
                }
                let left = !b.groups_names.is_empty();
                trim(req, &b, left, move |r: &mut DeleteGroupsResponse| {
                    for g in out {
                        let mut rg = delete_groups_response::DeletableGroupResult::default();
                        rg.group_id = g;
                        rg.error_code = GROUP_AUTHORIZATION_FAILED;
                        r.results.push(rg);
                    }
                })
            } else {
                let mut b: DescribeGroupsRequest = req.decode()?;
                let out = denied(&mut b.groups, |g| group(&c, g, op));
                let ops = b.include_authorized_operations;
                if out.is_empty() && !ops {
                    return Ok(Gate::Pass(req));
                }
                let left = !b.groups.is_empty();
                trim(req, &b, left, move |r: &mut DescribeGroupsResponse| {
                    if ops {
                        for g in &mut r.groups {
                            g.authorized_operations = c.operations(Resource::Group, &g.group_id);
                        }
                    }
                    for g in out {
                        let mut rg = describe_groups_response::DescribedGroup::default();
                        rg.group_id = g;
                        rg.error_code = GROUP_AUTHORIZATION_FAILED;
                        rg.authorized_operations = i32::MIN;
                        r.groups.push(rg);
                    }
                })
            }
        }
        K::ListGroups => {
            if c.sees_all_groups() {
                return Ok(Gate::Pass(req));
            }
            let a = amend(&req, move |r: &mut ListGroupsResponse| {
                r.groups.retain(|g| c.sees(Resource::Group, &g.group_id));
            });
            Ok(Gate::Trim(req, a))
        }
        K::InitProducerId => {
            let b: InitProducerIdRequest = req.decode()?;
            let (ok, code) = match &b.transactional_id {
                Some(t) => (txn(&c, t), TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
                None => (
                    c.quietly(
                        Resource::Cluster,
                        "kafka-cluster",
                        Operation::IdempotentWrite,
                    ) || c.may_some(Resource::Topic, Operation::Write),
                    CLUSTER_AUTHORIZATION_FAILED,
                ),
            };
            Ok(whole(ok, code)?.unwrap_or(Gate::Pass(req)))
        }
        K::AddPartitionsToTxn => add_partitions_to_txn(&c, req, identity),
        K::ListTransactions => {
            let a = amend(&req, move |r: &mut ListTransactionsResponse| {
                r.transaction_states
                    .retain(|t| c.sees(Resource::TransactionalId, &t.transactional_id));
            });
            Ok(Gate::Trim(req, a))
        }
        K::DescribeTransactions => {
            let mut b: DescribeTransactionsRequest = req.decode()?;
            let out = denied(&mut b.transactional_ids, |t| {
                c.may(Resource::TransactionalId, t, Operation::Describe)
            });
            let left = !b.transactional_ids.is_empty();
            // Kafka leaves out the topics the principal may not describe.
            trim(
                req,
                &b,
                left,
                move |r: &mut DescribeTransactionsResponse| {
                    for s in &mut r.transaction_states {
                        s.topics.retain(|t| c.sees(Resource::Topic, &t.topic));
                    }
                    for id in out {
                        let mut s = describe_transactions_response::TransactionState::default();
                        s.transactional_id = id;
                        s.error_code = TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
                        r.transaction_states.push(s);
                    }
                },
            )
        }
        K::AddOffsetsToTxn => {
            let b: AddOffsetsToTxnRequest = req.decode()?;
            if let Some(g) = whole(
                txn(&c, &b.transactional_id),
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            )? {
                return Ok(g);
            }
            Ok(whole(
                group(&c, &b.group_id, Operation::Read),
                GROUP_AUTHORIZATION_FAILED,
            )?
            .unwrap_or(Gate::Pass(req)))
        }
        K::EndTxn => {
            let b: EndTxnRequest = req.decode()?;
            Ok(whole(
                txn(&c, &b.transactional_id),
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            )?
            .unwrap_or(Gate::Pass(req)))
        }
        K::CreateTopics => {
            let mut b: CreateTopicsRequest = req.decode()?;
            let out = denied(&mut b.topics, |t| c.may_create_topic(&t.name));
            if out.is_empty() {
                return Ok(Gate::Pass(req));
            }
            let left = !b.topics.is_empty();
            trim(req, &b, left, move |r: &mut CreateTopicsResponse| {
                for t in out {
                    let mut rt = create_topics_response::CreatableTopicResult::default();
                    rt.name = t.name;
                    rt.error_code = TOPIC_AUTHORIZATION_FAILED;
                    rt.num_partitions = -1;
                    rt.replication_factor = -1;
                    r.topics.push(rt);
                }
            })
        }
        K::DeleteTopics => {
            let mut b: DeleteTopicsRequest = req.decode()?;
            // Up to v5 (what is advertised) topics are named.
            let out = denied(&mut b.topic_names, |t| {
                c.may(Resource::Topic, t, Operation::Delete)
            });
            if out.is_empty() {
                return Ok(Gate::Pass(req));
            }
            let left = !b.topic_names.is_empty();
            trim(req, &b, left, move |r: &mut DeleteTopicsResponse| {
                for t in out {
                    let mut rt = delete_topics_response::DeletableTopicResult::default();
                    rt.name = Some(t);
                    rt.error_code = TOPIC_AUTHORIZATION_FAILED;
                    r.responses.push(rt);
                }
            })
        }
        K::CreatePartitions => {
            let mut b: CreatePartitionsRequest = req.decode()?;
            let out = denied(&mut b.topics, |t| {
                c.may(Resource::Topic, &t.name, Operation::Alter)
            });
            if out.is_empty() {
                return Ok(Gate::Pass(req));
            }
            let left = !b.topics.is_empty();
            trim(req, &b, left, move |r: &mut CreatePartitionsResponse| {
                for t in out {
                    let mut rt = create_partitions_response::CreatePartitionsTopicResult::default();
                    rt.name = t.name;
                    rt.error_code = TOPIC_AUTHORIZATION_FAILED;
                    r.results.push(rt);
                }
            })
        }
        K::DescribeConfigs => configs!(
            DescribeConfigsRequest,
            DescribeConfigsResponse,
            results,
            describe_configs_response::DescribeConfigsResult,
            Operation::DescribeConfigs
        ),
        K::AlterConfigs => configs!(
            AlterConfigsRequest,
            AlterConfigsResponse,
            responses,
            alter_configs_response::AlterConfigsResourceResponse,
            Operation::AlterConfigs
        ),
        K::IncrementalAlterConfigs => configs!(
            IncrementalAlterConfigsRequest,
            IncrementalAlterConfigsResponse,
            responses,
            incremental_alter_configs_response::AlterConfigsResourceResponse,
            Operation::AlterConfigs
        ),
        // Not in the table: denied, never passed unchecked.
        _ => {
            c.may_cluster(Operation::Alter);
            deny(&req, identity, CLUSTER_AUTHORIZATION_FAILED)
        }
    }
}

/// Kafka's config resource types: topic 2, broker 4, broker logger 8,
/// client metrics 16, group 32.
fn config_resource(kind: i8) -> Resource {
    match kind {
        2 => Resource::Topic,
        32 => Resource::Group,
        _ => Resource::Cluster,
    }
}

fn config_code(kind: i8) -> i16 {
    match config_resource(kind) {
        Resource::Topic => TOPIC_AUTHORIZATION_FAILED,
        Resource::Group => GROUP_AUTHORIZATION_FAILED,
        _ => CLUSTER_AUTHORIZATION_FAILED,
    }
}

fn may_config(c: &Check, kind: i8, name: &str, op: Operation) -> bool {
    match config_resource(kind) {
        Resource::Cluster => c.may_cluster(op),
        r => c.may(r, name, op),
    }
}

/// Metadata: topics asked for that the principal may not describe are
/// answered TOPIC_AUTHORIZATION_FAILED (and never created); every other
/// topic in the answer it may not describe is hidden (a listing of all
/// topics, or a topic asked for by id). Auto-creation needs CREATE.
fn metadata(c: Check, req: RequestFrame) -> super::Result<Gate> {
    let mut b: MetadataRequest = req.decode()?;
    let mut out = Vec::new();
    let mut asked = HashSet::new();
    if let Some(topics) = b.topics.as_mut() {
        out = denied(topics, |t| {
            t.name
                .as_ref()
                .is_none_or(|n| c.may(Resource::Topic, n, Operation::Describe))
        });
        asked = topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect();
    }
    // Kafka creates only what the principal may create; a request naming a
    // topic it may not create creates none (the others are created on a
    // later request naming only them).
    let no_create = b.allow_auto_topic_creation
        && b.topics.iter().flatten().any(|t| {
            t.name.as_ref().is_some_and(|n| {
                !c.quietly(Resource::Cluster, "kafka-cluster", Operation::Create)
                    && !c.quietly(Resource::Topic, n, Operation::Create)
            })
        });
    if no_create {
        b.allow_auto_topic_creation = false;
    }
    let changed = no_create || !out.is_empty();
    let (topic_ops, cluster_ops) = (
        b.include_topic_authorized_operations,
        b.include_cluster_authorized_operations,
    );
    let hide = move |r: &mut MetadataResponse| {
        r.topics.retain(|t| {
            t.name
                .as_ref()
                .is_none_or(|n| asked.contains(n.0.as_str()) || c.sees(Resource::Topic, n))
        });
        // What the principal may do, not what Switchyard's identity on the
        // site may.
        if topic_ops {
            for t in &mut r.topics {
                if let Some(n) = &t.name {
                    t.topic_authorized_operations = c.operations(Resource::Topic, n);
                }
            }
        }
        if cluster_ops {
            r.cluster_authorized_operations = c.operations(Resource::Cluster, "kafka-cluster");
        }
        for t in out {
            let mut rt = metadata_response::MetadataResponseTopic::default();
            rt.name = t.name;
            rt.error_code = TOPIC_AUTHORIZATION_FAILED;
            rt.topic_authorized_operations = i32::MIN;
            r.topics.push(rt);
        }
    };
    let sent = if changed {
        reencode(&req, &b)?
    } else {
        req.clone()
    };
    Ok(Gate::Trim(sent, amend::<MetadataResponse>(&req, hide)))
}

fn find_coordinator(c: &Check, req: RequestFrame, identity: &Identity) -> super::Result<Gate> {
    let mut b: FindCoordinatorRequest = req.decode()?;
    // Key types: 0 group, 1 transaction, 2 share group.
    let (resource, code) = match b.key_type {
        1 => (
            Resource::TransactionalId,
            TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        ),
        _ => (Resource::Group, GROUP_AUTHORIZATION_FAILED),
    };
    if req.api_version < 4 {
        if c.may(resource, &b.key, Operation::Describe) {
            return Ok(Gate::Pass(req));
        }
        return deny(&req, identity, code);
    }
    let out = denied(&mut b.coordinator_keys, |k| {
        c.may(resource, k, Operation::Describe)
    });
    if out.is_empty() {
        return Ok(Gate::Pass(req));
    }
    let left = !b.coordinator_keys.is_empty();
    trim(req, &b, left, move |r: &mut FindCoordinatorResponse| {
        for key in out {
            let mut co = find_coordinator_response::Coordinator::default();
            co.key = key;
            co.node_id = BrokerId(-1);
            co.port = -1;
            co.error_code = code;
            r.coordinators.push(co);
        }
    })
}

/// OffsetFetch: the group(s) need DESCRIBE; topics asked for that the
/// principal may not describe are answered TOPIC_AUTHORIZATION_FAILED, and
/// when all of a group's topics are asked for, those are hidden.
fn offset_fetch(c: Check, req: RequestFrame, identity: &Identity) -> super::Result<Gate> {
    let mut b: OffsetFetchRequest = req.decode()?;
    let topic_denied = |name: TopicName, parts: &[i32]| {
        let mut rt = offset_fetch_response::OffsetFetchResponseTopic::default();
        rt.name = name;
        rt.partitions = parts
            .iter()
            .map(|&p| {
                let mut rp = offset_fetch_response::OffsetFetchResponsePartition::default();
                rp.partition_index = p;
                rp.committed_offset = -1;
                rp.committed_leader_epoch = -1;
                rp.error_code = TOPIC_AUTHORIZATION_FAILED;
                rp
            })
            .collect();
        rt
    };
    if req.api_version < 8 {
        if !c.may(Resource::Group, &b.group_id, Operation::Describe) {
            return deny(&req, identity, GROUP_AUTHORIZATION_FAILED);
        }
        let out: Vec<_> = match b.topics.as_mut() {
            Some(ts) => denied(ts, |t| c.may(Resource::Topic, &t.name, Operation::Describe))
                .into_iter()
                .map(|t| topic_denied(t.name, &t.partition_indexes))
                .collect(),
            None => Vec::new(),
        };
        let all = b.topics.is_none();
        let a = amend(&req, move |r: &mut OffsetFetchResponse| {
            if all {
                r.topics.retain(|t| c.sees(Resource::Topic, &t.name));
            }
            r.topics.extend(out);
        });
        return Ok(Gate::Trim(reencode(&req, &b)?, a));
    }
    let gone = denied(&mut b.groups, |g| {
        c.may(Resource::Group, &g.group_id, Operation::Describe)
    });
    // Per group kept: its denied topics, or "hide" when it asked for all.
    let mut per_group: Vec<(
        GroupId,
        Vec<offset_fetch_response::OffsetFetchResponseTopics>,
        bool,
    )> = Vec::new();
    for g in &mut b.groups {
        let all = g.topics.is_none();
        let out = match g.topics.as_mut() {
            Some(ts) => denied(ts, |t| c.may(Resource::Topic, &t.name, Operation::Describe)),
            None => Vec::new(),
        };
        let out = out
            .into_iter()
            .map(|t| {
                let mut rt = offset_fetch_response::OffsetFetchResponseTopics::default();
                rt.name = t.name;
                rt.topic_id = t.topic_id;
                rt.partitions = t
                    .partition_indexes
                    .iter()
                    .map(|&p| {
                        let mut rp =
                            offset_fetch_response::OffsetFetchResponsePartitions::default();
                        rp.partition_index = p;
                        rp.committed_offset = -1;
                        rp.committed_leader_epoch = -1;
                        rp.error_code = TOPIC_AUTHORIZATION_FAILED;
                        rp
                    })
                    .collect();
                rt
            })
            .collect();
        per_group.push((g.group_id.clone(), out, all));
    }
    let left = !b.groups.is_empty();
    trim(req, &b, left, move |r: &mut OffsetFetchResponse| {
        for rg in &mut r.groups {
            if let Some((_, out, all)) = per_group.iter_mut().find(|(g, ..)| *g == rg.group_id) {
                if *all {
                    rg.topics.retain(|t| c.sees(Resource::Topic, &t.name));
                }
                rg.topics.append(out);
            }
        }
        for g in gone {
            let mut rg = offset_fetch_response::OffsetFetchResponseGroup::default();
            rg.group_id = g.group_id;
            rg.error_code = GROUP_AUTHORIZATION_FAILED;
            r.groups.push(rg);
        }
    })
}

/// AddPartitionsToTxn (up to v3, what is advertised): WRITE on the
/// transactional id, then on every topic; if any topic is denied, nothing
/// is added and the other partitions say OPERATION_NOT_ATTEMPTED (Kafka's
/// answer: the transaction must not go on with part of its partitions).
fn add_partitions_to_txn(c: &Check, req: RequestFrame, identity: &Identity) -> super::Result<Gate> {
    let b: AddPartitionsToTxnRequest = req.decode()?;
    if !c.may(
        Resource::TransactionalId,
        &b.v3_and_below_transactional_id,
        Operation::Write,
    ) {
        return deny(&req, identity, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    let allowed: Vec<bool> = b
        .v3_and_below_topics
        .iter()
        .map(|t| c.may(Resource::Topic, &t.name, Operation::Write))
        .collect();
    if allowed.iter().all(|a| *a) {
        return Ok(Gate::Pass(req));
    }
    let mut r = AddPartitionsToTxnResponse::default();
    for (t, ok) in b.v3_and_below_topics.iter().zip(allowed) {
        let mut rt = add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default();
        rt.name = t.name.clone();
        rt.results_by_partition = t
            .partitions
            .iter()
            .map(|&p| {
                let mut rp =
                    add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default();
                rp.partition_index = p;
                rp.partition_error_code = if ok {
                    OPERATION_NOT_ATTEMPTED
                } else {
                    TOPIC_AUTHORIZATION_FAILED
                };
                rp
            })
            .collect();
        r.results_by_topic_v3_and_below.push(rt);
    }
    Ok(Gate::Answer(codec::encode_response(
        req.api_key,
        req.api_version,
        req.correlation_id,
        &r,
    )?))
}

/// The partitioned APIs' check, on the request their pipeline decoded:
/// topics the principal may not `op` leave the request, their partitions
/// answered TOPIC_AUTHORIZATION_FAILED; with `whole` (a transactional
/// produce's id) denied, every partition is answered with its code.
/// `skip` lists topics answered already (unknown ids); the same topics'
/// indexes after the denied ones left are returned.
pub fn topics<A: Api>(
    x: &mut Exchange<A>,
    authz: &Arc<Authorizer>,
    principal: Option<&str>,
    op: Operation,
    whole: Option<(Resource, &str, Operation, i16)>,
    skip: Vec<usize>,
) -> super::Result<Vec<usize>> {
    let Some(c) = authz.request(principal, x.req.api_key) else {
        return Ok(skip);
    };
    let all = whole
        .filter(|(r, name, op, _)| !c.may(*r, name, *op))
        .map(|(.., code)| code);
    let mut kept_skip = Vec::with_capacity(skip.len());
    let mut denied_any = false;
    let mut kept = 0;
    let topics = std::mem::take(x.body.topics_mut());
    let mut left = Vec::with_capacity(topics.len());
    for (ti, t) in topics.into_iter().enumerate() {
        if skip.contains(&ti) {
            kept_skip.push(kept);
            kept += 1;
            left.push(t);
            continue;
        }
        let name = A::Req::topic_name(&t);
        let code = all
            .or_else(|| (!c.may(Resource::Topic, name, op)).then_some(TOPIC_AUTHORIZATION_FAILED));
        match code {
            None => {
                kept += 1;
                left.push(t);
            }
            Some(code) => {
                denied_any = true;
                for p in A::Req::partitions(&t) {
                    x.unanswered.push(Unanswered {
                        topic: name.clone(),
                        topic_id: None,
                        partition: A::Req::partition_index(p),
                        code,
                        message: None,
                    });
                }
            }
        }
    }
    *x.body.topics_mut() = left;
    if denied_any {
        if x.no_response {
            return Err(super::Error::Denied(format!(
                "{} without acks to a topic {} may not write",
                codec::api_name(x.req.api_key),
                c.principal()
            )));
        }
        x.touch("authorize");
    }
    Ok(kept_skip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Authorizer;
    use crate::codec::errors::NONE;
    use crate::metrics::Metrics;
    use kafka_protocol::protocol::StrBytes;

    /// `User:app` may write and read `orders.*`, use group `app-*` and
    /// transactional ids `app-*`; `User:admin` is a super user.
    fn authz() -> Arc<Authorizer> {
        let text = "cluster_id: c\nlisten: {bind: '127.0.0.1:19092'}\nsites: [{name: a, bootstrap: ['127.0.0.1:9092']}]\nauthorization:\n  super_users: ['User:admin']\n  rules:\n    - {principals: ['User:app'], topics: {prefix: 'orders.'}, operations: [read, write]}\n    - {principals: ['User:app'], groups: {prefix: 'app-'}, operations: [read, describe]}\n    - {principals: ['User:app'], transactional_ids: {prefix: 'app-'}, operations: [write, describe]}\n";
        let config: crate::config::Config = serde_norway::from_str(text).expect("parses");
        let policy = crate::authz::load(&config).expect("valid");
        Arc::new(Authorizer::new(policy, Arc::new(Metrics::new())))
    }

    fn identity() -> Identity {
        Identity::new(
            "c",
            "127.0.0.1:9092".parse().expect("addr"),
            "localhost",
            3,
            None,
        )
    }

    fn frame<R: Encodable>(api: ApiKey, version: i16, body: &R) -> RequestFrame {
        let f = codec::encode_request(api, version, Some(StrBytes::from_static_str("t")), body)
            .expect("encode");
        let mut f = bytes::BytesMut::from(&f[..]);
        f[4..8].copy_from_slice(&77i32.to_be_bytes());
        RequestFrame::parse(f.freeze()).expect("parse")
    }

    fn gate_for(who: &str, req: RequestFrame) -> Gate {
        gate(&authz(), Some(who), &identity(), req).expect("gate")
    }

    fn answer<R: Decodable>(g: Gate, api: ApiKey, version: i16) -> R {
        match g {
            Gate::Answer(f) => codec::decode_response_body(api, version, &f).expect("decode"),
            _ => panic!("expected an answer"),
        }
    }

    fn topic(n: &str) -> TopicName {
        TopicName(StrBytes::from_string(n.to_string()))
    }

    fn group(n: &str) -> GroupId {
        GroupId(StrBytes::from_string(n.to_string()))
    }

    #[test]
    fn a_denied_group_is_answered_group_authorization_failed() {
        let mut join = JoinGroupRequest::default();
        join.group_id = group("payments");
        let r: JoinGroupResponse = answer(
            gate_for("app", frame(ApiKey::JoinGroup, 9, &join)),
            ApiKey::JoinGroup,
            9,
        );
        assert_eq!(r.error_code, GROUP_AUTHORIZATION_FAILED);
        join.group_id = group("app-billing");
        assert!(matches!(
            gate_for("app", frame(ApiKey::JoinGroup, 9, &join)),
            Gate::Pass(_)
        ));
        assert!(matches!(
            gate_for(
                "admin",
                frame(ApiKey::JoinGroup, 9, &{
                    let mut j = JoinGroupRequest::default();
                    j.group_id = group("payments");
                    j
                })
            ),
            Gate::Pass(_)
        ));
    }

    #[test]
    fn a_commit_loses_only_its_denied_topics_and_gets_them_back_answered() {
        let mut commit = OffsetCommitRequest::default();
        commit.group_id = group("app-billing");
        for name in ["orders.eu", "payments"] {
            let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
            t.name = topic(name);
            let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
            p.partition_index = 3;
            t.partitions.push(p);
            commit.topics.push(t);
        }
        let Gate::Trim(sent, amend) = gate_for("app", frame(ApiKey::OffsetCommit, 9, &commit))
        else {
            panic!("expected a trimmed request");
        };
        assert_eq!(sent.correlation_id, 77, "the client's correlation id");
        let body: OffsetCommitRequest = sent.decode().expect("decode");
        let names: Vec<&str> = body.topics.iter().map(|t| t.name.0.as_str()).collect();
        assert_eq!(names, ["orders.eu"], "the denied topic never goes upstream");

        // The site answers for what it got; the client hears of both.
        let mut upstream = OffsetCommitResponse::default();
        let mut t = offset_commit_response::OffsetCommitResponseTopic::default();
        t.name = topic("orders.eu");
        let mut p = offset_commit_response::OffsetCommitResponsePartition::default();
        p.partition_index = 3;
        t.partitions.push(p);
        upstream.topics.push(t);
        let f = codec::encode_response(ApiKey::OffsetCommit, 9, 5, &upstream).expect("encode");
        let out = amend
            .outcome(Outcome::Ready(Reply::Upstream {
                correlation_id: 77,
                frame: f,
            }))
            .expect("amended");
        let Outcome::Ready(Reply::Frame(f)) = out else {
            panic!("expected a frame");
        };
        let r: OffsetCommitResponse =
            codec::decode_response_body(ApiKey::OffsetCommit, 9, &f).expect("decode");
        let codes: Vec<(&str, i16)> = r
            .topics
            .iter()
            .map(|t| (t.name.0.as_str(), t.partitions[0].error_code))
            .collect();
        assert_eq!(
            codes,
            [
                ("orders.eu", NONE),
                ("payments", TOPIC_AUTHORIZATION_FAILED)
            ]
        );
        assert_eq!(&f[..4], &77i32.to_be_bytes(), "the client's correlation id");
    }

    #[test]
    fn metadata_answers_topics_asked_for_and_hides_the_rest() {
        let mut md = MetadataRequest::default();
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(topic("payments"));
        md.topics = Some(vec![t]);
        md.allow_auto_topic_creation = true;
        let Gate::Trim(sent, amend) = gate_for("app", frame(ApiKey::Metadata, 12, &md)) else {
            panic!("metadata is always amended");
        };
        let body: MetadataRequest = sent.decode().expect("decode");
        assert_eq!(
            body.topics.map(|t| t.len()),
            Some(0),
            "never asked upstream"
        );
        let f = codec::encode_response(ApiKey::Metadata, 12, 77, &MetadataResponse::default())
            .expect("encode");
        let Outcome::Ready(Reply::Frame(f)) = amend
            .outcome(Outcome::Ready(Reply::Frame(f)))
            .expect("amended")
        else {
            panic!("expected a frame");
        };
        let r: MetadataResponse =
            codec::decode_response_body(ApiKey::Metadata, 12, &f).expect("decode");
        assert_eq!(r.topics.len(), 1);
        assert_eq!(r.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);

        // All topics: what the principal may not describe is not there.
        let all = MetadataRequest::default();
        let Gate::Trim(_, amend) = gate_for("app", frame(ApiKey::Metadata, 12, &all)) else {
            panic!("metadata is always amended");
        };
        let mut listed = MetadataResponse::default();
        for n in ["orders.eu", "payments", "orders.us"] {
            let mut t = metadata_response::MetadataResponseTopic::default();
            t.name = Some(topic(n));
            listed.topics.push(t);
        }
        let f = codec::encode_response(ApiKey::Metadata, 12, 77, &listed).expect("encode");
        let Outcome::Ready(Reply::Frame(f)) = amend
            .outcome(Outcome::Ready(Reply::Frame(f)))
            .expect("amended")
        else {
            panic!("expected a frame");
        };
        let r: MetadataResponse =
            codec::decode_response_body(ApiKey::Metadata, 12, &f).expect("decode");
        let names: Vec<&str> = r
            .topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str()))
            .collect();
        assert_eq!(names, ["orders.eu", "orders.us"]);
    }

    #[test]
    fn the_operations_a_client_is_told_of_are_its_own() {
        let mut md = MetadataRequest::default();
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(topic("orders.eu"));
        md.topics = Some(vec![t]);
        md.include_topic_authorized_operations = true;
        let Gate::Trim(_, amend) = gate_for("app", frame(ApiKey::Metadata, 12, &md)) else {
            panic!("metadata is always amended");
        };
        let mut upstream = MetadataResponse::default();
        let mut rt = metadata_response::MetadataResponseTopic::default();
        rt.name = Some(topic("orders.eu"));
        rt.topic_authorized_operations = 0xffe;
        upstream.topics.push(rt);
        let f = codec::encode_response(ApiKey::Metadata, 12, 77, &upstream).expect("encode");
        let Outcome::Ready(Reply::Frame(f)) = amend
            .outcome(Outcome::Ready(Reply::Frame(f)))
            .expect("amended")
        else {
            panic!("expected a frame");
        };
        let r: MetadataResponse =
            codec::decode_response_body(ApiKey::Metadata, 12, &f).expect("decode");
        // READ 3, WRITE 4, DESCRIBE 8.
        assert_eq!(
            r.topics[0].topic_authorized_operations,
            1 << 3 | 1 << 4 | 1 << 8
        );
    }

    #[test]
    fn auto_creation_needs_create() {
        let mut md = MetadataRequest::default();
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(topic("orders.new"));
        md.topics = Some(vec![t]);
        md.allow_auto_topic_creation = true;
        let Gate::Trim(sent, _) = gate_for("app", frame(ApiKey::Metadata, 12, &md)) else {
            panic!("metadata is always amended");
        };
        let body: MetadataRequest = sent.decode().expect("decode");
        assert!(!body.allow_auto_topic_creation, "app may not create topics");
        let Gate::Trim(sent, _) = gate_for("admin", frame(ApiKey::Metadata, 12, &md)) else {
            panic!("metadata is always amended");
        };
        let body: MetadataRequest = sent.decode().expect("decode");
        assert!(body.allow_auto_topic_creation);
    }

    #[test]
    fn transactions_need_their_id_and_every_topic() {
        let mut init = InitProducerIdRequest::default();
        init.transactional_id = Some(TransactionalId(StrBytes::from_static_str("other")));
        let r: InitProducerIdResponse = answer(
            gate_for("app", frame(ApiKey::InitProducerId, 5, &init)),
            ApiKey::InitProducerId,
            5,
        );
        assert_eq!(r.error_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
        // Idempotent: WRITE on some topic is enough.
        init.transactional_id = None;
        assert!(matches!(
            gate_for("app", frame(ApiKey::InitProducerId, 5, &init)),
            Gate::Pass(_)
        ));
        let r: InitProducerIdResponse = answer(
            gate_for("nobody", frame(ApiKey::InitProducerId, 5, &init)),
            ApiKey::InitProducerId,
            5,
        );
        assert_eq!(r.error_code, CLUSTER_AUTHORIZATION_FAILED);

        let mut add = AddPartitionsToTxnRequest::default();
        add.v3_and_below_transactional_id = TransactionalId(StrBytes::from_static_str("app-1"));
        for n in ["orders.eu", "payments"] {
            let mut t = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
            t.name = topic(n);
            t.partitions = vec![0, 1];
            add.v3_and_below_topics.push(t);
        }
        let r: AddPartitionsToTxnResponse = answer(
            gate_for("app", frame(ApiKey::AddPartitionsToTxn, 3, &add)),
            ApiKey::AddPartitionsToTxn,
            3,
        );
        let codes: Vec<(&str, i16)> = r
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| {
                t.results_by_partition
                    .iter()
                    .map(move |p| (t.name.0.as_str(), p.partition_error_code))
            })
            .collect();
        assert_eq!(
            codes,
            [
                ("orders.eu", OPERATION_NOT_ATTEMPTED),
                ("orders.eu", OPERATION_NOT_ATTEMPTED),
                ("payments", TOPIC_AUTHORIZATION_FAILED),
                ("payments", TOPIC_AUTHORIZATION_FAILED),
            ]
        );
    }

    #[test]
    fn list_groups_hides_groups_the_principal_may_not_describe() {
        let req = frame(ApiKey::ListGroups, 5, &ListGroupsRequest::default());
        let Gate::Trim(_, amend) = gate_for("app", req) else {
            panic!("expected hiding");
        };
        let mut listed = ListGroupsResponse::default();
        for g in ["app-billing", "payments"] {
            let mut lg = list_groups_response::ListedGroup::default();
            lg.group_id = group(g);
            listed.groups.push(lg);
        }
        let f = codec::encode_response(ApiKey::ListGroups, 5, 77, &listed).expect("encode");
        let Outcome::Ready(Reply::Frame(f)) = amend
            .outcome(Outcome::Ready(Reply::Frame(f)))
            .expect("amended")
        else {
            panic!("expected a frame");
        };
        let r: ListGroupsResponse =
            codec::decode_response_body(ApiKey::ListGroups, 5, &f).expect("decode");
        let ids: Vec<&str> = r.groups.iter().map(|g| g.group_id.0.as_str()).collect();
        assert_eq!(ids, ["app-billing"]);
    }

    /// Every API Switchyard serves is either exempt or checked: a principal
    /// no rule allows anything gets no request of it through unchanged.
    #[test]
    fn no_served_api_passes_unchecked() {
        let exempt = [
            ApiKey::ApiVersions,
            ApiKey::SaslHandshake,
            ApiKey::SaslAuthenticate,
            ApiKey::DescribeCluster,
        ];
        let partitioned = [
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::ListOffsets,
            ApiKey::DeleteRecords,
            ApiKey::DescribeProducers,
        ];
        macro_rules! one_of_each {
            ($($api:ident => $req:ty, $fill:expr),* $(,)?) => {
                vec![$((ApiKey::$api, {
                    let mut b = <$req>::default();
                    #[allow(clippy::redundant_closure_call)]
                    ($fill)(&mut b);
                    codec::encode_request(ApiKey::$api, crate::pipeline::testing::newest(ApiKey::$api), None, &b).expect("encode")
                })),*]
            };
        }
        let t = || topic("payments");
        let requests = one_of_each!(
            Metadata => MetadataRequest, |b: &mut MetadataRequest| {
                let mut mt = metadata_request::MetadataRequestTopic::default();
                mt.name = Some(t());
                b.topics = Some(vec![mt]);
            },
            FindCoordinator => FindCoordinatorRequest, |b: &mut FindCoordinatorRequest| b.coordinator_keys = vec![StrBytes::from_static_str("g")],
            JoinGroup => JoinGroupRequest, |_: &mut JoinGroupRequest| {},
            SyncGroup => SyncGroupRequest, |_: &mut SyncGroupRequest| {},
            Heartbeat => HeartbeatRequest, |_: &mut HeartbeatRequest| {},
            LeaveGroup => LeaveGroupRequest, |_: &mut LeaveGroupRequest| {},
            OffsetCommit => OffsetCommitRequest, |_: &mut OffsetCommitRequest| {},
            TxnOffsetCommit => TxnOffsetCommitRequest, |_: &mut TxnOffsetCommitRequest| {},
            OffsetDelete => OffsetDeleteRequest, |_: &mut OffsetDeleteRequest| {},
            OffsetFetch => OffsetFetchRequest, |b: &mut OffsetFetchRequest| b.groups.push(offset_fetch_request::OffsetFetchRequestGroup::default()),
            DescribeGroups => DescribeGroupsRequest, |b: &mut DescribeGroupsRequest| b.groups.push(group("g")),
            DeleteGroups => DeleteGroupsRequest, |b: &mut DeleteGroupsRequest| b.groups_names.push(group("g")),
            ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest, |_: &mut ConsumerGroupHeartbeatRequest| {},
            ConsumerGroupDescribe => ConsumerGroupDescribeRequest, |b: &mut ConsumerGroupDescribeRequest| b.group_ids.push(group("g")),
            ListTransactions => ListTransactionsRequest, |_: &mut ListTransactionsRequest| {},
            DescribeTransactions => DescribeTransactionsRequest, |b: &mut DescribeTransactionsRequest| b.transactional_ids.push(TransactionalId(StrBytes::from_static_str("t"))),
            ListGroups => ListGroupsRequest, |_: &mut ListGroupsRequest| {},
            InitProducerId => InitProducerIdRequest, |_: &mut InitProducerIdRequest| {},
            AddPartitionsToTxn => AddPartitionsToTxnRequest, |_: &mut AddPartitionsToTxnRequest| {},
            AddOffsetsToTxn => AddOffsetsToTxnRequest, |_: &mut AddOffsetsToTxnRequest| {},
            EndTxn => EndTxnRequest, |_: &mut EndTxnRequest| {},
            CreateTopics => CreateTopicsRequest, |b: &mut CreateTopicsRequest| {
                let mut ct = create_topics_request::CreatableTopic::default();
                ct.name = t();
                b.topics.push(ct);
            },
            DeleteTopics => DeleteTopicsRequest, |b: &mut DeleteTopicsRequest| b.topic_names.push(t()),
            CreatePartitions => CreatePartitionsRequest, |b: &mut CreatePartitionsRequest| {
                let mut cp = create_partitions_request::CreatePartitionsTopic::default();
                cp.name = t();
                b.topics.push(cp);
            },
            DescribeConfigs => DescribeConfigsRequest, |b: &mut DescribeConfigsRequest| b.resources.push(describe_configs_request::DescribeConfigsResource::default()),
            AlterConfigs => AlterConfigsRequest, |b: &mut AlterConfigsRequest| b.resources.push(alter_configs_request::AlterConfigsResource::default()),
            IncrementalAlterConfigs => IncrementalAlterConfigsRequest, |b: &mut IncrementalAlterConfigsRequest| b.resources.push(incremental_alter_configs_request::AlterConfigsResource::default()),
        );
        for &(api, ..) in codec::versions::TABLE {
            if exempt.contains(&api) || partitioned.contains(&api) {
                continue;
            }
            let Some((_, f)) = requests.iter().find(|(a, _)| *a == api) else {
                panic!("{api:?} is served: add it to this test and to the gate");
            };
            let req = RequestFrame::parse(f.clone()).expect("parse");
            match gate_for("nobody", req) {
                Gate::Pass(_) => panic!("{api:?} passed unchecked"),
                Gate::Trim(sent, _)
                    if ![
                        ApiKey::ListGroups,
                        ApiKey::Metadata,
                        ApiKey::ListTransactions,
                    ]
                    .contains(&api) =>
                {
                    panic!("{api:?}: everything was denied, yet {sent:?} was sent")
                }
                _ => {}
            }
        }
    }

    #[test]
    fn a_denied_topic_leaves_a_produce_and_is_answered() {
        use crate::api::produce::Produce;
        use crate::pipeline::testing::{exchange, produce};
        let mut body = produce("orders.eu", 2, false, -1);
        body.topic_data
            .extend(produce("payments", 1, false, -1).topic_data);
        let mut x = exchange::<Produce>(body);
        let skip = topics(
            &mut x,
            &authz(),
            Some("app"),
            Operation::Write,
            None,
            Vec::new(),
        )
        .expect("checked");
        assert!(skip.is_empty());
        let names: Vec<&str> = x
            .body
            .topic_data
            .iter()
            .map(|t| t.name.0.as_str())
            .collect();
        assert_eq!(names, ["orders.eu"]);
        assert_eq!(x.touched(), ["authorize"]);
        let answered: Vec<(&str, i16)> = x
            .unanswered
            .iter()
            .map(|u| (u.topic.0.as_str(), u.code))
            .collect();
        assert_eq!(answered, [("payments", TOPIC_AUTHORIZATION_FAILED)]);

        // A transactional produce under an id it may not use: all of it.
        let mut x = exchange::<Produce>(produce("orders.eu", 2, false, -1));
        topics(
            &mut x,
            &authz(),
            Some("app"),
            Operation::Write,
            Some((
                Resource::TransactionalId,
                "other",
                Operation::Write,
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            )),
            Vec::new(),
        )
        .expect("checked");
        assert!(x.body.topic_data.is_empty());
        assert!(x
            .unanswered
            .iter()
            .all(|u| u.code == TRANSACTIONAL_ID_AUTHORIZATION_FAILED));

        // acks=0 has nowhere to say so: the connection closes, as Kafka's.
        let mut x = exchange::<Produce>(produce("payments", 1, false, 0));
        x.no_response = true;
        let r = topics(
            &mut x,
            &authz(),
            Some("app"),
            Operation::Write,
            None,
            Vec::new(),
        );
        assert!(matches!(r, Err(crate::pipeline::Error::Denied(_))));
    }
}
