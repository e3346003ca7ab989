//! A set of byte offsets stored as sorted, disjoint, non-adjacent ranges.

use std::ops::Range;

/// Sorted, merged half-open byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        RangeSet { ranges: Vec::new() }
    }

    /// Add `r` (empty ranges are ignored).
    pub fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        // First range whose end reaches r.start (touching ranges merge).
        let i = self.ranges.partition_point(|x| x.end < r.start);
        let mut j = i;
        let mut start = r.start;
        let mut end = r.end;
        while j < self.ranges.len() && self.ranges[j].start <= end {
            start = start.min(self.ranges[j].start);
            end = end.max(self.ranges[j].end);
            j += 1;
        }
        self.ranges.splice(i..j, std::iter::once(start..end));
    }

    /// Whether every offset of `r` is in the set (true for an empty `r`).
    pub fn contains_range(&self, r: &Range<u64>) -> bool {
        if r.start >= r.end {
            return true;
        }
        let i = self.ranges.partition_point(|x| x.end <= r.start);
        self.ranges
            .get(i)
            .is_some_and(|x| x.start <= r.start && x.end >= r.end)
    }

    /// End of the contiguous run that contains `from`, or `from` itself if
    /// `from` is not in the set.
    pub fn contiguous_end(&self, from: u64) -> u64 {
        let i = self.ranges.partition_point(|x| x.end <= from);
        match self.ranges.get(i) {
            Some(x) if x.start <= from => x.end,
            _ => from,
        }
    }

    /// First offset `>= from` that is NOT in the set.
    pub fn first_missing(&self, from: u64) -> u64 {
        self.contiguous_end(from)
    }

    /// First offset `>= from` that IS in the set.
    pub fn next_present(&self, from: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|x| x.end <= from);
        self.ranges.get(i).map(|x| x.start.max(from))
    }

    /// Bytes of the set inside `r`.
    pub fn covered_in(&self, r: &Range<u64>) -> u64 {
        let i = self.ranges.partition_point(|x| x.end <= r.start);
        self.ranges[i..]
            .iter()
            .take_while(|x| x.start < r.end)
            .map(|x| x.end.min(r.end) - x.start.max(r.start))
            .sum()
    }

    /// Total bytes in the set.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_and_queries() {
        let mut s = RangeSet::new();
        s.insert(10..20);
        s.insert(30..40);
        s.insert(20..25);
        assert_eq!(s.ranges(), &[10..25, 30..40]);
        s.insert(5..35);
        assert_eq!(s.ranges().to_vec(), vec![Range { start: 5, end: 40 }]);
        assert!(s.contains_range(&(6..39)));
        assert!(!s.contains_range(&(0..6)));
        assert_eq!(s.contiguous_end(7), 40);
        assert_eq!(s.contiguous_end(2), 2);
        assert_eq!(s.next_present(0), Some(5));
        assert_eq!(s.next_present(40), None);
        assert_eq!(s.covered_in(&(0..10)), 5);
        assert_eq!(s.len(), 35);
    }

    proptest! {
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec((0u64..200, 0u64..40), 0..40)) {
            let mut s = RangeSet::new();
            let mut bits = [false; 240];
            for (a, l) in ops {
                s.insert(a..a + l);
                for b in &mut bits[a as usize..(a + l) as usize] { *b = true; }
            }
            // Invariant: sorted, disjoint, non-adjacent, non-empty.
            for w in s.ranges().windows(2) {
                prop_assert!(w[0].end < w[1].start);
            }
            for r in s.ranges() { prop_assert!(r.start < r.end); }
            for i in 0..240u64 {
                prop_assert_eq!(s.contains_range(&(i..i + 1)), bits[i as usize]);
            }
            prop_assert_eq!(s.len(), bits.iter().filter(|b| **b).count() as u64);
        }
    }
}
