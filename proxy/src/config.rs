//! The YAML configuration: schema, defaults and validation.
//!
//! Parsing is strict (unknown keys are errors) because a typo in a proxy config
//! silently falling back to a default is how outages start. Every problem is
//! reported with the dotted key path that caused it, and `validate` collects all
//! problems instead of stopping at the first, so `switchyard check` can show an
//! operator the whole list in one go.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `listen.virtual_nodes` or `sites[0].bootstrap[1]`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

/// All problems found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster id every client sees, whatever upstream is active.
    pub cluster_id: String,
    pub listen: ListenConfig,
    /// More listeners (each its own bootstrap port and virtual node ports),
    /// so routes can tell, e.g., internal from external clients apart.
    #[serde(default)]
    pub listeners: Vec<ExtraListenerConfig>,
    pub sites: Vec<SiteConfig>,
    /// The site serving every topic no route matches. Optional when there is
    /// exactly one site.
    #[serde(default)]
    pub default_site: Option<String>,
    /// Which site serves which topics, renaming, and tee targets.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub tee: TeeConfig,
    /// Site health checks and failover behaviour (routes opt in with
    /// `routes[].failover`).
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub metadata: MetadataConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// WASM policy plugins loaded at start (and on a config reload); routes
    /// name them in `routes[].plugins` and `routes[].tee[].plugins`.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// Host-owned conflict state of conflict plugins.
    #[serde(default)]
    pub plugin_state: PluginStateConfig,
    /// ACL rules Switchyard enforces itself, per client principal
    /// (reloadable). Absent: every request passes to the sites, whose own
    /// ACLs (for Switchyard's identity there) still apply.
    #[serde(default)]
    pub authorization: Option<AuthorizationConfig>,
}

/// Kafka-style ACLs checked by Switchyard (see `authz`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// Principals (`User:<name>`) allowed everything.
    #[serde(default)]
    pub super_users: Vec<String>,
    /// What a resource no rule names allows (Kafka's
    /// `allow.everyone.if.no.acl.found`): false, denied.
    #[serde(default)]
    pub allow_if_no_rule: bool,
    #[serde(default)]
    pub rules: Vec<AclRuleConfig>,
}

/// One ACL rule: who, allow or deny, which resources, which operations.
/// Exactly one of `topics`, `groups`, `transactional_ids`, `cluster`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    /// `User:<name>`, or `User:*` for everyone (unauthenticated clients,
    /// `User:ANONYMOUS`, included).
    pub principals: Vec<String>,
    #[serde(default)]
    pub permission: AclPermission,
    #[serde(default)]
    pub topics: Option<MatchConfig>,
    #[serde(default)]
    pub groups: Option<MatchConfig>,
    #[serde(default)]
    pub transactional_ids: Option<MatchConfig>,
    #[serde(default)]
    pub cluster: bool,
    /// Kafka's operation names in lower case (`read`, `write`, `create`,
    /// `delete`, `alter`, `describe`, `describe_configs`, `alter_configs`,
    /// `idempotent_write`), or `all`.
    pub operations: Vec<AclOperation>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AclPermission {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AclOperation {
    All,
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

/// What the data path does with a batch when its plugin fails (trap,
/// deadline, memory, an error it returned, malformed decisions, crashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The batch passes as if the plugin were not there.
    FailOpen,
    /// The batch's partition gets a Kafka error; the connection stays.
    FailClosed,
}

impl FailurePolicy {
    pub fn name(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "fail-open",
            FailurePolicy::FailClosed => "fail-closed",
        }
    }
}

/// Largest plugin accepted (a component is typically 30-300 KiB).
pub const MAX_PLUGIN_BYTES: usize = 16 << 20;

/// Largest memory cap a plugin may ask for (the plugin host's pooling
/// allocator reserves address space for this much per instance slot).
pub const MAX_PLUGIN_MEMORY_BYTES: usize = 256 << 20;

/// 1-64 of `a-z A-Z 0-9 . _ -` (it appears in URLs and metric labels).
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The name routes use (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// The component (`.wasm`); relative to the config file's directory.
    pub path: String,
    /// Passed to the plugin's `init`: a string as is, anything else as JSON.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// `fail-open` (default: the batch passes unchanged when the plugin
    /// fails) or `fail-closed` (the partition gets an error).
    #[serde(default = "default_failure")]
    pub failure: FailurePolicy,
    /// CPU time one call may take.
    #[serde(default = "default_plugin_timeout_ms")]
    pub timeout_ms: u64,
    /// Memory one instance may use.
    #[serde(default = "default_plugin_memory_mb")]
    pub memory_mb: u64,
    /// Traps within a minute after which the plugin is not restarted.
    #[serde(default = "default_crash_cap")]
    pub crash_cap: u32,
}

fn default_failure() -> FailurePolicy {
    FailurePolicy::FailOpen
}
fn default_plugin_timeout_ms() -> u64 {
    10
}
fn default_plugin_memory_mb() -> u64 {
    16
}
fn default_crash_cap() -> u32 {
    10
}

impl PluginConfig {
    /// The config string given to `init`.
    pub fn init_config(&self) -> String {
        match &self.config {
            None => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginStateConfig {
    /// Versions kept in memory per site; past it a tenth are forgotten.
    pub max_keys: usize,
}

impl Default for PluginStateConfig {
    fn default() -> Self {
        PluginStateConfig {
            max_keys: 1_000_000,
        }
    }
}

/// Plugins of a route, by stage, in the order they run.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutePluginsConfig {
    /// On clients' Produce requests, before routing and tee.
    #[serde(default)]
    pub produce: Vec<String>,
    /// On Fetch answers, before consumers see them.
    #[serde(default)]
    pub fetch: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Listener name routes refer to (`routes[].listeners`).
    #[serde(default = "default_listener_name")]
    pub name: String,
    /// Bootstrap listener. Virtual node `i` listens on the same host at `port + 1 + i`.
    pub bind: String,
    /// Host name clients are told to connect to. Defaults to the bind host.
    #[serde(default)]
    pub advertised_host: Option<String>,
    /// Number of virtual brokers presented to clients (node ids `0..n`).
    #[serde(default = "default_virtual_nodes")]
    pub virtual_nodes: u16,
    /// Rack reported for the virtual brokers.
    #[serde(default)]
    pub rack: Option<String>,
    /// TLS for this listener's clients (all its ports); absent: plaintext.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// SASL authentication of this listener's clients; absent: none.
    #[serde(default)]
    pub sasl: Option<ListenerSaslConfig>,
}

/// SASL terminated by Switchyard on a listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSaslConfig {
    /// Mechanisms offered: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`,
    /// `OAUTHBEARER`.
    pub mechanisms: Vec<SaslMechanism>,
    /// The credentials file (`switchyard credentials` writes it); required
    /// with PLAIN or SCRAM.
    #[serde(default)]
    pub credentials: Option<String>,
    /// How OAUTHBEARER tokens are validated; required with OAUTHBEARER.
    #[serde(default)]
    pub oauthbearer: Option<OauthBearerConfig>,
    /// How long an authentication lasts (KIP-368): clients re-authenticate
    /// before it ends, and a connection whose session ended is closed at its
    /// next request. 0: no limit.
    #[serde(default)]
    pub session_lifetime_ms: u64,
}

/// OAUTHBEARER on a listener: JWTs signed by a key of a local JWKS file,
/// from one issuer, for one audience, not expired.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OauthBearerConfig {
    /// The JSON Web Key Set (the identity provider's public keys), re-read
    /// when it changes.
    pub jwks_file: String,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// An `aud` every token must carry (one of its audiences).
    pub audience: String,
    /// The claim naming the principal (`User:<value>`). Default `sub`.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// Clock difference tolerated on `exp` and `nbf`. Default 30000.
    #[serde(default = "default_clock_skew_ms")]
    pub clock_skew_ms: u64,
}

fn default_principal_claim() -> String {
    "sub".into()
}

fn default_clock_skew_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// Client-facing TLS (rustls: TLS 1.2 and 1.3).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// PEM file with the server certificate chain, leaf first.
    pub cert: String,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Whether clients present certificates (mTLS): `none`, `optional`
    /// (verified when presented) or `required`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs client certificates must chain to (required
    /// unless `client_auth` is `none`).
    #[serde(default)]
    pub client_ca: Option<String>,
    /// How a client certificate names the client's principal.
    #[serde(default)]
    pub principal: PrincipalFrom,
    /// Oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// SNI routing: every virtual broker shares the bootstrap port, named
    /// `broker-<id>.<sni_domain>` in metadata (the certificate must cover
    /// `*.<sni_domain>`); no per-node ports are opened.
    #[serde(default)]
    pub sni_domain: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

/// Which part of a client certificate is the principal (`User:<value>`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalFrom {
    /// The subject's common name (CN).
    #[default]
    SubjectCn,
    /// The whole subject, RFC 4514 (`CN=app,O=Shop`), as Kafka's default
    /// SSL principal builder gives it.
    Subject,
    /// The first DNS subject alternative name.
    SanDns,
    /// The first URI subject alternative name (e.g. a SPIFFE id).
    SanUri,
    /// The first e-mail subject alternative name.
    SanEmail,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// TLS from Switchyard to a site's brokers (client traffic, tee, health
/// checks and state topics alike).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SiteTlsConfig {
    /// PEM bundle of the CAs the brokers' certificates chain to; absent:
    /// the system's trusted roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// Client certificate chain (PEM) for brokers that require mTLS.
    #[serde(default)]
    pub cert: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key: Option<String>,
    /// The name brokers' certificates are checked against, for every broker
    /// of the site; absent: each broker's own host name (bootstrap address,
    /// then what its metadata advertises), as Kafka's clients verify it.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraListenerConfig {
    pub name: String,
    /// Bootstrap address; virtual node `i` listens on `port + 1 + i`
    /// (`listen.virtual_nodes` nodes, as for the main listener).
    pub bind: String,
    #[serde(default)]
    pub advertised_host: Option<String>,
    /// TLS for this listener's clients; absent: plaintext.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// SASL authentication of this listener's clients; absent: none.
    #[serde(default)]
    pub sasl: Option<ListenerSaslConfig>,
}

/// Selects names by exactly one of: exact name, prefix, or regex (matched
/// against the whole name).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Topics (as clients name them) this route serves.
    pub topics: MatchConfig,
    /// Only clients connected to these listeners; all listeners when absent.
    #[serde(default)]
    pub listeners: Option<Vec<String>>,
    /// Only clients whose client id matches; all clients when absent.
    #[serde(default)]
    pub client_ids: Option<MatchConfig>,
    /// The site holding these topics.
    pub site: String,
    /// Physical topic name on `site`: `identity` (default), `mm2`
    /// (`{site}.{topic}`), `suffix` (`{topic}-{site}`) or a template with
    /// `{topic}` once and optionally `{site}`.
    #[serde(default)]
    pub naming: Option<String>,
    /// Consumer groups and transactional ids coordinated on this route's site;
    /// others are coordinated on `default_site`.
    #[serde(default)]
    pub groups: Option<MatchConfig>,
    /// Clusters every record written through this route is copied to.
    #[serde(default)]
    pub tee: Vec<TeeTargetConfig>,
    /// Active-passive failover of this route to one of its tee targets.
    #[serde(default)]
    pub failover: Option<RouteFailoverConfig>,
    /// WASM plugins on this route's produce and fetch paths.
    #[serde(default)]
    pub plugins: RoutePluginsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFailoverConfig {
    /// The site taking over the route's topics and groups; must be one of the
    /// route's tee targets (that is how its data gets there).
    pub standby: String,
    /// Fail over on its own when the primary stays unhealthy past
    /// `failover.health.unhealthy_after` checks. Failback is always manual.
    #[serde(default = "yes")]
    pub automatic: bool,
    /// MirrorMaker 2 alias of the route's site: checkpoints are read from
    /// `<alias>.checkpoints.internal` on the standby. Defaults to the site name.
    #[serde(default)]
    pub mm2_source_alias: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Period of the active check of every site (connect, ApiVersions, Metadata).
    pub interval_ms: u64,
    /// One check (connect and both round trips) must finish within this.
    pub timeout_ms: u64,
    /// Consecutive failed checks before a site counts as down. Errors seen on
    /// live traffic trigger an immediate check instead of waiting for the
    /// next period, so a dead site is detected in about
    /// `unhealthy_after x timeout_ms` (connection refused fails at once).
    pub unhealthy_after: u32,
    /// Consecutive good checks before a down site counts as up again.
    pub healthy_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 1_000,
            timeout_ms: 1_000,
            unhealthy_after: 3,
            healthy_after: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub health: HealthConfig,
    /// After a switch, fetches from consumers that were group members on the
    /// old site are held (retriable error) until they rejoined on the new
    /// site, at most this long.
    pub fence_timeout_ms: u64,
    /// A switch waits this long at most for produce requests still in flight
    /// to the old site before it flips.
    pub drain_timeout_ms: u64,
    /// A planned switch (old site healthy) waits this long at most for the
    /// tee to catch up; if it does not, the switch is refused and nothing changes.
    pub planned_timeout_ms: u64,
    /// Translated group offsets are committed on the standby at most this often.
    pub shadow_commit_interval_ms: u64,
    /// Timestamp translation (no runs, no MM2 checkpoint) starts this much
    /// before the last consumed record's timestamp, to cover records whose
    /// timestamps are out of order.
    pub timestamp_slack_ms: i64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            health: HealthConfig::default(),
            fence_timeout_ms: 30_000,
            drain_timeout_ms: 5_000,
            planned_timeout_ms: 10_000,
            shadow_commit_interval_ms: 1_000,
            timestamp_slack_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TeeMode {
    /// The client's ack waits for the source and this target.
    Sync,
    /// The client's ack waits for the source only; the target follows.
    #[default]
    Async,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TeeStart {
    /// A topic with no tee progress yet is copied from its first record.
    #[default]
    Earliest,
    /// ... or only from records written after the tee first sees it.
    Latest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeTargetConfig {
    pub site: String,
    #[serde(default)]
    pub mode: TeeMode,
    /// Topic name on the target, as for `routes[].naming`; `{site}` is the
    /// source site, `{target}` the target site.
    #[serde(default)]
    pub naming: Option<String>,
    #[serde(default)]
    pub start: TeeStart,
    /// WASM plugins on the copies to this target (conflict rules, filters).
    #[serde(default)]
    pub plugins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeeConfig {
    /// Longest a tee's fetch long-polls the source for new records (new
    /// records end the wait at once); also the idle retry interval.
    pub poll_interval_ms: u64,
    /// Bytes fetched from the source per partition per round.
    pub max_fetch_bytes: i32,
    /// First retry delay after a failed write to a target; doubles per failure.
    pub retry_backoff_ms: u64,
    pub max_retry_backoff_ms: u64,
    /// Writes of a record the target rejects as invalid (too large, corrupt,
    /// policy) before it is skipped and reported; retriable errors and
    /// outages are retried forever.
    pub reject_attempts: u32,
    /// Longest a sync-tee produce waits for its targets (also bounded by the
    /// client's own produce timeout).
    pub sync_timeout_ms: u64,
    /// Offset-sync runs are persisted at least this often while they grow.
    pub offset_sync_interval_ms: u64,
}

impl Default for TeeConfig {
    fn default() -> Self {
        TeeConfig {
            poll_interval_ms: 500,
            max_fetch_bytes: 4 * 1024 * 1024,
            retry_backoff_ms: 100,
            max_retry_backoff_ms: 2_000,
            reject_attempts: 5,
            sync_timeout_ms: 30_000,
            offset_sync_interval_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    /// `host:port` addresses of the site's brokers used to discover the cluster.
    pub bootstrap: Vec<String>,
    /// Given to plugins with the site (e.g. the site-priority conflict rule:
    /// higher wins). Default 0.
    #[serde(default)]
    pub priority: u32,
    /// TLS to the site's brokers; absent: plaintext.
    #[serde(default)]
    pub tls: Option<SiteTlsConfig>,
    /// SASL toward the site's brokers (Switchyard's own identity there);
    /// absent: none.
    #[serde(default)]
    pub sasl: Option<SiteSaslConfig>,
    /// Client principals (`User:<name>`, as authenticated by a listener's
    /// SASL or TLS) with an identity of their own on this site: their
    /// traffic authenticates as it instead of `sasl`, so the site's ACLs
    /// and quotas apply per client. The tee, health checks and state topics
    /// always use `sasl`.
    #[serde(default)]
    pub principals: std::collections::BTreeMap<String, SiteSaslConfig>,
}

/// How Switchyard authenticates to a site's brokers, on every connection
/// (client traffic, tee, health checks, state topics). Secrets are named,
/// never written in the config: an environment variable or a file.
#[derive(Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SiteSaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub mechanism: SiteSaslMechanism,
    /// The user (PLAIN, SCRAM).
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password (PLAIN, SCRAM).
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (trailing newline ignored), read for
    /// every new connection: replace it to rotate the password.
    #[serde(default)]
    pub password_file: Option<String>,
    /// OAUTHBEARER: a file holding the token (a JWT), read for every new
    /// connection (a token refresher rewrites it).
    #[serde(default)]
    pub token_file: Option<String>,
    /// OAUTHBEARER: a command printing the token on stdout (argv, no
    /// shell), run for a new connection when the last token is older than
    /// `token_refresh_ms`.
    #[serde(default)]
    pub token_command: Option<Vec<String>>,
    /// How long a token from `token_command` is reused. Default 60000.
    #[serde(default = "default_token_refresh_ms")]
    pub token_refresh_ms: u64,
}

fn default_token_refresh_ms() -> u64 {
    60_000
}

/// Never prints a secret, only where it comes from.
impl std::fmt::Debug for SiteSaslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteSaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("token_file", &self.token_file)
            .field("token_command", &self.token_command)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum SiteSaslMechanism {
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SiteSaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SiteSaslMechanism::Plain => "PLAIN",
            SiteSaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SiteSaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SiteSaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request or response frame accepted, in bytes (Kafka's
    /// `socket.request.max.bytes` defaults to 100 MiB).
    pub max_frame_bytes: u32,
    /// Client connections accepted at once, over all listeners.
    pub max_connections: u32,
    /// Requests read from one client before its responses are written; the
    /// reader stops reading (TCP backpressure) past this.
    pub max_inflight_per_connection: u32,
    /// A client connection with no request for this long is closed, as Kafka's
    /// `connections.max.idle.ms` does.
    pub idle_timeout_ms: u64,
    /// Threads client connections run on (`server::IoThreads`); 0: one per CPU.
    pub io_threads: u32,
    /// Memory all client frames together may hold beyond their first 16 KiB
    /// (`codec::frame_io::Budget`; Kafka's `queued.max.request.bytes`).
    pub max_request_bytes_in_flight: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_inflight_per_connection: 64,
            idle_timeout_ms: 600_000,
            io_threads: 0,
            max_request_bytes_in_flight: 512 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// TCP connect to an upstream broker.
    pub connect_ms: u64,
    /// Upper bound on one upstream request (a Fetch may legitimately wait
    /// `max_wait_ms`; this must be larger than clients' fetch waits).
    pub request_ms: u64,
    /// After SIGTERM, how long in-flight requests may take before exit.
    pub shutdown_grace_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect_ms: 5_000,
            request_ms: 30_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// How often the upstream cluster layout is refreshed in the background.
    pub refresh_interval_ms: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            refresh_interval_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin HTTP listener; loopback by default because it can change routing.
    pub bind: String,
    /// HTTPS for the admin listener (the keys of a listener's `tls`); with
    /// `client_auth`, a verified client certificate authorizes a request.
    pub tls: Option<ListenerTlsConfig>,
    /// A file of bearer tokens (one per line, `#` comments), any of which
    /// authorizes a request (`Authorization: Bearer <token>`); re-read when
    /// it changes.
    pub token_file: Option<String>,
    /// `/metrics` answered without authentication (for scrapers without
    /// credentials). `/healthz` and `/readyz` always are.
    pub open_metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: "127.0.0.1:9644".into(),
            tls: None,
            token_file: None,
            open_metrics: false,
        }
    }
}

/// Shortest admin token accepted: a guessable token is no protection.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 24;

/// The tokens of an admin token file (blank lines and `#` comments
/// skipped), or why it is unusable.
pub fn admin_tokens(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        return Err(format!("{path} holds no token"));
    }
    if let Some((i, _)) = tokens
        .iter()
        .enumerate()
        .find(|(_, t)| t.chars().count() < MIN_ADMIN_TOKEN_CHARS)
    {
        return Err(format!(
            "{path}: token {} is shorter than {MIN_ADMIN_TOKEN_CHARS} characters",
            i + 1
        ));
    }
    Ok(tokens)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `switchyard=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

fn default_virtual_nodes() -> u16 {
    3
}

fn default_listener_name() -> String {
    "default".into()
}

/// A listener after validation.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub bind: SocketAddr,
    pub advertised_host: String,
    /// Its TLS, and the config key it sits under (for errors).
    pub tls: Option<(String, ListenerTlsConfig)>,
    /// Its SASL, and the config key it sits under.
    pub sasl: Option<(String, ListenerSaslConfig)>,
}

/// A config that parsed and validated, with addresses resolved.
#[derive(Debug, Clone)]
pub struct Validated {
    pub config: Config,
    pub bootstrap_bind: SocketAddr,
    pub admin_bind: SocketAddr,
    pub advertised_host: String,
    /// Index into `config.sites` of the site serving unrouted topics.
    pub active_site: usize,
    /// Every listener, the main one (`listen`) first.
    pub listeners: Vec<ListenerSpec>,
    /// The file it was read from (`load`), for reloads.
    pub path: Option<std::path::PathBuf>,
    /// The text it was parsed from.
    pub text: String,
}

impl Validated {
    pub fn active_site(&self) -> &SiteConfig {
        &self.config.sites[self.active_site]
    }
}

/// Checks of what other modules build from a config (the routes:
/// `route::check`), given the config and the index of its default site.
/// They run with the config's own checks, so one round reports every
/// problem; config itself stays plain data that does not know them.
pub type Check = fn(&Config, usize) -> Vec<ConfigError>;

/// Reads, parses and validates a config file.
pub fn load(path: &Path, check: Check) -> Result<Validated, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            key: String::new(),
            reason: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    let mut v = parse_at(&text, path.parent(), check)?;
    v.path = Some(path.to_path_buf());
    Ok(v)
}

/// Parses and validates config text.
pub fn parse(text: &str, check: Check) -> Result<Validated, ConfigErrors> {
    parse_at(text, None, check)
}

/// Parses and validates config text read from a file in `dir`: relative
/// `plugins[].path`s and TLS file paths are relative to that directory (a
/// config and its plugins and certificates ship together), else to the
/// working directory.
fn parse_at(text: &str, dir: Option<&Path>, check: Check) -> Result<Validated, ConfigErrors> {
    let de = serde_norway::Deserializer::from_str(text);
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let mut inner = e.into_inner().to_string();
        // The YAML error repeats (part of) the path; the key column has it.
        if let Some((head, rest)) = inner.split_once(": ") {
            if key.starts_with(head) {
                inner = rest.to_string();
            }
        }
        ConfigErrors(vec![ConfigError {
            key: if key == "." { String::new() } else { key },
            reason: inner,
        }])
    })?;
    if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) {
        let resolve = |p: &mut String| {
            if Path::new(p.as_str()).is_relative() {
                *p = dir.join(p.as_str()).to_string_lossy().into_owned();
            }
        };
        for p in &mut config.plugins {
            resolve(&mut p.path);
        }
        // Certificates, keys and CA bundles, likewise.
        let listeners = std::iter::once(config.listen.tls.as_mut())
            .chain(config.listeners.iter_mut().map(|l| l.tls.as_mut()));
        for t in listeners.flatten() {
            resolve(&mut t.cert);
            resolve(&mut t.key);
            t.client_ca.iter_mut().for_each(resolve);
        }
        let sasl = std::iter::once(config.listen.sasl.as_mut())
            .chain(config.listeners.iter_mut().map(|l| l.sasl.as_mut()));
        for t in sasl.flatten() {
            t.credentials.iter_mut().for_each(resolve);
            if let Some(o) = t.oauthbearer.as_mut() {
                resolve(&mut o.jwks_file);
            }
        }
        for t in config.sites.iter_mut().filter_map(|s| s.tls.as_mut()) {
            for p in [&mut t.ca, &mut t.cert, &mut t.key] {
                p.iter_mut().for_each(resolve);
            }
        }
        if let Some(t) = config.admin.tls.as_mut() {
            resolve(&mut t.cert);
            resolve(&mut t.key);
            t.client_ca.iter_mut().for_each(resolve);
        }
        config.admin.token_file.iter_mut().for_each(resolve);
        let identities = config
            .sites
            .iter_mut()
            .flat_map(|s| s.sasl.iter_mut().chain(s.principals.values_mut()));
        for t in identities {
            for p in [&mut t.password_file, &mut t.token_file] {
                p.iter_mut().for_each(resolve);
            }
        }
    }
    let mut v = validate(config, check)?;
    v.text = text.to_string();
    Ok(v)
}

/// Whether two config texts differ in anything but what a reload can apply
/// (`plugins`, `plugin_state` is not reloadable, `routes[].plugins`,
/// `routes[].tee[].plugins`, `authorization`). Returns the top-level keys that differ.
pub fn restart_needed(old: &str, new: &str) -> Vec<String> {
    fn strip(text: &str) -> Option<serde_norway::Mapping> {
        let v: serde_norway::Value = serde_norway::from_str(text).ok()?;
        let mut m = v.as_mapping()?.clone();
        m.remove("plugins");
        m.remove("authorization");
        if let Some(serde_norway::Value::Sequence(routes)) = m.get_mut("routes") {
            for r in routes.iter_mut() {
                if let Some(rm) = r.as_mapping_mut() {
                    rm.remove("plugins");
                    if let Some(serde_norway::Value::Sequence(tees)) = rm.get_mut("tee") {
                        for t in tees.iter_mut() {
                            if let Some(tm) = t.as_mapping_mut() {
                                tm.remove("plugins");
                            }
                        }
                    }
                }
            }
        }
        Some(m)
    }
    let (Some(a), Some(b)) = (strip(old), strip(new)) else {
        return vec!["(whole file)".into()];
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// What is wrong with a site's SASL block: (key under it, reason).
fn site_sasl_problems(s: &SiteSaslConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let m = s.mechanism.name();
    let password = [s.password_env.is_some(), s.password_file.is_some()];
    let token = [s.token_file.is_some(), s.token_command.is_some()];
    if s.mechanism == SiteSaslMechanism::OauthBearer {
        if token.iter().filter(|x| **x).count() != 1 {
            out.push((
                "token_file",
                format!("{m} needs exactly one of token_file and token_command"),
            ));
        }
        if s.token_command.as_ref().is_some_and(|c| c.is_empty()) {
            out.push(("token_command", "must name a program".into()));
        }
        for (key, set) in [
            ("username", s.username.is_some()),
            ("password_env", password[0]),
            ("password_file", password[1]),
        ] {
            if set {
                out.push((key, format!("not used by {m} (it sends a token)")));
            }
        }
        if s.token_refresh_ms == 0 {
            out.push(("token_refresh_ms", "must be at least 1".into()));
        }
        if let Some(f) = &s.token_file {
            if let Err(e) = std::fs::metadata(f) {
                out.push(("token_file", format!("{f}: {e}")));
            }
        }
    } else {
        if s.username.as_deref().is_none_or(|u| u.is_empty()) {
            out.push(("username", format!("{m} needs a username")));
        }
        if password.iter().filter(|x| **x).count() != 1 {
            out.push((
                "password_env",
                format!("{m} needs exactly one of password_env and password_file"),
            ));
        }
        if let Some(var) = &s.password_env {
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => {}
                Ok(_) => out.push((
                    "password_env",
                    format!("environment variable `{var}` is empty"),
                )),
                Err(_) => out.push((
                    "password_env",
                    format!("environment variable `{var}` is not set"),
                )),
            }
        }
        if let Some(f) = &s.password_file {
            match std::fs::read_to_string(f) {
                Ok(t) if !t.trim_end_matches(['\n', '\r']).is_empty() => {}
                Ok(_) => out.push(("password_file", format!("{f} is empty"))),
                Err(e) => out.push(("password_file", format!("{f}: {e}"))),
            }
        }
        for (key, set) in [("token_file", token[0]), ("token_command", token[1])] {
            if set {
                out.push((key, format!("only used by OAUTHBEARER, not {m}")));
            }
        }
    }
    out
}

fn validate(config: Config, check: Check) -> Result<Validated, ConfigErrors> {
    let mut errs = Vec::new();
    let mut err = |key: &str, reason: String| {
        errs.push(ConfigError {
            key: key.to_string(),
            reason,
        })
    };

    if config.cluster_id.trim().is_empty() {
        err("cluster_id", "must not be empty".into());
    }

    let bootstrap_bind = match config.listen.bind.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            err(
                "listen.bind",
                format!(
                    "`{}` is not an IP:port socket address (e.g. 127.0.0.1:9092)",
                    config.listen.bind
                ),
            );
            None
        }
    };
    if config.listen.virtual_nodes == 0 {
        err("listen.virtual_nodes", "must be at least 1".into());
    }
    if let Some(a) = bootstrap_bind {
        let last = u32::from(a.port()) + u32::from(config.listen.virtual_nodes);
        if a.port() == 0 {
            err(
                "listen.bind",
                "port 0 is not allowed: virtual node ports are derived from it".into(),
            );
        } else if last > 65535 {
            err(
                "listen.virtual_nodes",
                format!(
                    "{} virtual nodes after port {} run past port 65535",
                    config.listen.virtual_nodes,
                    a.port()
                ),
            );
        }
    }
    if let Some(h) = &config.listen.advertised_host {
        if h.trim().is_empty()
            || h.contains(':') && !h.starts_with('[') && h.parse::<std::net::Ipv6Addr>().is_err()
        {
            err(
                "listen.advertised_host",
                format!("`{h}` is not a host name or IP address"),
            );
        }
    }

    if config.sites.is_empty() {
        err("sites", "at least one site is required".into());
    }
    let mut names = HashSet::new();
    for (i, site) in config.sites.iter().enumerate() {
        if site.name.trim().is_empty() {
            err(&format!("sites[{i}].name"), "must not be empty".into());
        } else if !names.insert(site.name.as_str()) {
            err(
                &format!("sites[{i}].name"),
                format!("duplicate site name `{}`", site.name),
            );
        }
        if site.bootstrap.is_empty() {
            err(
                &format!("sites[{i}].bootstrap"),
                "at least one host:port is required".into(),
            );
        }
        for (j, addr) in site.bootstrap.iter().enumerate() {
            if split_host_port(addr).is_none() {
                err(
                    &format!("sites[{i}].bootstrap[{j}]"),
                    format!("`{addr}` is not host:port"),
                );
            }
        }
        if let Some(sasl) = &site.sasl {
            for (key, reason) in site_sasl_problems(sasl) {
                err(&format!("sites[{i}].sasl.{key}"), reason);
            }
        }
        for (principal, sasl) in &site.principals {
            let at = format!("sites[{i}].principals.\"{principal}\"");
            match principal.strip_prefix("User:") {
                Some(name) if !name.is_empty() => {}
                _ => err(
                    &at,
                    "a principal is `User:<name>`, as Kafka writes it".into(),
                ),
            }
            for (key, reason) in site_sasl_problems(sasl) {
                err(&format!("{at}.{key}"), reason);
            }
        }
    }
    let active_site = match &config.default_site {
        Some(name) => match config.sites.iter().position(|s| &s.name == name) {
            Some(i) => i,
            None => {
                err("default_site", format!("no site named `{name}` in `sites`"));
                0
            }
        },
        None => {
            if config.sites.len() > 1 {
                err(
                    "default_site",
                    "required when more than one site is configured".into(),
                );
            }
            0
        }
    };

    let l = &config.limits;
    if l.max_frame_bytes < 1024 {
        err(
            "limits.max_frame_bytes",
            format!("{} is too small; at least 1024", l.max_frame_bytes),
        );
    }
    if l.max_connections == 0 {
        err("limits.max_connections", "must be at least 1".into());
    }
    if l.max_inflight_per_connection == 0 || l.max_inflight_per_connection > 10_000 {
        err(
            "limits.max_inflight_per_connection",
            "must be between 1 and 10000".into(),
        );
    }
    if l.idle_timeout_ms < 1000 {
        err("limits.idle_timeout_ms", "must be at least 1000 ms".into());
    }
    if l.max_request_bytes_in_flight < u64::from(l.max_frame_bytes) {
        err(
            "limits.max_request_bytes_in_flight",
            format!(
                "{} is below limits.max_frame_bytes ({}): the largest frame allowed must fit in it",
                l.max_request_bytes_in_flight, l.max_frame_bytes
            ),
        );
    }
    if l.io_threads > 1024 {
        err(
            "limits.io_threads",
            format!(
                "{} is too many; at most 1024 (0: one per CPU)",
                l.io_threads
            ),
        );
    }
    let t = &config.timeouts;
    if t.connect_ms == 0 {
        err("timeouts.connect_ms", "must be greater than 0".into());
    }
    if t.request_ms < 1000 {
        err("timeouts.request_ms", "must be at least 1000 ms".into());
    }
    if config.metadata.refresh_interval_ms < 100 {
        err(
            "metadata.refresh_interval_ms",
            "must be at least 100 ms".into(),
        );
    }
    let admin_bind = match config.admin.bind.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            err(
                "admin.bind",
                format!("`{}` is not an IP:port socket address", config.admin.bind),
            );
            None
        }
    };
    if let Some(f) = &config.admin.token_file {
        if let Err(e) = admin_tokens(f) {
            err("admin.token_file", e);
        }
    }
    // Anyone who reaches the admin port can fail routes over and upload
    // code: beyond loopback it needs authentication, over TLS (a token in
    // clear text is anyone's on the path).
    if let Some(a) = admin_bind.filter(|a| !a.ip().is_loopback()) {
        let mtls = config
            .admin
            .tls
            .as_ref()
            .is_some_and(|t| t.client_auth == ClientAuth::Required);
        if config.admin.tls.is_none() {
            err(
                "admin.bind",
                format!("{a} is not a loopback address: set admin.tls (and admin.token_file or admin.tls.client_auth: required)"),
            );
        } else if config.admin.token_file.is_none() && !mtls {
            err(
                "admin.bind",
                format!("{a} is not a loopback address: set admin.token_file or admin.tls.client_auth: required"),
            );
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        err("log.level", format!("not a valid filter: {e}"));
    }

    // Listeners: the main one, then the extra ones; names unique, port
    // ranges (bootstrap + virtual nodes) disjoint.
    let mut listeners = Vec::new();
    if let Some(b) = bootstrap_bind {
        listeners.push(ListenerSpec {
            name: config.listen.name.clone(),
            bind: b,
            advertised_host: config
                .listen
                .advertised_host
                .clone()
                .unwrap_or_else(|| b.ip().to_string()),
            tls: config.listen.tls.clone().map(|t| ("listen.tls".into(), t)),
            sasl: config
                .listen
                .sasl
                .clone()
                .map(|t| ("listen.sasl".into(), t)),
        });
    }
    if config.listen.name.trim().is_empty() {
        err("listen.name", "must not be empty".into());
    }
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if l.name.trim().is_empty() {
            err(&format!("{key}.name"), "must not be empty".into());
        } else if l.name == config.listen.name
            || config.listeners[..i].iter().any(|o| o.name == l.name)
        {
            err(
                &format!("{key}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        match l.bind.parse::<SocketAddr>() {
            Ok(b) if b.port() == 0 => err(
                &format!("{key}.bind"),
                "port 0 is not allowed: virtual node ports are derived from it".into(),
            ),
            Ok(b) if u32::from(b.port()) + u32::from(config.listen.virtual_nodes) > 65535 => err(
                &format!("{key}.bind"),
                format!("virtual node ports after {} run past 65535", b.port()),
            ),
            Ok(b) => listeners.push(ListenerSpec {
                name: l.name.clone(),
                bind: b,
                advertised_host: l
                    .advertised_host
                    .clone()
                    .unwrap_or_else(|| b.ip().to_string()),
                tls: l.tls.clone().map(|t| (format!("{key}.tls"), t)),
                sasl: l.sasl.clone().map(|t| (format!("{key}.sasl"), t)),
            }),
            Err(_) => err(
                &format!("{key}.bind"),
                format!("`{}` is not an IP:port socket address", l.bind),
            ),
        }
    }
    // A listener takes its bootstrap port and, unless it routes by SNI, the
    // next `virtual_nodes` ports.
    let span_of = |l: &ListenerSpec| match l.tls.as_ref().and_then(|(_, t)| t.sni_domain.as_ref()) {
        Some(_) => 0,
        None => config.listen.virtual_nodes,
    };
    for (i, a) in listeners.iter().enumerate() {
        for b in &listeners[..i] {
            let (pa, pb) = (a.bind.port(), b.bind.port());
            let (sa, sb) = (span_of(a), span_of(b));
            if pa <= pb.saturating_add(sb) && pb <= pa.saturating_add(sa) {
                err(
                    &format!("listeners[{}].bind", i - 1),
                    format!(
                        "ports {pa}..={} overlap listener `{}` ports {pb}..={}",
                        pa.saturating_add(sa),
                        b.name,
                        pb.saturating_add(sb)
                    ),
                );
            }
        }
        if let Some((key, t)) = &a.tls {
            if let Some(d) = &t.sni_domain {
                let label_ok = |l: &str| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                };
                if d.len() > 200 || !d.split('.').all(label_ok) {
                    err(
                        &format!("{key}.sni_domain"),
                        format!("`{d}` is not a DNS domain (letters, digits and hyphens in dot-separated labels)"),
                    );
                }
            }
        }
    }

    errs.extend(check(&config, active_site));
    let t = &config.tee;
    if t.poll_interval_ms == 0 {
        errs.push(ConfigError {
            key: "tee.poll_interval_ms".into(),
            reason: "must be greater than 0".into(),
        });
    }
    if t.max_fetch_bytes < 1024 {
        errs.push(ConfigError {
            key: "tee.max_fetch_bytes".into(),
            reason: "must be at least 1024".into(),
        });
    }
    if t.retry_backoff_ms == 0 || t.max_retry_backoff_ms < t.retry_backoff_ms {
        errs.push(ConfigError {
            key: "tee.max_retry_backoff_ms".into(),
            reason: "retry_backoff_ms must be > 0 and <= max_retry_backoff_ms".into(),
        });
    }
    if t.reject_attempts == 0 {
        errs.push(ConfigError {
            key: "tee.reject_attempts".into(),
            reason: "must be at least 1".into(),
        });
    }
    if t.offset_sync_interval_ms < 100 {
        errs.push(ConfigError {
            key: "tee.offset_sync_interval_ms".into(),
            reason: "must be at least 100 ms".into(),
        });
    }
    if t.sync_timeout_ms < 100 {
        errs.push(ConfigError {
            key: "tee.sync_timeout_ms".into(),
            reason: "must be at least 100 ms".into(),
        });
    }
    let f = &config.failover;
    for (key, v, min) in [
        ("failover.health.interval_ms", f.health.interval_ms, 100),
        ("failover.health.timeout_ms", f.health.timeout_ms, 100),
        ("failover.fence_timeout_ms", f.fence_timeout_ms, 0),
        ("failover.drain_timeout_ms", f.drain_timeout_ms, 0),
        ("failover.planned_timeout_ms", f.planned_timeout_ms, 100),
        (
            "failover.shadow_commit_interval_ms",
            f.shadow_commit_interval_ms,
            100,
        ),
    ] {
        if v < min {
            errs.push(ConfigError {
                key: key.into(),
                reason: format!("must be at least {min} ms"),
            });
        }
    }
    for (key, v) in [
        ("failover.health.unhealthy_after", f.health.unhealthy_after),
        ("failover.health.healthy_after", f.health.healthy_after),
    ] {
        if v == 0 {
            errs.push(ConfigError {
                key: key.into(),
                reason: "must be at least 1".into(),
            });
        }
    }
    if f.timestamp_slack_ms < 0 {
        errs.push(ConfigError {
            key: "failover.timestamp_slack_ms".into(),
            reason: "must not be negative".into(),
        });
    }

    errs.extend(validate_plugins(&config));

    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    // Both are Some when no error was recorded above.
    let (Some(bootstrap_bind), Some(admin_bind)) = (bootstrap_bind, admin_bind) else {
        return Err(ConfigErrors(vec![ConfigError {
            key: String::new(),
            reason: "internal: address missing".into(),
        }]));
    };
    let advertised_host = config
        .listen
        .advertised_host
        .clone()
        .unwrap_or_else(|| bootstrap_bind.ip().to_string());
    Ok(Validated {
        config,
        bootstrap_bind,
        admin_bind,
        advertised_host,
        active_site,
        listeners,
        path: None,
        text: String::new(),
    })
}

/// Splits `host:port`, accepting `[v6]:port`.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

/// `plugins[]` and every route's references to them. Loading (compile,
/// init) is checked when the plugins are loaded; here only what the file
/// alone can tell.
fn validate_plugins(config: &Config) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let mut err = |key: String, reason: String| errs.push(ConfigError { key, reason });
    let mut names = HashSet::new();
    for (i, p) in config.plugins.iter().enumerate() {
        if !valid_plugin_name(&p.name) {
            err(
                format!("plugins[{i}].name"),
                format!(
                    "`{}` is not a plugin name (1-64 of a-z A-Z 0-9 . _ -)",
                    p.name
                ),
            );
        } else if !names.insert(p.name.as_str()) {
            err(
                format!("plugins[{i}].name"),
                format!("duplicate plugin name `{}`", p.name),
            );
        }
        match std::fs::metadata(&p.path) {
            Ok(m) if !m.is_file() => err(
                format!("plugins[{i}].path"),
                format!("`{}` is not a file", p.path),
            ),
            Ok(m) if m.len() > MAX_PLUGIN_BYTES as u64 => err(
                format!("plugins[{i}].path"),
                format!(
                    "`{}` is {} bytes; plugins may be at most {}",
                    p.path,
                    m.len(),
                    MAX_PLUGIN_BYTES
                ),
            ),
            Ok(_) => {}
            Err(e) => err(
                format!("plugins[{i}].path"),
                format!("cannot read `{}`: {e}", p.path),
            ),
        }
        if p.timeout_ms == 0 || p.timeout_ms > 10_000 {
            err(
                format!("plugins[{i}].timeout_ms"),
                "must be between 1 and 10000".into(),
            );
        }
        let max_mb = (MAX_PLUGIN_MEMORY_BYTES >> 20) as u64;
        if p.memory_mb == 0 || p.memory_mb > max_mb {
            err(
                format!("plugins[{i}].memory_mb"),
                format!("must be between 1 and {max_mb}"),
            );
        }
        if p.crash_cap == 0 {
            err(
                format!("plugins[{i}].crash_cap"),
                "must be at least 1".into(),
            );
        }
    }
    if config.plugin_state.max_keys == 0 {
        err("plugin_state.max_keys".into(), "must be at least 1".into());
    }
    let mut check = |key: String, list: &[String]| {
        for (j, n) in list.iter().enumerate() {
            if !names.contains(n.as_str()) {
                errs.push(ConfigError {
                    key: format!("{key}[{j}]"),
                    reason: format!("no plugin named `{n}` in `plugins`"),
                });
            }
        }
    };
    for (i, r) in config.routes.iter().enumerate() {
        check(format!("routes[{i}].plugins.produce"), &r.plugins.produce);
        check(format!("routes[{i}].plugins.fetch"), &r.plugins.fetch);
        for (k, t) in r.tee.iter().enumerate() {
            check(format!("routes[{i}].tee[{k}].plugins"), &t.plugins);
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Router;
    use crate::shared::Loaded;

    /// With the routes checked too, as `switchyard check` does.
    fn parse(text: &str) -> Result<Validated, ConfigErrors> {
        super::parse(text, Router::check)
    }

    const GOOD: &str = "
cluster_id: c1
listen:
  bind: 127.0.0.1:9092
sites:
  - name: a
    bootstrap: [\"127.0.0.1:19092\"]
";

    #[test]
    fn minimal_config_gets_defaults() {
        let v = parse(GOOD).expect("valid");
        assert_eq!(v.config.listen.virtual_nodes, 3);
        assert_eq!(v.advertised_host, "127.0.0.1");
        assert_eq!(v.config.limits.max_frame_bytes, 100 * 1024 * 1024);
        assert_eq!(v.active_site().name, "a");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace(
            "  bind: 127.0.0.1:9092",
            "  bind: 127.0.0.1:9092\n  bnid: x",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0[0].key, "listen.bnid");
        assert!(e.0[0].reason.contains("bnid"), "{}", e);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = GOOD.replace(
            "cluster_id: c1",
            "cluster_id: c1\nlimits:\n  max_frame_bytes: lots",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0[0].key, "limits.max_frame_bytes", "{e}");
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let text = "
cluster_id: ''
listen:
  bind: nowhere
  virtual_nodes: 0
sites:
  - name: a
    bootstrap: [\"no-port\"]
  - name: a
    bootstrap: []
limits:
  max_frame_bytes: 10
";
        let e = parse(text).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "cluster_id",
            "listen.bind",
            "listen.virtual_nodes",
            "sites[0].bootstrap[0]",
            "sites[1].name",
            "sites[1].bootstrap",
            "default_site",
            "limits.max_frame_bytes",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn the_request_memory_budget_must_hold_the_largest_frame() {
        let text = GOOD.replace(
            "cluster_id: c1",
            "cluster_id: c1\nlimits:\n  max_frame_bytes: 2097152\n  max_request_bytes_in_flight: 1048576\n  io_threads: 5000",
        );
        let e = parse(&text).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["limits.max_request_bytes_in_flight", "limits.io_threads"],
            "{e}"
        );
        assert!(e.0[0].reason.contains("max_frame_bytes (2097152)"), "{e}");
    }

    #[test]
    fn ports_must_fit() {
        let text = GOOD.replace("127.0.0.1:9092", "127.0.0.1:65534");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.0[0].key, "listen.virtual_nodes");
    }

    /// Every shipped example config is valid, and each multi-site pattern
    /// example actually tees something.
    #[test]
    fn example_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no config/*.yaml in {}", dir.display());
        for f in &files {
            match Loaded::file(f) {
                Ok(_) => {}
                // It names certificates, credentials and secrets an operator
                // supplies (tests/test_site_sasl.py makes them and runs it):
                // here only they may be missing.
                Err(e) if f.ends_with("secured.yaml") => {
                    for err in &e.0 {
                        assert!(
                            err.reason.contains("No such file"),
                            "{}: {} {}",
                            f.display(),
                            err.key,
                            err.reason
                        );
                    }
                }
                Err(e) => panic!("{}: {e}", f.display()),
            }
        }
        for name in [
            "active-active.yaml",
            "active-passive.yaml",
            "aggregate.yaml",
            "hub-and-spoke-edge.yaml",
            "observer.yaml",
        ] {
            let v = Loaded::file(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                v.router.routes().iter().any(|r| !r.tee.is_empty()),
                "{name}: no route with a tee"
            );
        }
    }
}
