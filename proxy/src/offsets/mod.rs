//! Offset translation from records the tee itself wrote (DESIGN.md §5,
//! reference §3.2(a)).
//!
//! For every batch teed from a source partition to the same partition on a
//! target cluster, Switchyard knows the source offset of each kept record and
//! the target base offset from the target's ProduceResponse, i.e. exact
//! offset pairs. [`runs`] folds them into runs `(source, target, count)`,
//! bounds their number by thinning old runs exponentially, and translates a
//! committed source offset into the target's offset space without ever
//! skipping a record. [`sync_topic`] is their persisted form: a compacted
//! internal topic on the target whose key scheme makes compaction itself do
//! the thinning.

pub mod mm2;
pub mod runs;
pub mod sync_topic;
pub mod timestamp;
