//! Fetch (key 1): the pipeline's stages for a fetch, in order, and how
//! answers from several brokers merge.
//!
//! identity (v13+: virtual topic ids to names) → names → holds (fenced
//! members; answers from before a switch withheld) → identity (full fetch,
//! neutral epochs, real ids) → plugins (fetch chains) → plan/split/send → per
//! site: withhold, fetch chains, client names and virtual ids → merge.
//!
//! Requests upstream are always full fetches and clients are answered with
//! `session_id 0`, which keeps them on full fetches (see
//! `pipeline::identity`). Record batches in the response are never parsed.
//! When one broker answers the whole request and no stage looks at answers
//! (the common case), the few fields to rewrite are patched in place in the
//! upstream frame and the frame is forwarded without a copy. Merged answers
//! from several brokers are decoded and re-encoded (records are then
//! copied, not parsed).

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};

use super::{Ctx, Outcome};
use crate::authz::Operation;
use crate::codec::RequestFrame;
use crate::identity::Identity;
use crate::pipeline::{
    authorize, holds, identity, names, plugins, run, Api, At, Exchange, Reply, Unanswered,
};
use crate::route::Who;
use kafka_protocol::messages::ApiKey;

/// How long past its `max_wait_ms` a fetch's broker may take to answer.
const FETCH_GRACE: Duration = Duration::from_secs(3);

/// Fetch in the pipeline.
pub struct Fetch;

impl Api for Fetch {
    const KEY: ApiKey = ApiKey::Fetch;
    type Req = FetchRequest;
    type Resp = FetchResponse;

    fn partition_errors(r: &FetchResponse) -> Vec<i16> {
        r.responses
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    }

    fn to_client(at: &At, id: &Identity, r: &mut FetchResponse) -> bool {
        identity::fetch_answer(at, id, r)
    }

    fn merge(out: &mut FetchResponse, part: FetchResponse) {
        out.throttle_time_ms = out.throttle_time_ms.max(part.throttle_time_ms);
        if out.error_code == 0 {
            out.error_code = part.error_code;
        }
        for t in part.responses {
            push_topic(&mut out.responses, t);
        }
        for e in part.node_endpoints {
            if !out.node_endpoints.iter().any(|o| o.node_id == e.node_id) {
                out.node_endpoints.push(e);
            }
        }
    }

    fn unanswered(out: &mut FetchResponse, u: Unanswered, version: i16, id: &Identity) {
        let mut p = PartitionData::default();
        p.partition_index = u.partition;
        p.error_code = u.code;
        p.high_watermark = -1;
        p.last_stable_offset = -1;
        p.log_start_offset = -1;
        let mut t = FetchableTopicResponse::default();
        t.topic_id = identity::fetch_topic_id(id, version, &u);
        t.topic = u.topic;
        t.partitions.push(p);
        push_topic(&mut out.responses, t);
    }

    fn single(at: &At, id: &Identity, corr: i32, frame: Bytes) -> crate::pipeline::Result<Reply> {
        identity::fetch_single::<Self>(at, id, corr, frame)
    }
}

fn push_topic(out: &mut Vec<FetchableTopicResponse>, t: FetchableTopicResponse) {
    match out
        .iter_mut()
        .find(|o| o.topic == t.topic && o.topic_id == t.topic_id)
    {
        Some(o) => o.partitions.extend(t.partitions),
        None => out.push(t),
    }
}

pub async fn route(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let body: FetchRequest = req.decode()?;
    let plane = ctx.plane.clone();
    let listener = ctx.listener;
    let client_id = super::client_id(&req);
    let key = ctx.client_key(&req);
    let who = Who {
        listener: &listener.name,
        client_id: &client_id,
    };
    let mut x = Exchange::<Fetch>::new(&plane, req, body);
    // A fetch long-polls for at most max_wait_ms; a broker that has not
    // answered well after that is frozen or gone. Giving up then (rather
    // than at the request timeout) keeps its partitions from holding up
    // every answer queued behind this one on the client's connection.
    x.timeout = x
        .timeout
        .min(Duration::from_millis(x.body.max_wait_ms.max(0) as u64) + FETCH_GRACE);
    let skip = identity::fetch_topic_names(&mut x, &plane).await;
    let skip = authorize::topics(
        &mut x,
        &plane.authz,
        ctx.pools.principal(),
        Operation::Read,
        None,
        skip,
    )?;
    // Epochs taken before routing: a switch after this point withholds the
    // route's records from the answer.
    holds::withhold(&mut x, &plane.failover);
    names::resolve(&mut x, &plane.router, who, &skip);
    holds::fetch(&mut x, &plane.failover, &key);
    identity::fetch_request(&mut x);
    plugins::fetch(&mut x, plane.plugins.as_ref());
    run::dispatch(ctx, x, ctx.identity()).await
}
