//! Length-delimited frames.
//!
//! A frame on the TCP stream is a 4-byte big-endian length `L` followed by
//! `L` bytes of Noise message (a handshake message, or an AEAD-sealed
//! transport message). `L` must be in `MIN_FRAME_LEN..=MAX_FRAME_LEN`; a
//! header announcing anything else is rejected as soon as its 4 bytes are
//! seen, before any body is buffered.

use bytes::{Buf, BytesMut};

/// Size of the frame header (big-endian `u32` body length).
pub const HEADER_LEN: usize = 4;

/// Largest frame body: the Noise protocol's maximum message size.
pub const MAX_FRAME_LEN: usize = 65_535;

/// Smallest frame body: every Noise transport message carries a 16-byte tag.
pub const MIN_FRAME_LEN: usize = 16;

/// Framing errors (the peer sent something that is not a frame).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announced a body larger than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME_LEN}")]
    Oversized(u32),
    /// The header announced a body smaller than [`MIN_FRAME_LEN`].
    #[error("frame of {0} bytes is shorter than the minimum of {MIN_FRAME_LEN}")]
    Undersized(u32),
}

/// Appends one frame carrying `body` to `out`.
///
/// `body` must be at most [`MAX_FRAME_LEN`] bytes (debug-asserted; the crate
/// only frames Noise messages, which cannot be longer).
pub fn encode_frame(body: &[u8], out: &mut BytesMut) {
    debug_assert!(body.len() <= MAX_FRAME_LEN);
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
}

/// Incremental frame decoder over a bounded byte buffer.
///
/// Feed bytes with [`FrameDecoder::extend`], then take frames with
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`. The buffer never
/// holds more than one partial frame plus what the caller fed in one call.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Number of buffered bytes not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete frame body, `Ok(None)` if more bytes are
    /// needed, or an error if the stream is not a valid frame sequence (the
    /// decoder must then be discarded with the connection).
    pub fn next_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(len_bytes);
        let body_len = usize::try_from(len).map_err(|_| FrameError::Oversized(len))?;
        if body_len > MAX_FRAME_LEN {
            return Err(FrameError::Oversized(len));
        }
        if body_len < MIN_FRAME_LEN {
            return Err(FrameError::Undersized(len));
        }
        if self.buf.len() < HEADER_LEN + body_len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        Ok(Some(self.buf.split_to(body_len)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut out = BytesMut::new();
        encode_frame(&[7u8; 20], &mut out);
        encode_frame(&[9u8; 300], &mut out);
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for b in out.iter() {
            dec.extend(&[*b]);
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0][..], &[7u8; 20][..]);
        assert_eq!(&frames[1][..], &[9u8; 300][..]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn oversized_header_rejected_before_body() {
        let mut dec = FrameDecoder::new();
        dec.extend(&0x0001_0000u32.to_be_bytes());
        assert_eq!(dec.next_frame(), Err(FrameError::Oversized(65_536)));
    }

    #[test]
    fn undersized_header_rejected() {
        let mut dec = FrameDecoder::new();
        dec.extend(&[0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(dec.next_frame(), Err(FrameError::Undersized(3)));
    }

    #[test]
    fn max_frame_accepted() {
        let mut out = BytesMut::new();
        encode_frame(&vec![1u8; MAX_FRAME_LEN], &mut out);
        let mut dec = FrameDecoder::new();
        dec.extend(&out);
        assert_eq!(dec.next_frame().unwrap().unwrap().len(), MAX_FRAME_LEN);
    }
}
