//! The virtual cluster clients see.
//!
//! Clients must not notice which upstream cluster is active, so nothing they
//! see may come from an upstream: Switchyard presents itself as the brokers.
//!
//! * **Node ids and endpoints**: virtual nodes `0..n`, node `i` listening on the
//!   bootstrap port `+ 1 + i`. Every listener can serve every request (routing
//!   is per partition inside Switchyard), so which virtual node "leads" a
//!   partition only spreads client connections; it is a pure function of the
//!   topic name and partition and never changes, not even on failover.
//! * **Cluster id**: configured, stable.
//! * **Topic ids**: a name-based UUID (v5) under a namespace derived from the
//!   cluster id, so the id of `orders` is the same on every Switchyard instance
//!   and across failovers, while each upstream cluster has its own real ids.
//!   Requests carrying virtual ids are mapped to the active cluster's real ids.
//! * **Leader epochs**: neutralised to `-1` everywhere a client sees one
//!   (Metadata, ListOffsets, OffsetFetch, Produce/Fetch `CurrentLeader`) and
//!   sent upstream as `-1` (Fetch `CurrentLeaderEpoch`/`LastFetchedEpoch`,
//!   OffsetCommit `CommittedLeaderEpoch`). Epochs are per cluster: after a
//!   failover to a cluster with lower epochs, the Java client would ignore the
//!   new metadata as stale. With `-1` the clients skip epoch validation. The
//!   cost is KIP-320 truncation detection, which cannot work across clusters
//!   anyway. Record batch headers keep their upstream epoch (clients only use
//!   it to fill the committed epoch, which we neutralise on commit).
//! * **Coordinators**: FindCoordinator answers with a virtual node chosen by
//!   hashing the key; requests for the group go to the real coordinator.

use std::net::SocketAddr;

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualNode {
    pub node_id: i32,
    /// Where Switchyard listens for this node.
    pub bind: SocketAddr,
    /// What clients are told.
    pub host: String,
    pub port: i32,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub cluster_id: String,
    pub bootstrap_bind: SocketAddr,
    pub advertised_host: String,
    pub rack: Option<String>,
    pub nodes: Vec<VirtualNode>,
    /// SNI routing: every node is served on the bootstrap port, told
    /// apart by name only (nothing to bind per node).
    pub shared_port: bool,
    topic_ns: Uuid,
}

impl Identity {
    pub fn new(
        cluster_id: &str,
        bootstrap_bind: SocketAddr,
        advertised_host: &str,
        virtual_nodes: u16,
        rack: Option<String>,
    ) -> Self {
        let nodes = (0..virtual_nodes)
            .map(|i| {
                let port = bootstrap_bind.port() + 1 + i;
                VirtualNode {
                    node_id: i32::from(i),
                    bind: SocketAddr::new(bootstrap_bind.ip(), port),
                    host: advertised_host.to_string(),
                    port: i32::from(port),
                }
            })
            .collect();
        Identity {
            cluster_id: cluster_id.to_string(),
            bootstrap_bind,
            advertised_host: advertised_host.to_string(),
            rack,
            nodes,
            shared_port: false,
            topic_ns: Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("switchyard:{cluster_id}").as_bytes(),
            ),
        }
    }

    /// SNI routing (`tls.sni_domain`): node `i` is `broker-<i>.<domain>` on
    /// the bootstrap port. Which name a client connected to does not matter
    /// to routing (every connection can serve every request); the names
    /// only let one port and one certificate (`*.<domain>`) serve them all,
    /// as behind a TLS-passthrough load balancer or an ingress.
    pub fn with_sni(mut self, domain: &str) -> Self {
        let port = i32::from(self.bootstrap_bind.port());
        for n in &mut self.nodes {
            n.host = format!("broker-{}.{domain}", n.node_id);
            n.port = port;
            n.bind = self.bootstrap_bind;
        }
        self.shared_port = true;
        self
    }

    /// The virtual controller: always the first node, so it is stable.
    pub fn controller_id(&self) -> i32 {
        self.nodes[0].node_id
    }

    pub fn node(&self, id: i32) -> Option<&VirtualNode> {
        usize::try_from(id).ok().and_then(|i| self.nodes.get(i))
    }

    /// The virtual leader of a partition.
    pub fn leader_for(&self, topic: &str, partition: i32) -> &VirtualNode {
        let n = self.nodes.len() as u32;
        let idx = fnv1a(topic.as_bytes()).wrapping_add(partition as u32) % n;
        &self.nodes[idx as usize]
    }

    /// Virtual replica list: the leader first, then the following nodes, as
    /// many as the upstream has replicas (capped at the number of virtual nodes).
    pub fn replicas_for(&self, topic: &str, partition: i32, upstream_replicas: usize) -> Vec<i32> {
        let n = self.nodes.len();
        let first = self.leader_for(topic, partition).node_id as usize;
        (0..upstream_replicas.clamp(1, n))
            .map(|k| self.nodes[(first + k) % n].node_id)
            .collect()
    }

    /// The virtual node answering for a group or transactional id.
    pub fn coordinator_for(&self, key: &str) -> &VirtualNode {
        let idx = fnv1a(key.as_bytes()) % self.nodes.len() as u32;
        &self.nodes[idx as usize]
    }

    /// The stable virtual topic id for a topic name.
    pub fn topic_id(&self, name: &str) -> Uuid {
        Uuid::new_v5(&self.topic_ns, name.as_bytes())
    }
}

/// FNV-1a: a tiny hash that is stable across Rust releases and platforms
/// (std's `DefaultHasher` promises neither), so placements never move on upgrade.
fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(n: u16) -> Identity {
        Identity::new(
            "c1",
            "127.0.0.1:9092".parse().unwrap(),
            "proxy.example",
            n,
            None,
        )
    }

    #[test]
    fn sni_nodes_share_the_bootstrap_port_under_their_names() {
        let id = Identity::new(
            "c",
            "0.0.0.0:9092".parse().unwrap(),
            "kafka.example",
            3,
            None,
        )
        .with_sni("kafka.example");
        let nodes: Vec<(String, i32)> = id.nodes.iter().map(|n| (n.host.clone(), n.port)).collect();
        assert_eq!(
            nodes,
            [
                ("broker-0.kafka.example".to_string(), 9092),
                ("broker-1.kafka.example".to_string(), 9092),
                ("broker-2.kafka.example".to_string(), 9092)
            ]
        );
        assert!(id.shared_port);
    }

    #[test]
    fn nodes_use_consecutive_ports_after_bootstrap() {
        let id = ident(3);
        let ports: Vec<i32> = id.nodes.iter().map(|n| n.port).collect();
        assert_eq!(ports, vec![9093, 9094, 9095]);
        assert!(id.nodes.iter().all(|n| n.host == "proxy.example"));
    }

    #[test]
    fn placement_is_stable_and_spread() {
        let id = ident(3);
        let leaders: Vec<i32> = (0..6).map(|p| id.leader_for("orders", p).node_id).collect();
        assert_eq!(
            leaders,
            (0..6)
                .map(|p| ident(3).leader_for("orders", p).node_id)
                .collect::<Vec<_>>()
        );
        for n in 0..3 {
            assert!(leaders.contains(&n), "node {n} leads nothing: {leaders:?}");
        }
        assert_eq!(id.replicas_for("orders", 0, 5).len(), 3);
        assert_eq!(id.replicas_for("orders", 0, 1)[0], leaders[0]);
    }

    #[test]
    fn topic_ids_depend_on_cluster_and_name_only() {
        let a = ident(3);
        let b = Identity::new("c1", "10.0.0.1:1000".parse().unwrap(), "x", 1, None);
        let c = Identity::new("c2", "127.0.0.1:9092".parse().unwrap(), "x", 3, None);
        assert_eq!(a.topic_id("t"), b.topic_id("t"));
        assert_ne!(a.topic_id("t"), c.topic_id("t"));
        assert_ne!(a.topic_id("t"), a.topic_id("u"));
        assert!(!a.topic_id("t").is_nil());
    }
}
