//! Wrapping TCP sequence numbers.

use core::cmp::Ordering;
use core::fmt;

/// A TCP sequence number: 32 bits, wrapping (RFC 9293 section 3.4).
///
/// Comparison is modular: `a < b` when `b` is ahead of `a` by less than
/// 2^31. That relation is not transitive across the whole space, so the
/// type implements `PartialOrd` only, like smoltcp's. Unlike smoltcp's it
/// never panics: the difference of two numbers is a signed [`delta`](Self::delta).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// `self + n`, wrapping.
    #[inline]
    pub const fn add(self, n: u32) -> Self {
        SeqNumber(self.0.wrapping_add(n))
    }

    /// `self - n`, wrapping.
    #[inline]
    pub const fn sub(self, n: u32) -> Self {
        SeqNumber(self.0.wrapping_sub(n))
    }

    /// Signed distance `self - other`: positive when `self` is ahead.
    #[inline]
    pub const fn delta(self, other: SeqNumber) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// `self` is strictly before `other` (modular).
    #[inline]
    pub const fn before(self, other: SeqNumber) -> bool {
        self.delta(other) < 0
    }

    /// `self` is strictly after `other` (modular).
    #[inline]
    pub const fn after(self, other: SeqNumber) -> bool {
        self.delta(other) > 0
    }

    /// The later of the two (modular).
    #[inline]
    pub const fn max_of(self, other: SeqNumber) -> SeqNumber {
        if self.after(other) { self } else { other }
    }

    /// The earlier of the two (modular).
    #[inline]
    pub const fn min_of(self, other: SeqNumber) -> SeqNumber {
        if self.before(other) { self } else { other }
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.delta(*other).cmp(&0))
    }
}

impl fmt::Debug for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}", self.0)
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_around_zero() {
        let a = SeqNumber(u32::MAX - 1);
        let b = a.add(5);
        assert_eq!(b, SeqNumber(3));
        assert_eq!(b.delta(a), 5);
        assert_eq!(a.delta(b), -5);
        assert!(a < b);
        assert!(a.before(b) && b.after(a));
        assert_eq!(a.max_of(b), b);
        assert_eq!(a.min_of(b), a);
        assert_eq!(b.sub(5), a);
    }

    #[test]
    fn half_space_is_the_horizon() {
        let a = SeqNumber(0);
        assert_eq!(a.add(0x7fff_ffff).delta(a), i32::MAX);
        assert_eq!(a.add(0x8000_0000).delta(a), i32::MIN);
        assert!(a.add(0x8000_0000).before(a));
    }

    proptest! {
        #[test]
        fn delta_inverts_add(x: u32, d in -0x7fff_ffffi32..0x7fff_ffff) {
            let a = SeqNumber(x);
            let b = SeqNumber(x.wrapping_add(d as u32));
            prop_assert_eq!(b.delta(a), d);
            prop_assert_eq!(a.delta(b), -d);
            prop_assert_eq!(b.partial_cmp(&a), Some(d.cmp(&0)));
        }
    }
}
