//! The pipeline's middle and end: plan, split and send a partitioned
//! request, then take each site's answer through the site stages to the
//! client's names, merge, and run the client stages (see the module map in
//! `pipeline`).

use std::sync::Arc;

use super::split::Partitioned;
use super::{split, unavailable, Api, At, Ctx, Exchange, Outcome, Reply, SiteStage, Unanswered};
use crate::codec::{self, errors};
use crate::identity::Identity;
use crate::upstream::{PendingResponse, Target, UpstreamError, WriteGuard};

/// Sends `x` after its request stages, and answers it.
///
/// * Nothing touched the request and it all goes to one broker: the
///   client's frame goes as it came.
/// * One broker answers all and no stage looks at its answer: the answer
///   goes through [`Api::single`] (forwarded, or patched in place).
/// * Otherwise each part's answer is decoded and runs the site stages, the
///   client's names, the merge, the client stages and [`Api::finish`].
///
/// A broker that cannot be reached, or fails before it answers, does not
/// fail the request: its partitions are answered NOT_LEADER_OR_FOLLOWER
/// (retriable: the client refreshes metadata and retries them). All parts
/// share one deadline, `x.timeout` from now.
pub async fn dispatch<A: Api>(
    ctx: &mut Ctx<'_>,
    mut x: Exchange<A>,
    identity: Arc<Identity>,
) -> crate::pipeline::Result<Outcome> {
    let (mut plan, missing) = split::plan(&ctx.plane.sites, &x.body, &x.site_of, &x.names).await;
    for (site, name, partition, code) in missing {
        for stage in &x.plan_stages {
            stage.unsent(site, &name, partition);
        }
        x.answer(site, &name, partition, code);
    }
    admit(&mut x, &mut plan, &ctx.plane.metrics);
    let (api, version, corr) = (x.req.api_key, x.req.api_version, x.req.correlation_id);
    let untouched = x.touched.is_empty();
    let one = plan.len() == 1 && x.unanswered.is_empty();

    if x.no_response {
        let parts: Vec<(Target, bytes::Bytes)> = if untouched && one {
            plan.keys().map(|t| (*t, x.req.frame.clone())).collect()
        } else {
            encode_parts(&x, &plan)?
                .into_iter()
                .map(|(t, f, _)| (t, f))
                .collect()
        };
        for (target, frame) in parts {
            // A failed broker loses it, as it would for a client connected
            // directly (nothing is answered either way).
            if let Err(e) = ctx.pools.send(target, api, frame, false).await {
                tracing::debug!(api = codec::api_name(api), error = %e, "a request without answer to a failed broker dropped");
            }
        }
        return Ok(Outcome::NoResponse);
    }

    // The client's frame as it came: its partitions are listed only if its
    // broker fails (`None`: all of the request's).
    let parts = if untouched && one {
        plan.keys()
            .map(|t| (*t, x.req.frame.clone(), None))
            .collect()
    } else {
        encode_parts(&x, &plan)?
    };
    let deadline = tokio::time::Instant::now() + x.timeout;
    let metrics = ctx.plane.metrics.clone();
    let names = Arc::new(std::mem::take(&mut x.names));
    let sites = ctx.plane.sites.clone();
    let at = |site: usize| At {
        api,
        version,
        site,
        view: x.views.get(site).cloned().unwrap_or_default(),
        names: names.clone(),
        sites: sites.clone(),
    };
    let mut failed: Vec<Unanswered> = Vec::new();
    let fail = move |failed: &mut Vec<Unanswered>,
                     at: &At,
                     slots: Option<split::Slots>,
                     body: &A::Req,
                     e: &UpstreamError| {
        let slots = slots.unwrap_or_else(|| split::partitions_of(body));
        tracing::debug!(api = codec::api_name(api), error = %e, partitions = slots.len(),
            "partitions of a failed broker answered NOT_LEADER_OR_FOLLOWER");
        unavailable::count(&metrics, api, errors::NOT_LEADER_OR_FOLLOWER);
        failed.extend(slots.into_iter().map(|(t, p)| Unanswered {
            topic: at.names.virt(at.site, &t),
            topic_id: None,
            partition: p,
            code: errors::NOT_LEADER_OR_FOLLOWER,
            message: None,
        }));
    };
    let mut pending: Vec<(
        At,
        PendingResponse,
        Option<split::Slots>,
        Option<WriteGuard>,
    )> = Vec::with_capacity(parts.len());
    for (target, frame, slots) in parts {
        let here = at(target.0);
        // Counted from before it is sent until answered: a failover drains
        // these first.
        let write = A::WRITES.then(|| ctx.site(target.0).write_started());
        match ctx.pools.call(target, api, frame).await {
            Ok(p) => pending.push((here, p, slots, write)),
            Err(e) => fail(&mut failed, &here, slots, &x.body, &e),
        }
    }

    // One broker answers it all and no stage looks at the client's answer:
    // that broker's answer goes through `Api::single`, unless a site stage
    // finds, when it arrives, that it must look at it.
    let only = pending.len() == 1
        && failed.is_empty()
        && x.unanswered.is_empty()
        && x.client_stages.is_empty();
    let Exchange {
        body,
        unanswered,
        offload,
        site_stages,
        client_stages,
        ..
    } = x;
    Ok(Outcome::Later(Box::pin(async move {
        let mut out = A::Resp::default();
        for (here, p, slots, write) in pending {
            let answer = p.wait_until(deadline).await;
            drop(write);
            let frame = match answer {
                Ok(f) => f,
                Err(e) => {
                    fail(&mut failed, &here, slots, &body, &e);
                    continue;
                }
            };
            if only && !site_stages.iter().any(|s| s.looks(&here)) {
                return A::single(&here, &identity, corr, frame);
            }
            let mut r: A::Resp = codec::decode_response_body(api, version, &frame)?;
            // Upstream answers only: our own answers must not count, or a
            // client hammering a missing topic defeats the refresh limit.
            for code in A::partition_errors(&r) {
                here.note(code);
            }
            for stage in &site_stages {
                r = run_site_stage(stage, &here, r, offload.as_ref()).await?;
            }
            A::to_client(&here, &identity, &mut r);
            A::merge(&mut out, r);
        }
        for u in unanswered.into_iter().chain(failed) {
            A::unanswered(&mut out, u, version, &identity);
        }
        for stage in &client_stages {
            stage.rewrite(&mut out);
        }
        A::finish(&identity, &mut out);
        Ok(Reply::Frame(codec::encode_response(
            api, version, corr, &out,
        )?))
    })))
}

/// The plan stages' say on each planned partition: the ones they refuse
/// are answered with their code and leave the plan.
fn admit<A: Api>(x: &mut Exchange<A>, plan: &mut split::Plan, metrics: &crate::metrics::Metrics) {
    if x.plan_stages.is_empty() {
        return;
    }
    let mut refused = Vec::new();
    for (target, slots) in plan.iter_mut() {
        slots.retain(|&(ti, pi)| {
            let t = &x.body.topics()[ti];
            let name = A::Req::topic_name(t);
            let partition = A::Req::partition_index(&A::Req::partitions(t)[pi]);
            match x
                .plan_stages
                .iter()
                .find_map(|s| s.admit(*target, name, partition))
            {
                None => true,
                Some(code) => {
                    refused.push((target.0, name.clone(), partition, code));
                    false
                }
            }
        });
    }
    plan.retain(|_, slots| !slots.is_empty());
    for (site, name, partition, code) in refused {
        unavailable::count(metrics, A::KEY, code);
        x.answer(site, &name, partition, code);
    }
}

/// One site stage on one site's answer: its wait, then its rewrite, on the
/// blocking pool if it says so.
async fn run_site_stage<R: Send + 'static>(
    stage: &Arc<dyn SiteStage<R>>,
    at: &At,
    mut r: R,
    offload: Option<&Arc<crate::plugin::registry::Registry>>,
) -> anyhow::Result<R> {
    if let Some(w) = stage.wait(at, &mut r) {
        w.await;
    }
    match offload.filter(|_| stage.blocking()) {
        Some(reg) => {
            let (stage, at) = (stage.clone(), at.clone());
            reg.offload(move || {
                stage.rewrite(&at, &mut r);
                r
            })
            .await
            .map_err(anyhow::Error::msg)
        }
        None => {
            stage.rewrite(at, &mut r);
            Ok(r)
        }
    }
}

/// The request re-encoded per (site, broker), with the partitions each part
/// answers for if its broker fails.
fn encode_parts<A: Api>(
    x: &Exchange<A>,
    plan: &split::Plan,
) -> anyhow::Result<Vec<(Target, bytes::Bytes, Option<split::Slots>)>> {
    let mut out = Vec::with_capacity(plan.len());
    for (target, sub) in split::split(&x.body, plan) {
        let frame = codec::encode_request(
            x.req.api_key,
            x.req.api_version,
            x.req.client_id.clone(),
            &sub,
        )?;
        out.push((target, frame, Some(split::partitions_of(&sub))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

    use super::*;
    use crate::api::produce::Produce;
    use crate::pipeline::names;
    use crate::pipeline::testing::{batch, exchange, newest, produce, proxy, WHO};
    use crate::upstream::view::TopicView;
    use crate::upstream::{BrokerAddr, ClusterView, Pools};
    use kafka_protocol::messages::ApiKey;

    /// A port nothing listens on: connecting is refused at once.
    fn refusing_port() -> i32 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port() as i32
    }

    /// Site `a` with "orders" partitions led by `leaders`, every broker at
    /// a refusing port.
    fn view(leaders: &[i32]) -> ClusterView {
        let mut v = ClusterView::default();
        let mut brokers = HashMap::new();
        for &b in leaders {
            brokers.insert(
                b,
                BrokerAddr {
                    node_id: b,
                    host: "127.0.0.1".into(),
                    port: refusing_port(),
                    rack: None,
                },
            );
        }
        v.brokers = brokers;
        v.topics.insert(
            "orders".into(),
            TopicView {
                leaders: leaders.to_vec(),
                epochs: vec![3; leaders.len()],
                replicas: vec![1; leaders.len()],
                ..Default::default()
            },
        );
        v
    }

    /// What a client gets for a 2-partition produce when site `a`'s
    /// brokers refuse connections.
    async fn produce_to_refusing(leaders: &[i32]) -> Vec<(i32, i16)> {
        let p = proxy("  []");
        p.plane.site(0).set_view(view(leaders));
        let mut pools = Pools::new(&p.plane.sites);
        let mut ctx = Ctx {
            plane: &p.plane,
            pools: &mut pools,
            listener: &p.listeners[0],
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        let mut x = exchange::<Produce>(produce("orders", 2, false, 1));
        names::resolve(&mut x, &p.plane.router, WHO, &[]);
        let identity = ctx.identity();
        let Ok(Outcome::Later(answer)) = dispatch(&mut ctx, x, identity).await else {
            panic!("a refused broker fails no request");
        };
        let Ok(Reply::Frame(frame)) = answer.await else {
            panic!("answered for the broker");
        };
        let version = newest(ApiKey::Produce);
        let r: ProduceResponse =
            codec::decode_response_body(ApiKey::Produce, version, &frame).unwrap();
        let mut out: Vec<(i32, i16)> = r
            .responses
            .iter()
            .flat_map(|t| {
                t.partition_responses
                    .iter()
                    .map(|p| (p.index, p.error_code))
            })
            .collect();
        out.sort();
        out
    }

    /// A one-record idempotent produce of "orders" partition 0: client
    /// producer 5, epoch 0, sequence `seq`.
    fn idempotent(seq: i32) -> ProduceRequest {
        let mut r = produce("orders", 1, false, -1);
        r.topic_data[0].partition_data[0].records = Some(batch(1, 5, seq, false));
        r
    }

    /// Routes one idempotent produce through every stage to the answer
    /// code of partition 0.
    async fn route_idempotent(p: &crate::shared::Proxy, pools: &mut Pools, seq: i32) -> i16 {
        let mut ctx = Ctx {
            plane: &p.plane,
            pools,
            listener: &p.listeners[0],
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        let mut x = exchange::<Produce>(idempotent(seq));
        // A silent broker is given up after this: answered NOT_LEADER_OR_FOLLOWER.
        x.timeout = std::time::Duration::from_millis(200);
        names::resolve(&mut x, &p.plane.router, WHO, &[]);
        crate::pipeline::producer_ids::map(&mut x, &p.plane.producer_ids, &p.plane.sites, None)
            .await
            .unwrap();
        let identity = ctx.identity();
        let Ok(Outcome::Later(answer)) = dispatch(&mut ctx, x, identity).await else {
            panic!("a produce with acks is answered");
        };
        let Ok(Reply::Frame(frame)) = answer.await else {
            panic!("answered for the broker");
        };
        let r: ProduceResponse =
            codec::decode_response_body(ApiKey::Produce, newest(ApiKey::Produce), &frame).unwrap();
        r.responses[0].partition_responses[0].error_code
    }

    /// The duplicate a churn drill found: a batch that failed on the old
    /// leader (which may have passed it on before it stepped down) must not
    /// be overtaken by a later batch going to the new leader, or the new
    /// leader answers OUT_OF_ORDER_SEQUENCE and the client re-sends the
    /// failed batch under a new epoch: written twice.
    #[tokio::test]
    async fn an_idempotent_batch_never_overtakes_a_failed_one_on_another_broker() {
        let p = proxy("  []");
        // The client's producer 5 is known on the site as 9001 (no broker
        // to ask for an id here).
        p.plane
            .producer_ids
            .mapped((0, 5, 0), || async { Ok((9001, 0)) })
            .await
            .unwrap();
        let mut pools = Pools::new(&p.plane.sites);
        // Partition 0 led by broker 1, which is gone: sequence 0 fails.
        p.plane.site(0).set_view(view(&[1]));
        assert_eq!(
            route_idempotent(&p, &mut pools, 0).await,
            errors::NOT_LEADER_OR_FOLLOWER
        );

        // Switchyard learns of the new leader, broker 2, before the client.
        let new_leader = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        new_leader.set_nonblocking(true).unwrap();
        let mut v = view(&[2]);
        v.brokers.get_mut(&2).unwrap().port = new_leader.local_addr().unwrap().port() as i32;
        p.plane.site(0).set_view(v);
        // The client pipelined sequence 3 before it saw the failure: held
        // back, answered as the old leader would have, never sent.
        assert_eq!(
            route_idempotent(&p, &mut pools, 3).await,
            errors::NOT_LEADER_OR_FOLLOWER
        );
        assert!(
            new_leader.accept().is_err(),
            "a batch after a failed one reached the new leader"
        );
        // The client's retry from sequence 0 goes to the new leader.
        route_idempotent(&p, &mut pools, 0).await;
        assert!(new_leader.accept().is_ok(), "the retry was not sent");
    }

    #[tokio::test]
    async fn a_broker_that_refuses_costs_the_client_only_a_retriable_error() {
        let retriable = vec![
            (0, errors::NOT_LEADER_OR_FOLLOWER),
            (1, errors::NOT_LEADER_OR_FOLLOWER),
        ];
        // One broker: the client's own frame was to go up, untouched.
        assert_eq!(produce_to_refusing(&[1, 1]).await, retriable);
        // Two brokers: one part each.
        assert_eq!(produce_to_refusing(&[1, 2]).await, retriable);
    }
}
