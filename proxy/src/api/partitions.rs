//! Partition-addressed admin reads and writes that must reach the leader:
//! ListOffsets (key 2), DeleteRecords (key 21) and DescribeProducers (key
//! 61), through the pipeline: authorize → (identity: neutral leader epochs)
//! → names → plan/split/send → (producer ids: the clients' ids) → client
//! names → merge.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{PartitionResponse, TopicResponse};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, DescribeProducersRequest,
    DescribeProducersResponse, ListOffsetsRequest, ListOffsetsResponse,
};

use super::{Ctx, Outcome};
use crate::authz::Operation;
use crate::codec::RequestFrame;
use crate::identity::Identity;
use crate::pipeline::{
    authorize, identity, names, producer_ids, run, Api, At, Exchange, Unanswered,
};
use crate::route::Who;
use kafka_protocol::messages::ApiKey;

/// The answer handling both APIs share: topics by name, each with its
/// partitions (the two responses have the same shape, not a common type).
macro_rules! by_topic {
    (errors $r:ident) => {
        $r.topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    };
    (to_client $at:ident $r:ident) => {{
        let mut changed = false;
        for t in &mut $r.topics {
            let virt = $at.names.virt($at.site, &t.name);
            changed |= virt != t.name;
            t.name = virt;
        }
        changed
    }};
    (merge $out:ident $part:ident) => {{
        $out.throttle_time_ms = $out.throttle_time_ms.max($part.throttle_time_ms);
        for t in $part.topics {
            match $out.topics.iter_mut().find(|o| o.name == t.name) {
                Some(o) => o.partitions.extend(t.partitions),
                None => $out.topics.push(t),
            }
        }
    }};
}

/// ListOffsets in the pipeline.
pub struct ListOffsets;

impl Api for ListOffsets {
    const KEY: ApiKey = ApiKey::ListOffsets;
    type Req = ListOffsetsRequest;
    type Resp = ListOffsetsResponse;

    fn partition_errors(r: &ListOffsetsResponse) -> Vec<i16> {
        by_topic!(errors r)
    }

    fn to_client(at: &At, _: &Identity, r: &mut ListOffsetsResponse) -> bool {
        by_topic!(to_client at r)
    }

    fn merge(out: &mut ListOffsetsResponse, part: ListOffsetsResponse) {
        by_topic!(merge out part)
    }

    fn unanswered(out: &mut ListOffsetsResponse, u: Unanswered, _: i16, _: &Identity) {
        let mut p = ListOffsetsPartitionResponse::default();
        p.partition_index = u.partition;
        p.error_code = u.code;
        p.offset = -1;
        p.timestamp = -1;
        let mut t = ListOffsetsTopicResponse::default();
        t.name = u.topic;
        t.partitions.push(p);
        let mut part = ListOffsetsResponse::default();
        part.topics.push(t);
        Self::merge(out, part);
    }

    fn finish(_: &Identity, out: &mut ListOffsetsResponse) -> bool {
        identity::list_offsets_answer(out)
    }
}

/// DeleteRecords in the pipeline.
pub struct DeleteRecords;

impl Api for DeleteRecords {
    const KEY: ApiKey = ApiKey::DeleteRecords;
    type Req = DeleteRecordsRequest;
    type Resp = DeleteRecordsResponse;

    fn partition_errors(r: &DeleteRecordsResponse) -> Vec<i16> {
        by_topic!(errors r)
    }

    fn to_client(at: &At, _: &Identity, r: &mut DeleteRecordsResponse) -> bool {
        by_topic!(to_client at r)
    }

    fn merge(out: &mut DeleteRecordsResponse, part: DeleteRecordsResponse) {
        by_topic!(merge out part)
    }

    fn unanswered(out: &mut DeleteRecordsResponse, u: Unanswered, _: i16, _: &Identity) {
        let mut p = DeleteRecordsPartitionResult::default();
        p.partition_index = u.partition;
        p.error_code = u.code;
        p.low_watermark = -1;
        let mut t = DeleteRecordsTopicResult::default();
        t.name = u.topic;
        t.partitions.push(p);
        let mut part = DeleteRecordsResponse::default();
        part.topics.push(t);
        Self::merge(out, part);
    }
}

/// DescribeProducers in the pipeline.
pub struct DescribeProducers;

impl Api for DescribeProducers {
    const KEY: ApiKey = ApiKey::DescribeProducers;
    type Req = DescribeProducersRequest;
    type Resp = DescribeProducersResponse;

    fn partition_errors(r: &DescribeProducersResponse) -> Vec<i16> {
        by_topic!(errors r)
    }

    fn to_client(at: &At, _: &Identity, r: &mut DescribeProducersResponse) -> bool {
        by_topic!(to_client at r)
    }

    fn merge(out: &mut DescribeProducersResponse, part: DescribeProducersResponse) {
        by_topic!(merge out part)
    }

    fn unanswered(out: &mut DescribeProducersResponse, u: Unanswered, _: i16, _: &Identity) {
        let mut p = PartitionResponse::default();
        p.partition_index = u.partition;
        p.error_code = u.code;
        let mut t = TopicResponse::default();
        t.name = u.topic;
        t.partitions.push(p);
        let mut part = DescribeProducersResponse::default();
        part.topics.push(t);
        Self::merge(out, part);
    }
}

pub async fn describe_producers(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: DescribeProducersRequest = req.decode()?;
    let plane = ctx.plane.clone();
    let (listener, client_id) = (ctx.listener, super::client_id(&req));
    let who = Who {
        listener: &listener.name,
        client_id: &client_id,
    };
    let mut x = Exchange::<DescribeProducers>::new(&plane, req, body);
    let principal = ctx.pools.principal();
    authorize::topics(
        &mut x,
        &plane.authz,
        principal,
        Operation::Read,
        None,
        Vec::new(),
    )?;
    names::resolve(&mut x, &plane.router, who, &[]);
    producer_ids::describe(&mut x, &plane.producer_ids);
    run::dispatch(ctx, x, ctx.identity()).await
}

pub async fn list_offsets(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: ListOffsetsRequest = req.decode()?;
    let plane = ctx.plane.clone();
    let (listener, client_id) = (ctx.listener, super::client_id(&req));
    let who = Who {
        listener: &listener.name,
        client_id: &client_id,
    };
    let mut x = Exchange::<ListOffsets>::new(&plane, req, body);
    let principal = ctx.pools.principal();
    authorize::topics(
        &mut x,
        &plane.authz,
        principal,
        Operation::Describe,
        None,
        Vec::new(),
    )?;
    names::resolve(&mut x, &plane.router, who, &[]);
    identity::list_offsets_request(&mut x);
    run::dispatch(ctx, x, ctx.identity()).await
}

pub async fn delete_records(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: DeleteRecordsRequest = req.decode()?;
    let plane = ctx.plane.clone();
    let (listener, client_id) = (ctx.listener, super::client_id(&req));
    let who = Who {
        listener: &listener.name,
        client_id: &client_id,
    };
    let mut x = Exchange::<DeleteRecords>::new(&plane, req, body);
    let principal = ctx.pools.principal();
    authorize::topics(
        &mut x,
        &plane.authz,
        principal,
        Operation::Delete,
        None,
        Vec::new(),
    )?;
    names::resolve(&mut x, &plane.router, who, &[]);
    run::dispatch(ctx, x, ctx.identity()).await
}
