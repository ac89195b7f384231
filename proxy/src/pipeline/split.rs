//! Splitting topic/partition-addressed requests by site and upstream leader.
//!
//! Produce, Fetch, ListOffsets and DeleteRecords share one shape: a list of
//! topics, each with a list of partitions. Once `names::resolve` renamed the
//! topics to their physical names and found their sites, `plan` decides which
//! broker of which site leads each partition; `split` builds one sub-request
//! per (site, broker) holding only its partitions (record batches stay shared
//! `Bytes`, never copied).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::{
    DeleteRecordsRequest, FetchRequest, ListOffsetsRequest, ProduceRequest, TopicName,
};

use super::names::Names;
use crate::codec::errors;
use crate::upstream::{Site, Target};

/// `(topic index, partition index)` slots per upstream (site, broker).
pub type Plan = BTreeMap<Target, Vec<(usize, usize)>>;

/// A partition nobody leads: site, physical topic, partition and the error to
/// answer with.
pub type Unroutable = (usize, TopicName, i32, i16);

/// A request addressed by topic and partition.
pub trait Partitioned: Clone {
    type Topic: Clone;
    type Partition: Clone;
    fn topics(&self) -> &Vec<Self::Topic>;
    fn topics_mut(&mut self) -> &mut Vec<Self::Topic>;
    fn topic_name(t: &Self::Topic) -> &TopicName;
    fn topic_name_mut(t: &mut Self::Topic) -> &mut TopicName;
    fn partitions(t: &Self::Topic) -> &Vec<Self::Partition>;
    fn partitions_mut(t: &mut Self::Topic) -> &mut Vec<Self::Partition>;
    fn partition_index(p: &Self::Partition) -> i32;
}

macro_rules! partitioned {
    ($req:ty, $topic:ty, $partition:ty, $topics:ident, $name:ident, $parts:ident, $index:ident) => {
        impl Partitioned for $req {
            type Topic = $topic;
            type Partition = $partition;
            fn topics(&self) -> &Vec<$topic> {
                &self.$topics
            }
            fn topics_mut(&mut self) -> &mut Vec<$topic> {
                &mut self.$topics
            }
            fn topic_name(t: &$topic) -> &TopicName {
                &t.$name
            }
            fn topic_name_mut(t: &mut $topic) -> &mut TopicName {
                &mut t.$name
            }
            fn partitions(t: &$topic) -> &Vec<$partition> {
                &t.$parts
            }
            fn partitions_mut(t: &mut $topic) -> &mut Vec<$partition> {
                &mut t.$parts
            }
            fn partition_index(p: &$partition) -> i32 {
                p.$index
            }
        }
    };
}

use kafka_protocol::messages::{
    delete_records_request, fetch_request, list_offsets_request, produce_request,
};
partitioned!(
    ProduceRequest,
    produce_request::TopicProduceData,
    produce_request::PartitionProduceData,
    topic_data,
    name,
    partition_data,
    index
);
partitioned!(
    FetchRequest,
    fetch_request::FetchTopic,
    fetch_request::FetchPartition,
    topics,
    topic,
    partitions,
    partition
);
partitioned!(
    ListOffsetsRequest,
    list_offsets_request::ListOffsetsTopic,
    list_offsets_request::ListOffsetsPartition,
    topics,
    name,
    partitions,
    partition_index
);
partitioned!(
    DeleteRecordsRequest,
    delete_records_request::DeleteRecordsTopic,
    delete_records_request::DeleteRecordsPartition,
    topics,
    name,
    partitions,
    partition_index
);

/// DescribeProducers names its partitions by index alone.
impl Partitioned for kafka_protocol::messages::DescribeProducersRequest {
    type Topic = kafka_protocol::messages::describe_producers_request::TopicRequest;
    type Partition = i32;
    fn topics(&self) -> &Vec<Self::Topic> {
        &self.topics
    }
    fn topics_mut(&mut self) -> &mut Vec<Self::Topic> {
        &mut self.topics
    }
    fn topic_name(t: &Self::Topic) -> &TopicName {
        &t.name
    }
    fn topic_name_mut(t: &mut Self::Topic) -> &mut TopicName {
        &mut t.name
    }
    fn partitions(t: &Self::Topic) -> &Vec<i32> {
        &t.partition_indexes
    }
    fn partitions_mut(t: &mut Self::Topic) -> &mut Vec<i32> {
        &mut t.partition_indexes
    }
    fn partition_index(p: &i32) -> i32 {
        *p
    }
}

/// Finds the upstream leader of every partition of `req` on its topic's site
/// (refreshing that site's view once on a miss). Topics without a site are
/// left out (already answered).
pub async fn plan<R: Partitioned>(
    sites: &[Arc<Site>],
    req: &R,
    site_of: &[Option<usize>],
    names: &Names,
) -> (Plan, Vec<Unroutable>) {
    let mut plan = Plan::new();
    let mut missing = Vec::new();
    for (ti, t) in req.topics().iter().enumerate() {
        let Some(si) = site_of.get(ti).copied().flatten() else {
            continue;
        };
        let Some(site) = sites.get(si) else {
            continue;
        };
        let name = R::topic_name(t);
        // A failover switch in progress: neither site may serve the route
        // until it completes; NOT_LEADER_OR_FOLLOWER makes clients refresh
        // metadata and retry, by which time the route points to its new site.
        if names.is_held(si, name.0.as_str()) {
            for p in R::partitions(t) {
                missing.push((
                    si,
                    name.clone(),
                    R::partition_index(p),
                    errors::NOT_LEADER_OR_FOLLOWER,
                ));
            }
            continue;
        }
        for (pi, p) in R::partitions(t).iter().enumerate() {
            let index = R::partition_index(p);
            match site.leader(name.0.as_str(), index).await {
                Some(b) => plan.entry((si, b)).or_default().push((ti, pi)),
                None => {
                    // NOT_LEADER_OR_FOLLOWER is retriable and makes the client
                    // refresh metadata; for a topic that does not exist, say so.
                    let code = if site.view().topics.contains_key(name.0.as_str()) {
                        errors::NOT_LEADER_OR_FOLLOWER
                    } else {
                        errors::UNKNOWN_TOPIC_OR_PARTITION
                    };
                    missing.push((si, name.clone(), index, code));
                }
            }
        }
    }
    (plan, missing)
}

/// Partitions by (physical) topic name and index.
pub type Slots = Vec<(TopicName, i32)>;

/// The partitions of a (sub-)request, names copied out of the request's
/// buffer: what to answer for if its broker fails.
pub fn partitions_of<R: Partitioned>(req: &R) -> Slots {
    let mut out = Vec::new();
    for t in req.topics() {
        let name = TopicName(kafka_protocol::protocol::StrBytes::from_string(
            R::topic_name(t).0.to_string(),
        ));
        for p in R::partitions(t) {
            out.push((name.clone(), R::partition_index(p)));
        }
    }
    out
}

/// One sub-request per (site, broker) with only its partitions.
pub fn split<R: Partitioned>(req: &R, plan: &Plan) -> BTreeMap<Target, R> {
    plan.iter()
        .map(|(broker, slots)| {
            let mut sub = req.clone();
            sub.topics_mut().clear();
            let mut last_topic = usize::MAX;
            for &(ti, pi) in slots {
                let src = &req.topics()[ti];
                let part = R::partitions(src)[pi].clone();
                if ti == last_topic {
                    if let Some(t) = sub.topics_mut().last_mut() {
                        R::partitions_mut(t).push(part);
                        continue;
                    }
                }
                let mut t = src.clone();
                *R::partitions_mut(&mut t) = vec![part];
                sub.topics_mut().push(t);
                last_topic = ti;
            }
            (*broker, sub)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn split_keeps_each_partition_once() {
        let mut req = ListOffsetsRequest::default();
        for name in ["a", "b"] {
            let mut t = list_offsets_request::ListOffsetsTopic::default();
            t.name = TopicName(StrBytes::from_static_str(name));
            for i in 0..3 {
                let mut p = list_offsets_request::ListOffsetsPartition::default();
                p.partition_index = i;
                t.partitions.push(p);
            }
            req.topics.push(t);
        }
        let mut plan = Plan::new();
        plan.insert((0, 1), vec![(0, 0), (0, 2), (1, 1)]);
        plan.insert((1, 1), vec![(0, 1), (1, 0), (1, 2)]);
        let parts = split(&req, &plan);
        let layout = |r: &ListOffsetsRequest| -> Vec<(String, Vec<i32>)> {
            r.topics
                .iter()
                .map(|t| {
                    (
                        t.name.0.to_string(),
                        t.partitions.iter().map(|p| p.partition_index).collect(),
                    )
                })
                .collect()
        };
        assert_eq!(
            layout(&parts[&(0, 1)]),
            vec![("a".into(), vec![0, 2]), ("b".into(), vec![1])]
        );
        assert_eq!(
            layout(&parts[&(1, 1)]),
            vec![("a".into(), vec![1]), ("b".into(), vec![0, 2])]
        );
    }
}
