//! Which offset of a partition may be stored when its records finish out of order: the
//! end of the contiguous prefix of finished records. Records of one partition are handled
//! concurrently (different keys), so record 7 can be done while record 5 is still in
//! flight; storing 7 then would commit past 5, and a crash would lose it. Hop: none.

use std::collections::BTreeSet;

/// One partition's records from the moment its lane takes them until they are done.
#[derive(Debug, Default)]
pub struct Progress {
    /// Taken and not yet done: running, waiting behind a record of the same key, or
    /// interrupted (then it stays here for good, so nothing after it is stored again).
    pending: BTreeSet<i64>,
    /// Done, but not yet covered by a stored offset (a record before it is pending).
    done: BTreeSet<i64>,
}

impl Progress {
    /// The lane took the record at `offset` (offsets arrive in increasing order).
    pub fn taken(&mut self, offset: i64) {
        self.pending.insert(offset);
    }

    /// The record at `offset` is done. Returns the offset to store if the contiguous
    /// prefix grew: the highest done offset with no pending record before it. (rdkafka's
    /// `store_offset(o)` commits `o + 1`, the next record to read; gaps between offsets,
    /// from compaction or transaction markers, are skipped over rightly.)
    pub fn done(&mut self, offset: i64) -> Option<i64> {
        if !self.pending.remove(&offset) {
            return None;
        }
        self.done.insert(offset);
        let storable = match self.pending.first() {
            Some(&first) => self.done.range(..first).next_back().copied(),
            None => self.done.last().copied(),
        }?;
        // Covered from now on.
        self.done = self.done.split_off(&(storable + 1));
        Some(storable)
    }

    /// Records taken and not done.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_each_record_is_stored() {
        let mut progress = Progress::default();
        for offset in 0..3 {
            progress.taken(offset);
            assert_eq!(progress.done(offset), Some(offset));
        }
        assert_eq!(progress.pending(), 0);
    }

    #[test]
    fn out_of_order_only_the_contiguous_prefix_is_stored() {
        let mut progress = Progress::default();
        for offset in 10..15 {
            progress.taken(offset);
        }
        // 12 and 11 finish first: 10 is still running, nothing may be committed.
        assert_eq!(progress.done(12), None);
        assert_eq!(progress.done(11), None);
        // 10 done: 10, 11 and 12 are all done, 13 is next.
        assert_eq!(progress.done(10), Some(12));
        assert_eq!(progress.done(14), None);
        assert_eq!(progress.done(13), Some(14));
        assert_eq!(progress.pending(), 0);
    }

    #[test]
    fn an_interrupted_record_holds_every_later_offset_back() {
        let mut progress = Progress::default();
        for offset in 0..4 {
            progress.taken(offset);
        }
        assert_eq!(progress.done(0), Some(0));
        // 1 was interrupted (never done); 2 and 3 finish.
        assert_eq!(progress.done(2), None);
        assert_eq!(progress.done(3), None);
        assert_eq!(progress.pending(), 1);
    }

    #[test]
    fn gaps_in_offsets_are_committed_past() {
        let mut progress = Progress::default();
        // 5 and 9, with nothing in between (compacted away, or transaction markers).
        progress.taken(5);
        progress.taken(9);
        assert_eq!(progress.done(9), None);
        assert_eq!(progress.done(5), Some(9));
    }

    #[test]
    fn a_record_done_twice_or_never_taken_changes_nothing() {
        let mut progress = Progress::default();
        progress.taken(0);
        progress.taken(1);
        assert_eq!(progress.done(0), Some(0));
        assert_eq!(progress.done(0), None);
        assert_eq!(progress.done(7), None);
        assert_eq!(progress.done(1), Some(1));
    }

    #[test]
    fn a_record_taken_after_a_done_one_keeps_the_stored_offset() {
        let mut progress = Progress::default();
        progress.taken(0);
        assert_eq!(progress.done(0), Some(0));
        progress.taken(1);
        progress.taken(2);
        // 2 done but 1 pending: 0 is already stored, nothing new.
        assert_eq!(progress.done(2), None);
        assert_eq!(progress.done(1), Some(2));
    }
}
