//! TCP header view and options.

use std::net::IpAddr;

use crate::ip::PROTO_TCP;
use crate::{SeqNumber, WireError, checksum};

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const OFF_FLAGS: Range<usize> = 12..14;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
    pub const HEADER_LEN: usize = 20;
}

/// TCP option kinds.
pub mod kind {
    /// End of option list.
    pub const END: u8 = 0;
    /// No-operation (padding).
    pub const NOP: u8 = 1;
    /// Maximum segment size.
    pub const MSS: u8 = 2;
    /// Window scale.
    pub const WSCALE: u8 = 3;
    /// SACK permitted.
    pub const SACK_PERM: u8 = 4;
    /// SACK blocks.
    pub const SACK: u8 = 5;
    /// Timestamps.
    pub const TIMESTAMPS: u8 = 8;
}

/// TCP header flags (the low 9 bits of the offset/flags word).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    /// FIN.
    pub const FIN: TcpFlags = TcpFlags(0x001);
    /// SYN.
    pub const SYN: TcpFlags = TcpFlags(0x002);
    /// RST.
    pub const RST: TcpFlags = TcpFlags(0x004);
    /// PSH.
    pub const PSH: TcpFlags = TcpFlags(0x008);
    /// ACK.
    pub const ACK: TcpFlags = TcpFlags(0x010);
    /// URG.
    pub const URG: TcpFlags = TcpFlags(0x020);
    /// ECE.
    pub const ECE: TcpFlags = TcpFlags(0x040);
    /// CWR.
    pub const CWR: TcpFlags = TcpFlags(0x080);

    /// Whether all flags of `other` are set.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union.
    pub const fn with(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }
    /// Difference.
    pub const fn without(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & !other.0)
    }
}

impl core::fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let names = [
            (Self::SYN, "S"),
            (Self::FIN, "F"),
            (Self::RST, "R"),
            (Self::PSH, "P"),
            (Self::ACK, "."),
            (Self::URG, "U"),
            (Self::ECE, "E"),
            (Self::CWR, "W"),
        ];
        write!(f, "[")?;
        for (fl, n) in names {
            if self.contains(fl) {
                write!(f, "{n}")?;
            }
        }
        write!(f, "]")
    }
}

/// One SACK block `[left, right)` in sequence space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SackBlock {
    /// First sequence number of the block.
    pub left: SeqNumber,
    /// Sequence number after the block.
    pub right: SeqNumber,
}

/// A parsed TCP option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOption<'a> {
    /// Padding.
    Nop,
    /// Maximum segment size.
    Mss(u16),
    /// Window scale shift.
    WindowScale(u8),
    /// SACK permitted.
    SackPermitted,
    /// SACK blocks (raw, 8 bytes each, at most 4); see [`TcpOption::sack_blocks`].
    Sack(&'a [u8]),
    /// Timestamps.
    Timestamps {
        /// Sender's timestamp value.
        tsval: u32,
        /// Echo reply.
        tsecr: u32,
    },
    /// Anything else, with its data.
    Unknown {
        /// Option kind.
        kind: u8,
        /// Option data (without kind and length).
        data: &'a [u8],
    },
}

impl<'a> TcpOption<'a> {
    /// The SACK blocks of a [`TcpOption::Sack`] (empty for other options).
    pub fn sack_blocks(&self) -> impl Iterator<Item = SackBlock> + 'a {
        let raw: &'a [u8] = match self {
            TcpOption::Sack(r) => r,
            _ => &[],
        };
        raw.chunks_exact(8).map(|c| SackBlock {
            left: SeqNumber(u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
            right: SeqNumber(u32::from_be_bytes([c[4], c[5], c[6], c[7]])),
        })
    }
}

/// Iterator over TCP options; yields `Err(BadOption)` once and stops on a
/// malformed option, stops at End-of-List.
#[derive(Debug, Clone)]
pub struct TcpOptions<'a> {
    data: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> TcpOptions<'a> {
    /// Iterates the options area `data` (header bytes after the first 20).
    pub fn new(data: &'a [u8]) -> Self {
        TcpOptions {
            data,
            pos: 0,
            failed: false,
        }
    }

    /// Like `next`, also returning the option's byte offset in the area.
    pub fn next_with_offset(&mut self) -> Option<Result<(usize, TcpOption<'a>), WireError>> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let at = self.pos;
        let k = self.data[at];
        match k {
            kind::END => {
                self.pos = self.data.len();
                None
            }
            kind::NOP => {
                self.pos += 1;
                Some(Ok((at, TcpOption::Nop)))
            }
            _ => {
                let Some(&len) = self.data.get(at + 1) else {
                    self.failed = true;
                    return Some(Err(WireError::BadOption));
                };
                let len = usize::from(len);
                if len < 2 || at + len > self.data.len() {
                    self.failed = true;
                    return Some(Err(WireError::BadOption));
                }
                let d = &self.data[at + 2..at + len];
                self.pos += len;
                let opt = match (k, d.len()) {
                    (kind::MSS, 2) => TcpOption::Mss(u16::from_be_bytes([d[0], d[1]])),
                    (kind::WSCALE, 1) => TcpOption::WindowScale(d[0]),
                    (kind::SACK_PERM, 0) => TcpOption::SackPermitted,
                    (kind::SACK, n) if n % 8 == 0 && n <= 32 => TcpOption::Sack(d),
                    (kind::TIMESTAMPS, 8) => TcpOption::Timestamps {
                        tsval: u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
                        tsecr: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                    },
                    (
                        kind::MSS | kind::WSCALE | kind::SACK_PERM | kind::SACK | kind::TIMESTAMPS,
                        _,
                    ) => {
                        self.failed = true;
                        return Some(Err(WireError::BadOption));
                    }
                    (kind, _) => TcpOption::Unknown { kind, data: d },
                };
                Some(Ok((at, opt)))
            }
        }
    }
}

impl<'a> Iterator for TcpOptions<'a> {
    type Item = Result<TcpOption<'a>, WireError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_offset().map(|r| r.map(|(_, o)| o))
    }
}

/// A view of a TCP segment (header + payload). The buffer must be exactly
/// the segment (slice the IP packet with [`crate::IpTcpMeta`]).
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

fn be16(b: &[u8], r: core::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}
fn be32(b: &[u8], r: core::ops::Range<usize>) -> u32 {
    u32::from_be_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }
    /// Wraps untrusted bytes: at least 20 bytes, data offset >= 5 and
    /// within the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        let len = p.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let hl = p.header_len();
        if hl < field::HEADER_LEN {
            return Err(WireError::BadHeaderLen);
        }
        if hl > len {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }
    /// Consumes the view.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }
    /// Sequence number.
    pub fn seq(&self) -> SeqNumber {
        SeqNumber(be32(self.buffer.as_ref(), field::SEQ))
    }
    /// Acknowledgment number (meaningful when ACK is set).
    pub fn ack(&self) -> SeqNumber {
        SeqNumber(be32(self.buffer.as_ref(), field::ACK))
    }
    /// Header length in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFF_FLAGS.start] >> 4) * 4
    }
    /// Flags.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(be16(self.buffer.as_ref(), field::OFF_FLAGS) & 0x01ff)
    }
    /// Raw (unscaled) window field.
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW)
    }
    /// Stored checksum.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        be16(self.buffer.as_ref(), field::URGENT)
    }
    /// The options area.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER_LEN..self.header_len()]
    }
    /// Iterator over the options.
    pub fn option_iter(&self) -> TcpOptions<'_> {
        TcpOptions::new(self.options())
    }
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
    /// Sequence space the segment occupies (payload + SYN + FIN).
    pub fn seq_len(&self) -> u32 {
        let f = self.flags();
        self.payload().len() as u32
            + u32::from(f.contains(TcpFlags::SYN))
            + u32::from(f.contains(TcpFlags::FIN))
    }
    /// Byte offset (within the segment) of the timestamps option's TSval,
    /// if the option is present and well-formed.
    pub fn timestamps_offset(&self) -> Option<usize> {
        let mut it = self.option_iter();
        while let Some(Ok((at, o))) = it.next_with_offset() {
            if let TcpOption::Timestamps { .. } = o {
                return Some(field::HEADER_LEN + at + 2);
            }
        }
        None
    }
    /// Byte offset (within the segment) of the SACK option's kind byte and
    /// its total length, if present.
    pub fn sack_offset(&self) -> Option<(usize, usize)> {
        let mut it = self.option_iter();
        while let Some(Ok((at, o))) = it.next_with_offset() {
            if let TcpOption::Sack(raw) = o {
                return Some((field::HEADER_LEN + at, raw.len() + 2));
            }
        }
        None
    }
    /// Checksum over pseudo header + segment, folded; 0xffff when valid.
    fn sum_with_pseudo(&self, src: IpAddr, dst: IpAddr) -> u16 {
        let b = self.buffer.as_ref();
        let acc = checksum::pseudo_header(src, dst, PROTO_TCP, b.len() as u32);
        checksum::fold(checksum::accumulate(acc, b))
    }
    /// Whether the checksum is correct for the given IP addresses.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        self.sum_with_pseudo(src, dst) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn set16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }
    fn set32(&mut self, r: core::ops::Range<usize>, v: u32) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        self.set16(field::SRC_PORT, v);
    }
    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        self.set16(field::DST_PORT, v);
    }
    /// Sets the sequence number (checksum not updated).
    pub fn set_seq(&mut self, v: SeqNumber) {
        self.set32(field::SEQ, v.0);
    }
    /// Sets the acknowledgment number (checksum not updated).
    pub fn set_ack(&mut self, v: SeqNumber) {
        self.set32(field::ACK, v.0);
    }
    /// Sets header length (multiple of 4) and flags.
    pub fn set_header_len_and_flags(&mut self, len: usize, flags: TcpFlags) {
        let w = ((len as u16 / 4) << 12) | (flags.0 & 0x01ff);
        self.set16(field::OFF_FLAGS, w);
    }
    /// Sets the raw window (checksum not updated).
    pub fn set_window(&mut self, v: u16) {
        self.set16(field::WINDOW, v);
    }
    /// Sets the stored checksum.
    pub fn set_checksum(&mut self, v: u16) {
        self.set16(field::CHECKSUM, v);
    }
    /// Sets the urgent pointer.
    pub fn set_urgent(&mut self, v: u16) {
        self.set16(field::URGENT, v);
    }
    /// Mutable options area.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[field::HEADER_LEN..hl]
    }
    /// Mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
    /// Recomputes the checksum in full over pseudo header and segment.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let c = !self.sum_with_pseudo(src, dst);
        self.set_checksum(c);
    }

    /// Sets the ACK number and updates the checksum incrementally.
    pub fn update_ack(&mut self, v: SeqNumber) {
        let c = checksum::update_u32(self.checksum(), self.ack().0, v.0);
        self.set_ack(v);
        self.set_checksum(c);
    }
    /// Sets the sequence number and updates the checksum incrementally.
    pub fn update_seq(&mut self, v: SeqNumber) {
        let c = checksum::update_u32(self.checksum(), self.seq().0, v.0);
        self.set_seq(v);
        self.set_checksum(c);
    }
    /// Sets the raw window and updates the checksum incrementally.
    pub fn update_window(&mut self, v: u16) {
        let c = checksum::update_u16(self.checksum(), self.window(), v);
        self.set_window(v);
        self.set_checksum(c);
    }
    /// Sets the timestamps option (if present) and updates the checksum
    /// incrementally. Returns false when there is no such option.
    pub fn update_timestamps(&mut self, tsval: u32, tsecr: u32) -> bool {
        let Some(at) = self.timestamps_offset() else {
            return false;
        };
        let mut new = [0u8; 8];
        new[..4].copy_from_slice(&tsval.to_be_bytes());
        new[4..].copy_from_slice(&tsecr.to_be_bytes());
        self.replace_bytes(at, &new);
        true
    }
    /// Replaces bytes at `at` (segment offset) with `new`, updating the
    /// checksum incrementally. Odd offsets are handled by widening to the
    /// enclosing 16-bit words. Panics only if the range is outside the
    /// segment (callers pass offsets found by this view).
    pub fn replace_bytes(&mut self, at: usize, new: &[u8]) {
        let start = at & !1;
        let end = (at + new.len() + 1) & !1;
        let end = end.min(self.buffer.as_ref().len());
        let mut old = [0u8; 64];
        let mut upd = [0u8; 64];
        let mut c = self.checksum();
        // Process in chunks of up to 64 bytes.
        let mut s = start;
        while s < end {
            let e = (s + 64).min(end);
            let n = e - s;
            old[..n].copy_from_slice(&self.buffer.as_ref()[s..e]);
            upd[..n].copy_from_slice(&old[..n]);
            for i in s..e {
                if i >= at && i < at + new.len() {
                    upd[i - s] = new[i - at];
                }
            }
            // Excluding the checksum field itself from the "data" is not
            // needed: callers never replace bytes overlapping it.
            c = checksum::update_bytes(c, &old[..n], &upd[..n]);
            self.buffer.as_mut()[s..e].copy_from_slice(&upd[..n]);
            s = e;
        }
        self.set_checksum(c);
    }
    /// Rewrites the SACK option in place to hold `blocks` (at most as many
    /// as it holds now); the freed bytes become NOPs. Updates the checksum.
    /// Returns false when there is no SACK option or too many blocks.
    pub fn rewrite_sack(&mut self, blocks: &[SackBlock]) -> bool {
        let Some((at, len)) = self.sack_offset() else {
            return false;
        };
        let have = (len - 2) / 8;
        if blocks.len() > have {
            return false;
        }
        let mut new = [kind::NOP; 34];
        // Keep the option at the end of the freed area: NOPs first.
        let new_len = if blocks.is_empty() {
            0
        } else {
            2 + blocks.len() * 8
        };
        let pad = len - new_len;
        if new_len > 0 {
            new[pad] = kind::SACK;
            new[pad + 1] = new_len as u8;
            for (i, b) in blocks.iter().enumerate() {
                let o = pad + 2 + i * 8;
                new[o..o + 4].copy_from_slice(&b.left.0.to_be_bytes());
                new[o + 4..o + 8].copy_from_slice(&b.right.0.to_be_bytes());
            }
        }
        self.replace_bytes(at, &new[..len]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_options_stop_iteration() {
        // MSS with length 1, then garbage.
        let opts = [2u8, 1, 0, 0];
        let v: Vec<_> = TcpOptions::new(&opts).collect();
        assert_eq!(v, vec![Err(WireError::BadOption)]);
        // Length running past the end.
        let opts = [1u8, 8, 10, 1, 2];
        let v: Vec<_> = TcpOptions::new(&opts).collect();
        assert_eq!(v, vec![Ok(TcpOption::Nop), Err(WireError::BadOption)]);
        // Kind without length byte.
        let v: Vec<_> = TcpOptions::new(&[3u8]).collect();
        assert_eq!(v, vec![Err(WireError::BadOption)]);
        // Unknown option is fine, EOL stops.
        let opts = [30u8, 3, 7, 0, 2, 4, 5, 180];
        let v: Vec<_> = TcpOptions::new(&opts).collect();
        assert_eq!(
            v,
            vec![Ok(TcpOption::Unknown {
                kind: 30,
                data: &[7]
            })]
        );
    }

    #[test]
    fn truncated_headers_are_rejected() {
        assert_eq!(
            TcpPacket::new_checked(&[0u8; 19][..]).err(),
            Some(WireError::Truncated)
        );
        let mut h = [0u8; 20];
        h[12] = 4 << 4;
        assert_eq!(
            TcpPacket::new_checked(&h[..]).err(),
            Some(WireError::BadHeaderLen)
        );
        h[12] = 6 << 4;
        assert_eq!(
            TcpPacket::new_checked(&h[..]).err(),
            Some(WireError::Truncated)
        );
        h[12] = 5 << 4;
        assert!(TcpPacket::new_checked(&h[..]).is_ok());
    }
}
