//! The DNS forwarder PID 1 serves on loopback port 53 (the child's port-53 traffic is
//! redirected here by the firewall). Single-threaded and non-blocking: a `Duty` of the
//! supervisor loop. Denied names are answered NXDOMAIN at once and never leave the
//! container; allowed names go upstream (the resolvers of /etc/resolv.conf), and the
//! addresses of the answer enter the firewall's dynamic sets before the answer is released.

use super::policy::{Group, Policy};
use super::sets::{SetWriter, Tracker, CEILING};
use super::wire::{self, Bad, Query};
use crate::report::{Event, SharedReporter};
use crate::supervise::Duty;
use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

pub const PORT: u16 = 53;
pub const LISTEN_V4: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub const LISTEN_V6: Ipv6Addr = Ipv6Addr::LOCALHOST;

/// Queries waiting for an upstream answer (beyond: SERVFAIL at once).
const MAX_PENDING: usize = 4096;
const MAX_TCP_CLIENTS: usize = 128;
const MAX_UPSTREAM_TCP: usize = 64;
/// Per client connection: queries in flight, unsent output.
const MAX_CLIENT_INFLIGHT: usize = 16;
const MAX_CLIENT_OUT: usize = 256 * 1024;
/// A client datagram this size or larger is not a query we answer.
const MAX_QUERY: usize = 4096;
const TRY_TIMEOUT: Duration = Duration::from_millis(1500);
const TRIES: u8 = 2;
const TCP_TIMEOUT: Duration = Duration::from_secs(4);
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Datagrams read per socket per wake-up, so no socket starves the others.
const BURST: usize = 256;
/// While TCP work waits for a socket to become writable (the loop only polls for input).
const TCP_TICK: Duration = Duration::from_millis(2);
/// The EDNS buffer size we advertise upstream (the DNS flag day value).
const EDNS_SIZE: u16 = 1232;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Udp { sock: usize, from: SocketAddr },
    Tcp { conn: u64 },
}

struct Pending {
    client: Client,
    client_id: u16,
    /// The question as asked upstream (our id).
    q: Query,
    /// The client asked with EDNS (a UDP answer may exceed 512 bytes).
    edns: bool,
    groups: BTreeSet<Group>,
    msg: Vec<u8>,
    server: usize,
    tries: u8,
    deadline: Instant,
}

struct TcpClient {
    s: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    inflight: usize,
    eof: bool,
    idle_until: Instant,
}

struct UpTcp {
    s: TcpStream,
    out: Vec<u8>,
    sent: usize,
    inbuf: Vec<u8>,
    p: Pending,
}

pub struct Forwarder {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    servers: Vec<SocketAddr>,
    up_udp: Vec<Option<UdpSocket>>,
    policy: Policy,
    pending: HashMap<u16, Pending>,
    clients: HashMap<u64, TcpClient>,
    up_tcp: HashMap<u64, UpTcp>,
    next_conn: u64,
    tracker: Tracker,
    writer: Option<SetWriter>,
    reporter: SharedReporter,
    rng: u64,
    /// Denied names were recorded since the last audit flush.
    recorded: bool,
    buf: Vec<u8>,
    pub stats: Stats,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub denied: u64,
    pub forwarded: u64,
    pub answered: u64,
    pub servfail: u64,
    pub malformed: u64,
}

fn nonblocking_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn set_rcvbuf(fd: BorrowedFd<'_>, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain setsockopt with an int. FORCE works while PID 1 is still privileged
    // (binding happens before the command starts); the plain one is the fallback.
    unsafe {
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &bytes as *const i32 as *const libc::c_void,
                4,
            ) == 0
            {
                return;
            }
        }
    }
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: b is writable for its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let s = if n == 8 { u64::from_ne_bytes(b) } else { t };
    s | 1
}

impl Forwarder {
    /// Binds 127.0.0.1:53 (required) and [::1]:53 (when the host has IPv6), UDP and TCP.
    /// Must run while PID 1 may still bind privileged ports.
    pub fn bind(
        policy: Policy,
        upstreams: &[IpAddr],
        writer: Option<SetWriter>,
        reporter: SharedReporter,
    ) -> Result<Forwarder, String> {
        let mut udp = vec![];
        let mut tcp = vec![];
        for (ip, required) in [
            (IpAddr::V4(LISTEN_V4), true),
            (IpAddr::V6(LISTEN_V6), false),
        ] {
            let sa = SocketAddr::new(ip, PORT);
            let pair = nonblocking_udp(sa).and_then(|u| {
                let t = TcpListener::bind(sa)?;
                t.set_nonblocking(true)?;
                Ok((u, t))
            });
            match pair {
                Ok((u, t)) => {
                    set_rcvbuf(u.as_fd(), 4 << 20);
                    udp.push(u);
                    tcp.push(t);
                }
                Err(e) if required => {
                    // Docker lets any process bind low ports in a container
                    // (ip_unprivileged_port_start=0); other runtimes need the capability.
                    let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
                        "add --cap-add NET_BIND_SERVICE"
                    } else {
                        "another DNS server in the container?"
                    };
                    return Err(format!(
                        "DNS filter: cannot listen on {sa}: {e} ({why}); or use --dns resolver"
                    ));
                }
                Err(e) => log::debug!("DNS filter: not listening on {sa}: {e}"),
            }
        }
        // Our own addresses are never an upstream (that would loop).
        let servers: Vec<SocketAddr> = upstreams
            .iter()
            .filter(|ip| **ip != IpAddr::V4(LISTEN_V4) && **ip != IpAddr::V6(LISTEN_V6))
            .map(|ip| SocketAddr::new(*ip, PORT))
            .collect();
        if servers.is_empty() {
            log::warn!(
                "DNS filter: /etc/resolv.conf names no usable resolver; allowed names will \
                 fail (SERVFAIL)"
            );
        }
        let up_udp = servers
            .iter()
            .map(|sa| {
                let any: SocketAddr = if sa.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = nonblocking_udp(any).and_then(|s| s.connect(sa).map(|_| s));
                match s {
                    Ok(s) => {
                        set_rcvbuf(s.as_fd(), 4 << 20);
                        Some(s)
                    }
                    Err(e) => {
                        log::warn!("DNS filter: cannot use resolver {sa}: {e}");
                        None
                    }
                }
            })
            .collect();
        Ok(Forwarder {
            udp,
            tcp,
            servers,
            up_udp,
            policy,
            pending: HashMap::new(),
            clients: HashMap::new(),
            up_tcp: HashMap::new(),
            next_conn: 0,
            tracker: Tracker::default(),
            writer,
            reporter,
            rng: seed(),
            recorded: false,
            buf: vec![0u8; 65536],
            stats: Stats::default(),
        })
    }

    /// Addresses resolved at start: kept (and refreshed) like the answer of a query.
    pub fn seed_learned(&mut self, name: &str, addrs: &[IpAddr], now: Instant) {
        let groups = self.policy.groups(name);
        for a in addrs {
            for g in &groups {
                // Already in the sets (the firewall batch put them there).
                self.tracker.learn(*a, *g, 0, now);
            }
        }
    }

    fn rand16(&mut self) -> u16 {
        // xorshift64*: ids that an off-path sender cannot predict from earlier ones
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 48) as u16
    }

    /// One line per denied name (the shared reporter deduplicates and rate-limits them,
    /// and summarises what it held back).
    fn deny_line(&mut self, name: &str) {
        self.stats.denied += 1;
        self.recorded = true;
        let line = self.reporter.borrow_mut().record(Event::DeniedName {
            name: name.to_string(),
        });
        if let Some(line) = line {
            crate::report::print(&line);
        }
    }

    /// A client's message: an immediate answer, or `None` when it went upstream (or is
    /// not worth an answer).
    fn on_query(&mut self, msg: &[u8], client: Client, now: Instant) -> Option<Vec<u8>> {
        let q = match wire::parse_query(msg) {
            Ok(q) => q,
            Err(Bad::Drop) => {
                self.stats.malformed += 1;
                return None;
            }
            Err(Bad::Answer(rc)) => {
                self.stats.malformed += 1;
                return wire::error_answer(msg, None, rc);
            }
        };
        let groups = if q.plain {
            self.policy.groups(&q.name)
        } else {
            BTreeSet::new()
        };
        if groups.is_empty() {
            self.deny_line(&q.name);
            return wire::error_answer(msg, Some(q.end), wire::RCODE_NXDOMAIN);
        }
        let full = match client {
            Client::Udp { .. } => self.pending.len() >= MAX_PENDING,
            Client::Tcp { .. } => self.up_tcp.len() >= MAX_UPSTREAM_TCP,
        };
        if self.servers.is_empty() || full {
            self.stats.servfail += 1;
            return wire::error_answer(msg, Some(q.end), wire::RCODE_SERVFAIL);
        }
        let mut id = self.rand16();
        while self.pending.contains_key(&id) {
            id = self.rand16();
        }
        // Upstream gets the question only (our id, RD/CD from the client, an EDNS record):
        // nothing else the child put in its message leaves the container.
        let mut up = msg[..q.end].to_vec();
        up[0..2].copy_from_slice(&id.to_be_bytes());
        up[2] = msg[2] & 0x01;
        up[3] = msg[3] & 0x10;
        up[6..10].fill(0);
        up[10..12].copy_from_slice(&1u16.to_be_bytes());
        up.extend_from_slice(&[0, 0, 41]);
        up.extend_from_slice(&EDNS_SIZE.to_be_bytes());
        up.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let p = Pending {
            client,
            client_id: q.id,
            edns: msg.get(10..12) != Some(&[0, 0]),
            q: Query { id, ..q },
            groups,
            msg: up,
            server: 0,
            tries: 0,
            deadline: now,
        };
        self.stats.forwarded += 1;
        match client {
            Client::Udp { .. } => self.send_udp(id, p, now),
            Client::Tcp { .. } => self.start_tcp(p, now),
        }
        None
    }

    fn send_udp(&mut self, id: u16, mut p: Pending, now: Instant) {
        // The next server that has a socket, starting at p.server.
        let n = self.servers.len();
        let pick = (0..n)
            .map(|i| (p.server + i) % n)
            .find(|i| self.up_udp[*i].is_some());
        let Some(i) = pick else {
            return self.fail(p);
        };
        p.server = i;
        p.tries += 1;
        p.deadline = now + TRY_TIMEOUT;
        if let Some(s) = &self.up_udp[i] {
            if let Err(e) = s.send(&p.msg) {
                log::debug!("DNS filter: sending to {}: {e}", self.servers[i]);
            }
        }
        self.pending.insert(id, p);
    }

    fn start_tcp(&mut self, p: Pending, now: Instant) {
        if let Client::Tcp { conn } = p.client {
            if let Some(c) = self.clients.get_mut(&conn) {
                c.inflight += 1;
            }
        }
        let sa = self.servers[p.server % self.servers.len()];
        let s = match connect_nonblocking(sa) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("DNS filter: TCP to {sa}: {e}");
                return self.fail(p);
            }
        };
        let mut out = (p.msg.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&p.msg);
        let p = Pending {
            deadline: now + TCP_TIMEOUT,
            ..p
        };
        self.next_conn += 1;
        self.up_tcp.insert(
            self.next_conn,
            UpTcp {
                s,
                out,
                sent: 0,
                inbuf: vec![],
                p,
            },
        );
    }

    /// SERVFAIL to the client.
    fn fail(&mut self, p: Pending) {
        self.stats.servfail += 1;
        // Rebuilt from the question we forwarded, with the client's id.
        let end = p.q.end.min(p.msg.len());
        let mut q = p.msg[..end].to_vec();
        q[0..2].copy_from_slice(&p.client_id.to_be_bytes());
        q[10..12].fill(0);
        if let Some(a) = wire::error_answer(&q, Some(end), wire::RCODE_SERVFAIL) {
            self.reply(p.client, a, true);
        }
    }

    /// An upstream answer for `p`: addresses into the sets first, then the answer out.
    /// Returns false when `msg` does not answer p's question (ignored).
    fn release(&mut self, p: &Pending, mut msg: Vec<u8>, now: Instant) -> bool {
        let Some(a) = wire::parse_answer(&msg, &p.q) else {
            return false;
        };
        if !a.addrs.is_empty() {
            let mut push = vec![];
            {
                let mut r = self.reporter.borrow_mut();
                for (addr, ttl) in &a.addrs {
                    r.learned(*addr, &p.q.name);
                    for g in &p.groups {
                        if self.tracker.learn(*addr, *g, *ttl, now) {
                            push.push((*addr, *g));
                        }
                    }
                }
            }
            if let Some(w) = &mut self.writer {
                w.add(&push);
            }
        }
        wire::cap_ttls(&mut msg, &a.ttl_offsets, CEILING.as_secs() as u32);
        msg[0..2].copy_from_slice(&p.client_id.to_be_bytes());
        if matches!(p.client, Client::Udp { .. }) && !p.edns && msg.len() > 512 {
            // A client without EDNS takes 512 bytes: tell it to retry over TCP.
            if let Some(mut t) = wire::error_answer(&msg, Some(p.q.end), a.rcode) {
                t[2] |= 0x02;
                msg = t;
            }
        }
        self.stats.answered += 1;
        self.reply(p.client, msg, true);
        true
    }

    fn reply(&mut self, client: Client, msg: Vec<u8>, done: bool) {
        match client {
            Client::Udp { sock, from } => {
                if let Some(s) = self.udp.get(sock) {
                    // A full buffer drops the answer; the client retries.
                    let _ = s.send_to(&msg, from);
                }
            }
            Client::Tcp { conn } => {
                if let Some(c) = self.clients.get_mut(&conn) {
                    if done {
                        c.inflight = c.inflight.saturating_sub(1);
                    }
                    if c.wbuf.len() + msg.len() + 2 > MAX_CLIENT_OUT {
                        // Not reading its answers: drop the connection.
                        self.clients.remove(&conn);
                        return;
                    }
                    c.wbuf.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                    c.wbuf.extend_from_slice(&msg);
                    flush(c);
                }
            }
        }
    }

    fn serve_udp(&mut self, now: Instant) {
        let mut buf = std::mem::take(&mut self.buf);
        for i in 0..self.udp.len() {
            for _ in 0..BURST {
                let (n, from) = match self.udp[i].recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => continue,
                };
                if n >= MAX_QUERY {
                    self.stats.malformed += 1;
                    continue;
                }
                let client = Client::Udp { sock: i, from };
                if let Some(a) = self.on_query(&buf[..n], client, now) {
                    self.reply(client, a, false);
                }
            }
        }
        self.buf = buf;
    }

    fn serve_upstream_udp(&mut self, now: Instant) {
        let mut buf = std::mem::take(&mut self.buf);
        for i in 0..self.up_udp.len() {
            for _ in 0..BURST {
                let Some(s) = &self.up_udp[i] else { break };
                let n = match s.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // ICMP errors (a refused port) surface here; the timeout handles them.
                    Err(_) => continue,
                };
                let Some(id) = wire::id(&buf[..n]) else {
                    continue;
                };
                let Some(p) = self.pending.remove(&id) else {
                    continue;
                };
                if !self.release(&p, buf[..n].to_vec(), now) {
                    self.pending.insert(id, p);
                }
            }
        }
        self.buf = buf;
    }

    fn accept_tcp(&mut self, now: Instant) {
        for l in &self.tcp {
            for _ in 0..BURST {
                match l.accept() {
                    Ok((s, _)) => {
                        if self.clients.len() >= MAX_TCP_CLIENTS || s.set_nonblocking(true).is_err()
                        {
                            continue; // dropped: closes at once
                        }
                        self.next_conn += 1;
                        self.clients.insert(
                            self.next_conn,
                            TcpClient {
                                s,
                                rbuf: vec![],
                                wbuf: vec![],
                                inflight: 0,
                                eof: false,
                                idle_until: now + TCP_IDLE,
                            },
                        );
                    }
                    Err(_) => break,
                }
            }
        }
    }

    fn serve_tcp_clients(&mut self, now: Instant) {
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        let mut tmp = [0u8; 4096];
        for id in ids {
            let mut msgs = vec![];
            let mut close = false;
            if let Some(c) = self.clients.get_mut(&id) {
                flush(c);
                while !c.eof {
                    match c.s.read(&mut tmp) {
                        Ok(0) => c.eof = true,
                        Ok(n) => {
                            c.rbuf.extend_from_slice(&tmp[..n]);
                            c.idle_until = now + TCP_IDLE;
                            if c.rbuf.len() > 2 * 65538 {
                                close = true;
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
                // Complete messages, in order.
                let mut off = 0;
                while c.rbuf.len() >= off + 2 {
                    let len = u16::from_be_bytes([c.rbuf[off], c.rbuf[off + 1]]) as usize;
                    if c.rbuf.len() < off + 2 + len {
                        break;
                    }
                    msgs.push(c.rbuf[off + 2..off + 2 + len].to_vec());
                    off += 2 + len;
                }
                c.rbuf.drain(..off);
                let idle = now >= c.idle_until && c.inflight == 0;
                let done = c.eof && c.inflight == 0 && c.wbuf.is_empty() && msgs.is_empty();
                close |= idle || done;
            }
            if close {
                self.clients.remove(&id);
                continue;
            }
            for m in msgs {
                let client = Client::Tcp { conn: id };
                let over = self
                    .clients
                    .get(&id)
                    .is_none_or(|c| c.inflight >= MAX_CLIENT_INFLIGHT);
                let answer = if over || m.len() >= MAX_QUERY {
                    // Too much at once from one connection: not forwarded.
                    wire::parse_query(&m)
                        .ok()
                        .and_then(|q| wire::error_answer(&m, Some(q.end), wire::RCODE_SERVFAIL))
                } else {
                    self.on_query(&m, client, now)
                };
                if let Some(a) = answer {
                    self.reply(client, a, false);
                }
            }
        }
    }

    fn serve_upstream_tcp(&mut self, now: Instant) {
        let ids: Vec<u64> = self.up_tcp.keys().copied().collect();
        let mut tmp = [0u8; 8192];
        for id in ids {
            let Some(u) = self.up_tcp.get_mut(&id) else {
                continue;
            };
            let mut failed = false;
            while u.sent < u.out.len() {
                match u.s.write(&u.out[u.sent..]) {
                    Ok(n) => u.sent += n,
                    Err(e)
                        if e.kind() == ErrorKind::WouldBlock
                            || e.kind() == ErrorKind::NotConnected =>
                    {
                        break
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if u.sent == u.out.len() {
                loop {
                    match u.s.read(&mut tmp) {
                        Ok(0) => {
                            failed = true;
                            break;
                        }
                        Ok(n) => {
                            u.inbuf.extend_from_slice(&tmp[..n]);
                            if u.inbuf.len() > 65537 {
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
            }
            let complete = u.inbuf.len() >= 2
                && u.inbuf.len() >= 2 + u16::from_be_bytes([u.inbuf[0], u.inbuf[1]]) as usize;
            if complete {
                let Some(u) = self.up_tcp.remove(&id) else {
                    continue;
                };
                let len = u16::from_be_bytes([u.inbuf[0], u.inbuf[1]]) as usize;
                let msg = u.inbuf[2..2 + len].to_vec();
                if !self.release(&u.p, msg, now) {
                    self.fail(u.p);
                }
            } else if failed || now >= u.p.deadline {
                if let Some(u) = self.up_tcp.remove(&id) {
                    self.fail(u.p);
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(mut p) = self.pending.remove(&id) else {
                continue;
            };
            if p.tries < TRIES {
                p.server += 1;
                self.send_udp(id, p, now);
            } else {
                self.fail(p);
            }
        }
    }
}

fn flush(c: &mut TcpClient) {
    while !c.wbuf.is_empty() {
        match c.s.write(&c.wbuf) {
            Ok(0) => break,
            Ok(n) => {
                c.wbuf.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

/// A TCP connection that completes in the background (std only has blocking connect).
fn connect_nonblocking(sa: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fam = if sa.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket call, owned at once.
    let fd = unsafe {
        libc::socket(
            fam,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let (storage, len) = sockaddr(sa);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd,
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from(owned))
}

fn sockaddr(sa: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid start.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match sa {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut st as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            (st, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut st as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            (st, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

impl Duty for Forwarder {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut v: Vec<BorrowedFd<'_>> = vec![];
        v.extend(self.udp.iter().map(|s| s.as_fd()));
        v.extend(self.tcp.iter().map(|s| s.as_fd()));
        v.extend(self.up_udp.iter().flatten().map(|s| s.as_fd()));
        v.extend(self.clients.values().map(|c| c.s.as_fd()));
        v.extend(self.up_tcp.values().map(|u| u.s.as_fd()));
        v
    }

    fn on_ready(&mut self, now: Instant) {
        self.serve_upstream_udp(now);
        self.serve_upstream_tcp(now);
        self.serve_udp(now);
        self.accept_tcp(now);
        self.serve_tcp_clients(now);
        self.expire(now);
        let due = self.tracker.due(now);
        if let Some(w) = &mut self.writer {
            w.add(&due);
        }
        if std::mem::take(&mut self.recorded) {
            self.reporter.borrow_mut().flush();
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let mut d = self.tracker.deadline();
        let mut consider = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        for p in self.pending.values() {
            consider(p.deadline);
        }
        for c in self.clients.values() {
            consider(c.idle_until);
            if !c.wbuf.is_empty() {
                consider(Instant::now() + TCP_TICK);
            }
        }
        for u in self.up_tcp.values() {
            consider(u.p.deadline);
            if u.sent < u.out.len() {
                consider(Instant::now() + TCP_TICK);
            }
        }
        d
    }

    fn finish(&mut self) {
        let s = &self.stats;
        log::debug!(
            "DNS filter: {} denied, {} forwarded, {} answered, {} servfail, {} malformed",
            s.denied,
            s.forwarded,
            s.answered,
            s.servfail,
            s.malformed
        );
    }
}
