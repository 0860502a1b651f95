//! The forwarder's side towards the upstream resolvers: how a query leaves (a fresh socket
//! with a random source port for every attempt, a random id, the letters of
//! the name in random case) and which datagram is taken as its answer (only one from the
//! exact server address and port, with our id and our question: name as we spelled it,
//! type and class). Everything an off-path sender would have to guess: ~12 bits of port
//! (see `private_ports`), 16 of id, one per letter of the name.

use super::framing::{self, Deframer, Received};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

/// The EDNS buffer size we advertise upstream (the DNS flag day value).
const EDNS_SIZE: u16 = 1232;
/// Datagrams read from one attempt's socket per event (one is its answer; the rest is
/// noise that must not keep PID 1 busy).
const UPSTREAM_BURST: usize = 16;
/// The most an answer over TCP can take: its length and 65535 bytes.
const MAX_TCP_ANSWER: usize = 2 + 65535;

/// Random bytes from the kernel (getrandom(2)), drawn 512 at a time: ids and case bits
/// must not be predictable from earlier ones, and a syscall per query would cost more
/// than the rest of the query's handling.
pub struct Entropy {
    buf: [u8; 512],
    used: usize,
    /// Only if getrandom(2) is missing (kernels before 3.17): a time-seeded xorshift.
    fallback: u64,
}

impl Default for Entropy {
    fn default() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Entropy {
            buf: [0; 512],
            used: 512,
            fallback: t | 1,
        }
    }
}

impl Entropy {
    fn refill(&mut self) {
        if crate::sys::random_bytes(&mut self.buf).is_err() {
            for b in self.buf.iter_mut() {
                self.fallback ^= self.fallback << 13;
                self.fallback ^= self.fallback >> 7;
                self.fallback ^= self.fallback << 17;
                *b = (self.fallback >> 32) as u8;
            }
        }
        self.used = 0;
    }

    pub fn byte(&mut self) -> u8 {
        if self.used >= self.buf.len() {
            self.refill();
        }
        self.used += 1;
        self.buf[self.used - 1]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
}

/// Flips the case of each letter of a wire-format name (length-prefixed labels) at random
/// (the "0x20" bit): a server echoes the question as asked, an attacker must guess it.
pub fn randomize_case(name: &mut [u8], rng: &mut Entropy) {
    let mut bits = 0u8;
    let mut left = 0;
    let mut o = 0;
    while let Some(&len) = name.get(o) {
        if len == 0 {
            break;
        }
        let end = (o + 1 + len as usize).min(name.len());
        for c in &mut name[o + 1..end] {
            if c.is_ascii_alphabetic() {
                if left == 0 {
                    bits = rng.byte();
                    left = 8;
                }
                *c = if bits & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                };
                bits >>= 1;
                left -= 1;
            }
        }
        o = end;
    }
}

/// What an answer must match: the attempt as it went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub server: SocketAddr,
    pub id: u16,
    /// The question section as sent: name (wire format, our spelling), type, class.
    pub question: Vec<u8>,
    /// The name's letters were randomized: their case must come back exactly.
    pub exact_case: bool,
}

/// The verdict on a datagram that arrived for an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Accept,
    /// Everything matches but the letter case of the name: a server that does not echo
    /// the question as asked (or a guess). Never accepted; the attempt is repeated without
    /// randomized case.
    CaseOnly,
    Reject(&'static str),
}

/// Whether `msg`, received from `from`, is the answer to `sent`.
pub fn check(sent: &Sent, from: SocketAddr, msg: &[u8]) -> Check {
    if from != sent.server {
        return Check::Reject("not from the server's address and port");
    }
    if msg.len() < 12 + sent.question.len() {
        return Check::Reject("too short");
    }
    if msg[2] & 0x80 == 0 {
        return Check::Reject("not a response");
    }
    if u16::from_be_bytes([msg[0], msg[1]]) != sent.id {
        return Check::Reject("another id");
    }
    if msg[4..6] != [0, 1] {
        return Check::Reject("not one question");
    }
    let got = &msg[12..12 + sent.question.len()];
    if got == sent.question.as_slice() {
        return Check::Accept;
    }
    // Same labels, type and class, letters compared without case (the lengths, dots and
    // the final zero are the same bytes either way)?
    if got.eq_ignore_ascii_case(&sent.question) {
        return if sent.exact_case {
            Check::CaseOnly
        } else {
            Check::Accept
        };
    }
    Check::Reject("another question")
}

fn unspecified(for_server: SocketAddr) -> SocketAddr {
    if for_server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    }
}

/// The source ports of our UDP attempts: the ports above the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768-60999 by default, so 61000-65535), when that
/// leaves at least 1024. Conntrack keeps a finished attempt's flow for 30 s; a socket of
/// the user's that the kernel gave the same port would ride that flow to the resolver,
/// past the DNS redirect, and be refused. Outside the range the kernel never hands out,
/// no socket of the user's gets one of our ports by chance. `None`: no such room, the
/// kernel picks (from its range).
pub fn private_ports(ephemeral: (u16, u16)) -> Option<(u16, u16)> {
    let above = ephemeral.1.checked_add(1)?;
    (u16::MAX - above >= 1023).then_some((above, u16::MAX))
}

/// The kernel's ephemeral port range, as set for this namespace.
pub fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|w| w.parse().ok());
    (it.next().unwrap_or(32768), it.next().unwrap_or(60999))
}

/// A socket for one attempt: bound to a random free port of `ports` (or, without them, to
/// port 0: a random free port the kernel picks), connected to the server (the kernel then
/// drops datagrams from any other address or port), non-blocking, close-on-exec.
pub fn udp_socket(
    server: SocketAddr,
    ports: Option<(u16, u16)>,
    rng: &mut Entropy,
) -> std::io::Result<UdpSocket> {
    let s = Socket::new(
        Domain::for_address(server),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if server.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let mut local = unspecified(server);
    let mut bound = false;
    if let Some((lo, hi)) = ports {
        let span = u32::from(hi - lo) + 1;
        for _ in 0..16 {
            local.set_port(lo + (u32::from(rng.u16()) % span) as u16);
            match s.bind(&SockAddr::from(local)) {
                Ok(()) => {
                    bound = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
    }
    if !bound {
        local.set_port(0);
        s.bind(&SockAddr::from(local))?;
    }
    s.connect(&SockAddr::from(server))?;
    Ok(s.into())
}

/// A TCP connection that completes in the background.
pub fn tcp_connect(server: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(server),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    match s.connect(&SockAddr::from(server)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

/// The query that goes upstream: our id, RD/CD from the client, the question (as we spell
/// it) and an EDNS record; nothing else the child put in its message leaves the container.
pub fn query(id: u16, flags: [u8; 2], question: &[u8]) -> Vec<u8> {
    let mut up = Vec::with_capacity(12 + question.len() + 11);
    up.extend_from_slice(&id.to_be_bytes());
    up.extend_from_slice(&[flags[0] & 0x01, flags[1] & 0x10, 0, 1, 0, 0, 0, 0, 0, 1]);
    up.extend_from_slice(question);
    up.extend_from_slice(&[0, 0, 41]);
    up.extend_from_slice(&EDNS_SIZE.to_be_bytes());
    up.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    up
}

/// One attempt's connection to its server.
pub enum Link {
    Udp(UdpSocket),
    Tcp(TcpAttempt),
}

/// A query over TCP: the connection, what is still to be written, the answer so far.
pub struct TcpAttempt {
    s: TcpStream,
    out: Vec<u8>,
    written: usize,
    input: Deframer,
}

/// Where a TCP attempt stands after its socket was ready.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The query is still being written.
    Sending,
    /// The query is out (watch for input only from now on).
    Sent,
    /// Written, and the answer has not arrived yet.
    Waiting,
    /// The one message the connection carries.
    Answer(Vec<u8>),
    /// Refused, reset or closed before an answer.
    Failed,
}

impl Link {
    /// A fresh socket for one attempt of `msg` to `server` (see `udp_socket` for the UDP
    /// port), the datagram sent or the connection started.
    pub fn open(
        server: SocketAddr,
        tcp: bool,
        msg: &[u8],
        ports: Option<(u16, u16)>,
        rng: &mut Entropy,
    ) -> std::io::Result<Link> {
        if tcp {
            let out = framing::frame(msg).ok_or(ErrorKind::InvalidInput)?;
            tcp_connect(server).map(|s| {
                Link::Tcp(TcpAttempt {
                    s,
                    out,
                    written: 0,
                    input: Deframer::default(),
                })
            })
        } else {
            let s = udp_socket(server, ports, rng)?;
            s.send(msg)?;
            Ok(Link::Udp(s))
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Link::Udp(s) => s.as_fd(),
            Link::Tcp(t) => t.s.as_fd(),
        }
    }

    /// A TCP attempt waits to write first (the connection completes in the background).
    pub fn writes_first(&self) -> bool {
        matches!(self, Link::Tcp(_))
    }
}

/// The datagrams waiting on an attempt's socket (at most a burst), with their senders, and
/// the error that ended the reading if any (an ICMP error: port refused, no route).
pub fn receive(
    s: &UdpSocket,
    buf: &mut [u8],
) -> (Vec<(Vec<u8>, SocketAddr)>, Option<std::io::Error>) {
    let mut got = vec![];
    for _ in 0..UPSTREAM_BURST {
        match s.recv_from(buf) {
            Ok((n, from)) => got.push((buf[..n].to_vec(), from)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

impl TcpAttempt {
    /// Writes what is left of the query, then reads what has come of the answer.
    /// `error`: the socket reported an error.
    pub fn progress(&mut self, error: bool) -> Progress {
        let was_sending = self.written < self.out.len();
        let mut failed = error;
        while !failed && self.written < self.out.len() {
            match self.s.write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::NotConnected =>
                {
                    break
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => failed = true,
            }
        }
        let sent = self.written == self.out.len();
        let mut closed = false;
        if !failed && sent {
            let mut progress = false;
            match self
                .input
                .read_from(&mut self.s, MAX_TCP_ANSWER, &mut progress)
            {
                Received::Waiting | Received::Overflow => {}
                Received::Closed => closed = true,
                Received::Failed => failed = true,
            }
        }
        if let Some(msg) = self.input.first() {
            return Progress::Answer(msg.to_vec());
        }
        if failed || closed {
            return Progress::Failed;
        }
        match (sent, was_sending) {
            (false, _) => Progress::Sending,
            (true, true) => Progress::Sent,
            (true, false) => Progress::Waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::dns::wire::build_query;

    fn sent_for(name: &str, exact_case: bool) -> (Sent, Vec<u8>) {
        let q = build_query(0x1234, name, 1);
        let sent = Sent {
            server: "10.77.0.53:53".parse().unwrap(),
            id: 0x1234,
            question: q[12..].to_vec(),
            exact_case,
        };
        // The answer a server gives: the query echoed with QR set, one record.
        let mut a = q.clone();
        a[2] |= 0x80;
        a[7] = 1;
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
        (sent, a)
    }

    fn server() -> SocketAddr {
        "10.77.0.53:53".parse().unwrap()
    }

    #[test]
    fn the_exact_answer_is_accepted() {
        let (sent, a) = sent_for("Www.AlloWed.tesT", true);
        assert_eq!(check(&sent, server(), &a), Check::Accept);
    }

    #[test]
    fn only_the_exact_server_address_and_port() {
        let (sent, a) = sent_for("www.allowed.test", true);
        for from in [
            "10.77.0.53:5353",
            "10.77.0.54:53",
            "127.0.0.11:53",
            "[fd77::53]:53",
        ] {
            assert!(
                matches!(check(&sent, from.parse().unwrap(), &a), Check::Reject(_)),
                "{from}"
            );
        }
    }

    #[test]
    fn id_question_type_and_class_must_match() {
        let (sent, a) = sent_for("www.allowed.test", true);
        let mutate = |at: usize, v: u8| {
            let mut m = a.clone();
            m[at] = v;
            check(&sent, server(), &m)
        };
        assert_eq!(mutate(1, 0x35), Check::Reject("another id"));
        assert_eq!(mutate(2, a[2] & 0x7f), Check::Reject("not a response"));
        assert_eq!(mutate(5, 2), Check::Reject("not one question"));
        assert_eq!(mutate(5, 0), Check::Reject("not one question"));
        let qend = 12 + sent.question.len();
        // the type (A -> NS), the class (IN -> CH), a letter of the name (w -> x)
        assert_eq!(mutate(qend - 3, 2), Check::Reject("another question"));
        assert_eq!(mutate(qend - 1, 3), Check::Reject("another question"));
        assert_eq!(mutate(13, b'x'), Check::Reject("another question"));
        // a label length (the same letters split elsewhere)
        assert_eq!(mutate(12, 2), Check::Reject("another question"));
        // cut short anywhere in the header or question
        for n in 0..qend {
            assert!(
                matches!(check(&sent, server(), &a[..n]), Check::Reject(_)),
                "{n}"
            );
        }
    }

    #[test]
    fn case_must_come_back_as_sent_when_randomized() {
        let (sent, a) = sent_for("WwW.aLLowed.TEST", true);
        let lower = {
            let mut m = a.clone();
            m[12..12 + sent.question.len()].make_ascii_lowercase();
            m
        };
        assert_eq!(check(&sent, server(), &lower), Check::CaseOnly);
        // a server known to fold case: compared without case
        let (plain, _) = sent_for("WwW.aLLowed.TEST", false);
        assert_eq!(check(&plain, server(), &lower), Check::Accept);
        assert_eq!(check(&plain, server(), &a), Check::Accept);
    }

    #[test]
    fn randomized_case_keeps_the_name_and_varies() {
        let mut rng = Entropy::default();
        let orig = build_query(1, "some-long-name.under.allowed.test", 1)[12..].to_vec();
        let mut spellings = std::collections::HashSet::new();
        for _ in 0..32 {
            let mut n = orig.clone();
            randomize_case(&mut n, &mut rng);
            assert!(n.eq_ignore_ascii_case(&orig));
            // lengths, digits, dashes, type and class untouched
            for (a, b) in n.iter().zip(&orig) {
                if !b.is_ascii_alphabetic() {
                    assert_eq!(a, b);
                }
            }
            spellings.insert(n);
        }
        assert!(spellings.len() > 30, "{}", spellings.len());
    }

    #[test]
    fn ids_are_not_repeated_in_sequence() {
        let mut rng = Entropy::default();
        let ids: std::collections::HashSet<u16> = (0..1000).map(|_| rng.u16()).collect();
        assert!(ids.len() > 980, "{}", ids.len());
    }

    #[test]
    fn every_attempt_gets_its_own_random_port_outside_the_ephemeral_range() {
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut rng = Entropy::default();
        for ports in [Some((61000, 65535)), None] {
            let socks: Vec<UdpSocket> = (0..20)
                .map(|_| udp_socket(server, ports, &mut rng).unwrap())
                .collect();
            let got: Vec<u16> = socks
                .iter()
                .map(|s| s.local_addr().unwrap().port())
                .collect();
            // Not a sequence: each one is picked at random.
            let close = got.windows(2).filter(|w| w[0].abs_diff(w[1]) <= 2).count();
            assert!(close < 3, "{got:?}");
            if let Some((lo, hi)) = ports {
                assert!(got.iter().all(|p| (lo..=hi).contains(p)), "{got:?}");
            }
            assert_eq!(socks[0].peer_addr().unwrap(), server);
        }
    }

    #[test]
    fn our_ports_lie_above_the_kernels_range_when_there_is_room() {
        assert_eq!(private_ports((32768, 60999)), Some((61000, 65535)));
        assert_eq!(private_ports((10000, 20000)), Some((20001, 65535)));
        assert_eq!(private_ports((1024, 65535)), None);
        assert_eq!(private_ports((32768, 65000)), None);
    }

    #[test]
    fn the_upstream_query_carries_only_the_question() {
        let q = query(0xabcd, [0xff, 0xff], b"\x01a\x04test\x00\x00\x01\x00\x01");
        assert_eq!(&q[..2], &[0xab, 0xcd]);
        // RD and CD only, one question, one additional (OPT), nothing else
        assert_eq!(&q[2..12], &[0x01, 0x10, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&q[12..24], b"\x01a\x04test\x00\x00\x01\x00\x01");
        assert_eq!(&q[24..27], &[0, 0, 41]);
        assert_eq!(q.len(), 24 + 11);
    }
}
