//! The sync-tee stage (Produce): partitions of routes with `sync` tee
//! targets are acked only once the tee has written their records to every
//! sync target (`tee`). A site stage: it waits on each site's answer before
//! the answer goes on. An `acks=0` produce has no ack to hold, so its
//! records are teed like async ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Api, At, Exchange, SiteStage, Wait};
use crate::codec::batch;
use crate::codec::errors::DUPLICATE_SEQUENCE_NUMBER;
use crate::route::Router;
use crate::tee::Tee;

/// A partition whose ack must also wait for its route's sync tee targets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SyncWait {
    route: usize,
    /// Physical topic on the source site.
    topic: String,
    partition: i32,
    /// `lastOffsetDelta` of the partition's batch: the ack covers
    /// `base_offset ..= base_offset + last_delta`.
    last_delta: i64,
}

/// The waits of one request.
pub struct SyncTee {
    tee: Arc<Tee>,
    waits: Vec<SyncWait>,
    /// The client gives up after its own timeout; so do the waits.
    deadline: Instant,
}

/// Registers the stage when a partition of the request is on a route with
/// sync tee targets (after the names stage: physical names, routes known).
pub fn register<A: Api<Req = ProduceRequest, Resp = ProduceResponse>>(
    x: &mut Exchange<A>,
    tee: &Arc<Tee>,
    router: &Router,
) {
    if x.no_response {
        return;
    }
    let waits = waits(x, router);
    if waits.is_empty() {
        return;
    }
    let client_timeout = Duration::from_millis(x.body.timeout_ms.max(0) as u64);
    let deadline = Instant::now() + tee.sync_timeout().min(client_timeout);
    x.on_site_answer(Arc::new(SyncTee {
        tee: tee.clone(),
        waits,
        deadline,
    }));
}

/// The partitions of the request (physical names) on routes with sync tee
/// targets.
fn waits<A: Api<Req = ProduceRequest>>(x: &Exchange<A>, router: &Router) -> Vec<SyncWait> {
    let mut out = Vec::new();
    for (t, site) in x.body.topic_data.iter().zip(&x.site_of) {
        let Some(route) = site
            .and_then(|s| x.names.entry(s, t.name.0.as_str()))
            .and_then(|e| e.route)
        else {
            continue;
        };
        if !router.routes().get(route).is_some_and(|r| r.has_sync_tee()) {
            continue;
        }
        for p in &t.partition_data {
            let first = p
                .records
                .as_ref()
                .and_then(|r| batch::producer_fields(r).into_iter().next());
            // Transactional records become visible to the tee (which reads
            // committed data only) when the transaction commits, long after
            // this ack: waiting would deadlock the transaction. They are
            // copied once committed, like an async tee's.
            if first.is_some_and(|b| b.transactional) {
                continue;
            }
            // A batch too short to have a header is the broker's to reject.
            let last_delta = first.map_or(0, |b| i64::from(b.last_offset_delta));
            out.push(SyncWait {
                route,
                topic: t.name.0.to_string(),
                partition: p.index,
                last_delta,
            });
        }
    }
    out
}

impl SiteStage<ProduceResponse> for SyncTee {
    fn name(&self) -> &'static str {
        "sync_tee"
    }

    fn wait<'a>(&'a self, at: &'a At, r: &'a mut ProduceResponse) -> Option<Wait<'a>> {
        Some(Box::pin(async move {
            for t in &mut r.responses {
                for p in &mut t.partition_responses {
                    self.hold(at, t.name.0.as_str(), p).await;
                }
            }
        }))
    }
}

impl SyncTee {
    /// Holds one partition's ack until every sync target has its records;
    /// a target that fails or times out turns the answer into that error
    /// (the records are on the source: an idempotent client's retry is
    /// deduplicated there and waits for the tee again).
    async fn hold(&self, at: &At, topic: &str, p: &mut PartitionProduceResponse) {
        // DUPLICATE_SEQUENCE_NUMBER: an idempotent retry of a batch the
        // source already has; the client counts it as success, so it must
        // wait too.
        if p.error_code != 0 && p.error_code != DUPLICATE_SEQUENCE_NUMBER {
            return;
        }
        let Some(w) = self
            .waits
            .iter()
            .find(|w| w.topic == topic && w.partition == p.index)
        else {
            return;
        };
        let Some(site) = at.sites.get(at.site) else {
            return;
        };
        // base_offset -1: offsets unknown (see `Tee::wait_synced`).
        if p.error_code == DUPLICATE_SEQUENCE_NUMBER {
            p.base_offset = -1;
        }
        let through = if p.base_offset < 0 {
            -1
        } else {
            p.base_offset + w.last_delta
        };
        let waited = self
            .tee
            .wait_synced(
                w.route,
                site,
                &w.topic,
                w.partition,
                (p.base_offset, through),
                self.deadline,
            )
            .await;
        tracing::debug!(
            topic,
            partition = p.index,
            base = p.base_offset,
            through,
            ?waited,
            "sync tee ack"
        );
        if let Err((code, msg)) = waited {
            p.error_code = code;
            p.error_message = Some(StrBytes::from_string(msg));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::produce::Produce;
    use crate::pipeline::names;
    use crate::pipeline::testing::{exchange, plane, produce, WHO};

    const SYNC: &str = "  - name: main
    topics: {regex: 'orders'}
    site: a
    tee: [{site: b, mode: sync}]
  - name: lazy
    topics: {regex: 'clicks'}
    site: a
    tee: [{site: b, mode: async}]
";

    fn waits_for(topic: &str, transactional: bool, acks: i16) -> Vec<SyncWait> {
        let plane = plane(SYNC);
        let mut x = exchange::<Produce>(produce(topic, 2, transactional, acks));
        x.no_response = acks == 0;
        names::resolve(&mut x, &plane.router, WHO, &[]);
        register(&mut x, &plane.tee, &plane.router);
        assert!(
            x.touched().is_empty(),
            "the sync tee never rewrites a request"
        );
        let stages = x.answer_stages();
        let w = waits(&x, &plane.router);
        assert_eq!(stages.is_empty(), w.is_empty() || acks == 0);
        if acks == 0 {
            Vec::new()
        } else {
            w
        }
    }

    #[test]
    fn sync_routes_wait_for_each_partition_through_its_last_offset() {
        let w = waits_for("orders", false, -1);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (
                w[0].route,
                w[0].topic.as_str(),
                w[0].partition,
                w[0].last_delta
            ),
            (0, "orders", 0, 2)
        );
        assert_eq!(w[1].partition, 1);
    }

    #[test]
    fn async_routes_transactions_and_acks_0_do_not_wait() {
        assert!(waits_for("clicks", false, -1).is_empty(), "async tee");
        assert!(
            waits_for("orders", true, -1).is_empty(),
            "visible to the tee only once committed"
        );
        assert!(waits_for("orders", false, 0).is_empty(), "no ack to hold");
    }
}
