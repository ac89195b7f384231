//! Partition-addressed admin reads and writes that must reach the leader:
//! ListOffsets (key 2) and DeleteRecords (key 21), through the pipeline:
//! (identity: neutral leader epochs) → names → plan/split/send → client
//! names → merge.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
};

use super::{Ctx, Outcome};
use crate::codec::RequestFrame;
use crate::identity::Identity;
use crate::pipeline::{identity, names, run, Api, At, Exchange, Unanswered};
use crate::route::Who;
use kafka_protocol::messages::ApiKey;

/// ListOffsets in the pipeline.
pub struct ListOffsets;

impl Api for ListOffsets {
    const KEY: ApiKey = ApiKey::ListOffsets;
    type Req = ListOffsetsRequest;
    type Resp = ListOffsetsResponse;

    fn partition_errors(r: &ListOffsetsResponse) -> Vec<i16> {
        r.topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    }

    fn to_client(at: &At, _: &Identity, r: &mut ListOffsetsResponse) -> bool {
        let mut changed = false;
        for t in &mut r.topics {
            let virt = at.names.virt(at.site, &t.name);
            changed |= virt != t.name;
            t.name = virt;
        }
        changed
    }

    fn merge(out: &mut ListOffsetsResponse, part: ListOffsetsResponse) {
        out.throttle_time_ms = out.throttle_time_ms.max(part.throttle_time_ms);
        for t in part.topics {
            match out.topics.iter_mut().find(|o| o.name == t.name) {
                Some(o) => o.partitions.extend(t.partitions),
                None => out.topics.push(t),
            }
        }
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
        r.topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    }

    fn to_client(at: &At, _: &Identity, r: &mut DeleteRecordsResponse) -> bool {
        let mut changed = false;
        for t in &mut r.topics {
            let virt = at.names.virt(at.site, &t.name);
            changed |= virt != t.name;
            t.name = virt;
        }
        changed
    }

    fn merge(out: &mut DeleteRecordsResponse, part: DeleteRecordsResponse) {
        out.throttle_time_ms = out.throttle_time_ms.max(part.throttle_time_ms);
        for t in part.topics {
            match out.topics.iter_mut().find(|o| o.name == t.name) {
                Some(o) => o.partitions.extend(t.partitions),
                None => out.topics.push(t),
            }
        }
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
    identity::list_offsets_request(&mut x);
    names::resolve(&mut x, &plane.router, who, &[]);
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
    names::resolve(&mut x, &plane.router, who, &[]);
    run::dispatch(ctx, x, ctx.identity()).await
}
