//! The free clusters of a volume as runs ("extents"), indexed by start and by length, so
//! that allocation finds a run of the size it needs in O(log n) instead of scanning the
//! FAT, and freeing merges a cluster with its neighbours in O(log n) as well.
//!
//! The FAT stays the truth: `Fat` builds this map from its entries at mount and keeps it in
//! step on every entry it changes from or to free.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Included, Unbounded};

/// Free runs of clusters. A run is `(start, len)`; runs never touch or overlap (touching
/// runs are merged).
#[derive(Debug, Default)]
pub struct FreeMap {
    /// start -> len.
    by_start: BTreeMap<u32, u32>,
    /// (len, start), for best fit and the largest run.
    by_len: BTreeSet<(u32, u32)>,
    /// Clusters in all runs.
    total: u32,
}

impl FreeMap {
    /// The map of the clusters `is_free` accepts among `first ..= last`, in one pass.
    pub fn build(first: u32, last: u32, mut is_free: impl FnMut(u32) -> bool) -> FreeMap {
        let mut map = FreeMap::default();
        let mut run: Option<u32> = None;
        for c in first..=last {
            match (is_free(c), run) {
                (true, None) => run = Some(c),
                (false, Some(s)) => {
                    map.add_run(s, c - s);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            map.add_run(s, last - s + 1);
        }
        map
    }

    fn add_run(&mut self, start: u32, len: u32) {
        self.by_start.insert(start, len);
        self.by_len.insert((len, start));
        self.total += len;
    }

    fn remove_run(&mut self, start: u32, len: u32) {
        self.by_start.remove(&start);
        self.by_len.remove(&(len, start));
        self.total -= len;
    }

    /// How many clusters are free in all runs.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The run that holds `cluster`, if it is free.
    pub fn run_at(&self, cluster: u32) -> Option<(u32, u32)> {
        let (&s, &l) = self.by_start.range(..=cluster).next_back()?;
        (cluster - s < l).then_some((s, l))
    }

    /// The first run that holds or starts after `cluster`.
    pub fn run_from(&self, cluster: u32) -> Option<(u32, u32)> {
        self.run_at(cluster)
            .or_else(|| self.by_start.range((Excluded(cluster), Unbounded)).next().map(|(&s, &l)| (s, l)))
    }

    /// The smallest run of at least `len` clusters (the lowest such run among equals).
    pub fn best_fit(&self, len: u32) -> Option<(u32, u32)> {
        self.by_len.range((Included((len, 0)), Unbounded)).next().map(|&(l, s)| (s, l))
    }

    /// The longest run (the lowest among equals).
    pub fn largest(&self) -> Option<(u32, u32)> {
        let &(len, _) = self.by_len.last()?;
        self.by_len.range((len, 0)..).next().map(|&(l, s)| (s, l))
    }

    /// Marks `len` clusters from `start` used. They must all be free, inside one run.
    pub fn take(&mut self, start: u32, len: u32) {
        let Some((s, l)) = self.run_at(start) else {
            debug_assert!(false, "cluster {start} is not free");
            return;
        };
        debug_assert!(start + len <= s + l, "clusters {start}+{len} leave the run {s}+{l}");
        let len = len.min(s + l - start);
        self.remove_run(s, l);
        if start > s {
            self.add_run(s, start - s);
        }
        let end = start + len;
        if end < s + l {
            self.add_run(end, s + l - end);
        }
    }

    /// Marks `cluster` free, merging it with the runs it touches.
    pub fn give(&mut self, cluster: u32) {
        if self.run_at(cluster).is_some() {
            return;
        }
        let (mut start, mut len) = (cluster, 1);
        if let Some((s, l)) = cluster.checked_sub(1).and_then(|p| self.run_at(p)) {
            self.remove_run(s, l);
            (start, len) = (s, l + 1);
        }
        if let Some(&l) = self.by_start.get(&(cluster + 1)) {
            self.remove_run(cluster + 1, l);
            len += l;
        }
        self.add_run(start, len);
    }

    /// How many runs the free space is in.
    pub fn runs(&self) -> usize {
        self.by_start.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(m: &FreeMap) -> Vec<(u32, u32)> {
        m.by_start.iter().map(|(&s, &l)| (s, l)).collect()
    }

    #[test]
    fn build_finds_the_runs_and_give_and_take_keep_them_merged() {
        let used = [5u32, 6, 10];
        let mut m = FreeMap::build(2, 12, |c| !used.contains(&c));
        assert_eq!(runs(&m), [(2, 3), (7, 3), (11, 2)]);
        m.give(6);
        assert_eq!(runs(&m), [(2, 3), (6, 4), (11, 2)]);
        m.give(5);
        assert_eq!(runs(&m), [(2, 8), (11, 2)]);
        m.give(10);
        assert_eq!(runs(&m), [(2, 11)]);
        m.take(4, 3);
        assert_eq!(runs(&m), [(2, 2), (7, 6)]);
        m.take(7, 6);
        m.take(2, 1);
        assert_eq!(runs(&m), [(3, 1)]);
        assert_eq!(m.by_len.len(), m.by_start.len());
        assert_eq!(m.total(), 1);
    }

    #[test]
    fn lookups_by_position_and_by_size() {
        let used = [4u32, 5, 9, 20];
        let m = FreeMap::build(2, 30, |c| !used.contains(&c));
        // Runs: 2+2, 6+3, 10+10, 21+10.
        assert_eq!(m.run_at(7), Some((6, 3)));
        assert_eq!(m.run_at(9), None);
        assert_eq!(m.run_from(9), Some((10, 10)));
        assert_eq!(m.run_from(31), None);
        assert_eq!(m.best_fit(3), Some((6, 3)));
        assert_eq!(m.best_fit(4), Some((10, 10)));
        assert_eq!(m.best_fit(11), None);
        assert_eq!(m.largest(), Some((10, 10)));
        assert_eq!(m.runs(), 4);
    }
}
