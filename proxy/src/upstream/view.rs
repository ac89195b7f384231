//! What Switchyard knows of one upstream cluster's layout: brokers, topics,
//! partition leaders and real topic ids. Immutable once built; a refresh builds
//! a new view and swaps it in, so readers on the hot path never lock.

use std::collections::HashMap;
use std::time::Instant;

use kafka_protocol::messages::MetadataResponse;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerAddr {
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TopicView {
    pub id: Uuid,
    /// Upstream leader per partition index; `-1` while leaderless.
    pub leaders: Vec<i32>,
    /// The leaders' epochs (`-1`: not known, Metadata before v7).
    pub epochs: Vec<i32>,
    /// Replica count per partition, to size the virtual replica lists.
    pub replicas: Vec<usize>,
    pub is_internal: bool,
}

impl TopicView {
    /// The epoch of a partition's leader; `-1` when not known.
    pub fn leader_epoch(&self, partition: i32) -> i32 {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.epochs.get(i).copied())
            .unwrap_or(-1)
    }
}

#[derive(Debug, Clone)]
pub struct ClusterView {
    pub brokers: HashMap<i32, BrokerAddr>,
    pub controller_id: i32,
    pub cluster_id: Option<String>,
    pub topics: HashMap<String, TopicView>,
    /// Real upstream topic id → name.
    pub names_by_id: HashMap<Uuid, String>,
    pub built_at: Instant,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            brokers: HashMap::new(),
            controller_id: -1,
            cluster_id: None,
            topics: HashMap::new(),
            names_by_id: HashMap::new(),
            built_at: Instant::now(),
        }
    }
}

impl ClusterView {
    /// Builds a view from a full (all topics) Metadata response.
    pub fn from_metadata(md: &MetadataResponse) -> Self {
        let mut v = ClusterView::default();
        v.apply(md, true);
        v
    }

    /// Returns a copy updated with the topics and brokers of a (possibly
    /// partial) Metadata response, as seen when forwarding a client's request.
    pub fn merged(&self, md: &MetadataResponse) -> Self {
        let mut v = self.clone();
        v.apply(md, false);
        v
    }

    fn apply(&mut self, md: &MetadataResponse, full: bool) {
        if !md.brokers.is_empty() || full {
            self.brokers = md
                .brokers
                .iter()
                .map(|b| {
                    (
                        b.node_id.0,
                        BrokerAddr {
                            node_id: b.node_id.0,
                            host: b.host.to_string(),
                            port: b.port,
                            rack: b.rack.as_ref().map(|r| r.to_string()),
                        },
                    )
                })
                .collect();
        }
        self.controller_id = md.controller_id.0;
        if let Some(c) = &md.cluster_id {
            self.cluster_id = Some(c.to_string());
        }
        // A full refresh replaces every topic, but the epochs it had still
        // judge the answer's leaders.
        let before = if full {
            std::mem::take(&mut self.topics)
        } else {
            HashMap::new()
        };
        for t in &md.topics {
            let Some(name) = &t.name else { continue };
            let name = name.0.to_string();
            // 3 = UNKNOWN_TOPIC_OR_PARTITION: the topic is gone.
            if t.error_code == crate::codec::errors::UNKNOWN_TOPIC_OR_PARTITION {
                if let Some(old) = self.topics.remove(&name) {
                    self.names_by_id.remove(&old.id);
                }
                continue;
            }
            if t.error_code != 0 {
                continue;
            }
            let n = t
                .partitions
                .iter()
                .map(|p| p.partition_index.max(0) as usize + 1)
                .max()
                .unwrap_or(0);
            let mut view = TopicView {
                id: t.topic_id,
                leaders: vec![-1; n],
                epochs: vec![-1; n],
                replicas: vec![1; n],
                is_internal: t.is_internal,
            };
            // The same topic (same id) as known: its leader epochs.
            let known = before
                .get(&name)
                .or_else(|| self.topics.get(&name))
                .filter(|k| k.id == t.topic_id);
            for p in &t.partitions {
                let i = p.partition_index.max(0) as usize;
                let (mut leader, mut epoch) = (p.leader_id.0, p.leader_epoch);
                // Never back to an older leader epoch (KIP-320, as Kafka's
                // clients do): a broker just back from a freeze still names
                // itself leader until it hears from the controller, and
                // routing to it would read its stale log (a consumer past
                // its end gets OFFSET_OUT_OF_RANGE and resets to earliest).
                if let Some(k) = known {
                    if let (Some(&ke), Some(&kl)) = (k.epochs.get(i), k.leaders.get(i)) {
                        if epoch >= 0 && ke > epoch {
                            (leader, epoch) = (kl, ke);
                        }
                    }
                }
                view.leaders[i] = leader;
                view.epochs[i] = epoch;
                view.replicas[i] = p.replica_nodes.len().max(1);
            }
            if !t.topic_id.is_nil() {
                self.names_by_id.insert(t.topic_id, name.clone());
            }
            self.topics.insert(name, view);
        }
        self.built_at = Instant::now();
    }

    /// The upstream leader of a partition, if known and present.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let t = self.topics.get(topic)?;
        let l = *t.leaders.get(usize::try_from(partition).ok()?)?;
        (l >= 0 && self.brokers.contains_key(&l)).then_some(l)
    }

    /// The epoch of a partition's leader as this view knows it;
    /// `-1` when not known (the broker then does not check it).
    pub fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.topics
            .get(topic)
            .map_or(-1, |t| t.leader_epoch(partition))
    }

    /// Any broker, preferring the controller (admin requests) then the lowest id.
    pub fn any_broker(&self) -> Option<i32> {
        if self.brokers.contains_key(&self.controller_id) {
            return Some(self.controller_id);
        }
        self.brokers.keys().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn md(topic: &str, leaders: &[i32], err: i16) -> MetadataResponse {
        let mut m = MetadataResponse::default();
        let mut b = MetadataResponseBroker::default();
        b.node_id = BrokerId(1);
        b.host = StrBytes::from_static_str("h");
        b.port = 1;
        m.brokers.push(b);
        m.controller_id = BrokerId(1);
        let mut t = MetadataResponseTopic::default();
        t.name = Some(TopicName(StrBytes::from_string(topic.into())));
        t.error_code = err;
        t.topic_id = Uuid::from_u128(7);
        for (i, l) in leaders.iter().enumerate() {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i as i32;
            p.leader_id = BrokerId(*l);
            t.partitions.push(p);
        }
        m.topics.push(t);
        m
    }

    #[test]
    fn leaders_and_merge() {
        let v = ClusterView::from_metadata(&md("a", &[1, 1], 0));
        assert_eq!(v.leader("a", 1), Some(1));
        assert_eq!(v.leader("a", 2), None);
        assert_eq!(v.leader("b", 0), None);
        let v2 = v.merged(&md("b", &[1], 0));
        assert_eq!(v2.leader("a", 0), Some(1));
        assert_eq!(v2.leader("b", 0), Some(1));
        let v3 = v2.merged(&md("a", &[], 3));
        assert_eq!(v3.leader("a", 0), None);
        // Leader on a broker we do not know is not routable.
        let v4 = v.merged(&md("c", &[9], 0));
        assert_eq!(v4.leader("c", 0), None);
    }

    fn with_epochs(mut m: MetadataResponse, leaders: &[(i32, i32)]) -> MetadataResponse {
        for id in [1, 2] {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(id);
            b.host = StrBytes::from_static_str("h");
            b.port = id;
            m.brokers.push(b);
        }
        m.brokers.dedup_by_key(|b| b.node_id);
        for (p, (leader, epoch)) in m.topics[0].partitions.iter_mut().zip(leaders) {
            p.leader_id = BrokerId(*leader);
            p.leader_epoch = *epoch;
        }
        m
    }

    #[test]
    fn a_stale_answer_never_moves_a_leader_back_to_an_older_epoch() {
        let now = with_epochs(md("a", &[0, 0], 0), &[(2, 5), (2, 5)]);
        let v = ClusterView::from_metadata(&now);
        // A broker back from a freeze: it still leads partition 0 at epoch 4.
        let stale = with_epochs(md("a", &[0, 0], 0), &[(1, 4), (2, 5)]);
        assert_eq!(v.merged(&stale).leader("a", 0), Some(2), "partial update");
        let full = {
            let mut v = v.clone();
            v.apply(&stale, true);
            v
        };
        assert_eq!(full.leader("a", 0), Some(2), "full refresh");
        // A newer epoch moves it.
        let moved = with_epochs(md("a", &[0, 0], 0), &[(1, 6), (2, 5)]);
        assert_eq!(v.merged(&moved).leader("a", 0), Some(1));
        // Metadata without epochs (before v7) is taken as it is.
        let old = with_epochs(md("a", &[0, 0], 0), &[(1, -1), (2, -1)]);
        assert_eq!(v.merged(&old).leader("a", 0), Some(1));
        // A topic deleted and created again (new id) starts over.
        let mut again = with_epochs(md("a", &[0, 0], 0), &[(1, 0), (1, 0)]);
        again.topics[0].topic_id = Uuid::from_u128(8);
        assert_eq!(v.merged(&again).leader("a", 0), Some(1));
    }
}
