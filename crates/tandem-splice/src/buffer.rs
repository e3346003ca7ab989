//! Bounded buffer of body pieces that arrive in any order.

use std::collections::BTreeMap;

/// Body bytes keyed by body offset, non-overlapping. Bytes below `base`
/// (already acknowledged by the client) are released; nothing at or past
/// `base + capacity` is ever stored.
#[derive(Debug)]
pub(crate) struct PieceBuffer {
    pieces: BTreeMap<u64, Vec<u8>>,
    base: u64,
    capacity: u64,
    /// End of the contiguous run of bytes starting at `base`.
    contiguous_end: u64,
    stored: u64,
}

/// Why a piece was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertError {
    /// The piece ends past `base + capacity`.
    BeyondWindow { limit: u64 },
}

impl PieceBuffer {
    pub(crate) fn new(base: u64, capacity: u64) -> Self {
        PieceBuffer {
            pieces: BTreeMap::new(),
            base,
            capacity,
            contiguous_end: base,
            stored: 0,
        }
    }

    /// First offset not yet released.
    #[cfg(test)]
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// End of the contiguous bytes from `base`.
    pub(crate) fn contiguous_end(&self) -> u64 {
        self.contiguous_end
    }

    /// Bytes held (for memory accounting).
    pub(crate) fn stored(&self) -> u64 {
        self.stored
    }

    /// How many more bytes past the contiguous end can be stored.
    pub(crate) fn room(&self) -> u64 {
        (self.base + self.capacity).saturating_sub(self.contiguous_end)
    }

    /// Stores `data` at `offset`. Parts below `base` are ignored, parts
    /// already held are kept as they are (first writer wins). All or
    /// nothing: a piece ending past the window is rejected whole.
    pub(crate) fn insert(&mut self, offset: u64, data: &[u8]) -> Result<(), InsertError> {
        let end = offset.saturating_add(data.len() as u64);
        let limit = self.base + self.capacity;
        if end > limit {
            return Err(InsertError::BeyondWindow { limit });
        }
        let mut cur = offset.max(self.base);
        while cur < end {
            // A piece covering `cur`?
            if let Some((&s, p)) = self.pieces.range(..=cur).next_back() {
                let pe = s + p.len() as u64;
                if pe > cur {
                    cur = pe;
                    continue;
                }
            }
            let next_start = self
                .pieces
                .range(cur..)
                .next()
                .map_or(end, |(&s, _)| s)
                .min(end);
            let lo = (cur - offset) as usize;
            let hi = (next_start - offset) as usize;
            self.pieces.insert(cur, data[lo..hi].to_vec());
            self.stored += (hi - lo) as u64;
            cur = next_start;
        }
        self.advance_contiguous();
        Ok(())
    }

    fn advance_contiguous(&mut self) {
        while let Some(p) = self.pieces.get(&self.contiguous_end) {
            self.contiguous_end += p.len() as u64;
        }
        // A piece that started below base may cover contiguous_end.
        if let Some((&s, p)) = self.pieces.range(..self.contiguous_end).next_back() {
            let pe = s + p.len() as u64;
            if pe > self.contiguous_end {
                self.contiguous_end = pe;
                self.advance_contiguous();
            }
        }
    }

    /// Copies bytes `[offset, offset + len)` into `out`; the range must be
    /// below `contiguous_end` and at or above `base`. Returns false (and
    /// copies nothing) otherwise.
    pub(crate) fn read(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> bool {
        let end = offset + len as u64;
        if offset < self.base || end > self.contiguous_end {
            return false;
        }
        let start_len = out.len();
        let mut cur = offset;
        while cur < end {
            let Some((&s, p)) = self.pieces.range(..=cur).next_back() else {
                out.truncate(start_len);
                return false;
            };
            let pe = s + p.len() as u64;
            if pe <= cur {
                out.truncate(start_len);
                return false;
            }
            let take_end = pe.min(end);
            out.extend_from_slice(&p[(cur - s) as usize..(take_end - s) as usize]);
            cur = take_end;
        }
        true
    }

    /// Releases bytes below `new_base` (acknowledged by the client).
    pub(crate) fn release(&mut self, new_base: u64) {
        if new_base <= self.base {
            return;
        }
        self.base = new_base;
        while let Some((&s, p)) = self.pieces.first_key_value() {
            let pe = s + p.len() as u64;
            if pe <= new_base {
                self.stored -= p.len() as u64;
                self.pieces.remove(&s);
            } else {
                break;
            }
        }
        if self.contiguous_end < new_base {
            // Only when the client acknowledged bytes it got elsewhere
            // (from the origin, before the cut).
            self.contiguous_end = new_base;
            self.advance_contiguous();
        }
    }

    /// Drops everything (on failure).
    pub(crate) fn clear(&mut self) {
        self.pieces.clear();
        self.stored = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_pieces_become_contiguous() {
        let mut b = PieceBuffer::new(100, 1000);
        b.insert(110, b"klmno").unwrap();
        assert_eq!(b.contiguous_end(), 100);
        assert_eq!(b.room(), 1000);
        b.insert(100, b"abcdefghij").unwrap();
        assert_eq!(b.contiguous_end(), 115);
        let mut out = Vec::new();
        assert!(b.read(105, 8, &mut out));
        assert_eq!(out, b"fghijklm");
        assert!(!b.read(105, 11, &mut out));
        assert_eq!(out, b"fghijklm");
    }

    #[test]
    fn overlaps_keep_first_bytes_and_below_base_is_ignored() {
        let mut b = PieceBuffer::new(10, 100);
        b.insert(12, b"XY").unwrap();
        b.insert(5, b"0123456789").unwrap(); // offsets 5..15, 10.. kept
        let mut out = Vec::new();
        assert!(b.read(10, 5, &mut out));
        assert_eq!(out, b"56XY9");
        assert_eq!(b.stored(), 5);
    }

    #[test]
    fn window_is_enforced_and_release_frees() {
        let mut b = PieceBuffer::new(0, 10);
        assert_eq!(
            b.insert(5, &[0; 6]),
            Err(InsertError::BeyondWindow { limit: 10 })
        );
        assert_eq!(b.stored(), 0);
        b.insert(0, &[1; 10]).unwrap();
        assert_eq!(b.room(), 0);
        b.release(4);
        assert_eq!(b.base(), 4);
        assert_eq!(b.room(), 4);
        b.insert(10, &[2; 4]).unwrap();
        let mut out = Vec::new();
        assert!(b.read(8, 4, &mut out));
        assert_eq!(out, [1, 1, 2, 2]);
        b.release(12);
        assert_eq!(b.stored(), 4); // the 10..14 piece stays whole
        assert!(!b.read(11, 1, &mut Vec::new()));
    }

    #[test]
    fn release_past_contiguous_end_jumps_forward() {
        let mut b = PieceBuffer::new(0, 100);
        b.insert(20, &[3; 5]).unwrap();
        b.release(20);
        assert_eq!(b.contiguous_end(), 25);
    }
}
