//! Partition-addressed admin reads and writes that must reach the leader:
//! ListOffsets (key 2) and DeleteRecords (key 21). Split per upstream leader,
//! merged back; leader epochs in ListOffsets are neutralised (see `identity`).

use std::collections::BTreeMap;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};

use super::{error_code, scatter, Ctx, Outcome};
use crate::codec::RequestFrame;
use crate::upstream::Site;

/// Assigns `(topic, partition)` pairs to upstream leaders; returns the plan
/// and the pairs nobody leads, each with the error to report for it.
async fn plan(
    site: &Site,
    pairs: impl Iterator<Item = (usize, usize, TopicName, i32)>,
) -> (
    BTreeMap<i32, Vec<(usize, usize)>>,
    Vec<(TopicName, i32, i16)>,
) {
    let mut plan: BTreeMap<i32, Vec<(usize, usize)>> = BTreeMap::new();
    let mut missing = Vec::new();
    for (ti, pi, topic, partition) in pairs {
        match site.leader(topic.0.as_str(), partition).await {
            Some(b) => plan.entry(b).or_default().push((ti, pi)),
            None => {
                let code = if site.view().topics.contains_key(topic.0.as_str()) {
                    error_code::NOT_LEADER_OR_FOLLOWER
                } else {
                    error_code::UNKNOWN_TOPIC_OR_PARTITION
                };
                missing.push((topic, partition, code));
            }
        }
    }
    (plan, missing)
}

pub async fn list_offsets(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let mut body: ListOffsetsRequest = req.decode()?;
    for t in &mut body.topics {
        for p in &mut t.partitions {
            p.current_leader_epoch = -1;
        }
    }
    let site = ctx.site();
    let pairs: Vec<_> = body
        .topics
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.partitions
                .iter()
                .enumerate()
                .map(move |(pi, p)| (ti, pi, t.name.clone(), p.partition_index))
        })
        .collect();
    let (plan, missing) = plan(&site, pairs.into_iter()).await;
    let mut parts = BTreeMap::new();
    for (broker, slots) in plan {
        let mut sub = body.clone();
        sub.topics.clear();
        for (ti, pi) in slots {
            let src = &body.topics[ti];
            match sub.topics.last_mut() {
                Some(t) if t.name == src.name => t.partitions.push(src.partitions[pi].clone()),
                _ => {
                    let mut t = src.clone();
                    t.partitions = vec![src.partitions[pi].clone()];
                    sub.topics.push(t);
                }
            }
        }
        parts.insert(broker, sub);
    }
    scatter(ctx, &req, parts, move |resps: Vec<ListOffsetsResponse>| {
        let mut out = ListOffsetsResponse::default();
        let mut push =
            |t: ListOffsetsTopicResponse| match out.topics.iter_mut().find(|o| o.name == t.name) {
                Some(o) => o.partitions.extend(t.partitions),
                None => out.topics.push(t),
            };
        let mut throttle = 0;
        for r in resps {
            throttle = throttle.max(r.throttle_time_ms);
            for t in r.topics {
                push(t);
            }
        }
        for (name, partition, code) in missing {
            let mut p = ListOffsetsPartitionResponse::default();
            p.partition_index = partition;
            p.error_code = code;
            p.offset = -1;
            p.timestamp = -1;
            let mut t = ListOffsetsTopicResponse::default();
            t.name = name;
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
    })
    .await
}

pub async fn delete_records(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let body: DeleteRecordsRequest = req.decode()?;
    let site = ctx.site();
    let pairs: Vec<_> = body
        .topics
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.partitions
                .iter()
                .enumerate()
                .map(move |(pi, p)| (ti, pi, t.name.clone(), p.partition_index))
        })
        .collect();
    let (plan, missing) = plan(&site, pairs.into_iter()).await;
    let mut parts = BTreeMap::new();
    for (broker, slots) in plan {
        let mut sub = body.clone();
        sub.topics.clear();
        for (ti, pi) in slots {
            let src = &body.topics[ti];
            match sub.topics.last_mut() {
                Some(t) if t.name == src.name => t.partitions.push(src.partitions[pi].clone()),
                _ => {
                    let mut t = src.clone();
                    t.partitions = vec![src.partitions[pi].clone()];
                    sub.topics.push(t);
                }
            }
        }
        parts.insert(broker, sub);
    }
    scatter(
        ctx,
        &req,
        parts,
        move |resps: Vec<DeleteRecordsResponse>| {
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
            for r in resps {
                throttle = throttle.max(r.throttle_time_ms);
                for t in r.topics {
                    push(t);
                }
            }
            for (name, partition, code) in missing {
                let mut p = DeleteRecordsPartitionResult::default();
                p.partition_index = partition;
                p.error_code = code;
                p.low_watermark = -1;
                let mut t = DeleteRecordsTopicResult::default();
                t.name = name;
                t.partitions.push(p);
                push(t);
            }
            out.throttle_time_ms = throttle;
            Ok(out)
        },
    )
    .await
}
