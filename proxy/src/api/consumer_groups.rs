//! KIP-848 consumer groups (`group.protocol=consumer`): ConsumerGroupHeartbeat
//! and ConsumerGroupDescribe, routed to the group's coordinator on the
//! group's site, as the classic protocol's requests are (`groups`).
//!
//! Unlike the classic protocol the coordinator assigns the partitions
//! itself and names topics by id. So on the way in the subscribed topic
//! names take their physical names on the group's site and the partitions a
//! member owns go from virtual topic ids to that site's real ones; on the
//! way out the assignment's real ids become virtual ids (and names, in
//! ConsumerGroupDescribe, client names). An id the site's view does not
//! know yet (a topic created a moment ago) refreshes the view once; one it
//! still does not know is left out of the assignment, and the client gets it
//! on a later heartbeat (the coordinator re-sends an assignment until the
//! member acknowledges it).
//!
//! A member that joined (member epoch 0) on the old site before a failover
//! gets UNKNOWN_MEMBER_ID, as a classic member does: it gives its partitions
//! up and joins again with epoch 0, on the new site, whose committed offsets
//! the switch translated. A regex subscription (`subscribed_topic_regex`) is
//! evaluated by the coordinator over the site's physical names: it passes
//! unchanged, so it selects renamed topics by their physical names.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::{
    consumer_group_describe_response, consumer_group_heartbeat_response,
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{scatter, Ctx, Outcome, Reply};
use crate::codec::errors::{self, UNKNOWN_MEMBER_ID};
use crate::codec::{self, RequestFrame};
use crate::identity::Identity;
use crate::route::{Router, Who};
use crate::upstream::{ClusterView, Site};

/// Key type of a group in FindCoordinator.
const GROUP: i8 = 0;

/// Topic names and ids between the virtual cluster and one site, for one
/// client (routes may differ per listener and client id).
struct SiteTopics {
    site: Arc<Site>,
    index: usize,
    router: Arc<Router>,
    identity: Arc<Identity>,
    listener: String,
    client_id: String,
}

impl SiteTopics {
    fn who(&self) -> Who<'_> {
        Who {
            listener: &self.listener,
            client_id: &self.client_id,
        }
    }

    /// The client's name for a physical topic of the site.
    fn client_name(&self, phys: &str) -> String {
        self.router.client_name(self.who(), self.index, phys)
    }

    /// A real topic id of the site as the client knows it: virtual id and
    /// client name.
    fn to_client(&self, view: &ClusterView, real: &Uuid) -> Option<(Uuid, String)> {
        let phys = view.names_by_id.get(real)?;
        let name = self.client_name(phys);
        Some((self.identity.topic_id(&name), name))
    }

    /// The view, refreshed once if it misses one of `ids`.
    async fn view_knowing(&self, ids: impl Iterator<Item = Uuid>) -> Arc<ClusterView> {
        let view = self.site.view();
        let mut ids = ids;
        if ids.any(|id| !id.is_nil() && !view.names_by_id.contains_key(&id)) {
            let _ = self.site.refresh().await;
            return self.site.view();
        }
        view
    }
}

/// ConsumerGroupHeartbeat: one group, to its coordinator.
pub async fn heartbeat(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let mut b: ConsumerGroupHeartbeatRequest = req.decode()?;
    let group = b.group_id.0.to_string();
    let member = b.member_id.to_string();
    let fo = ctx.plane.failover.clone();
    // Epoch 0 joins (or re-joins after being fenced); -1 and -2 leave.
    if b.member_epoch != 0 {
        if let Some(route) = fo.group_route(&group) {
            if fo.fence.is_stale(fo.epoch(route), &group, &member) {
                fo.count_fenced(route, "consumer_group_heartbeat");
                tracing::info!(
                    group,
                    member,
                    "fenced a consumer group member from before the failover"
                );
                let mut r = ConsumerGroupHeartbeatResponse::default();
                r.error_code = UNKNOWN_MEMBER_ID;
                r.member_epoch = -1;
                let frame =
                    codec::encode_response(req.api_key, req.api_version, req.correlation_id, &r)?;
                return Ok(Outcome::Ready(Reply::Frame(frame)));
            }
        }
    }
    if b.member_epoch < 0 {
        fo.fence.left(&group, &member);
    }
    let who = ctx.who(&req);
    let (listener, client_id) = (who.listener.to_string(), who.client_id.to_string());
    let who = Who {
        listener: &listener,
        client_id: &client_id,
    };
    let target = super::groups::coordinator(ctx, who, GROUP, &group).await?;
    let topics = SiteTopics {
        index: target.0,
        site: ctx.site(target.0),
        router: ctx.plane.router.clone(),
        identity: ctx.identity(),
        listener: listener.clone(),
        client_id: client_id.clone(),
    };
    // The subscription under the site's names.
    for t in b.subscribed_topic_names.iter_mut().flatten() {
        let r = topics.router.resolve(topics.who(), t.0.as_str());
        if r.site != target.0 {
            super::groups::warn_cross_site(
                &group,
                t.0.as_str(),
                topics.router.site_name(r.site),
                topics.router.site_name(target.0),
            );
        }
        if r.physical != t.0.as_str() {
            *t = TopicName(StrBytes::from_string(r.physical.into_owned()));
        }
    }
    // The partitions it owns, by the site's real ids.
    if let Some(owned) = b.topic_partitions.as_mut() {
        let view = topics.site.view();
        let mut kept = Vec::with_capacity(owned.len());
        for mut tp in owned.drain(..) {
            let Some(name) = ctx.plane.topic_for_virtual_id(&tp.topic_id).await else {
                continue;
            };
            let phys = topics
                .router
                .resolve(topics.who(), &name)
                .physical
                .into_owned();
            let real = match view.topics.get(&phys) {
                Some(t) => t.id,
                None => {
                    let _ = topics.site.refresh().await;
                    match topics.site.view().topics.get(&phys) {
                        Some(t) => t.id,
                        None => continue,
                    }
                }
            };
            tp.topic_id = real;
            kept.push(tp);
        }
        *owned = kept;
    }
    let frame = codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), &b)?;
    let pending = ctx.pools.call(target, req.api_key, frame).await?;
    let timeout = ctx.plane.request_timeout();
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    let joining = b.member_epoch == 0;
    let key = ctx.client_key(&req);
    Ok(Outcome::Later(Box::pin(async move {
        let frame = pending.wait(timeout).await?;
        let mut r: ConsumerGroupHeartbeatResponse =
            codec::decode_response_body(api, version, &frame)?;
        if r.error_code == errors::NONE && joining {
            if let Some(route) = fo.group_route(&group) {
                let id = r.member_id.as_ref().map_or(member.as_str(), |m| m.as_str());
                fo.shadow.remember_group(route, &group);
                fo.fence
                    .joined(route, topics.index, fo.epoch(route), &group, id, key);
            }
        }
        if let Some(a) = r.assignment.as_mut() {
            let view = topics
                .view_knowing(a.topic_partitions.iter().map(|t| t.topic_id))
                .await;
            assign_to_client(&topics, &view, a);
        }
        Ok(Reply::Frame(codec::encode_response(
            api, version, corr, &r,
        )?))
    })))
}

fn assign_to_client(
    topics: &SiteTopics,
    view: &ClusterView,
    a: &mut consumer_group_heartbeat_response::Assignment,
) {
    a.topic_partitions.retain_mut(|tp| match topics.to_client(view, &tp.topic_id) {
        Some((id, _)) => {
            tp.topic_id = id;
            true
        }
        None => {
            tracing::debug!(topic_id = %tp.topic_id, "assigned topic not in the site's view yet; left for the next heartbeat");
            false
        }
    });
}

/// ConsumerGroupDescribe: each group to its coordinator; members' topics
/// under the client's names and ids.
pub async fn describe(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let body: ConsumerGroupDescribeRequest = req.decode()?;
    let who = ctx.who(&req);
    let (listener, client_id) = (who.listener.to_string(), who.client_id.to_string());
    let who = Who {
        listener: &listener,
        client_id: &client_id,
    };
    let mut parts: BTreeMap<crate::upstream::Target, ConsumerGroupDescribeRequest> =
        BTreeMap::new();
    for g in &body.group_ids {
        let target = super::groups::coordinator(ctx, who, GROUP, g.0.as_str()).await?;
        parts
            .entry(target)
            .or_insert_with(|| {
                let mut s = body.clone();
                s.group_ids.clear();
                s
            })
            .group_ids
            .push(g.clone());
    }
    let sites: Vec<Arc<Site>> = ctx.plane.sites.iter().cloned().collect();
    let (router, identity) = (ctx.plane.router.clone(), ctx.identity());
    scatter(
        ctx,
        &req,
        parts,
        |sub: ConsumerGroupDescribeRequest| {
            let mut r = ConsumerGroupDescribeResponse::default();
            for g in sub.group_ids {
                let mut d = consumer_group_describe_response::DescribedGroup::default();
                d.group_id = g;
                d.error_code = errors::COORDINATOR_NOT_AVAILABLE;
                d.authorized_operations = i32::MIN;
                r.groups.push(d);
            }
            Some(r)
        },
        move |resps: Vec<(usize, ConsumerGroupDescribeResponse)>| {
            let mut out = ConsumerGroupDescribeResponse::default();
            for (site, mut r) in resps {
                let topics = SiteTopics {
                    site: sites.get(site).cloned().unwrap_or_else(|| sites[0].clone()),
                    index: site,
                    router: router.clone(),
                    identity: identity.clone(),
                    listener: listener.clone(),
                    client_id: client_id.clone(),
                };
                let view = topics.site.view();
                for g in &mut r.groups {
                    for m in &mut g.members {
                        for t in &mut m.subscribed_topic_names {
                            *t = TopicName(StrBytes::from_string(topics.client_name(t.0.as_str())));
                        }
                        describe_to_client(&topics, &view, &mut m.assignment);
                        describe_to_client(&topics, &view, &mut m.target_assignment);
                    }
                }
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                out.groups.extend(r.groups);
            }
            Ok(out)
        },
    )
    .await
}

fn describe_to_client(
    topics: &SiteTopics,
    view: &ClusterView,
    a: &mut consumer_group_describe_response::Assignment,
) {
    for tp in &mut a.topic_partitions {
        let (id, name) = topics.to_client(view, &tp.topic_id).unwrap_or_else(|| {
            let name = topics.client_name(tp.topic_name.0.as_str());
            (topics.identity.topic_id(&name), name)
        });
        tp.topic_id = id;
        tp.topic_name = TopicName(StrBytes::from_string(name));
    }
}
