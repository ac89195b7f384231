//! Produce (key 0): the pipeline's stages for a produce, in order, and how
//! answers from several brokers merge.
//!
//! authorize (topics the principal may not write leave the request) →
//! plugins (before the names: plugins see the client's names and may rename
//! or route) → names → producer ids → sync tee → plan/split/send → per
//! site: sync tee waits, client names → merge → plugin origins → virtual
//! leader hints.
//!
//! The common case, every partition of the request led by one upstream
//! broker and no stage touching it, forwards the client's frame byte for
//! byte: record batches are not decoded, copied or re-encoded. Only when
//! partitions live on several brokers is the request split (the batches are
//! still opaque `Bytes` slices of the client's frame) and the responses
//! merged. `acks=0` requests have no response, neither from the upstream
//! nor to the client, so nothing is queued for them.

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Ctx, Outcome};
use crate::authz::{Operation, Resource};
use crate::codec::errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
use crate::codec::RequestFrame;
use crate::identity::Identity;
use crate::pipeline::{
    authorize, identity, names, plugins, producer_ids, run, sync_tee, Api, At, Exchange, Unanswered,
};
use crate::route::Who;
use kafka_protocol::messages::ApiKey;

/// Produce in the pipeline.
pub struct Produce;

impl Api for Produce {
    const KEY: ApiKey = ApiKey::Produce;
    type Req = ProduceRequest;
    type Resp = ProduceResponse;
    const WRITES: bool = true;

    fn partition_errors(r: &ProduceResponse) -> Vec<i16> {
        r.responses
            .iter()
            .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
            .collect()
    }

    fn to_client(at: &At, _: &Identity, r: &mut ProduceResponse) -> bool {
        let mut changed = false;
        for t in &mut r.responses {
            let virt = at.names.virt(at.site, &t.name);
            changed |= virt != t.name;
            t.name = virt;
        }
        changed
    }

    fn merge(out: &mut ProduceResponse, part: ProduceResponse) {
        out.throttle_time_ms = out.throttle_time_ms.max(part.throttle_time_ms);
        for t in part.responses {
            match out.responses.iter_mut().find(|o| o.name == t.name) {
                Some(o) => o.partition_responses.extend(t.partition_responses),
                None => out.responses.push(t),
            }
        }
    }

    fn unanswered(out: &mut ProduceResponse, u: Unanswered, _: i16, _: &Identity) {
        let mut p = PartitionProduceResponse::default();
        p.index = u.partition;
        p.error_code = u.code;
        p.base_offset = -1;
        p.error_message = u.message.map(StrBytes::from_string);
        let mut t = TopicProduceResponse::default();
        t.name = u.topic;
        t.partition_responses.push(p);
        Self::merge(out, {
            let mut r = ProduceResponse::default();
            r.responses.push(t);
            r
        });
    }

    fn finish(identity: &Identity, out: &mut ProduceResponse) -> bool {
        identity::produce_answer(identity, out)
    }
}

pub async fn route(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let body: ProduceRequest = req.decode()?;
    let plane = ctx.plane.clone();
    let listener = ctx.listener;
    let client_id = super::client_id(&req);
    let who = Who {
        listener: &listener.name,
        client_id: &client_id,
    };
    let mut x = Exchange::<Produce>::new(&plane, req, body);
    x.no_response = x.body.acks == 0;
    // Copied only when rules are configured (the check needs it while it
    // rewrites the body); every produce passes here.
    let txn = plane
        .authz
        .enabled()
        .then(|| x.body.transactional_id.as_ref().map(|t| t.0.to_string()))
        .flatten();
    authorize::topics(
        &mut x,
        &plane.authz,
        ctx.pools.principal(),
        Operation::Write,
        txn.as_deref().map(|t| {
            (
                Resource::TransactionalId,
                t,
                Operation::Write,
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            )
        }),
        Vec::new(),
    )?;
    let hook = plugins::produce(&mut x, plane.plugins.as_ref(), &plane.router, who).await;
    names::resolve(&mut x, &plane.router, who, &[]);
    producer_ids::map(&mut x, &plane.producer_ids, &plane.sites, hook.as_deref()).await?;
    sync_tee::register(&mut x, &plane.tee, &plane.router);
    run::dispatch(ctx, x, ctx.identity()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::{exchange, plane, produce, WHO};

    /// The zero-copy path is "no stage touches the request": a plain
    /// produce on a route without plugins, renames or a sync tee.
    #[tokio::test]
    async fn a_plain_produce_is_touched_by_no_stage() {
        let plane =
            plane("  - name: main\n    topics: {regex: '.*'}\n    site: a\n    tee: [{site: b}]\n");
        let mut x = Exchange::<Produce>::new(
            &plane,
            exchange::<Produce>(produce("orders", 2, false, -1)).req,
            produce("orders", 2, false, -1),
        );
        let hook = plugins::produce(&mut x, plane.plugins.as_ref(), &plane.router, WHO).await;
        names::resolve(&mut x, &plane.router, WHO, &[]);
        producer_ids::map(&mut x, &plane.producer_ids, &plane.sites, hook.as_deref())
            .await
            .unwrap();
        sync_tee::register(&mut x, &plane.tee, &plane.router);
        assert!(x.touched().is_empty(), "touched by {:?}", x.touched());
        assert!(
            x.answer_stages().is_empty(),
            "answers seen by {:?}",
            x.answer_stages()
        );

        // The same produce on a sync-teed, renamed route.
        let plane = plane_sync();
        let mut x = Exchange::<Produce>::new(
            &plane,
            exchange::<Produce>(produce("orders", 2, false, -1)).req,
            produce("orders", 2, false, -1),
        );
        names::resolve(&mut x, &plane.router, WHO, &[]);
        sync_tee::register(&mut x, &plane.tee, &plane.router);
        assert_eq!(x.touched(), ["names"]);
        assert_eq!(x.answer_stages(), ["sync_tee"]);
    }

    fn plane_sync() -> std::sync::Arc<crate::shared::DataPlane> {
        plane("  - name: main\n    topics: {regex: 'orders'}\n    site: a\n    naming: suffix\n    tee: [{site: b, mode: sync}]\n")
    }

    #[test]
    fn answers_merge_per_topic_and_unanswered_partitions_join_them() {
        let id = Identity::new("virt", "127.0.0.1:9092".parse().unwrap(), "proxy", 3, None);
        let part = |index, offset| {
            let mut p = PartitionProduceResponse::default();
            p.index = index;
            p.base_offset = offset;
            let mut t = TopicProduceResponse::default();
            t.name = kafka_protocol::messages::TopicName(StrBytes::from_static_str("orders"));
            t.partition_responses.push(p);
            let mut r = ProduceResponse::default();
            r.throttle_time_ms = index;
            r.responses.push(t);
            r
        };
        let mut out = ProduceResponse::default();
        Produce::merge(&mut out, part(0, 10));
        Produce::merge(&mut out, part(1, 20));
        Produce::unanswered(
            &mut out,
            Unanswered {
                topic: kafka_protocol::messages::TopicName(StrBytes::from_static_str("orders")),
                topic_id: None,
                partition: 2,
                code: crate::codec::errors::NOT_LEADER_OR_FOLLOWER,
                message: None,
            },
            9,
            &id,
        );
        assert_eq!(out.responses.len(), 1);
        let offsets: Vec<(i32, i64, i16)> = out.responses[0]
            .partition_responses
            .iter()
            .map(|p| (p.index, p.base_offset, p.error_code))
            .collect();
        assert_eq!(
            offsets,
            [
                (0, 10, 0),
                (1, 20, 0),
                (2, -1, crate::codec::errors::NOT_LEADER_OR_FOLLOWER)
            ]
        );
        assert_eq!(out.throttle_time_ms, 1, "the longest throttle");
    }
}
