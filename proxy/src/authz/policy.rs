//! Authorization decisions: whether a principal may perform an operation on
//! a resource, decided as Kafka's ACL authorizer (StandardAuthorizer)
//! decides it, over rules whose resource names use the routes' matchers.
//!
//! * Super users may do anything.
//! * A matching DENY rule wins over any ALLOW.
//! * ALLOW of READ, WRITE, DELETE or ALTER also allows DESCRIBE; ALLOW of
//!   ALTER_CONFIGS also allows DESCRIBE_CONFIGS. DENY implies nothing more
//!   than it names.
//! * A resource no rule names at all follows `allow_if_no_rule` (Kafka's
//!   `allow.everyone.if.no.acl.found`, false by default); a resource some
//!   rule names is denied unless an ALLOW matches.
//! * Principals are `User:<name>`; `User:*` matches every principal, the
//!   unauthenticated `User:ANONYMOUS` included.
//!
//! This module only decides: the rules come from the config (`authz`), and
//! the pipeline's `authorize` stage asks per request what each API needs.

use crate::route::topic_match::TopicMatch;

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Topic,
    Group,
    TransactionalId,
    Cluster,
}

/// Kafka's ACL operations (ALL is a rule's "every operation").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Allow,
    Deny,
}

/// One rule: principals, permission, resources and operations.
#[derive(Clone)]
pub struct Rule {
    /// `User:<name>` or `User:*`.
    pub principals: Vec<String>,
    pub permission: Permission,
    pub resource: Resource,
    /// The resource names it covers; `None`: all of them (and the cluster).
    pub names: Option<TopicMatch>,
    /// `None`: every operation (ALL).
    pub operations: Option<Vec<Operation>>,
}

impl Rule {
    fn names(&self, resource: Resource, name: &str) -> bool {
        self.resource == resource && self.names.as_ref().is_none_or(|m| m.matches(name))
    }

    fn for_principal(&self, principal: &str) -> bool {
        self.principals
            .iter()
            .any(|p| p == principal || p == "User:*")
    }

    /// Whether the rule's operations cover `op` for this permission.
    fn covers(&self, op: Operation) -> bool {
        let Some(ops) = &self.operations else {
            return true;
        };
        ops.iter().any(|&granted| {
            granted == op || (self.permission == Permission::Allow && implies(granted, op))
        })
    }
}

/// ALLOW of `granted` also allows `op`.
fn implies(granted: Operation, op: Operation) -> bool {
    use Operation::*;
    match op {
        Describe => matches!(granted, Read | Write | Delete | Alter),
        DescribeConfigs => granted == AlterConfigs,
        _ => false,
    }
}

/// The rules and how they are applied.
#[derive(Clone, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub super_users: Vec<String>,
    pub allow_if_no_rule: bool,
}

/// A decision and the rule that made it (for denial logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by rule `Some(i)`, or because no ALLOW matched.
    Deny(Option<usize>),
}

impl Policy {
    /// May `principal` (`User:<name>`) do `op` on `resource` `name`?
    pub fn decide(
        &self,
        principal: &str,
        resource: Resource,
        name: &str,
        op: Operation,
    ) -> Decision {
        if self.super_users.iter().any(|s| s == principal) {
            return Decision::Allow;
        }
        let mut named = false;
        let mut allowed = false;
        for (i, r) in self.rules.iter().enumerate() {
            if !r.names(resource, name) {
                continue;
            }
            named = true;
            if !r.for_principal(principal) || !r.covers(op) {
                continue;
            }
            match r.permission {
                Permission::Deny => return Decision::Deny(Some(i)),
                Permission::Allow => allowed = true,
            }
        }
        if allowed || (!named && self.allow_if_no_rule) {
            Decision::Allow
        } else {
            Decision::Deny(None)
        }
    }

    pub fn allows(&self, principal: &str, resource: Resource, name: &str, op: Operation) -> bool {
        self.decide(principal, resource, name, op) == Decision::Allow
    }

    /// May `principal` do `op` on some resource of this type? Kafka's
    /// "authorize by resource type", which lets an idempotent producer
    /// initialise with WRITE on any topic instead of IDEMPOTENT_WRITE on the
    /// cluster: an ALLOW naming the principal (or everyone) that no DENY of
    /// every such resource undoes, or no rule for the type at all where that
    /// allows.
    pub fn allows_some(&self, principal: &str, resource: Resource, op: Operation) -> bool {
        if self.super_users.iter().any(|s| s == principal) {
            return true;
        }
        let typed: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.resource == resource)
            .collect();
        if typed.is_empty() {
            return self.allow_if_no_rule;
        }
        let mine = |r: &&&Rule| r.for_principal(principal) && r.covers(op);
        let denied_all = typed
            .iter()
            .filter(mine)
            .any(|r| r.permission == Permission::Deny && r.names.is_none());
        !denied_all
            && typed
                .iter()
                .filter(mine)
                .any(|r| r.permission == Permission::Allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::*;

    fn rule(
        who: &str,
        permission: Permission,
        resource: Resource,
        names: Option<TopicMatch>,
        ops: Option<Vec<Operation>>,
    ) -> Rule {
        Rule {
            principals: vec![who.to_string()],
            permission,
            resource,
            names,
            operations: ops,
        }
    }

    fn policy() -> Policy {
        Policy {
            rules: vec![
                rule(
                    "User:orders-app",
                    Permission::Allow,
                    Resource::Topic,
                    Some(TopicMatch::prefix("orders.").unwrap()),
                    Some(vec![Read, Write]),
                ),
                rule(
                    "User:*",
                    Permission::Deny,
                    Resource::Topic,
                    Some(TopicMatch::exact("orders.audit").unwrap()),
                    Some(vec![Write]),
                ),
                rule(
                    "User:orders-app",
                    Permission::Allow,
                    Resource::Group,
                    Some(TopicMatch::id_prefix("orders-").unwrap()),
                    None,
                ),
            ],
            super_users: vec!["User:admin".into()],
            allow_if_no_rule: false,
        }
    }

    #[test]
    fn allow_implies_describe_and_deny_wins() {
        let p = policy();
        let app = "User:orders-app";
        assert!(p.allows(app, Resource::Topic, "orders.eu", Write));
        assert!(
            p.allows(app, Resource::Topic, "orders.eu", Describe),
            "READ/WRITE imply DESCRIBE"
        );
        assert!(!p.allows(app, Resource::Topic, "orders.eu", Delete));
        assert_eq!(
            p.decide(app, Resource::Topic, "orders.audit", Write),
            Decision::Deny(Some(1)),
            "a DENY wins over a matching ALLOW"
        );
        assert!(
            p.allows(app, Resource::Topic, "orders.audit", Read),
            "DENY of WRITE denies only WRITE"
        );
        assert!(
            p.allows(app, Resource::Group, "orders-billing", Read),
            "ALL"
        );
        assert!(!p.allows(app, Resource::Group, "payments", Read));
    }

    #[test]
    fn others_are_denied_where_rules_exist_and_super_users_pass() {
        let p = policy();
        assert!(!p.allows("User:intruder", Resource::Topic, "orders.eu", Read));
        assert!(!p.allows("User:ANONYMOUS", Resource::Topic, "orders.eu", Describe));
        assert!(p.allows("User:admin", Resource::Topic, "orders.audit", Write));
        assert!(p.allows("User:admin", Resource::Cluster, "kafka-cluster", Alter));
    }

    #[test]
    fn some_topic_writable_is_enough_for_an_idempotent_producer() {
        let p = policy();
        assert!(p.allows_some("User:orders-app", Resource::Topic, Write));
        assert!(!p.allows_some("User:intruder", Resource::Topic, Write));
        assert!(p.allows_some("User:admin", Resource::Topic, Write));
        let mut open = Policy {
            allow_if_no_rule: true,
            ..Default::default()
        };
        assert!(open.allows_some("User:x", Resource::Topic, Write));
        open.rules.push(rule(
            "User:x",
            Permission::Deny,
            Resource::Topic,
            None,
            Some(vec![Write]),
        ));
        assert!(!open.allows_some("User:x", Resource::Topic, Write));
    }

    #[test]
    fn resources_no_rule_names_follow_the_default() {
        let mut p = policy();
        assert!(!p.allows("User:x", Resource::Topic, "payments", Read));
        p.allow_if_no_rule = true;
        assert!(p.allows("User:x", Resource::Topic, "payments", Read));
        assert!(
            !p.allows("User:x", Resource::Topic, "orders.eu", Read),
            "a resource some rule names is not open by default"
        );
        assert!(p.allows("User:x", Resource::TransactionalId, "tx-1", Write));
    }

    #[test]
    fn alter_configs_implies_describe_configs_only_when_allowed() {
        let p = Policy {
            rules: vec![
                rule(
                    "User:ops",
                    Permission::Allow,
                    Resource::Cluster,
                    None,
                    Some(vec![AlterConfigs]),
                ),
                rule(
                    "User:ro",
                    Permission::Deny,
                    Resource::Cluster,
                    None,
                    Some(vec![AlterConfigs]),
                ),
                rule(
                    "User:ro",
                    Permission::Allow,
                    Resource::Cluster,
                    None,
                    Some(vec![DescribeConfigs]),
                ),
            ],
            ..Default::default()
        };
        assert!(p.allows(
            "User:ops",
            Resource::Cluster,
            "kafka-cluster",
            DescribeConfigs
        ));
        assert!(p.allows(
            "User:ro",
            Resource::Cluster,
            "kafka-cluster",
            DescribeConfigs
        ));
        assert!(!p.allows("User:ro", Resource::Cluster, "kafka-cluster", AlterConfigs));
    }
}
