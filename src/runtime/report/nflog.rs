//! The blocked packets themselves: the final reject rules of the firewall send each packet's
//! header to NFLOG group [`GROUP`]; PID 1 binds that group over nfnetlink_log before the
//! command starts and turns every packet into an [`Event::Blocked`].
//!
//! Binding needs CAP_NET_ADMIN (every nfnetlink request checks it); receiving on the bound
//! socket needs nothing, so PID 1 drops the capability after the start as before. Everything
//! here is bounded and panic-free: the kernel is trusted to send well-formed messages, but a
//! short or odd packet must never take PID 1 down.

use super::{Event, Proto};
use crate::sys::netlink::{self, Socket};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub use crate::policy::ruleset::{NFLOG_GROUP as GROUP, NFLOG_PREFIX as PREFIX};
/// Bytes of each packet copied to us: an IPv4 header with options (60) or an IPv6 header
/// with a short extension header, plus the 4 port bytes of TCP/UDP.
pub const COPY_RANGE: u32 = 96;
/// One packet per message, sent synchronously from the rejecting packet path: the report
/// is in our socket before the blocked connect() returns, so even a command that exits at
/// once is reported (batching would hold the last packets back until a timer).
const QTHRESH: u32 = 1;
const TIMEOUT: u32 = 1;
/// Receive buffer asked for (with CAP_NET_ADMIN, beyond rmem_max): a burst of several
/// thousand packets fits before the kernel drops (which is fine: we then count an overrun).
const RCVBUF: usize = 4 << 20;

// linux/netfilter/nfnetlink.h, nfnetlink_log.h
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_UID: u16 = 11;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_NLBUFSIZ: u16 = 3;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;

/// One packet the firewall rejected, as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// `None` when the payload could not be decoded (too short, not IP).
    pub event: Option<Event>,
    /// The uid of the sending socket, when the kernel knew it.
    pub uid: Option<u32>,
    /// Whether the rule that logged it carries our prefix.
    pub ours: bool,
}

/// Protocol, destination address and destination port of an IP packet's start. Bounded:
/// never reads past `pkt`, never panics; a truncated transport header gives no port.
pub fn parse_packet(pkt: &[u8]) -> Option<Event> {
    let version = pkt.first()? >> 4;
    let (proto, addr, transport) = match version {
        4 => {
            let ihl = usize::from(pkt.first()? & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let proto = *pkt.get(9)?;
            let d: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            // A non-first fragment has no transport header.
            let frag_off = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]) & 0x1fff;
            let transport = if frag_off == 0 { pkt.get(ihl..) } else { None };
            (proto, IpAddr::V4(Ipv4Addr::from(d)), transport)
        }
        6 => {
            let d: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            let (proto, transport) = skip_v6_extensions(pkt, *pkt.get(6)?);
            (proto, IpAddr::V6(Ipv6Addr::from(d)), transport)
        }
        _ => return None,
    };
    let proto = match proto {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        1 | 58 => Proto::Icmp,
        n => Proto::Other(n),
    };
    let port = match proto {
        Proto::Tcp | Proto::Udp => transport
            .and_then(|t| t.get(2..4))
            .map(|p| u16::from_be_bytes([p[0], p[1]])),
        _ => None,
    };
    Some(Event::Blocked { proto, addr, port })
}

/// Follows IPv6 extension headers (at most 8) to the upper-layer protocol and its header.
fn skip_v6_extensions(pkt: &[u8], first: u8) -> (u8, Option<&[u8]>) {
    let mut next = first;
    let mut off = 40usize;
    for _ in 0..8 {
        let len = match next {
            // hop-by-hop, routing, destination options: (hdr ext len + 1) * 8
            0 | 43 | 60 => pkt.get(off + 1).map(|l| (usize::from(*l) + 1) * 8),
            // fragment: 8 bytes; only the first fragment carries the transport header
            44 => {
                let frag = pkt
                    .get(off + 2..off + 4)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) & 0xfff8);
                match frag {
                    Some(0) => Some(8),
                    _ => return (pkt.get(off).copied().unwrap_or(next), None),
                }
            }
            // authentication header: (payload len + 2) * 4
            51 => pkt.get(off + 1).map(|l| (usize::from(*l) + 2) * 4),
            _ => return (next, pkt.get(off..)),
        };
        let (Some(len), Some(n)) = (len, pkt.get(off).copied()) else {
            // Truncated inside the extension headers: the protocol stays unknown.
            return (next, None);
        };
        next = n;
        off = off.saturating_add(len);
    }
    (next, None)
}

/// Every NFLOG packet message in one datagram (the kernel batches several). Anything
/// else (acks, errors, NLMSG_DONE) is skipped.
pub fn parse_datagram(buf: &[u8]) -> Vec<Logged> {
    let mut out = vec![];
    for m in netlink::messages(buf) {
        if m.kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
            continue;
        }
        let Some((_, attrs)) = m.nfnl() else {
            continue;
        };
        let mut logged = Logged {
            event: None,
            uid: None,
            ours: false,
        };
        for (t, v) in netlink::attrs(attrs) {
            match t {
                NFULA_PAYLOAD => logged.event = parse_packet(v),
                NFULA_PREFIX => {
                    logged.ours = v.strip_suffix(&[0]).unwrap_or(v) == PREFIX.as_bytes()
                }
                NFULA_UID => {
                    logged.uid = v
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                }
                _ => {}
            }
        }
        out.push(logged);
    }
    out
}

/// The one configuration request: bind `group` to this socket, copy packets (first
/// COPY_RANGE bytes), batch settings. Acked.
pub fn config_request(group: u16, seq: u32) -> Vec<u8> {
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend([NFULNL_COPY_PACKET, 0]);
    let attrs = [
        (NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND]),
        (NFULA_CFG_MODE, mode),
        (NFULA_CFG_NLBUFSIZ, 16384u32.to_be_bytes().to_vec()),
        (NFULA_CFG_TIMEOUT, TIMEOUT.to_be_bytes().to_vec()),
        (NFULA_CFG_QTHRESH, QTHRESH.to_be_bytes().to_vec()),
    ];
    let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    // Family AF_UNSPEC (the group serves both families); the group is the resource id.
    netlink::acked_request(ty, libc::AF_UNSPEC as u8, group, seq, &attrs)
}

/// Opens a non-blocking NETLINK_NETFILTER socket and binds NFLOG `group` to it. Needs
/// CAP_NET_ADMIN for the bind; the socket is close-on-exec.
pub fn bind(group: u16) -> Result<Socket, String> {
    let seq = 1;
    let request = config_request(group, seq);
    Socket::subscribe(&request, seq, RCVBUF, Duration::from_secs(2)).map_err(|e| match e {
        netlink::Error::Open(errno) => format!(
            "netfilter netlink socket: {}",
            std::io::Error::from_raw_os_error(errno)
        ),
        netlink::Error::NoAnswer => "binding the NFLOG group: no answer from the kernel".into(),
        other => format!(
            "binding the NFLOG group: {}",
            std::io::Error::from_raw_os_error(other.errno())
        ),
    })
}

/// What one read of the socket gave.
#[derive(Debug, Default)]
pub struct Batch {
    pub packets: Vec<Logged>,
    /// The kernel dropped messages since the last read (receive buffer full).
    pub overruns: u64,
    /// Nothing more to read now.
    pub drained: bool,
}

/// Reads at most `max` datagrams without blocking.
pub fn read(sock: &Socket, buf: &mut [u8], max: usize) -> Batch {
    let mut packets = vec![];
    let reads = sock.read_now(buf, max, |datagram| {
        packets.extend(parse_datagram(datagram))
    });
    Batch {
        packets,
        overruns: reads.overruns,
        drained: reads.drained,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn v4(proto: u8, dst: [u8; 4], transport: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 2];
        p.extend(dst);
        p.extend(transport);
        p
    }

    pub fn v6(next: u8, dst: &str, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        p.extend("fd77::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend(dst.parse::<Ipv6Addr>().unwrap().octets());
        p.extend(rest);
        p
    }

    fn blocked(proto: Proto, addr: &str, port: Option<u16>) -> Option<Event> {
        Some(Event::Blocked {
            proto,
            addr: addr.parse().unwrap(),
            port,
        })
    }

    const TCP_443: &[u8] = &[0xc3, 0x50, 0x01, 0xbb, 0, 0, 0, 1];

    #[test]
    fn ipv4_and_ipv6_give_protocol_address_and_port() {
        let p = v4(6, [10, 77, 0, 11], TCP_443);
        assert_eq!(
            parse_packet(&p),
            blocked(Proto::Tcp, "10.77.0.11", Some(443))
        );
        let p = v4(17, [10, 77, 0, 11], &[0x12, 0x34, 0, 123, 0, 8]);
        assert_eq!(
            parse_packet(&p),
            blocked(Proto::Udp, "10.77.0.11", Some(123))
        );
        let p = v4(1, [10, 77, 0, 11], &[8, 0, 0, 0]);
        assert_eq!(parse_packet(&p), blocked(Proto::Icmp, "10.77.0.11", None));
        let p = v4(47, [10, 77, 0, 11], &[]);
        assert_eq!(
            parse_packet(&p),
            blocked(Proto::Other(47), "10.77.0.11", None)
        );
        let p = v6(6, "fd77::11", TCP_443);
        assert_eq!(parse_packet(&p), blocked(Proto::Tcp, "fd77::11", Some(443)));
        let p = v6(58, "fd77::11", &[128, 0]);
        assert_eq!(parse_packet(&p), blocked(Proto::Icmp, "fd77::11", None));
    }

    #[test]
    fn ipv4_options_and_fragments() {
        // ihl 6: four bytes of options before TCP
        let mut p = v4(6, [1, 2, 3, 4], &[1, 1, 1, 1]);
        p[0] = 0x46;
        p.extend(TCP_443);
        assert_eq!(parse_packet(&p), blocked(Proto::Tcp, "1.2.3.4", Some(443)));
        // a non-first fragment has no ports
        let mut p = v4(17, [1, 2, 3, 4], &[0, 1, 0, 53]);
        p[6] = 0x00;
        p[7] = 0x10;
        assert_eq!(parse_packet(&p), blocked(Proto::Udp, "1.2.3.4", None));
        // ihl below 5 is not IPv4
        let mut p = v4(6, [1, 2, 3, 4], TCP_443);
        p[0] = 0x44;
        assert_eq!(parse_packet(&p), None);
    }

    #[test]
    fn ipv6_extension_headers_are_followed() {
        // hop-by-hop (8 bytes) then destination options (16 bytes) then UDP
        let mut rest = vec![60, 0, 0, 0, 0, 0, 0, 0];
        rest.extend([17, 1]);
        rest.extend([0u8; 14]);
        rest.extend([0x12, 0x34, 0x00, 0x35]);
        let p = v6(0, "2001:db8::1", &rest);
        assert_eq!(
            parse_packet(&p),
            blocked(Proto::Udp, "2001:db8::1", Some(53))
        );
        // first fragment: ports; later fragment: none
        let mut rest = vec![6, 0, 0, 0, 0, 0, 0, 1];
        rest.extend(TCP_443);
        let p = v6(44, "2001:db8::1", &rest);
        assert_eq!(
            parse_packet(&p),
            blocked(Proto::Tcp, "2001:db8::1", Some(443))
        );
        let mut rest = vec![6, 0, 0, 0x10, 0, 0, 0, 1];
        rest.extend(TCP_443);
        let p = v6(44, "2001:db8::1", &rest);
        assert_eq!(parse_packet(&p), blocked(Proto::Tcp, "2001:db8::1", None));
        // a chain of hop-by-hop headers longer than we follow: protocol unknown, no panic
        let mut rest = vec![];
        for _ in 0..20 {
            rest.extend([0u8, 0, 0, 0, 0, 0, 0, 0]);
        }
        let p = v6(0, "2001:db8::1", &rest);
        assert!(matches!(
            parse_packet(&p),
            Some(Event::Blocked { port: None, .. })
        ));
    }

    #[test]
    fn truncated_packets_never_panic_and_lose_only_what_is_missing() {
        for full in [
            v4(6, [10, 0, 0, 1], TCP_443),
            v6(6, "fd77::11", TCP_443),
            v6(0, "fd77::11", &[6, 0, 0, 0, 0, 0, 0, 0, 0, 80, 0, 80]),
        ] {
            for cut in 0..full.len() {
                let got = parse_packet(&full[..cut]);
                let header = if full[0] >> 4 == 4 { 20 } else { 40 };
                if cut < header {
                    assert_eq!(got, None, "cut {cut}");
                } else {
                    assert!(matches!(got, Some(Event::Blocked { .. })), "cut {cut}");
                }
            }
            assert!(matches!(
                parse_packet(&full),
                Some(Event::Blocked { port: Some(_), .. })
            ));
        }
        assert_eq!(parse_packet(&[]), None);
        assert_eq!(parse_packet(&[0x70; 60]), None);
    }

    /// A deterministic fuzz: random bytes and random mutations of valid packets and
    /// datagrams never panic.
    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [
            v4(6, [10, 0, 0, 1], TCP_443),
            v6(
                0,
                "fd77::11",
                &[44, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0],
            ),
            datagram(&[packet_msg(&v4(17, [1, 2, 3, 4], &[0, 1, 0, 2]), true)]),
        ];
        for i in 0..20_000 {
            let mut b = if i % 2 == 0 {
                seeds[(rnd() % 3) as usize].clone()
            } else {
                vec![0u8; (rnd() % 200) as usize]
            };
            for _ in 0..(rnd() % 8) {
                if !b.is_empty() {
                    let at = (rnd() as usize) % b.len();
                    b[at] = rnd() as u8;
                }
            }
            let cut = if b.is_empty() {
                0
            } else {
                (rnd() as usize) % (b.len() + 1)
            };
            let _ = parse_packet(&b[..cut]);
            let _ = parse_datagram(&b[..cut]);
        }
    }

    pub fn packet_msg(payload: &[u8], ours: bool) -> Vec<u8> {
        let prefix = if ours { PREFIX } else { "someone else" };
        let attrs = [
            (1, vec![0x08, 0x00, 3, 0]),
            (NFULA_PREFIX, netlink::cstr(prefix)),
            (NFULA_UID, 1000u32.to_be_bytes().to_vec()),
            (NFULA_PAYLOAD, payload.to_vec()),
        ];
        let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
        netlink::nfnl_message(ty, 0, 0, libc::AF_INET as u8, 0x1b81, &attrs)
    }

    pub fn datagram(msgs: &[Vec<u8>]) -> Vec<u8> {
        msgs.concat()
    }

    #[test]
    fn datagrams_hold_batched_packets_and_skip_the_rest() {
        let done = netlink::testing::done(0);
        let d = datagram(&[
            packet_msg(&v4(6, [10, 77, 0, 11], TCP_443), true),
            packet_msg(&v6(17, "fd77::11", &[0, 1, 0, 53]), false),
            done,
        ]);
        let got = parse_datagram(&d);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].event, blocked(Proto::Tcp, "10.77.0.11", Some(443)));
        assert!(got[0].ours);
        assert_eq!(got[0].uid, Some(1000));
        assert_eq!(got[1].event, blocked(Proto::Udp, "fd77::11", Some(53)));
        assert!(!got[1].ours);
        // a truncated tail message is dropped, the complete ones kept
        assert_eq!(parse_datagram(&d[..d.len() - 10]).len(), 2);
        assert_eq!(parse_datagram(&d[..d.len() - 30]).len(), 1);
        let first = packet_msg(&v4(6, [10, 77, 0, 11], TCP_443), true).len();
        assert_eq!(parse_datagram(&d[..first + 10]).len(), 1);
    }

    #[test]
    fn config_request_binds_the_group_and_asks_for_packets() {
        let m = config_request(GROUP, 7);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0401);
        assert_eq!(&m[18..20], &GROUP.to_be_bytes());
        let attrs: Vec<(u16, Vec<u8>)> = netlink::attrs(&m[20..])
            .map(|(t, v)| (t, v.to_vec()))
            .collect();
        assert_eq!(attrs[0], (NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND]));
        assert_eq!(
            attrs[1],
            (NFULA_CFG_MODE, vec![0, 0, 0, 96, NFULNL_COPY_PACKET, 0])
        );
        assert_eq!(m.len() % 4, 0);
    }
}
