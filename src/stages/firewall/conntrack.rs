//! Closing established connections: `deny --kill` deletes the connection-tracking entries
//! whose original destination is a denied address or network (and port and protocol when
//! the entry names them). The ruleset accepts packets of established connections before
//! it looks at the allowlist; once their entry is gone, the next packet of such a flow is
//! NEW again, meets the default deny and is rejected (a TCP reset for TCP).
//!
//! Over ctnetlink, on the crate's nfnetlink socket: a dump of every entry (both families),
//! then one delete per matching entry with its original tuple copied verbatim. The ctnetlink
//! attributes are written by hand because rustables speaks nf_tables only and no linked
//! crate speaks ctnetlink; the kernel's own dump filter (CTA_FILTER) cannot match a network,
//! so the matching happens here.

use crate::policy::allowlist::{Port, Proto};
use crate::sys::netlink::{Attrs, Socket, NESTED};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

// linux/netfilter/nfnetlink_conntrack.h
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;

/// Where a tracked connection was going (its original direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub addr: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub proto: u8,
    /// Only for protocols with ports.
    pub port: Option<u16>,
}

/// The destination of one dumped entry's original tuple, or `None` when it holds none.
pub(crate) fn destination(entry: &Attrs) -> Option<Destination> {
    let tuple = Attrs::parse(entry.get(CTA_TUPLE_ORIG)?);
    let ip = Attrs::parse(tuple.get(CTA_TUPLE_IP)?);
    let addr = if let Some(v4) = ip.get(CTA_IP_V4_DST) {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v4).ok()?))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(ip.get(CTA_IP_V6_DST)?).ok()?,
        ))
    };
    let proto = Attrs::parse(tuple.get(CTA_TUPLE_PROTO)?);
    let port = proto
        .get(CTA_PROTO_DST_PORT)
        .and_then(|p| Some(u16::from_be_bytes(p.try_into().ok()?)));
    Some(Destination {
        addr,
        proto: *proto.get(CTA_PROTO_NUM)?.first()?,
        port,
    })
}

/// Whether a connection to `d` is one that an entry for `net` (with `port`) admitted.
pub fn matches(d: &Destination, net: &IpNet, port: Option<Port>) -> bool {
    let addr = match (d.addr, net) {
        // an IPv4 network also covers the IPv4-mapped form a dual-stack socket may use
        (IpAddr::V6(a), IpNet::V4(_)) => a.to_ipv4_mapped().map_or(d.addr, IpAddr::V4),
        _ => d.addr,
    };
    if !net.contains(&addr) {
        return false;
    }
    match port {
        None => true,
        Some(p) => {
            let proto = match p.proto {
                Proto::Tcp => libc::IPPROTO_TCP as u8,
                Proto::Udp => libc::IPPROTO_UDP as u8,
            };
            d.proto == proto && d.port == Some(p.number)
        }
    }
}

/// Deletes every tracked connection (IPv4 and IPv6) whose original destination matches
/// one of `targets`; returns how many were deleted. An entry that vanished between the
/// dump and the delete (the connection ended) is not counted.
pub fn kill(targets: &[(IpNet, Option<Port>)]) -> Result<usize, String> {
    if targets.is_empty() {
        return Ok(0);
    }
    let sock = Socket::open(Some(Duration::from_secs(2))).map_err(|e| {
        format!(
            "cannot open a netfilter socket: {}",
            std::io::Error::from_raw_os_error(e.errno())
        )
    })?;
    let ctnl = |msg: u16| ((libc::NFNL_SUBSYS_CTNETLINK as u16) << 8) | msg;
    let no_filter: &[(u16, Vec<u8>)] = &[];
    let entries = sock
        .dump(ctnl(IPCTNL_MSG_CT_GET), libc::AF_UNSPEC as u8, no_filter)
        .map_err(|errno| {
            format!(
                "cannot list the tracked connections: {}",
                std::io::Error::from_raw_os_error(errno)
            )
        })?;
    let mut killed = 0;
    for dumped in &entries {
        let entry = &dumped.attrs;
        let Some(d) = destination(entry) else {
            continue;
        };
        if !targets.iter().any(|(n, p)| matches(&d, n, *p)) {
            continue;
        }
        // The tuple as the kernel gave it names the entry exactly; its zone and id too.
        let mut attrs = vec![];
        for (ty, nested) in [(CTA_TUPLE_ORIG, NESTED), (CTA_ZONE, 0), (CTA_ID, 0)] {
            if let Some(v) = entry.get(ty) {
                attrs.push((ty | nested, v.to_vec()));
            }
        }
        match sock.request(ctnl(IPCTNL_MSG_CT_DELETE), dumped.family, &attrs) {
            Ok(()) => killed += 1,
            Err(libc::ENOENT) => {}
            Err(errno) => {
                return Err(format!(
                    "cannot delete the tracked connection to {}: {} ({killed} closed before)",
                    d.addr,
                    std::io::Error::from_raw_os_error(errno)
                ))
            }
        }
    }
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::attr;

    /// An entry as the kernel dumps it: nested attributes flagged as nested.
    fn entry(dst: IpAddr, proto: u8, dport: Option<u16>) -> Attrs {
        let (src_ty, dst_ty, src, dst) = match dst {
            IpAddr::V4(a) => (1, CTA_IP_V4_DST, vec![10, 0, 0, 2], a.octets().to_vec()),
            IpAddr::V6(a) => (3, CTA_IP_V6_DST, vec![0; 16], a.octets().to_vec()),
        };
        let ip = [attr(src_ty, &src), attr(dst_ty, &dst)].concat();
        let mut l4 = attr(CTA_PROTO_NUM, &[proto]);
        if let Some(p) = dport {
            l4.extend(attr(CTA_PROTO_DST_PORT, &p.to_be_bytes()));
        }
        let tuple = [
            attr(CTA_TUPLE_IP | NESTED, &ip),
            attr(CTA_TUPLE_PROTO | NESTED, &l4),
        ]
        .concat();
        let msg = [
            attr(CTA_TUPLE_ORIG | NESTED, &tuple),
            attr(CTA_ID, &7u32.to_be_bytes()),
        ]
        .concat();
        Attrs::parse(&msg)
    }

    fn port(proto: Proto, number: u16) -> Option<Port> {
        Some(Port { proto, number })
    }

    #[test]
    fn destinations_are_read_from_the_original_tuple() {
        let d = destination(&entry("10.77.0.11".parse().unwrap(), 6, Some(9000))).unwrap();
        assert_eq!(
            d,
            Destination {
                addr: "10.77.0.11".parse().unwrap(),
                proto: 6,
                port: Some(9000)
            }
        );
        let d6 = destination(&entry("fd77::11".parse().unwrap(), 1, None)).unwrap();
        assert_eq!(d6.addr, "fd77::11".parse::<IpAddr>().unwrap());
        assert_eq!(d6.port, None);
        assert_eq!(destination(&Attrs::parse(&attr(CTA_ID, &[0; 4]))), None);
    }

    #[test]
    fn only_the_denied_network_port_and_protocol_match() {
        let d = |a: &str, proto, p| Destination {
            addr: a.parse().unwrap(),
            proto,
            port: p,
        };
        let net: IpNet = "10.77.0.0/24".parse().unwrap();
        let tcp = d("10.77.0.11", 6, Some(9000));
        assert!(matches(&tcp, &net, None));
        assert!(matches(&tcp, &net, port(Proto::Tcp, 9000)));
        assert!(!matches(&tcp, &net, port(Proto::Tcp, 9001)));
        assert!(!matches(&tcp, &net, port(Proto::Udp, 9000)));
        assert!(matches(
            &d("10.77.0.11", 17, Some(53)),
            &net,
            port(Proto::Udp, 53)
        ));
        assert!(!matches(&d("10.77.1.11", 6, Some(9000)), &net, None));
        assert!(!matches(&d("fd77::11", 6, Some(9000)), &net, None));
        assert!(matches(&d("::ffff:10.77.0.9", 6, Some(1)), &net, None));
        let net6: IpNet = "fd77::/64".parse().unwrap();
        assert!(matches(&d("fd77::11", 58, None), &net6, None));
        assert!(!matches(&d("fd78::11", 58, None), &net6, None));
    }
}
