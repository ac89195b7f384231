//! Cluster administration: topics, partitions and configs.
//!
//! Each topic named in the request is renamed to its physical name and sent to
//! its site's controller (any broker forwards to the controller in KRaft
//! clusters); a request naming topics of several sites is split per site and
//! the answers merged under the clients' names. CreateTopics v7+ returns topic
//! ids, which become virtual ids like everywhere else.
//!
//! Config resources that are not topics (brokers, broker loggers) name an
//! upstream broker id; they go to the default site as the upstream sees them.

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::{scatter, Ctx, Outcome};
use crate::codec::RequestFrame;
use crate::pipeline::names::Names;
use crate::upstream::Target;

/// Config resource type TOPIC.
const TOPIC_RESOURCE: i8 = 2;

pub async fn create_topics(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: CreateTopicsRequest = req.decode()?;
    let identity = ctx.identity();
    per_site(
        ctx,
        &req,
        body,
        |b: &mut CreateTopicsRequest| &mut b.topics,
        |t| Some(&mut t.name.0),
        move |names, resps: Vec<(usize, CreateTopicsResponse)>| {
            let mut out = CreateTopicsResponse::default();
            for (site, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                for mut t in r.topics {
                    t.name = names.virt(site, &t.name);
                    if !t.topic_id.is_nil() {
                        t.topic_id = identity.topic_id(t.name.0.as_str());
                    }
                    out.topics.push(t);
                }
            }
            out
        },
    )
    .await
}

pub async fn delete_topics(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: DeleteTopicsRequest = req.decode()?;
    per_site(
        ctx,
        &req,
        body,
        |b: &mut DeleteTopicsRequest| &mut b.topic_names,
        |t| Some(&mut t.0),
        |names, resps: Vec<(usize, DeleteTopicsResponse)>| {
            let mut out = DeleteTopicsResponse::default();
            for (site, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                for mut t in r.responses {
                    t.name = t.name.map(|n| names.virt(site, &n));
                    out.responses.push(t);
                }
            }
            out
        },
    )
    .await
}

pub async fn create_partitions(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: CreatePartitionsRequest = req.decode()?;
    per_site(
        ctx,
        &req,
        body,
        |b: &mut CreatePartitionsRequest| &mut b.topics,
        |t| Some(&mut t.name.0),
        |names, resps: Vec<(usize, CreatePartitionsResponse)>| {
            let mut out = CreatePartitionsResponse::default();
            for (site, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                for mut t in r.results {
                    t.name = names.virt(site, &t.name);
                    out.results.push(t);
                }
            }
            out
        },
    )
    .await
}

fn virt_resource(names: &Names, site: usize, kind: i8, name: &mut StrBytes) {
    if kind == TOPIC_RESOURCE {
        *name = names.virt(site, &TopicName(name.clone())).0;
    }
}

pub async fn describe_configs(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: DescribeConfigsRequest = req.decode()?;
    per_site(
        ctx,
        &req,
        body,
        |b: &mut DescribeConfigsRequest| &mut b.resources,
        |r| (r.resource_type == TOPIC_RESOURCE).then_some(&mut r.resource_name),
        |names, resps: Vec<(usize, DescribeConfigsResponse)>| {
            let mut out = DescribeConfigsResponse::default();
            for (site, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                for mut x in r.results {
                    virt_resource(names, site, x.resource_type, &mut x.resource_name);
                    out.results.push(x);
                }
            }
            out
        },
    )
    .await
}

pub async fn alter_configs(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: AlterConfigsRequest = req.decode()?;
    per_site(
        ctx,
        &req,
        body,
        |b: &mut AlterConfigsRequest| &mut b.resources,
        |r| (r.resource_type == TOPIC_RESOURCE).then_some(&mut r.resource_name),
        |names, resps: Vec<(usize, AlterConfigsResponse)>| {
            let mut out = AlterConfigsResponse::default();
            for (site, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                for mut x in r.responses {
                    virt_resource(names, site, x.resource_type, &mut x.resource_name);
                    out.responses.push(x);
                }
            }
            out
        },
    )
    .await
}

pub async fn incremental_alter_configs(
    ctx: &mut Ctx<'_>,
    req: RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    let body: IncrementalAlterConfigsRequest = req.decode()?;
    per_site(
        ctx,
        &req,
        body,
        |b: &mut IncrementalAlterConfigsRequest| &mut b.resources,
        |r| (r.resource_type == TOPIC_RESOURCE).then_some(&mut r.resource_name),
        |names, resps: Vec<(usize, IncrementalAlterConfigsResponse)>| {
            let mut out = IncrementalAlterConfigsResponse::default();
            for (site, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                for mut x in r.responses {
                    virt_resource(names, site, x.resource_type, &mut x.resource_name);
                    out.responses.push(x);
                }
            }
            out
        },
    )
    .await
}

/// Splits a request's named items by site (items `name` says are not topics
/// go to the default site), renames topics to physical names, sends one
/// sub-request per site to its controller, and merges with `merge`.
async fn per_site<Req, Item, Resp>(
    ctx: &mut Ctx<'_>,
    req: &RequestFrame,
    mut body: Req,
    items: fn(&mut Req) -> &mut Vec<Item>,
    name: fn(&mut Item) -> Option<&mut StrBytes>,
    merge: impl FnOnce(&Names, Vec<(usize, Resp)>) -> Resp + Send + 'static,
) -> crate::pipeline::Result<Outcome>
where
    Req: Encodable + Clone + Send + 'static,
    Item: Clone,
    Resp: Decodable + Encodable + Send + 'static,
{
    let router = ctx.plane.router.clone();
    let mut names = Names::default();
    let mut by_site: BTreeMap<usize, Vec<Item>> = BTreeMap::new();
    for mut item in std::mem::take(items(&mut body)) {
        let site = match name(&mut item) {
            Some(n) => {
                let (site, phys) = names.resolve(&router, ctx.who(req), &TopicName(n.clone()));
                *n = phys.0;
                site
            }
            None => router.default_site(),
        };
        by_site.entry(site).or_default().push(item);
    }
    if by_site.is_empty() {
        by_site.insert(router.default_site(), Vec::new());
    }
    let mut parts: BTreeMap<Target, Req> = BTreeMap::new();
    let mut touched = Vec::new();
    for (si, its) in by_site {
        let site = ctx.site(si);
        let broker = ctx.pools.any_live(si).await?;
        let mut sub = body.clone();
        *items(&mut sub) = its;
        parts.insert((si, broker), sub);
        touched.push(site);
    }
    // Topic creations, deletions and new partitions change the layout: once
    // the answer is in, the next routing miss must refresh.
    let changes_layout = matches!(
        req.api_key,
        ApiKey::CreateTopics | ApiKey::DeleteTopics | ApiKey::CreatePartitions
    );
    // One part per site, each to a live broker: a site that cannot answer
    // fails the request (its retriable answer), as it would direct.
    scatter(
        ctx,
        req,
        parts,
        |_| None,
        move |resps: Vec<(usize, Resp)>| {
            if changes_layout {
                for s in &touched {
                    s.mark_stale();
                }
            }
            Ok(merge(&names, resps))
        },
    )
    .await
}
