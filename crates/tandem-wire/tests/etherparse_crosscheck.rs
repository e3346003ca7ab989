//! Packets built and edited by tandem-wire, verified by an independent
//! parser (etherparse): header fields, options and both checksums.

#![allow(clippy::unwrap_used)]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{NetSlice, SlicedPacket, TcpOptionElement, TransportSlice};
use proptest::prelude::*;
use tandem_wire::{
    SackBlock, SeqNumber, TcpFlags, TcpPacket, TcpSegment, TcpSegmentOptions, parse_ip_tcp,
};

struct Seen {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    window: u16,
    syn: bool,
    fin: bool,
    rst: bool,
    ackf: bool,
    payload: Vec<u8>,
    options: Vec<TcpOptionElement>,
}

/// Parses with etherparse and asserts both checksums are right.
#[track_caller]
fn independent(buf: &[u8]) -> Seen {
    let p = SlicedPacket::from_ip(buf).expect("etherparse parses it");
    let (src_ip, dst_ip) = match p.net.as_ref().expect("net layer") {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            assert_eq!(
                h.to_header().calc_header_checksum(),
                h.header_checksum(),
                "IPv4 header checksum"
            );
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
            )
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
            )
        }
        NetSlice::Arp(_) => panic!("arp"),
    };
    let Some(TransportSlice::Tcp(t)) = p.transport.as_ref() else {
        panic!("not tcp");
    };
    let want = match (src_ip, dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => t.calc_checksum_ipv4(s.octets(), d.octets()).unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => t.calc_checksum_ipv6(s.octets(), d.octets()).unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(want, t.checksum(), "TCP checksum");
    Seen {
        src: SocketAddr::new(src_ip, t.source_port()),
        dst: SocketAddr::new(dst_ip, t.destination_port()),
        seq: t.sequence_number(),
        ack: t.acknowledgment_number(),
        window: t.window_size(),
        syn: t.syn(),
        fin: t.fin(),
        rst: t.rst(),
        ackf: t.ack(),
        payload: t.payload().to_vec(),
        options: t
            .options_iterator()
            .map(|o| o.expect("option parses"))
            .collect(),
    }
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}
fn v6(last: u16, port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)),
        port,
    )
}

fn segment(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> TcpSegment<'_> {
    TcpSegment {
        src,
        dst,
        seq: SeqNumber(0xffff_fff0),
        ack: SeqNumber(12345),
        flags: TcpFlags::ACK.with(TcpFlags::PSH),
        window: 502,
        options: TcpSegmentOptions {
            timestamps: Some((111, 222)),
            sack: [
                Some(SackBlock {
                    left: SeqNumber(10),
                    right: SeqNumber(20),
                }),
                Some(SackBlock {
                    left: SeqNumber(30),
                    right: SeqNumber(40),
                }),
                None,
                None,
            ],
            ..Default::default()
        },
        payload,
        ttl: 63,
        tos: 0,
        ident: 7,
    }
}

#[test]
fn emitted_syn_has_all_options() {
    for (src, dst) in [
        (v4([192, 0, 2, 1], 40000), v4([203, 0, 113, 9], 80)),
        (v6(1, 40000), v6(9, 80)),
    ] {
        let seg = TcpSegment {
            flags: TcpFlags::SYN,
            options: TcpSegmentOptions {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: Some((1, 0)),
                sack: [None; 4],
            },
            ..segment(src, dst, &[])
        };
        let mut buf = Vec::new();
        let n = seg.emit(&mut buf);
        assert_eq!(n, buf.len());
        let s = independent(&buf);
        assert!(s.syn && !s.ackf);
        assert_eq!((s.src, s.dst), (src, dst));
        assert_eq!(s.ack, 0);
        let opts: Vec<_> = s
            .options
            .into_iter()
            .filter(|o| *o != TcpOptionElement::Noop)
            .collect();
        assert_eq!(
            opts,
            vec![
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::WindowScale(7),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::Timestamp(1, 0),
            ]
        );
    }
}

#[test]
fn edits_in_place_keep_checksums_valid() {
    for (src, dst) in [
        (v4([192, 0, 2, 1], 40000), v4([203, 0, 113, 9], 80)),
        (v6(1, 40000), v6(9, 80)),
    ] {
        let payload: Vec<u8> = (0..101u8).collect(); // odd length
        let mut buf = Vec::new();
        segment(src, dst, &payload).emit(&mut buf);
        let meta = parse_ip_tcp(&buf).unwrap();
        {
            let mut tcp = TcpPacket::new_checked(&mut buf[meta.tcp_offset..meta.ip_len]).unwrap();
            assert!(tcp.verify_checksum(meta.src, meta.dst));
            tcp.update_ack(SeqNumber(0xdead_beef));
            tcp.update_seq(SeqNumber(5));
            tcp.update_window(0);
            assert!(tcp.update_timestamps(0xffff_ffff, 42));
            assert!(tcp.rewrite_sack(&[SackBlock {
                left: SeqNumber(100),
                right: SeqNumber(200)
            }]));
            assert!(tcp.verify_checksum(meta.src, meta.dst));
        }
        let s = independent(&buf);
        assert_eq!((s.seq, s.ack, s.window), (5, 0xdead_beef, 0));
        assert_eq!(s.payload, payload);
        assert!(
            s.options
                .contains(&TcpOptionElement::Timestamp(0xffff_ffff, 42))
        );
        assert!(
            s.options
                .contains(&TcpOptionElement::SelectiveAcknowledgement(
                    (100, 200),
                    [None; 3]
                ))
        );
        // Removing every SACK block leaves only NOPs in its place.
        {
            let mut tcp = TcpPacket::new_checked(&mut buf[meta.tcp_offset..meta.ip_len]).unwrap();
            assert!(tcp.rewrite_sack(&[]));
        }
        let s = independent(&buf);
        assert!(
            !s.options
                .iter()
                .any(|o| matches!(o, TcpOptionElement::SelectiveAcknowledgement(..)))
        );
    }
}

#[test]
fn ipv4_length_update_is_incremental_and_valid() {
    let payload = [7u8; 50];
    let mut buf = Vec::new();
    segment(v4([192, 0, 2, 1], 1), v4([192, 0, 2, 2], 2), &payload).emit(&mut buf);
    let meta = parse_ip_tcp(&buf).unwrap();
    // Truncate the payload to 20 bytes: new IP length, full TCP checksum.
    let new_len = meta.ip_len - 30;
    {
        let mut ip = tandem_wire::Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        ip.update_total_len(new_len as u16);
    }
    buf.truncate(new_len);
    {
        let mut tcp = TcpPacket::new_checked(&mut buf[meta.tcp_offset..new_len]).unwrap();
        tcp.fill_checksum(meta.src, meta.dst);
    }
    let s = independent(&buf);
    assert_eq!(s.payload, &payload[..20]);
}

#[test]
fn parse_rejects_fragments_and_non_tcp() {
    let mut buf = Vec::new();
    segment(v4([192, 0, 2, 1], 1), v4([192, 0, 2, 2], 2), b"x").emit(&mut buf);
    let mut frag = buf.clone();
    frag[6] |= 0x20; // MF
    assert_eq!(parse_ip_tcp(&frag), Err(tandem_wire::WireError::Fragment));
    let mut udp = buf.clone();
    udp[9] = 17;
    assert_eq!(parse_ip_tcp(&udp), Err(tandem_wire::WireError::NotTcp(17)));
    assert_eq!(
        parse_ip_tcp(&buf[..19]),
        Err(tandem_wire::WireError::Truncated)
    );
    assert!(parse_ip_tcp(&[]).is_err());
    assert!(parse_ip_tcp(&[0x50; 60]).is_err());
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut buf = Vec::new();
    segment(v6(1, 1), v6(2, 2), b"hello").emit(&mut buf);
    // Insert an 8-byte destination-options header before TCP.
    let mut with_ext = buf[..40].to_vec();
    with_ext[6] = 60;
    let plen = u16::from_be_bytes([buf[4], buf[5]]) + 8;
    with_ext[4..6].copy_from_slice(&plen.to_be_bytes());
    with_ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    with_ext.extend_from_slice(&buf[40..]);
    let meta = parse_ip_tcp(&with_ext).unwrap();
    assert_eq!(meta.tcp_offset, 48);
    let tcp = TcpPacket::new_checked(&with_ext[meta.tcp_offset..meta.ip_len]).unwrap();
    assert_eq!(tcp.payload(), b"hello");
    assert!(tcp.verify_checksum(meta.src, meta.dst));
    independent(&with_ext);
}

proptest! {
    #[test]
    fn random_segments_round_trip(
        v6_family: bool,
        seq: u32, ack: u32, window: u16,
        tsval: u32, tsecr: u32, ts: bool,
        nsack in 0usize..5,
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
        new_ack: u32, new_win: u16,
    ) {
        let (src, dst) = if v6_family { (v6(3, 1234), v6(4, 80)) } else { (v4([10, 0, 0, 1], 1234), v4([10, 0, 0, 2], 80)) };
        let mut sack = [None; 4];
        for (i, s) in sack.iter_mut().enumerate().take(nsack) {
            *s = Some(SackBlock { left: SeqNumber(i as u32 * 100), right: SeqNumber(i as u32 * 100 + 50) });
        }
        let seg = TcpSegment {
            seq: SeqNumber(seq), ack: SeqNumber(ack), window,
            options: TcpSegmentOptions { timestamps: ts.then_some((tsval, tsecr)), sack, ..Default::default() },
            ..segment(src, dst, &payload)
        };
        let mut buf = Vec::new();
        seg.emit(&mut buf);
        let s = independent(&buf);
        prop_assert_eq!((s.seq, s.ack, s.window), (seq, ack, window));
        prop_assert_eq!(&s.payload, &payload);
        prop_assert!(!s.syn && !s.fin && !s.rst && s.ackf);
        let meta = parse_ip_tcp(&buf).unwrap();
        let mut tcp = TcpPacket::new_checked(&mut buf[meta.tcp_offset..meta.ip_len]).unwrap();
        let blocks: Vec<_> = tcp.option_iter().flatten().flat_map(|o| o.sack_blocks().collect::<Vec<_>>()).collect();
        prop_assert_eq!(blocks.len(), nsack.min(if ts { 3 } else { 4 }));
        tcp.update_ack(SeqNumber(new_ack));
        tcp.update_window(new_win);
        if ts {
            prop_assert!(tcp.update_timestamps(tsecr, tsval));
        }
        if !blocks.is_empty() {
            prop_assert!(tcp.rewrite_sack(&blocks[..1]));
        }
        let s = independent(&buf);
        prop_assert_eq!((s.ack, s.window), (new_ack, new_win));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        if let Ok(meta) = parse_ip_tcp(&bytes) {
            if let Ok(tcp) = TcpPacket::new_checked(&bytes[meta.tcp_offset..meta.ip_len]) {
                let _ = tcp.option_iter().count();
                let _ = tcp.timestamps_offset();
                let _ = tcp.sack_offset();
                let _ = tcp.seq_len();
                let _ = tcp.verify_checksum(meta.src, meta.dst);
            }
        }
        let mut m = bytes.clone();
        if let Ok(mut tcp) = TcpPacket::new_checked(&mut m[..]) {
            let _ = tcp.update_timestamps(1, 2);
            let _ = tcp.rewrite_sack(&[]);
        }
    }
}
