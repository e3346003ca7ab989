//! A bounded memory of where segments sent to the client ended: the places
//! its `rcv_nxt` can be, tried by the RST rounds after a failure.
//!
//! Segments mostly follow each other at one size (the origin's full-sized
//! segments before the decision, the injected ones after it), so the ends
//! are kept as arithmetic runs `first, first + stride, …`: a run grows by
//! one when a segment ends one stride after its last end. A whole response
//! in order is one run; retransmissions, reordering and short segments add
//! runs. At most [`MAX_RUNS`] runs are kept: the ones the client
//! acknowledged go first, then the highest.

/// Runs kept at most (24 bytes each).
pub(crate) const MAX_RUNS: usize = 64;

/// The largest stride a run may have (a TCP segment is shorter).
const MAX_STRIDE: u64 = 65_535;

/// Ends `first + k * stride` for `k` in `0..count` (`count >= 1`; `stride`
/// is 0 while `count == 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u64,
    stride: u64,
    count: u64,
}

impl Run {
    fn last(&self) -> u64 {
        self.first + self.stride * (self.count - 1)
    }

    fn contains(&self, end: u64) -> bool {
        if end < self.first || end > self.last() {
            return false;
        }
        self.stride == 0 || (end - self.first) % self.stride == 0
    }

    /// Adds `end` when it is the next element; false otherwise.
    fn extend(&mut self, end: u64) -> bool {
        if self.count == 1 {
            if end > self.first && end - self.first <= MAX_STRIDE {
                self.stride = end - self.first;
                self.count = 2;
                return true;
            }
            return false;
        }
        if end == self.last() + self.stride {
            self.count += 1;
            return true;
        }
        false
    }

    /// Drops the elements at or below `acked`; false when none is left.
    fn trim(&mut self, acked: u64) -> bool {
        if self.last() <= acked {
            return false;
        }
        if self.first <= acked {
            // stride > 0 here: a single element above `acked` is `last`.
            let k = (acked - self.first) / self.stride + 1;
            self.first += k * self.stride;
            self.count -= k;
            if self.count == 1 {
                self.stride = 0;
            }
        }
        true
    }
}

/// Segment ends as stream offsets (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct SegmentEnds {
    /// Sorted by `first`.
    runs: Vec<Run>,
    /// The run that took the last end (most ends extend it).
    hint: usize,
}

impl SegmentEnds {
    /// Remembers `end`, a segment end above `acked` (the client's
    /// acknowledged offset; ends at or below it are no candidates).
    pub(crate) fn note(&mut self, end: u64, acked: u64) {
        if end <= acked {
            return;
        }
        // Extending a run never moves its `first`: the order holds.
        if let Some(run) = self.runs.get_mut(self.hint) {
            if run.contains(end) || run.extend(end) {
                return;
            }
        }
        if let Some(i) = self.runs.iter().position(|r| r.contains(end)) {
            self.hint = i;
            return;
        }
        if let Some(i) = self.runs.iter_mut().position(|r| r.extend(end)) {
            self.hint = i;
            return;
        }
        if self.runs.len() >= MAX_RUNS {
            self.runs.retain_mut(|r| r.trim(acked));
            self.runs.sort_unstable_by_key(|r| r.first);
        }
        let at = self.runs.partition_point(|r| r.first < end);
        if self.runs.len() >= MAX_RUNS {
            if at >= self.runs.len() {
                return; // above everything kept: the rounds try low ends first
            }
            self.runs.pop();
        }
        self.runs.insert(
            at,
            Run {
                first: end,
                stride: 0,
                count: 1,
            },
        );
        self.hint = at;
    }

    /// The lowest `max` ends strictly between `lo` and `hi`, ascending,
    /// without duplicates.
    pub(crate) fn lowest_between(&self, lo: u64, hi: u64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for run in &self.runs {
            let mut k = if run.first > lo || run.stride == 0 {
                0
            } else {
                (lo - run.first) / run.stride + 1
            };
            let mut taken = 0;
            while k < run.count && taken < max {
                let e = run.first + k * run.stride;
                if e >= hi {
                    break;
                }
                if e > lo {
                    out.push(e);
                    taken += 1;
                }
                k += 1;
            }
        }
        out.sort_unstable();
        out.dedup();
        out.truncate(max);
        out
    }

    /// The highest `max` ends strictly between `lo` and `hi`, descending,
    /// without duplicates.
    pub(crate) fn highest_between(&self, lo: u64, hi: u64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for run in &self.runs {
            if run.first >= hi || run.last() <= lo {
                continue;
            }
            // The last element below `hi`.
            let mut k = if run.last() < hi {
                run.count - 1
            } else {
                // stride > 0: `first < hi <= last`.
                (hi - 1 - run.first) / run.stride
            };
            let mut taken = 0;
            loop {
                let e = run.first + k * run.stride;
                if e <= lo || taken >= max {
                    break;
                }
                out.push(e);
                taken += 1;
                if k == 0 {
                    break;
                }
                k -= 1;
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.dedup();
        out.truncate(max);
        out
    }

    /// Up to `max` ends strictly between `lo` and `hi`, from both sides
    /// alternately: the lowest, the highest, the second lowest, … (the
    /// client's rcv_nxt is most likely just above its last ACK the engine
    /// saw, or just below the highest byte sent).
    pub(crate) fn spread_between(&self, lo: u64, hi: u64, max: usize) -> Vec<u64> {
        let low = self.lowest_between(lo, hi, max);
        let high = self.highest_between(lo, hi, max);
        let mut out = Vec::with_capacity(max);
        let (mut a, mut b) = (low.iter(), high.iter());
        while out.len() < max {
            let (x, y) = (a.next(), b.next());
            if x.is_none() && y.is_none() {
                break;
            }
            for e in [x, y].into_iter().flatten() {
                if out.len() < max && !out.contains(e) {
                    out.push(*e);
                }
            }
        }
        out
    }

    /// Runs kept (for tests and diagnostics).
    #[cfg(test)]
    fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_in_order_is_one_run() {
        let mut e = SegmentEnds::default();
        for k in 1..=1000u64 {
            e.note(117 + k * 1460, 0);
        }
        assert_eq!(e.runs(), 1);
        assert_eq!(
            e.lowest_between(117 + 10 * 1460, u64::MAX, 3),
            vec![117 + 11 * 1460, 117 + 12 * 1460, 117 + 13 * 1460]
        );
        // Retransmissions change nothing.
        e.note(117 + 5 * 1460, 0);
        assert_eq!(e.runs(), 1);
    }

    #[test]
    fn interleaved_streams_and_odd_segments_are_kept_exactly() {
        let mut e = SegmentEnds::default();
        let mut all = Vec::new();
        // Origin segments, then injected ones from another alignment, a
        // short segment among them, and reordering.
        for k in [1u64, 2, 4, 3, 5, 6] {
            all.push(1343 + k * 1460);
        }
        for k in 0..8u64 {
            all.push(5000 + k * 1448);
        }
        all.push(5000 + 7 * 1448 + 100);
        for &x in &all {
            e.note(x, 0);
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(e.lowest_between(0, u64::MAX, 1000), all);
        assert!(e.runs() <= 6, "{e:?}");
    }

    #[test]
    fn bounded_and_acknowledged_ends_go_first() {
        let mut e = SegmentEnds::default();
        // Every end its own run (no common stride fits).
        let ends: Vec<u64> = (0..200u64).map(|k| k * k * 70_000 + 1).collect();
        for &x in &ends {
            e.note(x, 0);
        }
        assert_eq!(e.runs(), MAX_RUNS);
        // The lowest are kept, the highest dropped.
        assert_eq!(e.lowest_between(0, u64::MAX, 3), ends[..3].to_vec());
        // Once the client acknowledged some, higher ones fit again.
        let acked = ends[10];
        e.note(ends[100], acked);
        let kept = e.lowest_between(acked, u64::MAX, 1000);
        assert_eq!(kept.first(), Some(&ends[11]));
        assert!(kept.contains(&ends[100]));
        assert!(e.runs() <= MAX_RUNS);
    }

    #[test]
    fn partially_acknowledged_runs_are_trimmed() {
        let mut r = Run {
            first: 100,
            stride: 10,
            count: 5,
        };
        assert!(r.trim(125));
        assert_eq!((r.first, r.count), (130, 2));
        assert!(r.trim(130));
        assert_eq!((r.first, r.count, r.stride), (140, 1, 0));
        assert!(!r.trim(140));
    }

    #[test]
    fn spread_takes_both_ends_of_the_range() {
        let mut e = SegmentEnds::default();
        for k in 1..=100u64 {
            e.note(k * 536, 0);
        }
        e.note(100 * 536 + 17, 0); // a short last segment
        assert_eq!(
            e.highest_between(536, 100 * 536 + 17, 3),
            vec![100 * 536, 99 * 536, 98 * 536]
        );
        assert_eq!(
            e.spread_between(536, 100 * 536 + 17, 5),
            vec![2 * 536, 100 * 536, 3 * 536, 99 * 536, 4 * 536]
        );
        // Fewer than asked: each once.
        assert_eq!(e.spread_between(0, 3 * 536, 10), vec![536, 2 * 536]);
        assert_eq!(e.highest_between(0, u64::MAX, 1), vec![100 * 536 + 17]);
    }

    #[test]
    fn between_is_exclusive_and_bounded() {
        let mut e = SegmentEnds::default();
        for k in 1..=10u64 {
            e.note(k * 100, 0);
        }
        assert_eq!(e.lowest_between(300, 700, 10), vec![400, 500, 600]);
        assert_eq!(e.lowest_between(0, 1000, 2), vec![100, 200]);
        assert!(e.lowest_between(1000, 2000, 5).is_empty());
    }
}
