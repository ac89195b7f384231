//! Partition-addressed admin reads and writes that must reach the leader:
//! ListOffsets (key 2) and DeleteRecords (key 21). Split per upstream leader,
//! merged back; leader epochs in ListOffsets are neutralised (see `identity`).

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
};

use super::names::Names;
use super::{scatter_partitioned, split, Ctx, Outcome};
use crate::codec::RequestFrame;

pub async fn list_offsets(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let mut body: ListOffsetsRequest = req.decode()?;
    for t in &mut body.topics {
        for p in &mut t.partitions {
            p.current_leader_epoch = -1;
        }
    }
    let router = ctx.proxy.router.clone();
    let mut names = Names::default();
    let site_of = split::resolve(&mut body, &mut names, &router, ctx.who(&req), &[]);
    let (plan, missing) = split::plan(&ctx.proxy.sites, &body, &site_of, &names).await;
    let parts = split::split(&body, &plan);
    let proxy = ctx.proxy.clone();
    let timeout = proxy.request_timeout();
    scatter_partitioned(
        ctx,
        &req,
        parts,
        timeout,
        None,
        move |resps: Vec<(usize, ListOffsetsResponse)>, failed| {
            let mut out = ListOffsetsResponse::default();
            let mut push = |t: ListOffsetsTopicResponse| match out
                .topics
                .iter_mut()
                .find(|o| o.name == t.name)
            {
                Some(o) => o.partitions.extend(t.partitions),
                None => out.topics.push(t),
            };
            let mut throttle = 0;
            for (site, r) in resps {
                throttle = throttle.max(r.throttle_time_ms);
                for mut t in r.topics {
                    if let Some(s) = proxy.sites.get(site) {
                        for p in &t.partitions {
                            s.note_partition_error(p.error_code);
                        }
                    }
                    t.name = names.virt(site, &t.name);
                    push(t);
                }
            }
            for (site, name, partition, code) in missing.into_iter().chain(failed) {
                let mut p = ListOffsetsPartitionResponse::default();
                p.partition_index = partition;
                p.error_code = code;
                p.offset = -1;
                p.timestamp = -1;
                let mut t = ListOffsetsTopicResponse::default();
                t.name = names.virt(site, &name);
                t.partitions.push(p);
                push(t);
            }
            out.throttle_time_ms = throttle;
            for t in &mut out.topics {
                for p in &mut t.partitions {
                    p.leader_epoch = -1;
                }
            }
            Ok(out)
        },
    )
    .await
}

pub async fn delete_records(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let mut body: DeleteRecordsRequest = req.decode()?;
    let router = ctx.proxy.router.clone();
    let mut names = Names::default();
    let site_of = split::resolve(&mut body, &mut names, &router, ctx.who(&req), &[]);
    let (plan, missing) = split::plan(&ctx.proxy.sites, &body, &site_of, &names).await;
    let parts = split::split(&body, &plan);
    let timeout = ctx.proxy.request_timeout();
    scatter_partitioned(
        ctx,
        &req,
        parts,
        timeout,
        None,
        move |resps: Vec<(usize, DeleteRecordsResponse)>, failed| {
            let mut out = DeleteRecordsResponse::default();
            let mut push = |t: DeleteRecordsTopicResult| match out
                .topics
                .iter_mut()
                .find(|o| o.name == t.name)
            {
                Some(o) => o.partitions.extend(t.partitions),
                None => out.topics.push(t),
            };
            let mut throttle = 0;
            for (site, r) in resps {
                throttle = throttle.max(r.throttle_time_ms);
                for mut t in r.topics {
                    t.name = names.virt(site, &t.name);
                    push(t);
                }
            }
            for (site, name, partition, code) in missing.into_iter().chain(failed) {
                let mut p = DeleteRecordsPartitionResult::default();
                p.partition_index = partition;
                p.error_code = code;
                p.low_watermark = -1;
                let mut t = DeleteRecordsTopicResult::default();
                t.name = names.virt(site, &name);
                t.partitions.push(p);
                push(t);
            }
            out.throttle_time_ms = throttle;
            Ok(out)
        },
    )
    .await
}
