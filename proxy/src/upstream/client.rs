//! Switchyard's own Kafka client toward one site, for the tee, offset
//! translation, failover state and plugin conflict state: the few requests
//! they need (Fetch, Produce, ListOffsets, CreateTopics), each split by
//! partition leader, over connections of its own (never a client's);
//! producer ids come from the site itself (`Site::init_producer_id`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    create_topics_request, fetch_request, list_offsets_request, produce_request, ApiKey,
    CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::codec;
use crate::codec::errors::{COORDINATOR_NOT_AVAILABLE, NETWORK_EXCEPTION, NOT_COORDINATOR};
use crate::upstream::{BrokerPool, PendingResponse, Site, UpstreamError};

const CLIENT_ID: &str = "switchyard-tee";

/// What a partition's fetch brought.
#[derive(Debug, Default)]
pub struct Fetched {
    pub partition: i32,
    /// Kafka error code; `NETWORK_EXCEPTION` when the broker could not be reached.
    pub error: i16,
    pub high_watermark: i64,
    /// End of the committed records (read_committed); -1 when unknown.
    pub last_stable_offset: i64,
    pub records: Option<Bytes>,
    /// `(producer id, first offset)` of aborted transactions in the range.
    pub aborted: Vec<(i64, i64)>,
}

/// Outcome of one partition's write.
#[derive(Debug, Clone)]
pub struct Written {
    pub partition: i32,
    pub error: i16,
    pub base_offset: i64,
    pub message: Option<String>,
}

pub struct SiteClient {
    pub site: Arc<Site>,
    pool: BrokerPool,
    timeout: Duration,
}

impl SiteClient {
    pub fn new(site: Arc<Site>) -> Self {
        let timeout = site.settings.request_timeout;
        SiteClient {
            pool: BrokerPool::new(site.clone()),
            site,
            timeout,
        }
    }

    async fn send<Req: Encodable>(
        &mut self,
        broker: i32,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<PendingResponse, UpstreamError> {
        let frame = codec::encode_request(
            api,
            version,
            Some(StrBytes::from_static_str(CLIENT_ID)),
            req,
        )
        .map_err(|e| UpstreamError::Protocol {
            addr: self.site.name.clone(),
            reason: e.to_string(),
        })?;
        self.pool.call(broker, api, frame).await
    }

    async fn wait<Resp: Decodable>(
        &self,
        p: PendingResponse,
        api: ApiKey,
        version: i16,
    ) -> Result<Resp, UpstreamError> {
        let frame = p.wait(self.timeout).await?;
        codec::decode_response_body(api, version, &frame).map_err(|e| UpstreamError::Protocol {
            addr: self.site.name.clone(),
            reason: e.to_string(),
        })
    }

    /// Partition count of a topic, refreshing the view once if unknown.
    pub async fn partitions(&self, topic: &str) -> Option<usize> {
        if let Some(t) = self.site.view().topics.get(topic) {
            return Some(t.leaders.len());
        }
        self.site.mark_stale();
        let _ = self.site.refresh().await;
        self.site.view().topics.get(topic).map(|t| t.leaders.len())
    }

    async fn by_leader(&self, topic: &str, partitions: &[i32]) -> BTreeMap<i32, Vec<i32>> {
        let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in partitions {
            // A partition with no known leader is sent to broker -1, which
            // fails to connect and reads as a retriable network error.
            let leader = self.site.leader(topic, p).await.unwrap_or(-1);
            out.entry(leader).or_default().push(p);
        }
        out
    }

    /// ListOffsets: `-1` latest (high watermark), `-2` earliest (log start).
    pub async fn list_offset(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<i64, String> {
        let leader = self
            .site
            .leader(topic, partition)
            .await
            .ok_or_else(|| format!("no leader for {topic}/{partition}"))?;
        let version = self
            .site
            .version_for(ApiKey::ListOffsets, (1, 7))
            .await
            .map_err(|e| e.to_string())?;
        let mut p = list_offsets_request::ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = timestamp;
        p.current_leader_epoch = -1;
        let mut t = list_offsets_request::ListOffsetsTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions.push(p);
        let mut req = ListOffsetsRequest::default();
        req.replica_id = kafka_protocol::messages::BrokerId(-1);
        req.topics.push(t);
        let pending = self
            .send(leader, ApiKey::ListOffsets, version, &req)
            .await
            .map_err(|e| e.to_string())?;
        let resp: ListOffsetsResponse = self
            .wait(pending, ApiKey::ListOffsets, version)
            .await
            .map_err(|e| e.to_string())?;
        let p = resp
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or("empty ListOffsets answer")?;
        if p.error_code != 0 {
            self.site.note_partition_error(p.error_code);
            return Err(format!("ListOffsets error {}", p.error_code));
        }
        Ok(p.offset)
    }

    /// The high watermark of a partition, from a Fetch answer: Tansu's
    /// ListOffsets(latest) answers the last batch's base offset + 1, which
    /// is not the end of the log.
    pub async fn high_watermark(&mut self, topic: &str, partition: i32) -> Result<i64, String> {
        let f = self.fetch(topic, &[(partition, 0)], 1, 1).await;
        match f.into_iter().next() {
            Some(f) if f.error == 0 => Ok(f.high_watermark),
            Some(f) => Err(format!(
                "Fetch error {} reading the end of {topic}/{partition}",
                f.error
            )),
            None => Err(format!("no Fetch answer for {topic}/{partition}")),
        }
    }

    /// Where a read-committed reader of the partition ends now: the last
    /// stable offset (records of open transactions are not readable yet),
    /// or the high watermark when the broker reports no LSO.
    pub async fn stable_end(&mut self, topic: &str, partition: i32) -> Result<i64, String> {
        let f = self.fetch(topic, &[(partition, 0)], 1, 1).await;
        match f.into_iter().next() {
            Some(f) if f.error == 0 => Ok(if f.last_stable_offset >= 0 {
                f.last_stable_offset.min(f.high_watermark)
            } else {
                f.high_watermark
            }),
            Some(f) => Err(format!(
                "Fetch error {} reading the end of {topic}/{partition}",
                f.error
            )),
            None => Err(format!("no Fetch answer for {topic}/{partition}")),
        }
    }

    /// Fetches `(partition, offset)` of one topic, read-committed, at most
    /// `max_bytes` of each partition and of the whole answer.
    pub async fn fetch(
        &mut self,
        topic: &str,
        at: &[(i32, i64)],
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Vec<Fetched> {
        self.fetch_within(topic, at, max_bytes, max_bytes, max_wait_ms)
            .await
    }

    /// [`Self::fetch`] with `partition_max_bytes` per partition and
    /// `max_bytes` for the whole answer (per broker asked).
    pub async fn fetch_within(
        &mut self,
        topic: &str,
        at: &[(i32, i64)],
        partition_max_bytes: i32,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Vec<Fetched> {
        let parts: Vec<i32> = at.iter().map(|(p, _)| *p).collect();
        let plan = self.by_leader(topic, &parts).await;
        let version = match self.site.version_for(ApiKey::Fetch, (4, 12)).await {
            Ok(v) => v,
            Err(_) => return network(&parts),
        };
        let mut pending = Vec::new();
        for (broker, ps) in plan {
            let mut t = fetch_request::FetchTopic::default();
            t.topic = TopicName(StrBytes::from_string(topic.to_string()));
            for p in &ps {
                let offset = at
                    .iter()
                    .find(|(q, _)| q == p)
                    .map(|(_, o)| *o)
                    .unwrap_or(0);
                let mut fp = fetch_request::FetchPartition::default();
                fp.partition = *p;
                fp.fetch_offset = offset;
                fp.partition_max_bytes = partition_max_bytes;
                fp.current_leader_epoch = -1;
                fp.last_fetched_epoch = -1;
                fp.log_start_offset = -1;
                t.partitions.push(fp);
            }
            let mut req = FetchRequest::default();
            req.replica_id = kafka_protocol::messages::BrokerId(-1);
            // Tansu answers a Fetch with max_wait_ms 0 with no partitions at
            // all; 1 ms behaves like Kafka's 0.
            req.max_wait_ms = max_wait_ms.max(1);
            req.min_bytes = 1;
            // One bound for the whole answer: a worker holds at most this much.
            req.max_bytes = max_bytes;
            req.isolation_level = 1;
            req.session_epoch = -1;
            req.topics.push(t);
            pending.push((ps, self.send(broker, ApiKey::Fetch, version, &req).await));
        }
        let mut out = Vec::new();
        for (ps, sent) in pending {
            let resp: Result<FetchResponse, _> = match sent {
                Ok(p) => self.wait(p, ApiKey::Fetch, version).await,
                Err(e) => Err(e),
            };
            match resp {
                Ok(r) => {
                    for t in r.responses {
                        for p in t.partitions {
                            self.site.note_partition_error(p.error_code);
                            out.push(Fetched {
                                partition: p.partition_index,
                                error: p.error_code,
                                high_watermark: p.high_watermark,
                                last_stable_offset: p.last_stable_offset,
                                records: p.records,
                                aborted: p
                                    .aborted_transactions
                                    .unwrap_or_default()
                                    .iter()
                                    .map(|a| (a.producer_id.0, a.first_offset))
                                    .collect(),
                            });
                        }
                    }
                }
                Err(_) => out.extend(network(&ps)),
            }
        }
        out
    }

    /// Writes one batch per partition (acks=all) and reports per partition.
    pub async fn produce(&mut self, topic: &str, batches: Vec<(i32, Bytes)>) -> Vec<Written> {
        let parts: Vec<i32> = batches.iter().map(|(p, _)| *p).collect();
        let plan = self.by_leader(topic, &parts).await;
        let version = match self.site.version_for(ApiKey::Produce, (3, 9)).await {
            Ok(v) => v,
            Err(e) => return failed(&parts, &e.to_string()),
        };
        let mut pending = Vec::new();
        for (broker, ps) in plan {
            let mut t = produce_request::TopicProduceData::default();
            t.name = TopicName(StrBytes::from_string(topic.to_string()));
            for (p, b) in batches.iter().filter(|(p, _)| ps.contains(p)) {
                let mut pd = produce_request::PartitionProduceData::default();
                pd.index = *p;
                pd.records = Some(b.clone());
                t.partition_data.push(pd);
            }
            let mut req = ProduceRequest::default();
            req.acks = -1;
            req.timeout_ms = self.timeout.as_millis().min(i32::MAX as u128) as i32;
            req.topic_data.push(t);
            pending.push((ps, self.send(broker, ApiKey::Produce, version, &req).await));
        }
        let mut out = Vec::new();
        for (ps, sent) in pending {
            let resp: Result<ProduceResponse, _> = match sent {
                Ok(p) => self.wait(p, ApiKey::Produce, version).await,
                Err(e) => Err(e),
            };
            match resp {
                Ok(r) => {
                    for t in r.responses {
                        for p in t.partition_responses {
                            self.site.note_partition_error(p.error_code);
                            out.push(Written {
                                partition: p.index,
                                error: p.error_code,
                                base_offset: p.base_offset,
                                message: p.error_message.map(|m| m.to_string()),
                            });
                        }
                    }
                }
                Err(e) => out.extend(failed(&ps, &e.to_string())),
            }
        }
        out
    }

    /// Creates a topic; returns Kafka's error code (0, or 36 when it exists).
    /// Calls `f` for every record of `topic`/`partition` in `from..to`
    /// (control batches skipped), reading with Fetch of `max_bytes`: how the
    /// tee re-reads its target and Switchyard reads back its state topics.
    pub async fn scan(
        &mut self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
        max_bytes: i32,
        mut f: impl FnMut(&crate::codec::batch::WireRecord),
    ) -> Result<(), String> {
        use crate::codec::batch;
        let mut at = from;
        while at < to {
            let fetched = self.fetch(topic, &[(partition, at)], max_bytes, 1).await;
            let Some(got) = fetched.into_iter().next() else {
                break;
            };
            if got.error != 0 {
                return Err(format!(
                    "reading {topic}/{partition} at {at}: error {}",
                    got.error
                ));
            }
            let Some(records) = got.records.filter(|r| !r.is_empty()) else {
                break;
            };
            let batches = batch::batches(&records).map_err(|e| e.to_string())?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                let next = b.last_offset + 1;
                if !b.is_control && next > at {
                    for r in batch::decode(&b).map_err(|e| e.to_string())? {
                        if r.offset >= at && r.offset < to {
                            f(&r);
                        }
                    }
                }
                at = at.max(next);
            }
        }
        Ok(())
    }

    /// Every record of Switchyard's single-partition state topic `name`
    /// from its log start to its end now (`f` in offset order; nothing when
    /// the topic does not exist).
    pub async fn read_state_topic(
        &mut self,
        name: &str,
        f: impl FnMut(&crate::codec::batch::WireRecord),
    ) -> Result<(), String> {
        if self.partitions(name).await.is_none() {
            return Ok(());
        }
        let end = self.high_watermark(name, 0).await?;
        let start = self.list_offset(name, 0, -2).await?.max(0);
        self.scan(name, 0, start, end, 4 << 20, f).await
    }

    /// Creates Switchyard's internal compacted, single-partition topic
    /// `name` if it does not exist, and waits until the site lists it.
    pub async fn ensure_compacted(&mut self, name: &str) -> Result<(), String> {
        if self.partitions(name).await.is_some() {
            return Ok(());
        }
        let code = self
            .create_topic(
                name,
                1,
                &[("cleanup.policy", "compact"), ("retention.ms", "-1")],
            )
            .await?;
        // 36 TOPIC_ALREADY_EXISTS: another instance won the race.
        if code != 0 && code != 36 {
            return Err(format!("creating {name} failed with error {code}"));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.partitions(name).await.is_none() {
            if std::time::Instant::now() > deadline {
                return Err(format!("{name} not visible after creation"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub async fn create_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<i16, String> {
        let broker = self.site.any_broker().await.map_err(|e| e.to_string())?;
        let version = self
            .site
            .version_for(ApiKey::CreateTopics, (2, 7))
            .await
            .map_err(|e| e.to_string())?;
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.num_partitions = partitions;
        t.replication_factor = -1;
        for (k, v) in configs {
            let mut c = create_topics_request::CreatableTopicConfig::default();
            c.name = StrBytes::from_string(k.to_string());
            c.value = Some(StrBytes::from_string(v.to_string()));
            t.configs.push(c);
        }
        let mut req = CreateTopicsRequest::default();
        req.timeout_ms = 30_000;
        req.topics.push(t);
        let pending = self
            .send(broker, ApiKey::CreateTopics, version, &req)
            .await
            .map_err(|e| e.to_string())?;
        let resp: CreateTopicsResponse = self
            .wait(pending, ApiKey::CreateTopics, version)
            .await
            .map_err(|e| e.to_string())?;
        self.site.mark_stale();
        Ok(resp.topics.first().map(|t| t.error_code).unwrap_or(0))
    }

    /// A fresh idempotent producer id and epoch on this site (the site's own
    /// allocation, which retries while a fresh Kafka broker has no block of
    /// producer ids yet).
    pub async fn init_producer_id(&mut self) -> Result<(i64, i16), String> {
        self.site
            .init_producer_id()
            .await
            .map_err(|e| e.to_string())
    }
}

/// A group's committed offset for one partition (physical topic name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub metadata: Option<String>,
}

impl SiteClient {
    async fn group_coordinator(&mut self, group: &str) -> Result<i32, String> {
        match self
            .site
            .coordinator(0, group)
            .await
            .map_err(|e| e.to_string())?
        {
            crate::upstream::Coordinator::Broker(b) => Ok(b),
            crate::upstream::Coordinator::Error(code, msg) => {
                self.site.forget_coordinator(0, group);
                Err(format!(
                    "no coordinator for group `{group}` (error {code}{})",
                    msg.map(|m| format!(": {m}")).unwrap_or_default()
                ))
            }
        }
    }

    /// Commits offsets for a group as a "simple" consumer (generation -1,
    /// no member id): what MirrorMaker 2's offset sync does, accepted while
    /// the group has no active members on this site. Per partition: the
    /// Kafka error code (0 = committed).
    pub async fn commit_offsets(
        &mut self,
        group: &str,
        offsets: &[GroupOffset],
    ) -> Result<Vec<(String, i32, i16)>, String> {
        use kafka_protocol::messages::{
            offset_commit_request, OffsetCommitRequest, OffsetCommitResponse,
        };
        let broker = self.group_coordinator(group).await?;
        let version = self
            .site
            .version_for(ApiKey::OffsetCommit, (2, 8))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = OffsetCommitRequest::default();
        req.group_id = kafka_protocol::messages::GroupId(StrBytes::from_string(group.to_string()));
        req.generation_id_or_member_epoch = -1;
        req.member_id = StrBytes::from_static_str("");
        req.retention_time_ms = -1;
        for o in offsets {
            let name = TopicName(StrBytes::from_string(o.topic.clone()));
            if req.topics.last().is_none_or(|t| t.name != name) {
                let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
                t.name = name;
                req.topics.push(t);
            }
            let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
            p.partition_index = o.partition;
            p.committed_offset = o.offset;
            p.committed_leader_epoch = -1;
            p.committed_metadata = o.metadata.clone().map(StrBytes::from_string);
            if let Some(t) = req.topics.last_mut() {
                t.partitions.push(p);
            }
        }
        let pending = self
            .send(broker, ApiKey::OffsetCommit, version, &req)
            .await
            .map_err(|e| e.to_string())?;
        let resp: OffsetCommitResponse = self
            .wait(pending, ApiKey::OffsetCommit, version)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code == NOT_COORDINATOR || p.error_code == COORDINATOR_NOT_AVAILABLE {
                    self.site.forget_coordinator(0, group);
                }
                out.push((t.name.0.to_string(), p.partition_index, p.error_code));
            }
        }
        Ok(out)
    }

    /// Removes members from a group (what `kafka-consumer-groups` does for
    /// consumers that are gone): their coordinator here may still count them,
    /// and while it does, offsets cannot be committed for the group.
    pub async fn remove_members(&mut self, group: &str, members: &[String]) -> Result<(), String> {
        use kafka_protocol::messages::{
            leave_group_request::MemberIdentity, LeaveGroupRequest, LeaveGroupResponse,
        };
        if members.is_empty() {
            return Ok(());
        }
        let broker = self.group_coordinator(group).await?;
        let version = self
            .site
            .version_for(ApiKey::LeaveGroup, (0, 5))
            .await
            .map_err(|e| e.to_string())?;
        let batches: Vec<Vec<String>> = if version >= 3 {
            vec![members.to_vec()]
        } else {
            members.iter().map(|m| vec![m.clone()]).collect()
        };
        for batch in batches {
            let mut req = LeaveGroupRequest::default();
            req.group_id =
                kafka_protocol::messages::GroupId(StrBytes::from_string(group.to_string()));
            if version >= 3 {
                req.members = batch
                    .iter()
                    .map(|m| {
                        let mut id = MemberIdentity::default();
                        id.member_id = StrBytes::from_string(m.clone());
                        id
                    })
                    .collect();
            } else if let Some(m) = batch.first() {
                req.member_id = StrBytes::from_string(m.clone());
            }
            let pending = self
                .send(broker, ApiKey::LeaveGroup, version, &req)
                .await
                .map_err(|e| e.to_string())?;
            let resp: LeaveGroupResponse = self
                .wait(pending, ApiKey::LeaveGroup, version)
                .await
                .map_err(|e| e.to_string())?;
            // UNKNOWN_MEMBER_ID: already gone, which is what we want.
            if resp.error_code != 0 && resp.error_code != 25 {
                return Err(format!("LeaveGroup error {}", resp.error_code));
            }
        }
        Ok(())
    }

    /// A group's committed offsets on this site, for the given physical
    /// topics (all of the group's topics when `topics` is None).
    pub async fn group_offsets(
        &mut self,
        group: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Result<Vec<GroupOffset>, String> {
        use kafka_protocol::messages::{
            offset_fetch_request, OffsetFetchRequest, OffsetFetchResponse,
        };
        let broker = self.group_coordinator(group).await?;
        let version = self
            .site
            .version_for(ApiKey::OffsetFetch, (1, 7))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = OffsetFetchRequest::default();
        req.group_id = kafka_protocol::messages::GroupId(StrBytes::from_string(group.to_string()));
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|(name, parts)| {
                    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
                    t.name = TopicName(StrBytes::from_string(name.clone()));
                    t.partition_indexes = parts.clone();
                    t
                })
                .collect()
        });
        let pending = self
            .send(broker, ApiKey::OffsetFetch, version, &req)
            .await
            .map_err(|e| e.to_string())?;
        let resp: OffsetFetchResponse = self
            .wait(pending, ApiKey::OffsetFetch, version)
            .await
            .map_err(|e| e.to_string())?;
        if resp.error_code != 0 {
            if resp.error_code == NOT_COORDINATOR || resp.error_code == COORDINATOR_NOT_AVAILABLE {
                self.site.forget_coordinator(0, group);
            }
            return Err(format!("OffsetFetch error {}", resp.error_code));
        }
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code == 0 && p.committed_offset >= 0 {
                    out.push(GroupOffset {
                        topic: t.name.0.to_string(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        metadata: p.metadata.map(|m| m.to_string()),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn network(parts: &[i32]) -> Vec<Fetched> {
    parts
        .iter()
        .map(|&p| Fetched {
            partition: p,
            error: NETWORK_EXCEPTION,
            high_watermark: -1,
            ..Fetched::default()
        })
        .collect()
}

fn failed(parts: &[i32], why: &str) -> Vec<Written> {
    parts
        .iter()
        .map(|&p| Written {
            partition: p,
            error: NETWORK_EXCEPTION,
            base_offset: -1,
            message: Some(why.to_string()),
        })
        .collect()
}
