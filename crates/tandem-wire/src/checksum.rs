//! Internet checksum (RFC 1071), pseudo headers and incremental update
//! (RFC 1624).
//!
//! Sums are kept as `u32` accumulators of 16-bit big-endian words and folded
//! at the end, so the code is endian-independent (it reads bytes, never
//! native words).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Adds `data` as big-endian 16-bit words to `acc` (odd tail padded with 0).
///
/// The sum is taken over native-endian words and byte-swapped once at the
/// end (the ones' complement sum commutes with byte swapping, RFC 1071
/// section 2(B)), so the loop needs no per-word swap.
#[inline]
pub fn accumulate(acc: u64, data: &[u8]) -> u64 {
    let (even, tail) = data.split_at(data.len() & !1);
    let mut s: u64 = 0;
    let mut chunks = even.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Two native 32-bit halves; each is hi * 2^16 + lo, congruent to
        // hi + lo modulo 2^16 - 1. No overflow below 2^31 iterations.
        s += (w >> 32) + (w & 0xffff_ffff);
    }
    for p in chunks.remainder().chunks_exact(2) {
        s += u64::from(u16::from_ne_bytes([p[0], p[1]]));
    }
    let native = fold(s);
    let be = if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    };
    let mut acc = acc + u64::from(be);
    if let [b] = tail {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds an accumulator to 16 bits (ones' complement sum, not inverted).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum of `data` alone, inverted, ready to store in a header.
pub fn of(data: &[u8]) -> u16 {
    !fold(accumulate(0, data))
}

/// Accumulator of the TCP/UDP pseudo header for `src`, `dst`, protocol and
/// upper-layer length. Mixed address families give an IPv6-mapped sum of
/// the IPv4 address (callers never mix them).
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: u32) -> u64 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pseudo_header_v4(s, d, protocol, len as u16),
        (s, d) => pseudo_header_v6(to_v6(s), to_v6(d), protocol, len),
    }
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// IPv4 pseudo header accumulator (RFC 9293 section 3.1).
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u64 {
    let mut acc = accumulate(0, &src.octets());
    acc = accumulate(acc, &dst.octets());
    acc + u64::from(protocol) + u64::from(len)
}

/// IPv6 pseudo header accumulator (RFC 8200 section 8.1).
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, len: u32) -> u64 {
    let mut acc = accumulate(0, &src.octets());
    acc = accumulate(acc, &dst.octets());
    acc + u64::from(len >> 16) + u64::from(len & 0xffff) + u64::from(protocol)
}

/// Incrementally updates a stored checksum `old_sum` when a 16-bit word of
/// the covered data changes from `old` to `new` (RFC 1624 eqn. 3:
/// `HC' = ~(~HC + ~m + m')`).
#[inline]
pub fn update_u16(old_sum: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!old_sum) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

/// Incremental update for a 32-bit field (two 16-bit words).
#[inline]
pub fn update_u32(old_sum: u16, old: u32, new: u32) -> u16 {
    let s = update_u16(old_sum, (old >> 16) as u16, (new >> 16) as u16);
    update_u16(s, old as u16, new as u16)
}

/// Incremental update when a byte range of even offset changes from `old`
/// to `new` (both the same length; an odd length is padded with zero).
pub fn update_bytes(old_sum: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    // ~old summed == sum of complements of each word.
    let old_acc = fold(accumulate(0, old));
    let new_acc = fold(accumulate(0, new));
    let acc = u64::from(!old_sum) + u64::from(!old_acc) + u64::from(new_acc);
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(accumulate(0, &data)), 0xddf2);
        assert_eq!(of(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(accumulate(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    proptest! {
        #[test]
        fn incremental_matches_full(
            mut data in proptest::collection::vec(any::<u8>(), 4..200),
            at in 0usize..100,
            new: u32,
        ) {
            let at = ((at % (data.len() / 4)) * 4) & !1;
            let before = of(&data);
            let old = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            data[at..at + 4].copy_from_slice(&new.to_be_bytes());
            let full = of(&data);
            let inc = update_u32(before, old, new);
            // 0x0000 and 0xffff are the same value in ones' complement.
            prop_assert!(inc == full || (inc == 0 && full == 0xffff) || (inc == 0xffff && full == 0));
        }

        #[test]
        fn chunked_accumulate_matches_bytewise(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut acc = 0u64;
            for (i, b) in data.iter().enumerate() {
                acc += if i % 2 == 0 { u64::from(*b) << 8 } else { u64::from(*b) };
            }
            prop_assert_eq!(fold(acc), fold(accumulate(0, &data)));
        }
    }
}
