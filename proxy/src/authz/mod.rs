//! Authorization in the proxy: the `authorization` section of the config
//! made into a [`Policy`] (checked by `switchyard check`, swapped on a
//! reload), and the [`Authorizer`] every request asks through, which counts
//! each decision and logs denials (rate-limited).
//!
//! What each API needs (which resource, which operation, which error code)
//! is the pipeline's `authorize` stage; how a rule decides is [`policy`].

pub mod policy;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::config::{AclOperation, AclPermission, AclRuleConfig, Config, ConfigError};
use crate::metrics::Metrics;
pub use policy::{Decision, Operation, Permission, Policy, Resource, Rule};

/// The principal of a client that did not authenticate (Kafka's name).
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// Denials logged per [`LOG_WINDOW`]; the rest are counted and summed up in
/// one line when the window ends (a misconfigured client retrying in a loop
/// must not flood the log).
const LOGS_PER_WINDOW: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// The config's rules as a policy; `None` when there is no `authorization`
/// section. Every problem is reported with its key.
pub fn load(config: &Config) -> Result<Option<Policy>, Vec<ConfigError>> {
    let Some(a) = &config.authorization else {
        return Ok(None);
    };
    let mut errors = Vec::new();
    let mut err = |key: String, reason: String| errors.push(ConfigError { key, reason });
    for (i, s) in a.super_users.iter().enumerate() {
        if let Some(why) = principal_problem(s, false) {
            err(format!("authorization.super_users[{i}]"), why);
        }
    }
    let mut rules = Vec::with_capacity(a.rules.len());
    for (i, r) in a.rules.iter().enumerate() {
        match rule(r) {
            Ok(rule) => rules.push(rule),
            Err(problems) => {
                for (key, why) in problems {
                    err(format!("authorization.rules[{i}].{key}"), why);
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Some(Policy {
        rules,
        super_users: a.super_users.clone(),
        allow_if_no_rule: a.allow_if_no_rule,
    }))
}

fn principal_problem(p: &str, wildcard: bool) -> Option<String> {
    match p.strip_prefix("User:") {
        Some("") | None => Some(format!(
            "`{p}` is not a principal: write `User:<name>`{}",
            if wildcard { " or `User:*`" } else { "" }
        )),
        Some("*") if !wildcard => Some("`User:*` cannot be a super user".into()),
        Some(_) => None,
    }
}

/// One rule of the config, or its problems as (key under the rule, reason).
fn rule(r: &AclRuleConfig) -> Result<Rule, Vec<(String, String)>> {
    let mut problems = Vec::new();
    if r.principals.is_empty() {
        problems.push(("principals".into(), "name at least one principal".into()));
    }
    for (i, p) in r.principals.iter().enumerate() {
        if let Some(why) = principal_problem(p, true) {
            problems.push((format!("principals[{i}]"), why));
        }
    }
    let given: Vec<(&str, Resource, Option<&crate::config::MatchConfig>)> = [
        ("topics", Resource::Topic, r.topics.as_ref()),
        ("groups", Resource::Group, r.groups.as_ref()),
        (
            "transactional_ids",
            Resource::TransactionalId,
            r.transactional_ids.as_ref(),
        ),
    ]
    .into_iter()
    .filter(|(_, _, m)| m.is_some())
    .collect();
    let count = given.len() + usize::from(r.cluster);
    if count != 1 {
        problems.push((
            "topics".into(),
            "give exactly one of `topics`, `groups`, `transactional_ids`, `cluster: true`".into(),
        ));
        return Err(problems);
    }
    let (resource, names) = match given.first() {
        None => (Resource::Cluster, None),
        Some((key, resource, m)) => {
            let id = *resource != Resource::Topic;
            match m.map(|m| crate::route::matcher(m, id)).transpose() {
                Ok(names) => (*resource, names),
                Err(why) => {
                    problems.push((key.to_string(), why));
                    return Err(problems);
                }
            }
        }
    };
    if r.operations.is_empty() {
        problems.push(("operations".into(), "name at least one operation".into()));
    }
    let all = r.operations.contains(&AclOperation::All);
    let mut ops = Vec::new();
    for (i, op) in r.operations.iter().enumerate() {
        let Some(op) = operation(*op) else {
            continue; // `all`
        };
        if !applies(resource, op) {
            problems.push((
                format!("operations[{i}]"),
                format!(
                    "{op:?} does not apply to {}; it applies to {}",
                    resource_name(resource),
                    applicable(resource)
                ),
            ));
        }
        ops.push(op);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Rule {
        principals: r.principals.clone(),
        permission: match r.permission {
            AclPermission::Allow => Permission::Allow,
            AclPermission::Deny => Permission::Deny,
        },
        resource,
        names,
        operations: (!all).then_some(ops),
    })
}

/// A config operation as a decision's; `None` for `all` (no list at all).
fn operation(op: AclOperation) -> Option<Operation> {
    Some(match op {
        AclOperation::All => return None,
        AclOperation::Read => Operation::Read,
        AclOperation::Write => Operation::Write,
        AclOperation::Create => Operation::Create,
        AclOperation::Delete => Operation::Delete,
        AclOperation::Alter => Operation::Alter,
        AclOperation::Describe => Operation::Describe,
        AclOperation::DescribeConfigs => Operation::DescribeConfigs,
        AclOperation::AlterConfigs => Operation::AlterConfigs,
        AclOperation::IdempotentWrite => Operation::IdempotentWrite,
    })
}

/// The operations Kafka defines for each resource type.
fn operations_of(resource: Resource) -> &'static [Operation] {
    use Operation::*;
    match resource {
        Resource::Topic => &[
            Read,
            Write,
            Create,
            Delete,
            Alter,
            Describe,
            DescribeConfigs,
            AlterConfigs,
        ],
        Resource::Group => &[Read, Describe, Delete, DescribeConfigs, AlterConfigs],
        Resource::TransactionalId => &[Write, Describe],
        Resource::Cluster => &[
            Create,
            Alter,
            Describe,
            DescribeConfigs,
            AlterConfigs,
            IdempotentWrite,
        ],
    }
}

fn applies(resource: Resource, op: Operation) -> bool {
    operations_of(resource).contains(&op)
}

fn applicable(resource: Resource) -> String {
    operations_of(resource)
        .iter()
        .map(|o| operation_label(*o))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn resource_name(r: Resource) -> &'static str {
    match r {
        Resource::Topic => "topic",
        Resource::Group => "group",
        Resource::TransactionalId => "transactional_id",
        Resource::Cluster => "cluster",
    }
}

pub fn operation_label(op: Operation) -> &'static str {
    match op {
        Operation::Read => "read",
        Operation::Write => "write",
        Operation::Create => "create",
        Operation::Delete => "delete",
        Operation::Alter => "alter",
        Operation::Describe => "describe",
        Operation::DescribeConfigs => "describe_configs",
        Operation::AlterConfigs => "alter_configs",
        Operation::IdempotentWrite => "idempotent_write",
    }
}

/// The policy in force (swapped by a reload), with the decisions' metrics
/// and the denial log.
pub struct Authorizer {
    policy: ArcSwapOption<Policy>,
    metrics: Arc<Metrics>,
    log: Mutex<LogWindow>,
}

struct LogWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl Authorizer {
    pub fn new(policy: Option<Policy>, metrics: Arc<Metrics>) -> Self {
        Authorizer {
            policy: ArcSwapOption::new(policy.map(Arc::new)),
            metrics,
            log: Mutex::new(LogWindow {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// A reload's rules (`None`: the section was taken out).
    pub fn set(&self, policy: Option<Policy>) {
        self.policy.store(policy.map(Arc::new));
    }

    pub fn enabled(&self) -> bool {
        self.policy.load().is_some()
    }

    /// The decisions of one request by `principal` (its name, `None`: not
    /// authenticated); `None` when no rules are configured. The policy is
    /// taken once, so a reload never splits a request's decisions.
    pub fn request(
        self: &Arc<Self>,
        principal: Option<&str>,
        api: kafka_protocol::messages::ApiKey,
    ) -> Option<Check> {
        let policy = self.policy.load_full()?;
        Some(Check {
            policy,
            principal: principal.map_or_else(|| ANONYMOUS.to_string(), |p| format!("User:{p}")),
            api,
            authorizer: self.clone(),
        })
    }

    fn count(&self, resource: Resource, op: Operation, allowed: bool) {
        self.metrics
            .security
            .authorizations
            .with_label_values(&[
                resource_name(resource),
                operation_label(op),
                if allowed { "allow" } else { "deny" },
            ])
            .inc();
    }

    fn denied(&self, c: &Check, resource: Resource, name: &str, op: Operation, d: Decision) {
        let Ok(mut w) = self.log.lock() else {
            return;
        };
        if w.started.elapsed() >= LOG_WINDOW {
            if w.suppressed > 0 {
                tracing::warn!(
                    suppressed = w.suppressed,
                    window_s = LOG_WINDOW.as_secs(),
                    "more authorization denials were not logged"
                );
            }
            *w = LogWindow {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged >= LOGS_PER_WINDOW {
            w.suppressed += 1;
            return;
        }
        w.logged += 1;
        drop(w);
        let rule = match d {
            Decision::Deny(Some(i)) => format!("authorization.rules[{i}]"),
            _ => "no rule allows it".to_string(),
        };
        tracing::warn!(principal = %c.principal, api = crate::codec::api_name(c.api),
            resource = resource_name(resource), name, operation = operation_label(op), by = %rule,
            "authorization denied");
    }
}

/// One request's decisions: every one counted, denials logged. Owned, so
/// that a request's answer can still ask (listings hide what the principal
/// may not describe).
pub struct Check {
    policy: Arc<Policy>,
    principal: String,
    api: kafka_protocol::messages::ApiKey,
    authorizer: Arc<Authorizer>,
}

impl Check {
    /// May the request's principal do `op` on `resource` `name`?
    pub fn may(&self, resource: Resource, name: &str, op: Operation) -> bool {
        let d = self.policy.decide(&self.principal, resource, name, op);
        let allowed = d == Decision::Allow;
        self.authorizer.count(resource, op, allowed);
        if !allowed {
            self.authorizer.denied(self, resource, name, op, d);
        }
        allowed
    }

    /// May it do `op` on the cluster?
    pub fn may_cluster(&self, op: Operation) -> bool {
        self.may(Resource::Cluster, "kafka-cluster", op)
    }

    /// May it do `op` on some resource of the type (see
    /// [`Policy::allows_some`])?
    pub fn may_some(&self, resource: Resource, op: Operation) -> bool {
        let allowed = self.policy.allows_some(&self.principal, resource, op);
        self.authorizer.count(resource, op, allowed);
        if !allowed {
            self.authorizer
                .denied(self, resource, "(any)", op, Decision::Deny(None));
        }
        allowed
    }

    /// A topic may be created by CREATE on the cluster or on the topic.
    pub fn may_create_topic(&self, name: &str) -> bool {
        self.quietly(Resource::Cluster, "kafka-cluster", Operation::Create)
            || self.may(Resource::Topic, name, Operation::Create)
    }

    /// A decision that is not counted or logged on its own (the first of
    /// two alternatives, or a check whose denial changes nothing visible).
    pub fn quietly(&self, resource: Resource, name: &str, op: Operation) -> bool {
        self.policy.allows(&self.principal, resource, name, op)
    }

    /// May the principal describe every group (ListGroups without hiding)?
    /// Asked without counting a denial: hiding is the answer then.
    pub fn sees_all_groups(&self) -> bool {
        self.quietly(Resource::Cluster, "kafka-cluster", Operation::Describe)
    }

    /// Whether the principal may see `name` in a listing (Metadata of all
    /// topics, ListGroups, OffsetFetch of all topics): counted, and a topic
    /// hidden is not logged as a denial (listings hide, they do not refuse).
    pub fn sees(&self, resource: Resource, name: &str) -> bool {
        let allowed = self.quietly(resource, name, Operation::Describe);
        self.authorizer
            .count(resource, Operation::Describe, allowed);
        allowed
    }

    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The operations the principal may do on a resource, as the bit field
    /// Kafka answers `include_*_authorized_operations` with (bit `1 << code`
    /// per AclOperation code: READ 3 … IDEMPOTENT_WRITE 12). Not counted:
    /// it is a description, not a request to do anything.
    pub fn operations(&self, resource: Resource, name: &str) -> i32 {
        operations_of(resource)
            .iter()
            .filter(|op| self.policy.allows(&self.principal, resource, name, **op))
            .fold(0, |bits, op| bits | (1 << acl_code(*op)))
    }
}

/// Kafka's AclOperation code of an operation.
fn acl_code(op: Operation) -> i32 {
    match op {
        Operation::Read => 3,
        Operation::Write => 4,
        Operation::Create => 5,
        Operation::Delete => 6,
        Operation::Alter => 7,
        Operation::Describe => 8,
        Operation::DescribeConfigs => 10,
        Operation::AlterConfigs => 11,
        Operation::IdempotentWrite => 12,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(section: &str) -> Result<Option<Policy>, Vec<ConfigError>> {
        let text = format!(
            "cluster_id: c\nlisten: {{bind: '127.0.0.1:19092'}}\nsites: [{{name: a, bootstrap: ['127.0.0.1:9092']}}]\n{section}"
        );
        let config: Config = serde_norway::from_str(&text).expect("parses");
        load(&config)
    }

    #[test]
    fn rules_load_with_matchers_and_all() {
        let p = load_text(
            "authorization:\n  super_users: ['User:admin']\n  rules:\n    - {principals: ['User:app'], topics: {prefix: 'orders.'}, operations: [read, write]}\n    - {principals: ['User:*'], permission: deny, groups: {exact: 'payments'}, operations: [all]}\n    - {principals: ['User:app'], cluster: true, operations: [idempotent_write]}\n",
        )
        .expect("valid")
        .expect("configured");
        assert_eq!(p.rules.len(), 3);
        assert!(p.allows("User:app", Resource::Topic, "orders.eu", Operation::Write));
        assert!(!p.allows("User:app", Resource::Group, "payments", Operation::Read));
        assert!(p.rules[1].operations.is_none(), "all");
        assert!(load_text("").expect("valid").is_none());
    }

    #[test]
    fn each_problem_is_named_by_its_key() {
        let errors = load_text(
            "authorization:\n  super_users: ['admin']\n  rules:\n    - {principals: ['bob'], topics: {prefix: 'a'}, operations: [read]}\n    - {principals: ['User:x'], topics: {prefix: 'a'}, groups: {exact: 'g'}, operations: [read]}\n    - {principals: ['User:x'], transactional_ids: {exact: 't'}, operations: [read]}\n    - {principals: ['User:x'], topics: {regex: '('}, operations: [read]}\n    - {principals: [], cluster: true, operations: []}\n",
        )
        .err()
        .expect("invalid");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "authorization.super_users[0]",
                "authorization.rules[0].principals[0]",
                "authorization.rules[1].topics",
                "authorization.rules[2].operations[0]",
                "authorization.rules[3].topics",
                "authorization.rules[4].principals",
                "authorization.rules[4].operations",
            ],
            "{errors:?}"
        );
        assert!(
            errors[3].reason.contains("write, describe"),
            "{}",
            errors[3]
        );
    }

    #[test]
    fn denials_are_counted_and_the_principal_defaults_to_anonymous() {
        let metrics = Arc::new(Metrics::new());
        let p = load_text(
            "authorization:\n  rules:\n    - {principals: ['User:app'], topics: {exact: 'orders'}, operations: [write]}\n",
        )
        .expect("valid");
        let a = Arc::new(Authorizer::new(p, metrics.clone()));
        let api = kafka_protocol::messages::ApiKey::Produce;
        let c = a.request(Some("app"), api).expect("enabled");
        assert!(c.may(Resource::Topic, "orders", Operation::Write));
        let anon = a.request(None, api).expect("enabled");
        assert_eq!(anon.principal(), ANONYMOUS);
        for _ in 0..(LOGS_PER_WINDOW + 5) {
            assert!(!anon.may(Resource::Topic, "orders", Operation::Write));
        }
        let m = &metrics.security.authorizations;
        assert_eq!(m.with_label_values(&["topic", "write", "allow"]).get(), 1);
        assert_eq!(
            m.with_label_values(&["topic", "write", "deny"]).get(),
            u64::from(LOGS_PER_WINDOW) + 5
        );
        assert_eq!(a.log.lock().map(|w| w.suppressed).unwrap_or(0), 5);
        // READ 3, WRITE 4 (granted) and DESCRIBE 8 (implied).
        assert_eq!(
            c.operations(Resource::Topic, "orders"),
            1 << 4 | 1 << 8,
            "write and the describe it implies"
        );
        a.set(None);
        assert!(a.request(Some("app"), api).is_none(), "reloaded away");
    }
}
