//! The request pipeline of the partitioned APIs (Produce, Fetch, ListOffsets,
//! DeleteRecords), and what every handler routes with.
//!
//! A partitioned request goes through ordered phases over one typed
//! per-request context, an [`Exchange`]:
//!
//! ```text
//! decode ─▶ request stages ─▶ plan / split / send ─▶ per site: site stages ─▶ client names
//!           (names, holds,     (split.rs, run.rs)     (holds: withhold;        (the API's
//!            producer ids,                              plugins: fetch chains;  to_client)
//!            plugins, tee,                              sync_tee: wait)            │
//!            identity)                                                             ▼
//!                                      encode ◀─ finish ◀─ client stages ◀─ merge + unanswered
//!                                                (API)     (plugins: origins)
//! ```
//!
//! Each concern is one file and one stage: [`names`] (client ↔ site topic
//! names), [`holds`] (switching routes, fenced members and producers,
//! answers from before a switch), [`producer_ids`] (idempotent producers
//! across sites), [`plugins`] (WASM produce and fetch chains), [`sync_tee`]
//! (acks held until the tee copied), [`identity`] (the virtual cluster's
//! leaders, ids and epochs). A request stage that rewrites the request says
//! so ([`Exchange::touch`]); one that must see the answers registers a
//! [`SiteStage`] or a [`ClientStage`]; one that must see where each
//! partition goes before it is sent registers a [`PlanStage`]. The zero-copy path is simply the
//! absence of both: the client's bytes go upstream as they came, and a single
//! broker's answer comes back as it is (or patched in place, Fetch).
//!
//! Each API lists its stages, in order, in its handler (`api::produce`,
//! `api::fetch`, `api::partitions`) and says how its answers merge
//! ([`Api`]); [`run::dispatch`] drives the phases. The APIs routed by
//! coordinator (groups, transactions) keep handlers in `api` and call the
//! same stages ([`names`], [`holds`]).
//!
//! A request that fails upstream is answered by [`unavailable`], the one
//! place that maps an upstream failure to a metric and a Kafka answer.

pub mod answers;
pub mod authorize;
pub mod error;
pub mod holds;
pub mod identity;
pub mod names;
pub mod plugins;
pub mod producer_ids;
pub mod run;
pub mod send;
pub mod split;
pub mod sync_tee;
pub mod unavailable;

#[cfg(test)]
pub(crate) mod testing;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::{Decodable, Encodable};
use uuid::Uuid;

use crate::codec::RequestFrame;
use crate::identity::Identity;
use crate::route::Who;
use crate::shared::{DataPlane, Listener};
use crate::upstream::{ClusterView, Pools};
pub use error::{Error, Result};
use names::Names;
use split::Partitioned;

/// A response for the client.
pub enum Reply {
    /// A complete response (header + body, no length prefix) built by us.
    Frame(Bytes),
    /// An upstream response forwarded as is; only the correlation id (its
    /// first four bytes) is replaced by the client's.
    Upstream { correlation_id: i32, frame: Bytes },
}

pub type Respond = Pin<Box<dyn Future<Output = Result<Reply>> + Send>>;

/// Result of the route phase.
pub enum Outcome {
    /// The request has no response (acks=0 Produce).
    NoResponse,
    Ready(Reply),
    Later(Respond),
}

/// What a handler may use while routing: the data plane (never the config
/// or the process's state), the connection's upstream connections, and who
/// the client is.
pub struct Ctx<'a> {
    pub plane: &'a Arc<DataPlane>,
    pub pools: &'a mut Pools,
    pub listener: &'a Listener,
    /// The client's address (with its client id, how failover fencing
    /// recognises a consumer's fetch connections).
    pub peer: std::net::SocketAddr,
}

impl Ctx<'_> {
    /// A site by index (indexes come from the router, so they are valid).
    pub fn site(&self, i: usize) -> Arc<crate::upstream::Site> {
        self.plane.site(i)
    }

    /// The virtual cluster this client connected to.
    pub fn identity(&self) -> Arc<Identity> {
        self.listener.identity.clone()
    }

    /// The fencing key of the client that sent `req`.
    pub fn client_key(&self, req: &RequestFrame) -> crate::failover::fence::ClientKey {
        (
            req.client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            self.peer.ip(),
        )
    }

    /// Who sent `req`, for routing.
    pub fn who<'r>(&'r self, req: &'r RequestFrame) -> Who<'r> {
        Who {
            listener: &self.listener.name,
            client_id: req.client_id.as_ref().map(|c| c.as_str()).unwrap_or(""),
        }
    }
}

/// A partitioned API: its request and response, and how answers from
/// several brokers become the client's one.
pub trait Api: Send + Sync + 'static {
    type Req: Partitioned + Encodable + Send + Sync + 'static;
    type Resp: Decodable + Encodable + Default + Send + 'static;
    const KEY: kafka_protocol::messages::ApiKey;
    /// Writes (Produce): each part counts as a write in flight on its site
    /// until answered, which a failover drains before it switches.
    const WRITES: bool = false;

    /// The partition error codes of an upstream answer (the site learns
    /// from them that its view is stale).
    fn partition_errors(r: &Self::Resp) -> Vec<i16>;

    /// One site's answer under the client's names (and virtual ids): the
    /// last step per site, after the site stages. True if it changed.
    fn to_client(at: &At, identity: &Identity, r: &mut Self::Resp) -> bool;

    /// Adds one site's answer (client names) to the client's answer.
    fn merge(out: &mut Self::Resp, part: Self::Resp);

    /// Adds the answer for a partition that was not sent, or whose broker
    /// failed.
    fn unanswered(out: &mut Self::Resp, u: Unanswered, version: i16, identity: &Identity);

    /// The merged answer's last rewrite, after the client stages. True if
    /// it changed.
    fn finish(_identity: &Identity, _out: &mut Self::Resp) -> bool {
        false
    }

    /// The answer of the one broker a request went to, when no stage
    /// looks at answers: the upstream bytes when nothing is to change.
    fn single(at: &At, identity: &Identity, corr: i32, frame: Bytes) -> Result<Reply> {
        single_decoded::<Self>(at, identity, corr, frame)
    }
}

/// [`Api::single`] by decoding: the upstream bytes unless `to_client` or
/// `finish` changed something.
pub fn single_decoded<A: Api + ?Sized>(
    at: &At,
    identity: &Identity,
    corr: i32,
    frame: Bytes,
) -> Result<Reply> {
    send::rewrite_or_pass(at.api, at.version, corr, frame, |r: &mut A::Resp| {
        for code in A::partition_errors(r) {
            at.note(code);
        }
        let renamed = A::to_client(at, identity, r);
        A::finish(identity, r) | renamed
    })
}

/// A partition answered without an upstream answer: under the client's
/// topic name; `topic_id` `None` means the topic's virtual id (Fetch v13+).
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub topic: TopicName,
    pub topic_id: Option<Uuid>,
    pub partition: i32,
    pub code: i16,
    pub message: Option<String>,
}

/// Where one site's answer is being handled: what the site stages and
/// `to_client` read (cheap to clone: stages that run on the blocking pool
/// take a copy).
#[derive(Clone)]
pub struct At {
    pub api: kafka_protocol::messages::ApiKey,
    pub version: i16,
    pub site: usize,
    /// The site's view when the request was routed (real topic ids in the
    /// request, the same ids back in the answer).
    pub view: Arc<ClusterView>,
    pub names: Arc<Names>,
    /// Every site (this answer's learns from its partition errors).
    pub sites: Arc<[Arc<crate::upstream::Site>]>,
}

impl At {
    /// A partition error of the site's answer: the site refreshes its view
    /// when the code says it is stale.
    pub fn note(&self, code: i16) {
        if let Some(s) = self.sites.get(self.site) {
            s.note_partition_error(code);
        }
    }
}

/// A future a site stage waits on (the sync tee's copy).
pub type Wait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A stage that sees each site's answer (physical names, real ids), in the
/// order registered, before it takes the client's names.
pub trait SiteStage<R>: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether this site's answer needs the stage, asked when it arrives
    /// (an answer no stage needs may skip decoding).
    fn looks(&self, _at: &At) -> bool {
        true
    }
    /// CPU work (WASM plugins): `rewrite` then runs on the plugins'
    /// blocking pool, off the async workers.
    fn blocking(&self) -> bool {
        false
    }
    /// Something the answer must wait for before it goes on (and may then
    /// change).
    fn wait<'a>(&'a self, _at: &'a At, _r: &'a mut R) -> Option<Wait<'a>> {
        None
    }
    fn rewrite(&self, _at: &At, _r: &mut R) {}
}

/// A stage that decides, once the plan is made, whether each partition may
/// go to the broker the plan chose for it now (`producer_ids`: an idempotent
/// producer's batches go to one broker at a time, in order).
pub trait PlanStage: Send + Sync {
    fn name(&self) -> &'static str;
    /// `None`: the partition goes to `target`. `Some(code)`: it is answered
    /// with `code` and not sent.
    fn admit(
        &self,
        target: crate::upstream::Target,
        topic: &TopicName,
        partition: i32,
    ) -> Option<i16>;
    /// The partition had no broker to go to and is answered without being
    /// sent.
    fn unsent(&self, _site: usize, _topic: &TopicName, _partition: i32) {}
}

/// A stage that sees the merged answer, under the client's names.
pub trait ClientStage<R>: Send + Sync {
    fn name(&self) -> &'static str;
    fn rewrite(&self, r: &mut R);
}

/// One partitioned request on its way through the pipeline: the typed
/// per-request context every stage reads and writes.
pub struct Exchange<A: Api> {
    /// The client's frame and header.
    pub req: RequestFrame,
    /// The request, as the stages rewrite it.
    pub body: A::Req,
    /// Topic names, client ↔ site, with routes and holds.
    pub names: Names,
    /// Each topic's site (`None`: answered already, not routed).
    pub site_of: Vec<Option<usize>>,
    /// Every site's view, taken once when the request was routed.
    pub views: Vec<Arc<ClusterView>>,
    /// Partitions the stages answered themselves.
    pub unanswered: Vec<Unanswered>,
    /// How long the upstreams have to answer, for the whole request.
    pub timeout: Duration,
    /// No answer expected (acks=0 Produce): the parts are sent and
    /// nothing is answered.
    pub no_response: bool,
    /// The blocking pool for site stages that say `blocking`.
    pub offload: Option<Arc<crate::plugin::registry::Registry>>,
    touched: Vec<&'static str>,
    plan_stages: Vec<Arc<dyn PlanStage>>,
    site_stages: Vec<Arc<dyn SiteStage<A::Resp>>>,
    client_stages: Vec<Arc<dyn ClientStage<A::Resp>>>,
}

impl<A: Api> Exchange<A> {
    pub fn new(plane: &DataPlane, req: RequestFrame, body: A::Req) -> Self {
        Exchange {
            req,
            body,
            names: Names::default(),
            site_of: Vec::new(),
            views: plane.sites.iter().map(|s| s.view()).collect(),
            unanswered: Vec::new(),
            timeout: plane.request_timeout(),
            no_response: false,
            offload: None,
            touched: Vec::new(),
            plan_stages: Vec::new(),
            site_stages: Vec::new(),
            client_stages: Vec::new(),
        }
    }

    /// A request stage rewrote the request: it is re-encoded for the
    /// upstream rather than forwarded as the client sent it.
    pub fn touch(&mut self, stage: &'static str) {
        if !self.touched.contains(&stage) {
            self.touched.push(stage);
        }
    }

    /// The stages that rewrote the request.
    pub fn touched(&self) -> &[&'static str] {
        &self.touched
    }

    pub fn on_plan(&mut self, stage: Arc<dyn PlanStage>) {
        self.plan_stages.push(stage);
    }

    /// The stages that admit the planned partitions, in order.
    pub fn plan_stages(&self) -> Vec<&'static str> {
        self.plan_stages.iter().map(|s| s.name()).collect()
    }

    pub fn on_site_answer(&mut self, stage: Arc<dyn SiteStage<A::Resp>>) {
        self.site_stages.push(stage);
    }

    pub fn on_client_answer(&mut self, stage: Arc<dyn ClientStage<A::Resp>>) {
        self.client_stages.push(stage);
    }

    /// The stages registered on answers, in order (site stages, then
    /// client stages).
    pub fn answer_stages(&self) -> Vec<&'static str> {
        self.site_stages
            .iter()
            .map(|s| s.name())
            .chain(self.client_stages.iter().map(|s| s.name()))
            .collect()
    }

    /// A partition of a site's topic (physical name) answered with `code`.
    pub fn answer(&mut self, site: usize, phys: &TopicName, partition: i32, code: i16) {
        self.unanswered.push(Unanswered {
            topic: self.names.virt(site, phys),
            topic_id: None,
            partition,
            code,
            message: None,
        });
    }
}
