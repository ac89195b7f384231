//! Offset-sync runs for one partition of one (source, target) pair, and
//! translation of committed source offsets into the target's offset space.
//!
//! # Runs
//!
//! A [`Run`] `{source, target, count}` states that the records at source
//! offsets `source..source+count` were written, record for record, to target
//! offsets `target..target+count`. The tee learns these pairs exactly: for a
//! written batch it knows the source offset of every kept record and the
//! target base offset from the target's ProduceResponse (kept records land at
//! `target_base, target_base+1, …`). [`PartitionRuns::record`] folds those
//! pairs into maximal runs that are contiguous in *both* spaces; a hole on
//! either side (filtered records, transaction markers, compaction on the
//! source; other writers on the target) starts a new run. In a steady state
//! with no holes one run just keeps growing, so memory is O(divergences),
//! not O(batches).
//!
//! # The chain invariant
//!
//! The stored runs always form a *chain*: sorted by source offset, every run
//! has `count >= 1`, and for consecutive runs `a`, `b`
//!
//! ```text
//! a.source_end() <= b.source   and   a.target_end() <= b.target
//! ```
//!
//! i.e. they are disjoint and in the same order in both offset spaces (both
//! logs are append-only, so any honest history is such a chain). Every
//! mutation preserves it: [`record`](PartitionRuns::record) appends, and when
//! a batch goes *backwards* on either side (source or target log truncated
//! and rewritten) the newest write wins and the history is cut back to the
//! prefix that lies before it in both spaces; [`insert`](PartitionRuns::insert)
//! merges same-diagonal duplicates and resolves conflicts by keeping the run
//! that reaches further into the target log; thinning only removes runs.
//!
//! # Translation (reference §3.2(a), rules 1–4)
//!
//! A committed source offset `c` means "everything below `c` is processed,
//! `c` is next". With `r` = the greatest run with `r.source <= c`:
//! inside `r` the answer is exact (`r.target + (c - r.source)`); in the gap
//! after `r` it is `r.target_end()` (the first target offset after the last
//! mapped record the consumer has passed — target-only records in the gap
//! are delivered again, mapped records are never skipped); with no such `r`
//! translation is unavailable (`None`; the caller falls back to timestamps
//! or the target's log start).
//!
//! **Safety (never skip).** If `translate(c) == Some(p)` then `p <= t` for
//! every mapped pair `(s, t)` of the chain with `s >= c`. Proof: such a
//! record lies in `r` at or after `c` (target `>= r.target + (c - r.source)`
//! when `c` is inside `r`), or in a run after `r`, whose targets are
//! `>= r.target_end()` by the chain invariant.
//!
//! # Thinning (memory bound)
//!
//! At most `max_runs` runs are kept. When a mutation exceeds that, old runs
//! are thinned exponentially, in the spirit of MirrorMaker 2's
//! `OffsetSyncStore`: repeatedly remove the interior run whose removal
//! creates the smallest gap *relative to its age* (gap between its kept
//! neighbours ÷ its distance from the newest run, both in target offsets).
//! At equilibrium gaps grow in proportion to age: the newest runs stay dense,
//! older ones get exponentially sparser, and the whole history stays covered.
//! The newest run (the open one, which keeps growing) and the oldest run
//! (the earliest point translation can reach) are never removed. To keep the
//! amortised cost at O(log n) per run, a pass thins down to 7/8 of
//! `max_runs` (for `max_runs >= 16`).
//!
//! **Thinning keeps translation safe.** Removing runs from a chain leaves a
//! chain, and the safety argument above holds for *any* chain whose runs are
//! a subset of the recorded pairs — a thinned-away run only makes offsets in
//! its range translate to the end of the previous kept run: more duplicates,
//! never a skip. (Exactness is kept for every offset inside a surviving run.)
//! The unit and property tests below check exactly this against the full
//! recorded history.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Source offsets `source..source+count` map record for record to target
/// offsets `target..target+count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Run {
    pub source: i64,
    pub target: i64,
    pub count: i64,
}

impl Run {
    /// One past the last mapped source offset.
    pub fn source_end(&self) -> i64 {
        self.source + self.count
    }

    /// One past the last mapped target offset.
    pub fn target_end(&self) -> i64 {
        self.target + self.count
    }

    /// Offsets non-negative, `count >= 1`, and neither end overflows.
    fn is_valid(&self) -> bool {
        self.source >= 0
            && self.target >= 0
            && self.count >= 1
            && self.source.checked_add(self.count).is_some()
            && self.target.checked_add(self.count).is_some()
    }

    /// `target - source`: runs on the same diagonal describe the same shift.
    fn delta(&self) -> i128 {
        i128::from(self.target) - i128::from(self.source)
    }

    /// Same diagonal and overlapping or touching: their union is one run.
    fn mergeable(&self, other: &Run) -> bool {
        self.delta() == other.delta()
            && self.source <= other.source_end()
            && other.source <= self.source_end()
    }

    /// `self` lies entirely before `other` in both offset spaces.
    fn before(&self, other: &Run) -> bool {
        self.source_end() <= other.source && self.target_end() <= other.target
    }

    /// May both be members of one chain (possibly after merging)?
    fn consistent(&self, other: &Run) -> bool {
        self.mergeable(other) || self.before(other) || other.before(self)
    }

    /// Union of two mergeable runs.
    fn union(&self, other: &Run) -> Run {
        let source = self.source.min(other.source);
        let end = self.source_end().max(other.source_end());
        Run {
            source,
            target: self.target.min(other.target),
            count: end - source,
        }
    }

    /// Conflict rank: the run reaching further into the (append-only) target
    /// log was written later.
    fn rank(&self) -> (i64, i64) {
        (self.target_end(), self.source_end())
    }
}

/// Runs for one partition of one (source, target) pair, ordered by source
/// offset (and, by the chain invariant, by target offset).
#[derive(Debug, Clone)]
pub struct PartitionRuns {
    runs: Vec<Run>,
    max_runs: usize,
}

impl PartitionRuns {
    /// An empty set keeping at most `max_runs` runs (at least 1 is kept).
    pub fn new(max_runs: usize) -> Self {
        PartitionRuns {
            runs: Vec::new(),
            max_runs: max_runs.max(1),
        }
    }

    /// Records one written batch: `source_offsets` of the kept records in
    /// order, landing at `target_base, target_base+1, …`.
    ///
    /// Groups them into maximal runs contiguous in both spaces, extending the
    /// last run when the batch continues it. Returns the runs that were opened
    /// or extended, oldest first, with their extent after this batch (for
    /// persistence; an extended run keeps its `source` start).
    ///
    /// A record that goes backwards on either side of the newest run (a source
    /// or target log was truncated and rewritten) wins: runs are cut back to
    /// the part before it in both spaces. Negative offsets and offsets whose
    /// target would overflow are ignored (unmapped is always safe).
    pub fn record(&mut self, source_offsets: &[i64], target_base: i64) -> Vec<Run> {
        let mut touched: Vec<Run> = Vec::new();
        for (i, &source) in source_offsets.iter().enumerate() {
            let target = i64::try_from(i)
                .ok()
                .and_then(|i| target_base.checked_add(i));
            let Some(target) = target else { break };
            if source < 0 || target < 0 || source == i64::MAX || target == i64::MAX {
                continue;
            }
            self.push(source, target, &mut touched);
        }
        self.thin();
        touched
    }

    /// Appends the pair `source → target`, keeping `touched` (the runs this
    /// batch opened or extended) in step with the chain.
    fn push(&mut self, source: i64, target: i64, touched: &mut Vec<Run>) {
        if let Some(last) = self.runs.last() {
            if !(last.source_end() <= source && last.target_end() <= target) {
                truncate_chain(&mut self.runs, source, target);
                truncate_chain(touched, source, target);
            }
        }
        match self.runs.last_mut() {
            Some(last) if last.source_end() == source && last.target_end() == target => {
                last.count += 1;
                let run = *last;
                match touched.last_mut() {
                    Some(t) if t.source == run.source => *t = run,
                    _ => touched.push(run),
                }
            }
            _ => {
                let run = Run {
                    source,
                    target,
                    count: 1,
                };
                self.runs.push(run);
                touched.push(run);
            }
        }
    }

    /// Restores a run (from the persisted topic). Any order; idempotent;
    /// runs on the same diagonal that overlap or touch are merged into one.
    ///
    /// A run inconsistent with stored ones (possible only across a log
    /// truncation) is resolved in favour of the run reaching further into the
    /// target log; the losing side is dropped whole — never unsafe, since any
    /// sub-chain translates safely. Invalid runs (negative offsets,
    /// `count < 1`, overflow) are ignored.
    pub fn insert(&mut self, run: Run) {
        if !run.is_valid() {
            return;
        }
        // Merge everything on the same diagonal that overlaps or touches; a
        // merged run may reach further runs, so repeat until stable.
        let mut merged = run;
        let mut absorbed = vec![false; self.runs.len()];
        loop {
            let mut changed = false;
            for (i, r) in self.runs.iter().enumerate() {
                if !absorbed[i] && merged.mergeable(r) {
                    merged = merged.union(r);
                    absorbed[i] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut conflicts = vec![false; self.runs.len()];
        for (i, r) in self.runs.iter().enumerate() {
            if !absorbed[i] && !merged.consistent(r) {
                if r.rank() > merged.rank() {
                    return; // an existing, later-written run wins; change nothing
                }
                conflicts[i] = true;
            }
        }
        let mut i = 0;
        self.runs.retain(|_| {
            let keep = !absorbed[i] && !conflicts[i];
            i += 1;
            keep
        });
        let at = self.runs.partition_point(|r| r.source < merged.source);
        self.runs.insert(at, merged);
        self.thin();
    }

    /// The run with the greatest source offset (the newest one).
    pub fn last(&self) -> Option<Run> {
        self.runs.last().copied()
    }

    /// Translates a committed source offset `c` ("next to read") into a
    /// target offset, never skipping a mapped record: exact inside a run,
    /// `r.target_end()` in the gap after run `r`, `None` before all runs.
    pub fn translate(&self, c: i64) -> Option<i64> {
        let idx = self.runs.partition_point(|r| r.source <= c);
        let r = self.runs.get(idx.checked_sub(1)?)?;
        if c < r.source_end() {
            Some(r.target + (c - r.source))
        } else {
            Some(r.target_end())
        }
    }

    /// Number of runs held.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// No runs held (nothing can be translated).
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The runs held, ordered by source (and target) offset.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Enforces `max_runs` by exponential thinning (see the module doc).
    fn thin(&mut self) {
        let n = self.runs.len();
        if n <= self.max_runs {
            return;
        }
        if self.max_runs < 2 {
            let last = self.runs[n - 1];
            self.runs.clear();
            self.runs.push(last);
            return;
        }
        let goal = if self.max_runs >= 16 {
            self.max_runs - self.max_runs / 8
        } else {
            self.max_runs
        };
        let runs = &self.runs;
        let head_end = runs[n - 1].target_end();
        // Doubly linked list over indices; first (0) and last (n-1) are fixed.
        let mut prev: Vec<usize> = (0..n).map(|i| i.saturating_sub(1)).collect();
        let mut next: Vec<usize> = (0..n).map(|i| (i + 1).min(n - 1)).collect();
        let mut alive = vec![true; n];
        let mut version = vec![0u32; n];
        let score = |i: usize, prev: &[usize], next: &[usize], version: &[u32]| Candidate {
            gap: gap_between(&runs[prev[i]], &runs[next[i]]),
            age: u128::from(head_end.abs_diff(runs[i].target)).max(1),
            idx: i,
            version: version[i],
        };
        let mut heap: BinaryHeap<Reverse<Candidate>> = (1..n - 1)
            .map(|i| Reverse(score(i, &prev, &next, &version)))
            .collect();
        let mut remaining = n;
        while remaining > goal {
            let Some(Reverse(c)) = heap.pop() else { break };
            if !alive[c.idx] || version[c.idx] != c.version {
                continue;
            }
            let (p, q) = (prev[c.idx], next[c.idx]);
            alive[c.idx] = false;
            next[p] = q;
            prev[q] = p;
            remaining -= 1;
            for j in [p, q] {
                if j != 0 && j != n - 1 {
                    version[j] += 1;
                    heap.push(Reverse(score(j, &prev, &next, &version)));
                }
            }
        }
        let mut i = 0;
        self.runs.retain(|_| {
            let keep = alive[i];
            i += 1;
            keep
        });
    }
}

/// Cuts a chain back to the pairs `(s, t)` with `s < source && t < target`
/// (a prefix, by the chain invariant).
fn truncate_chain(chain: &mut Vec<Run>, source: i64, target: i64) {
    while let Some(last) = chain.last_mut() {
        let keep = last
            .count
            .min(source.saturating_sub(last.source))
            .min(target.saturating_sub(last.target));
        if keep >= 1 {
            last.count = keep;
            return;
        }
        chain.pop();
    }
}

/// Target offsets between `a`'s end and `b`'s start: the worst-case extra
/// duplicates if every run between them were removed.
fn gap_between(a: &Run, b: &Run) -> u128 {
    u128::from(b.target.saturating_sub(a.target_end()).max(0) as u64)
}

/// A thinning candidate ordered by `gap / age` (smallest first), then by
/// index (older first).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    gap: u128,
    age: u128,
    idx: usize,
    version: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // gap and age are < 2^64, so the cross products fit in u128.
        (self.gap * other.age)
            .cmp(&(other.gap * self.age))
            .then(self.idx.cmp(&other.idx))
            .then(self.version.cmp(&other.version))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(source: i64, target: i64, count: i64) -> Run {
        Run {
            source,
            target,
            count,
        }
    }

    /// Checks the chain invariant.
    fn assert_chain(runs: &PartitionRuns) {
        for r in runs.runs() {
            assert!(r.count >= 1, "{r:?}");
        }
        for w in runs.runs().windows(2) {
            assert!(
                w[0].before(&w[1]),
                "not a chain: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
        assert!(runs.len() <= runs.max_runs);
    }

    /// Never-skip and exactness against the full recorded history `truth`
    /// (pairs in source order, both sides strictly increasing).
    fn assert_safe(runs: &PartitionRuns, truth: &[(i64, i64)]) {
        assert_chain(runs);
        let (Some(first), Some(last)) = (truth.first(), truth.last()) else {
            return;
        };
        // Suffix minimum of target offsets over pairs with source >= truth[i].0.
        let mut suffix_min = vec![i64::MAX; truth.len() + 1];
        for i in (0..truth.len()).rev() {
            suffix_min[i] = suffix_min[i + 1].min(truth[i].1);
        }
        for c in first.0 - 3..=last.0 + 3 {
            let got = runs.translate(c);
            let i = truth.partition_point(|&(s, _)| s < c);
            if let Some(p) = got {
                assert!(
                    p <= suffix_min[i],
                    "skip: translate({c}) = {p} but a record with source >= {c} is at {}",
                    suffix_min[i]
                );
            }
            if c < first.0 {
                assert_eq!(got, None, "translate({c}) before all records");
            }
            if c > last.0 {
                assert_eq!(got, Some(last.1 + 1), "translate({c}) past the head");
            }
        }
        // Exact for every offset inside a surviving run, and runs are true.
        for r in runs.runs() {
            for k in 0..r.count {
                let i = truth.partition_point(|&(s, _)| s < r.source + k);
                assert_eq!(truth.get(i), Some(&(r.source + k, r.target + k)), "{r:?}");
                assert_eq!(runs.translate(r.source + k), Some(r.target + k));
            }
        }
        // The newest run is never thinned away.
        let head = runs.last().expect("non-empty");
        assert_eq!((head.source_end() - 1, head.target_end() - 1), *last);
    }

    #[test]
    fn contiguous_batches_extend_one_run() {
        let mut runs = PartitionRuns::new(16);
        assert_eq!(runs.record(&[10, 11, 12], 100), vec![run(10, 100, 3)]);
        assert_eq!(runs.record(&[13, 14], 103), vec![run(10, 100, 5)]);
        assert_eq!(runs.record(&[15], 105), vec![run(10, 100, 6)]);
        assert_eq!(runs.runs(), &[run(10, 100, 6)]);
        assert_eq!(runs.last(), Some(run(10, 100, 6)));
    }

    #[test]
    fn source_hole_opens_a_new_run() {
        let mut runs = PartitionRuns::new(16);
        runs.record(&[0, 1, 2], 50);
        // Source offset 3 is a transaction marker: next batch starts at 4.
        assert_eq!(runs.record(&[4, 5], 53), vec![run(4, 53, 2)]);
        assert_eq!(runs.runs(), &[run(0, 50, 3), run(4, 53, 2)]);
    }

    #[test]
    fn target_hole_opens_a_new_run() {
        let mut runs = PartitionRuns::new(16);
        runs.record(&[0, 1, 2], 50);
        // Another writer appended 7 records to the target in between.
        assert_eq!(runs.record(&[3, 4], 60), vec![run(3, 60, 2)]);
        assert_eq!(runs.runs(), &[run(0, 50, 3), run(3, 60, 2)]);
    }

    #[test]
    fn equal_holes_on_both_sides_still_open_a_new_run() {
        let mut runs = PartitionRuns::new(16);
        runs.record(&[0, 1], 0);
        runs.record(&[5, 6], 5);
        assert_eq!(runs.runs(), &[run(0, 0, 2), run(5, 5, 2)]);
        // Offsets 2..5 are unmapped: they translate to the end of run 0.
        assert_eq!(runs.translate(3), Some(2));
    }

    #[test]
    fn batch_with_internal_holes_makes_several_runs() {
        let mut runs = PartitionRuns::new(16);
        runs.record(&[0, 1], 0);
        let touched = runs.record(&[2, 3, 5, 6, 7, 10], 2);
        assert_eq!(
            touched,
            vec![run(0, 0, 4), run(5, 4, 3), run(10, 7, 1)],
            "extended first, then the runs it opened"
        );
        assert_eq!(runs.runs(), &[run(0, 0, 4), run(5, 4, 3), run(10, 7, 1)]);
    }

    #[test]
    fn translate_exact_in_runs_gap_to_previous_end_none_before() {
        let mut runs = PartitionRuns::new(16);
        runs.record(&[10, 11, 12], 100); // 10..13 -> 100..103
        runs.record(&[20, 21], 110); // 20..22 -> 110..112
        for (s, t) in [(10, 100), (11, 101), (12, 102), (20, 110), (21, 111)] {
            assert_eq!(runs.translate(s), Some(t), "mapped {s}");
        }
        for c in 13..20 {
            assert_eq!(runs.translate(c), Some(103), "gap offset {c}");
        }
        assert_eq!(runs.translate(22), Some(112));
        assert_eq!(runs.translate(1_000), Some(112));
        assert_eq!(runs.translate(9), None);
        assert_eq!(runs.translate(-1), None);
        assert_eq!(PartitionRuns::new(4).translate(0), None);
    }

    #[test]
    fn source_rewind_cuts_history_back() {
        let mut runs = PartitionRuns::new(16);
        runs.record(&[0, 1, 2, 3, 4], 0);
        runs.record(&[10, 11], 5);
        // The source was truncated to 3 and rewritten; re-teed at target 7.
        let touched = runs.record(&[3, 4], 7);
        assert_eq!(touched, vec![run(3, 7, 2)]);
        assert_eq!(runs.runs(), &[run(0, 0, 3), run(3, 7, 2)]);
        assert_chain(&runs);
        // Non-increasing offsets within one batch are handled the same way.
        let touched = runs.record(&[9, 8], 9);
        assert_eq!(touched, vec![run(8, 10, 1)]);
        assert_chain(&runs);
    }

    #[test]
    fn target_rewind_cuts_history_back() {
        let mut runs = PartitionRuns::new(16);
        runs.record(&[0, 1, 2, 3], 100);
        // Target truncated to 102: the new batch reuses target offset 102.
        assert_eq!(runs.record(&[4], 102), vec![run(4, 102, 1)]);
        assert_eq!(runs.runs(), &[run(0, 100, 2), run(4, 102, 1)]);
        assert_chain(&runs);
    }

    #[test]
    fn invalid_offsets_are_ignored() {
        let mut runs = PartitionRuns::new(16);
        assert!(runs.record(&[-1, -5], 0).is_empty());
        assert!(runs.record(&[1, 2], i64::MAX).is_empty());
        assert!(runs.is_empty());
        // Target offset i64::MAX - 1 still has a representable end; the next
        // one does not.
        assert_eq!(
            runs.record(&[1, 2], i64::MAX - 1),
            vec![run(1, i64::MAX - 1, 1)]
        );
        let mut runs = PartitionRuns::new(16);
        runs.insert(run(0, 0, 0));
        runs.insert(run(-1, 0, 3));
        runs.insert(run(i64::MAX - 1, 0, 3));
        assert!(runs.is_empty());
    }

    #[test]
    fn insert_any_order_idempotent_and_merging() {
        let all = [
            run(0, 100, 5),
            run(0, 100, 3), // an older, persisted extent of the same run
            run(8, 110, 2),
            run(8, 110, 2), // duplicate
            run(20, 120, 4),
            run(22, 122, 6), // overlapping extent on the same diagonal
            run(28, 128, 1), // touching, same diagonal
        ];
        let expected = [run(0, 100, 5), run(8, 110, 2), run(20, 120, 9)];
        let mut orders = vec![all.to_vec()];
        let mut rev = all.to_vec();
        rev.reverse();
        orders.push(rev);
        let mut rot = all.to_vec();
        rot.rotate_left(3);
        orders.push(rot);
        for order in orders {
            let mut runs = PartitionRuns::new(16);
            for r in &order {
                runs.insert(*r);
            }
            for r in &order {
                runs.insert(*r);
            }
            assert_eq!(runs.runs(), &expected, "order {order:?}");
        }
    }

    #[test]
    fn insert_conflict_keeps_the_later_written_run() {
        // Run b goes further into the target log than a, but sits *before* a
        // in source space: a source truncation happened between them.
        let a = run(50, 10, 5);
        let b = run(40, 20, 5);
        for order in [[a, b], [b, a]] {
            let mut runs = PartitionRuns::new(16);
            runs.insert(order[0]);
            runs.insert(order[1]);
            assert_eq!(runs.runs(), &[b]);
        }
        // A losing insert must not disturb what it would have merged with.
        let mut runs = PartitionRuns::new(16);
        runs.insert(run(0, 0, 2));
        runs.insert(run(5, 100, 1));
        runs.insert(run(2, 2, 10)); // merges with (0,0,2) but loses to (5,100,1)
        assert_eq!(runs.runs(), &[run(0, 0, 2), run(5, 100, 1)]);
    }

    #[test]
    fn thinning_keeps_newest_dense_oldest_kept_and_spacing_exponential() {
        let mut runs = PartitionRuns::new(64);
        let mut truth = Vec::new();
        // 10_000 one-record runs: each source offset skips one (filtered).
        for i in 0..10_000i64 {
            runs.record(&[2 * i], i);
            truth.push((2 * i, i));
            assert!(runs.len() <= 64);
        }
        assert_safe(&runs, &truth);
        let kept: Vec<i64> = runs.runs().iter().map(|r| r.target).collect();
        assert_eq!(kept[0], 0, "oldest run kept: {kept:?}");
        // The newest runs are all still there.
        let newest: Vec<i64> = (9_990..10_000).collect();
        assert!(kept.ends_with(&newest), "{kept:?}");
        // Gaps grow with age: the gap behind a run is bounded by a constant
        // fraction of its age, so the duplicates a lagging consumer gets are
        // proportional to its lag.
        let head = 9_999;
        for w in kept.windows(2).skip(1) {
            let (older, newer) = (w[0], w[1]);
            let age = head - newer + 1;
            assert!(
                newer - older <= age / 4 + 2,
                "gap {older}..{newer} at age {age}: {kept:?}"
            );
        }
        // And the older half of history holds only a few runs.
        let older_half = kept.partition_point(|&t| t < 5_000);
        assert!(older_half <= 8, "{older_half} runs below 5000: {kept:?}");
    }

    #[test]
    fn tiny_capacities() {
        let mut one = PartitionRuns::new(1);
        let mut two = PartitionRuns::new(2);
        for i in 0..100i64 {
            one.record(&[3 * i], 2 * i);
            two.record(&[3 * i], 2 * i);
        }
        assert_eq!(one.runs(), &[run(297, 198, 1)]);
        assert_eq!(two.runs(), &[run(0, 0, 1), run(297, 198, 1)]);
        assert_eq!(two.translate(150), Some(1));
    }

    #[test]
    fn restore_after_thinning_translates_safely() {
        let mut live = PartitionRuns::new(32);
        let mut truth = Vec::new();
        let mut persisted = Vec::new();
        let (mut s, mut t) = (0i64, 0i64);
        for i in 0..2_000i64 {
            let batch: Vec<i64> = (0..(i % 4 + 1)).map(|k| s + k).collect();
            truth.extend(batch.iter().enumerate().map(|(k, &x)| (x, t + k as i64)));
            persisted.extend(live.record(&batch, t));
            s += batch.len() as i64 + i % 3;
            t += batch.len() as i64 + i % 5 / 4;
        }
        assert_safe(&live, &truth);
        let mut restored = PartitionRuns::new(32);
        persisted.reverse();
        for r in persisted {
            restored.insert(r);
        }
        assert_safe(&restored, &truth);
    }

    /// One batch: holes before it on each side, and a kept/dropped pattern.
    fn batch_strategy() -> impl Strategy<Value = (i64, i64, Vec<bool>)> {
        (
            prop_oneof![3 => Just(0i64), 1 => 1i64..4],
            prop_oneof![3 => Just(0i64), 1 => 1i64..4],
            prop::collection::vec(prop_oneof![4 => Just(true), 1 => Just(false)], 1..8),
        )
    }

    proptest! {
        #[test]
        fn never_skips_and_exact_in_surviving_runs(
            start in (0i64..50, 0i64..50),
            batches in prop::collection::vec(batch_strategy(), 1..120),
            max_runs in prop_oneof![1usize..12, 16usize..40],
        ) {
            let mut runs = PartitionRuns::new(max_runs);
            let mut truth: Vec<(i64, i64)> = Vec::new();
            let (mut s, mut t) = start;
            for (source_hole, target_hole, pattern) in batches {
                s += source_hole;
                t += target_hole;
                let mut kept = Vec::new();
                for keep in pattern {
                    if keep {
                        kept.push(s);
                    }
                    s += 1;
                }
                truth.extend(kept.iter().enumerate().map(|(i, &x)| (x, t + i as i64)));
                let touched = runs.record(&kept, t);
                // What record() reports covers the whole batch.
                for (i, &x) in kept.iter().enumerate() {
                    prop_assert!(touched.iter().any(|r| r.source <= x
                        && x < r.source_end()
                        && r.target + (x - r.source) == t + i as i64));
                }
                t += kept.len() as i64;
                prop_assert!(runs.len() <= max_runs);
            }
            assert_safe(&runs, &truth);
        }
    }
}
