//! Facts about the container's network that shape the ruleset: the resolvers named in
//! /etc/resolv.conf and the default gateways from /proc/net/route and /proc/net/ipv6_route.
//! Parsers are pure (unit-tested); `read` does the file I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNet {
    /// `nameserver` lines of /etc/resolv.conf, in order, without duplicates.
    pub resolvers: Vec<IpAddr>,
    /// Docker's embedded DNS names its upstream servers in a comment
    /// (`# ExtServers: [host(192.168.65.7) 8.8.8.8]`); None when there is no such line.
    pub ext_servers: Option<Vec<IpAddr>>,
    /// The default IPv4 gateway(s) and IPv6 default router(s).
    pub gateways: Vec<IpAddr>,
}

impl HostNet {
    /// Reads the live files; a missing file contributes nothing (the plan then has no DNS
    /// allowance or no gateway to block, which is the safe direction).
    pub fn read() -> HostNet {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let conf = read("/etc/resolv.conf");
        let mut gateways = parse_route_v4(&read("/proc/net/route"));
        gateways.extend(parse_route_v6(&read("/proc/net/ipv6_route")));
        HostNet {
            resolvers: parse_nameservers(&conf),
            ext_servers: parse_ext_servers(&conf),
            gateways,
        }
    }
}

pub fn parse_nameservers(conf: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = vec![];
    for line in conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A scoped link-local server (`fe80::1%eth0`) still has a plain address for matching.
        let Some(addr) = words.next().map(|w| w.split('%').next().unwrap_or(w)) else {
            continue;
        };
        if let Ok(ip) = addr.parse::<IpAddr>() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

pub fn parse_ext_servers(conf: &str) -> Option<Vec<IpAddr>> {
    let line = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("# ExtServers:"))?;
    let inner = line.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut out = vec![];
    for tok in inner.split_whitespace() {
        let tok = tok
            .strip_prefix("host(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or(tok);
        // `ip:port` forms appear in newer engines; keep the address.
        let ip = tok
            .parse::<IpAddr>()
            .ok()
            .or_else(|| tok.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()));
        out.extend(ip);
    }
    Some(out)
}

/// Default IPv4 gateways: destination 0, mask 0, RTF_GATEWAY set. Fields are hex in host
/// (little-endian on every target we build) byte order.
pub fn parse_route_v4(table: &str) -> Vec<IpAddr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let mut out = vec![];
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gw), Some(flags), Some(mask)) =
            (hex(f[1]), hex(f[2]), hex(f[3]), hex(f[7]))
        else {
            continue;
        };
        if dest == 0 && mask == 0 && gw != 0 && flags & RTF_GATEWAY != 0 && flags & RTF_UP != 0 {
            let ip = IpAddr::V4(Ipv4Addr::from(gw.to_le_bytes()));
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// IPv6 default routers: destination ::/0 with a non-zero next hop.
pub fn parse_route_v6(table: &str) -> Vec<IpAddr> {
    let mut out = vec![];
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[1] != "00" {
            continue;
        }
        let (Some(dest), Some(hop)) = (hex128(f[0]), hex128(f[4])) else {
            continue;
        };
        if dest == 0 && hop != 0 {
            let ip = IpAddr::V6(Ipv6Addr::from(hop));
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

fn hex128(s: &str) -> Option<u128> {
    if s.len() != 32 {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nameservers_in_order_without_duplicates() {
        let conf = "# comment\nsearch example.test\nnameserver 10.0.0.2\n\
                    nameserver fe80::1%eth0\nnameserver 10.0.0.2\nnameserver bogus\n\
                    options ndots:0\n";
        assert_eq!(parse_nameservers(conf), vec![ip("10.0.0.2"), ip("fe80::1")]);
        assert_eq!(parse_ext_servers(conf), None);
    }

    #[test]
    fn docker_ext_servers_comment() {
        let conf = "nameserver 127.0.0.11\noptions ndots:0\n\n\
                    # Based on host file: '/etc/resolv.conf' (internal resolver)\n\
                    # ExtServers: [host(127.0.0.53) 8.8.8.8 [2001:db8::53]:53]\n";
        assert_eq!(
            parse_ext_servers(conf),
            Some(vec![ip("127.0.0.53"), ip("8.8.8.8"), ip("2001:db8::53")])
        );
        assert_eq!(parse_ext_servers("# ExtServers: []\n"), Some(vec![]));
    }

    #[test]
    fn default_gateway_v4() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t01004D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_route_v4(table), vec![ip("10.77.0.1")]);
        assert!(parse_route_v4("Iface\tDestination\n").is_empty());
    }

    #[test]
    fn default_router_v6() {
        let table = "\
fd770000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 veth0\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd770000000000000000000000000001 00000400 00000001 00000000 00000003 veth0\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(parse_route_v6(table), vec![ip("fd77::1")]);
    }
}
