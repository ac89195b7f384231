//! Running a route's plugins on one topic-partition batch.
//!
//! The data path calls [`run`] at three stages, each configured per route
//! (`routes[].plugins.produce`, `routes[].plugins.fetch`,
//! `routes[].tee[].plugins`):
//!
//! | stage | where | may | conflict state kept for |
//! |---|---|---|---|
//! | produce | a client's Produce, before routing and tee (`api::produce`) | keep, drop, replace value, rename, route; resolve | the route's site |
//! | tee | a tee worker's batch for one target (`tee::worker`) | keep, drop, replace value; resolve | the target site |
//! | fetch | a Fetch answer, before the consumer sees it (`api::fetch`) | keep, drop, replace value | — |
//!
//! On the produce stage, plugins with the `topic-name` capability come
//! first (`pipeline::plugins`): the first one that renames the topic moves its
//! batches to the new name whole, undecoded, and they leave the chain.
//! Plugins of a chain run in order, each on what the previous one kept;
//! records a plugin renames or routes elsewhere leave the chain. A plugin
//! with the `resolve` capability then gets the keyed records it kept, with
//! the host's stored version of each key ([`super::conflict`]).
//!
//! Failures (trap, deadline, memory, an error answer, a bad answer, no
//! instance while restarting or crashed) apply the plugin's policy:
//! fail-open skips the plugin for this batch (its records pass unchanged to
//! the next), fail-closed refuses the batch — the caller answers that
//! partition with an error and writes nothing. The connection is never
//! touched either way.

use std::sync::Arc;

use bytes::Bytes;

use super::conflict::{Conflicts, MAX_STATE_BYTES};
use super::records::{self, Applied};
use super::{BatchMeta, CallError, Conflict, FailurePolicy, Loaded, Resolution, Stage, Version};
use crate::codec::batch::{BatchRef, WireRecord};

/// What a chain did to a batch.
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: Applied,
    /// Versions of keys to save (site, physical topic of the scope) before
    /// `applied.kept` is written.
    pub versions: Vec<(Bytes, Version)>,
    /// A fail-closed plugin failed: nothing of the batch may be written or
    /// shown; the message names the plugin and the failure.
    pub refused: Option<String>,
}

/// Where conflict versions of this batch are kept: the site written to and
/// the topic's physical name there.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub site: u16,
    pub topic: &'a str,
}

/// A batch as the data path has it.
pub enum Input<'a> {
    /// A Kafka batch not decoded yet: decoded only if a plugin changes
    /// something (keep-all costs no per-record allocation).
    Batch(&'a BatchRef),
    Records(Vec<WireRecord>),
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Input::Batch(b) => b.records_count <= 0,
            Input::Records(r) => r.is_empty(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Input::Batch(b) => usize::try_from(b.records_count).unwrap_or(0),
            Input::Records(r) => r.len(),
        }
    }

    fn wit(&self, meta: &BatchMeta) -> Result<super::Batch, CallError> {
        match self {
            Input::Batch(b) => records::to_batch_raw(meta.clone(), b),
            Input::Records(r) => records::to_batch(meta.clone(), r),
        }
    }

    /// The records; `None` for a Kafka batch that does not decode, which
    /// then passes as it is (the broker or consumer reports what is wrong).
    fn into_records(self, meta: &BatchMeta) -> Option<Vec<WireRecord>> {
        match self {
            Input::Batch(b) => match crate::codec::batch::decode(b) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::debug!(topic = %meta.topic, partition = meta.partition, error = %e,
                        "batch does not decode; plugins skipped");
                    None
                }
            },
            Input::Records(r) => Some(r),
        }
    }
}

/// Runs `plugins` in order over a batch. Async only to read a site's
/// saved conflict state the first time a resolving plugin needs it; the
/// plugin calls themselves run on this thread, each bounded by its CPU
/// deadline.
pub async fn run(
    conflicts: &Conflicts,
    plugins: &[Arc<Loaded>],
    meta: BatchMeta,
    scope: Scope<'_>,
    input: Input<'_>,
) -> Outcome {
    let state = restore(conflicts, plugins, &meta, scope.site).await;
    run_ready(conflicts, plugins, meta, scope, input, state)
}

/// Restores `site`'s saved conflict state if a plugin of the chain resolves
/// conflicts (the first time only): what [`run_ready`] takes as `state`.
pub async fn restore(
    conflicts: &Conflicts,
    plugins: &[Arc<Loaded>],
    meta: &BatchMeta,
    site: u16,
) -> Result<(), String> {
    if meta.stage != Stage::Fetch && plugins.iter().any(|p| p.caps.resolve) {
        conflicts.ensure_restored(site).await
    } else {
        Ok(())
    }
}

/// [`run`] for the fetch stage, which never resolves conflicts: no waiting.
pub fn run_fetch(
    conflicts: &Conflicts,
    plugins: &[Arc<Loaded>],
    meta: BatchMeta,
    input: Input<'_>,
) -> Outcome {
    let scope = Scope {
        site: meta.local_site,
        topic: "",
    };
    run_ready(conflicts, plugins, meta, scope, input, Ok(()))
}

/// [`run`] once the conflict state was restored (`state`: how that went),
/// for callers that cannot wait in the middle (a tee worker building a batch).
/// `applied.kept` holds the records only when `applied.changed` (or when
/// the input was records already).
pub fn run_ready(
    conflicts: &Conflicts,
    plugins: &[Arc<Loaded>],
    meta: BatchMeta,
    scope: Scope<'_>,
    input: Input<'_>,
    state: Result<(), String>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut current = input;
    for p in plugins {
        if current.is_empty() {
            break;
        }
        if p.caps.batch {
            let n = current.len();
            let decisions = match current.wit(&meta).and_then(|b| p.on_batch(&b)) {
                Ok(d) => d,
                Err(e) => {
                    if let Some(r) = failed(p, &meta, e) {
                        out.refused = Some(r);
                        return out;
                    }
                    continue;
                }
            };
            if decisions.is_empty() {
                p.count_out(n, 0);
            } else {
                if let Err(e) = records::check(&decisions, &meta) {
                    // The batch passes through this plugin as it was.
                    if let Some(r) = failed(p, &meta, p.error(e)) {
                        out.refused = Some(r);
                        return out;
                    }
                    continue;
                }
                let Some(records) = current.into_records(&meta) else {
                    return Outcome::default();
                };
                let a = records::apply(records, decisions, &meta);
                p.count_out(n - a.dropped, a.dropped);
                out.applied.changed |= a.changed;
                out.applied.dropped += a.dropped;
                out.applied.moved.extend(a.moved);
                current = Input::Records(a.kept);
            }
        }
        if p.caps.resolve && meta.stage != Stage::Fetch {
            if let Err(e) = &state {
                // Without the saved versions a stale record could win.
                let e = p.error(CallError::Unavailable(format!("conflict state: {e}")));
                if let Some(r) = failed(p, &meta, e) {
                    out.refused = Some(r);
                    return out;
                }
                continue;
            }
            let Some(records) = current.into_records(&meta) else {
                return Outcome::default();
            };
            match resolve_step(conflicts, p, &meta, scope, records) {
                Ok((kept, dropped, changed, versions)) => {
                    current = Input::Records(kept);
                    out.applied.dropped += dropped;
                    out.applied.changed |= changed;
                    out.versions.extend(versions);
                }
                Err((e, records)) => {
                    current = Input::Records(records);
                    if let Some(r) = failed(p, &meta, e) {
                        out.refused = Some(r);
                        return out;
                    }
                }
            }
        }
    }
    if let Input::Records(r) = current {
        out.applied.kept = r;
    }
    out
}

/// Applies the policy of a failed plugin: `Some(reason)` refuses the batch.
fn failed(p: &Loaded, meta: &BatchMeta, e: CallError) -> Option<String> {
    let msg = format!("plugin {} ({}) {e}", p.name, p.info.version);
    tracing::debug!(topic = %meta.topic, partition = meta.partition, stage = ?meta.stage,
        policy = p.policy.name(), "{msg}");
    p.warn_limited(&msg);
    match p.policy {
        FailurePolicy::FailOpen => None,
        FailurePolicy::FailClosed => Some(msg),
    }
}

type StepError = (CallError, Vec<WireRecord>);

type Resolved = (Vec<WireRecord>, usize, bool, Vec<(Bytes, Version)>);

/// Resolves the keyed records against the stored versions. A key that
/// occurs several times in the batch is resolved in rounds, so each
/// occurrence meets the version the previous one left.
fn resolve_step(
    conflicts: &Conflicts,
    p: &Loaded,
    meta: &BatchMeta,
    scope: Scope<'_>,
    records: Vec<WireRecord>,
) -> Result<Resolved, StepError> {
    let batch = match records::to_batch(meta.clone(), &records) {
        Ok(b) => b,
        Err(e) => return Err((e, records)),
    };
    let origin = match meta.stage {
        Stage::Produce => meta.local_site,
        _ => meta.origin_site,
    };
    let mut pending: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].key.is_some())
        .collect();
    // Outcomes are applied once every round answered: a failure leaves
    // the records as they came (fail-open passes them on unchanged).
    let mut drop = vec![false; records.len()];
    let mut merged: Vec<Option<Bytes>> = vec![None; records.len()];
    let mut saved: Vec<(Bytes, Version)> = Vec::new();
    while !pending.is_empty() {
        // This round: the first pending occurrence of each key.
        let mut round = Vec::new();
        let mut later = Vec::new();
        for i in pending {
            let k = records[i].key.as_ref();
            if round.iter().any(|&j: &usize| records[j].key.as_ref() == k) {
                later.push(i);
            } else {
                round.push(i);
            }
        }
        pending = later;
        let list: Vec<Conflict> = round
            .iter()
            .map(|&i| {
                let key = records[i].key.clone().unwrap_or_default();
                Conflict {
                    record_index: i as u32,
                    existing: conflicts.get(scope.site, scope.topic, &key),
                    incoming: conflicts.incoming(&records[i], origin),
                }
            })
            .collect();
        let answer = match p.resolve(&batch, &list) {
            Ok(a) => a,
            Err(e) => return Err((e, records)),
        };
        let mut accepted = Vec::new();
        for (&i, res) in round.iter().zip(answer) {
            let key = records[i].key.clone().unwrap_or_default();
            let version = match res {
                Resolution::Accept(v) => v,
                Resolution::Reject => {
                    drop[i] = true;
                    continue;
                }
                Resolution::Merge((value, v)) => {
                    merged[i] = Some(Bytes::from(value));
                    v
                }
            };
            if version.state.len() > MAX_STATE_BYTES {
                let e = p.error(CallError::BadAnswer(format!(
                    "version state of {} bytes exceeds {MAX_STATE_BYTES}",
                    version.state.len()
                )));
                return Err((e, records));
            }
            accepted.push((key, version));
        }
        // Visible to the next round (and to other batches) right away; the
        // caller saves them before writing.
        conflicts.put(scope.site, scope.topic, &accepted);
        saved.extend(accepted);
    }
    let changed = drop.iter().any(|d| *d) || merged.iter().any(Option::is_some);
    let mut kept = Vec::with_capacity(records.len());
    let mut dropped = 0;
    for ((mut r, d), value) in records.into_iter().zip(drop).zip(merged) {
        if d {
            dropped += 1;
            continue;
        }
        if value.is_some() {
            r.value = value;
        }
        kept.push(r);
    }
    if p.caps.batch {
        p.count_out(0, dropped);
    } else {
        p.count_in(kept.len() + dropped);
        p.count_out(kept.len(), dropped);
    }
    Ok((kept, dropped, changed, saved))
}
