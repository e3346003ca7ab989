//! SSRF guard: which origin addresses a router may fetch from on behalf of
//! another router.
//!
//! A neighbour asks us to fetch byte ranges from an address it names. We
//! only connect to public unicast addresses on allowed ports, never to our
//! own addresses, loopback, private networks, or anything else that is not
//! globally routed (see `docs/http.md`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a target address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefused {
    /// 127.0.0.0/8 or ::1.
    #[error("loopback address")]
    Loopback,
    /// 0.0.0.0 or ::.
    #[error("unspecified address")]
    Unspecified,
    /// RFC 1918 private IPv4 (10/8, 172.16/12, 192.168/16).
    #[error("private address")]
    Private,
    /// Shared address space for carrier-grade NAT, 100.64.0.0/10.
    #[error("shared (CGNAT) address")]
    SharedAddressSpace,
    /// 169.254.0.0/16 or fe80::/10.
    #[error("link-local address")]
    LinkLocal,
    /// 224.0.0.0/4 or ff00::/8.
    #[error("multicast address")]
    Multicast,
    /// 255.255.255.255.
    #[error("broadcast address")]
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20
    /// (allowed only with [`TargetPolicy::allow_documentation_ranges`]).
    #[error("documentation address")]
    Documentation,
    /// IPv6 unique local address, fc00::/7 (or deprecated site-local).
    #[error("unique local address")]
    UniqueLocal,
    /// Any other special-purpose block (0/8, 192.0.0/24, 198.18/15,
    /// 240/4, IPv6 outside 2000::/3, 2001::/23, ...).
    #[error("reserved address")]
    Reserved,
    /// One of this router's own addresses.
    #[error("one of our own addresses")]
    OwnAddress,
    /// A port not in the allowed list.
    #[error("port {0} not allowed")]
    Port(u16),
}

/// What [`TargetPolicy::check`] lets through.
///
/// The default refuses every non-public address and allows only port 80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Treat documentation ranges (192.0.2.0/24, 198.51.100.0/24,
    /// 203.0.113.0/24, 2001:db8::/32, 3fff::/20) as public. For the lab and
    /// the netns tests, which use them as the "internet". Default false.
    pub allow_documentation_ranges: bool,
    /// Allow loopback addresses. Only for in-process loopback tests.
    /// Default false.
    pub allow_loopback: bool,
    /// Ports that may be fetched from. Default `[80]`.
    pub allowed_ports: Vec<u16>,
    /// This router's own addresses (refused even if public).
    pub own_addrs: Vec<IpAddr>,
}

impl Default for TargetPolicy {
    fn default() -> Self {
        Self {
            allow_documentation_ranges: false,
            allow_loopback: false,
            allowed_ports: vec![80],
            own_addrs: Vec::new(),
        }
    }
}

impl TargetPolicy {
    /// Whether `addr` may be fetched from under this policy.
    pub fn check(&self, addr: SocketAddr) -> Result<(), TargetRefused> {
        if !self.allowed_ports.contains(&addr.port()) {
            return Err(TargetRefused::Port(addr.port()));
        }
        let ip = canonical(addr.ip());
        if self.own_addrs.iter().any(|&own| canonical(own) == ip) {
            return Err(TargetRefused::OwnAddress);
        }
        match classify(ip) {
            None => Ok(()),
            Some(TargetRefused::Documentation) if self.allow_documentation_ranges => Ok(()),
            Some(TargetRefused::Loopback) if self.allow_loopback => Ok(()),
            Some(refused) => Err(refused),
        }
    }
}

/// Strict check with the default policy (no documentation ranges, no
/// loopback): `addr` must be a public unicast address, on one of
/// `allowed_ports`, and none of `own_addrs`.
pub fn check_target(
    addr: SocketAddr,
    allowed_ports: &[u16],
    own_addrs: &[IpAddr],
) -> Result<(), TargetRefused> {
    TargetPolicy {
        allowed_ports: allowed_ports.to_vec(),
        own_addrs: own_addrs.to_vec(),
        ..TargetPolicy::default()
    }
    .check(addr)
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// `None` if `ip` is public unicast, else the class that makes it not.
pub fn classify(ip: IpAddr) -> Option<TargetRefused> {
    match canonical(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn classify_v4(ip: Ipv4Addr) -> Option<TargetRefused> {
    use TargetRefused::*;
    let table: [([u8; 4], u32, TargetRefused); 17] = [
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 32, Unspecified),
        ([0, 0, 0, 0], 8, Reserved),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedAddressSpace),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, Reserved),
        ([192, 0, 2, 0], 24, Documentation),
        ([192, 88, 99, 0], 24, Reserved),
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Reserved),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|&(_, _, class)| class)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

fn classify_v6(ip: Ipv6Addr) -> Option<TargetRefused> {
    use TargetRefused::*;
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    if in_v6(ip, [0xff00, 0, 0, 0, 0, 0, 0, 0], 8) {
        return Some(Multicast);
    }
    if in_v6(ip, [0xfe80, 0, 0, 0, 0, 0, 0, 0], 10) {
        return Some(LinkLocal);
    }
    if in_v6(ip, [0xfc00, 0, 0, 0, 0, 0, 0, 0], 7) || in_v6(ip, [0xfec0, 0, 0, 0, 0, 0, 0, 0], 10) {
        return Some(UniqueLocal);
    }
    // Addresses that embed an IPv4 address: judge them by it, and refuse
    // the embedding when the IPv4 address is not public.
    let embedded = if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        // NAT64 well-known prefix.
        let o = ip.octets();
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        // 6to4.
        let o = ip.octets();
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    };
    if let Some(v4) = embedded {
        return classify_v4(v4);
    }
    if in_v6(ip, [0x2001, 0x0db8, 0, 0, 0, 0, 0, 0], 32)
        || in_v6(ip, [0x3fff, 0, 0, 0, 0, 0, 0, 0], 20)
    {
        return Some(Documentation);
    }
    // 2001::/23: IETF protocol assignments (Teredo, benchmarking, ORCHID...).
    if in_v6(ip, [0x2001, 0, 0, 0, 0, 0, 0, 0], 23) {
        return Some(Reserved);
    }
    // Global unicast is 2000::/3; everything else (including the
    // deprecated IPv4-compatible ::a.b.c.d) is not routed.
    if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return Some(Reserved);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn refused(s: &str) -> Result<(), TargetRefused> {
        check_target(sa(s), &[80], &[])
    }

    #[test]
    fn public_unicast_allowed() {
        for a in [
            "93.184.215.14:80",
            "1.1.1.1:80",
            "8.8.8.8:80",
            "100.63.255.255:80",
            "100.128.0.0:80",
            "172.32.0.1:80",
            "[2606:4700::1111]:80",
            "[::ffff:93.184.215.14]:80",
            "[64:ff9b::808:808]:80",
            "[2002:808:808::1]:80",
        ] {
            assert_eq!(refused(a), Ok(()), "{a}");
        }
    }

    #[test]
    fn loopback() {
        assert_eq!(refused("127.0.0.1:80"), Err(TargetRefused::Loopback));
        assert_eq!(refused("127.255.0.9:80"), Err(TargetRefused::Loopback));
        assert_eq!(refused("[::1]:80"), Err(TargetRefused::Loopback));
        assert_eq!(
            refused("[::ffff:127.0.0.1]:80"),
            Err(TargetRefused::Loopback)
        );
    }

    #[test]
    fn unspecified() {
        assert_eq!(refused("0.0.0.0:80"), Err(TargetRefused::Unspecified));
        assert_eq!(refused("[::]:80"), Err(TargetRefused::Unspecified));
    }

    #[test]
    fn private_rfc1918() {
        for a in [
            "10.0.0.1:80",
            "10.255.255.255:80",
            "172.16.0.1:80",
            "172.31.255.254:80",
            "192.168.1.1:80",
        ] {
            assert_eq!(refused(a), Err(TargetRefused::Private), "{a}");
        }
        assert_eq!(
            refused("[::ffff:192.168.1.1]:80"),
            Err(TargetRefused::Private)
        );
        assert_eq!(refused("[64:ff9b::a00:1]:80"), Err(TargetRefused::Private));
        assert_eq!(
            refused("[2002:c0a8:101::1]:80"),
            Err(TargetRefused::Private)
        );
    }

    #[test]
    fn cgnat() {
        assert_eq!(
            refused("100.64.0.1:80"),
            Err(TargetRefused::SharedAddressSpace)
        );
        assert_eq!(
            refused("100.127.255.255:80"),
            Err(TargetRefused::SharedAddressSpace)
        );
    }

    #[test]
    fn link_local() {
        assert_eq!(refused("169.254.169.254:80"), Err(TargetRefused::LinkLocal));
        assert_eq!(refused("[fe80::1]:80"), Err(TargetRefused::LinkLocal));
        assert_eq!(refused("[febf::1]:80"), Err(TargetRefused::LinkLocal));
    }

    #[test]
    fn multicast_and_broadcast() {
        assert_eq!(refused("224.0.0.1:80"), Err(TargetRefused::Multicast));
        assert_eq!(refused("239.255.255.250:80"), Err(TargetRefused::Multicast));
        assert_eq!(refused("[ff02::1]:80"), Err(TargetRefused::Multicast));
        assert_eq!(refused("255.255.255.255:80"), Err(TargetRefused::Broadcast));
    }

    #[test]
    fn documentation_ranges_need_the_flag() {
        let docs = [
            "192.0.2.10:80",
            "198.51.100.7:80",
            "203.0.113.200:80",
            "[2001:db8::1]:80",
            "[3fff::1]:80",
        ];
        let lab = TargetPolicy {
            allow_documentation_ranges: true,
            ..TargetPolicy::default()
        };
        for a in docs {
            assert_eq!(refused(a), Err(TargetRefused::Documentation), "{a}");
            assert_eq!(lab.check(sa(a)), Ok(()), "{a}");
        }
        // The flag does not open anything else.
        assert_eq!(lab.check(sa("10.0.0.1:80")), Err(TargetRefused::Private));
        assert_eq!(lab.check(sa("127.0.0.1:80")), Err(TargetRefused::Loopback));
    }

    #[test]
    fn loopback_flag() {
        let p = TargetPolicy {
            allow_loopback: true,
            allowed_ports: vec![8080],
            ..TargetPolicy::default()
        };
        assert_eq!(p.check(sa("127.0.0.1:8080")), Ok(()));
        assert_eq!(p.check(sa("[::1]:8080")), Ok(()));
        assert_eq!(p.check(sa("127.0.0.1:80")), Err(TargetRefused::Port(80)));
        assert_eq!(p.check(sa("192.168.0.1:8080")), Err(TargetRefused::Private));
        assert_eq!(
            p.check(sa("192.0.2.1:8080")),
            Err(TargetRefused::Documentation)
        );
    }

    #[test]
    fn ipv6_unique_local() {
        assert_eq!(refused("[fd00::1]:80"), Err(TargetRefused::UniqueLocal));
        assert_eq!(refused("[fc00::1]:80"), Err(TargetRefused::UniqueLocal));
        assert_eq!(refused("[fec0::1]:80"), Err(TargetRefused::UniqueLocal));
    }

    #[test]
    fn reserved() {
        for a in [
            "0.1.2.3:80",
            "192.0.0.8:80",
            "198.18.0.1:80",
            "198.19.255.255:80",
            "240.0.0.1:80",
            "192.88.99.1:80",
            "[2001::1]:80",
            "[2001:2::1]:80",
            "[100::1]:80",
            "[::1.2.3.4]:80",
            "[4000::1]:80",
        ] {
            assert_eq!(refused(a), Err(TargetRefused::Reserved), "{a}");
        }
    }

    #[test]
    fn own_addresses() {
        let own: [IpAddr; 2] = [
            "93.184.215.14".parse().unwrap(),
            "2606:4700::1".parse().unwrap(),
        ];
        assert_eq!(
            check_target(sa("93.184.215.14:80"), &[80], &own),
            Err(TargetRefused::OwnAddress)
        );
        assert_eq!(
            check_target(sa("[::ffff:93.184.215.14]:80"), &[80], &own),
            Err(TargetRefused::OwnAddress)
        );
        assert_eq!(
            check_target(sa("[2606:4700::1]:80"), &[80], &own),
            Err(TargetRefused::OwnAddress)
        );
        assert_eq!(check_target(sa("93.184.215.15:80"), &[80], &own), Ok(()));
    }

    #[test]
    fn ports() {
        assert_eq!(refused("1.1.1.1:22"), Err(TargetRefused::Port(22)));
        assert_eq!(check_target(sa("1.1.1.1:8080"), &[80, 8080], &[]), Ok(()));
        assert_eq!(
            check_target(sa("1.1.1.1:80"), &[], &[]),
            Err(TargetRefused::Port(80))
        );
    }
}
