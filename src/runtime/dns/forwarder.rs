//! The DNS forwarder PID 1 serves on loopback port 53 (the child's port-53 traffic is
//! redirected here by the firewall). Single-threaded and non-blocking: a `Duty` of the
//! supervisor loop, with its own epoll set (the supervisor polls one descriptor for all of
//! its sockets). Denied names are answered NXDOMAIN at once and never leave the container;
//! allowed names go upstream (the resolvers of /etc/resolv.conf, see `upstream` for what
//! an answer must match), and the addresses of the answer enter the firewall's dynamic
//! sets before the answer is released.

use super::sets::{SetWriter, Tracker, CEILING};
use super::upstream::{self, Check, Entropy, Sent};
use super::wire::{self, Bad, Query};
use crate::policy::names::{Group, Policy, Shared};
use crate::runtime::report::{Event, SharedReporter};
use crate::runtime::supervise::Duty;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

pub use crate::policy::ruleset::{
    DNS_LISTEN_V4 as LISTEN_V4, DNS_LISTEN_V6 as LISTEN_V6, DNS_PORT as PORT,
};

/// Queries waiting for an upstream answer over UDP (each holds its own socket; beyond:
/// SERVFAIL at once). Lowered when the descriptor limit is smaller.
const MAX_PENDING: usize = 1024;
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
/// Datagrams read per socket per event, so no socket starves the others.
const BURST: usize = 256;
/// Datagrams read from one attempt's socket per event (one is its answer; the rest is
/// noise that must not keep PID 1 busy).
const UPSTREAM_BURST: usize = 16;
/// Events taken from the epoll set per wake-up.
const EVENTS: usize = 256;
/// The EDNS buffer size we advertise upstream (the DNS flag day value).
const EDNS_SIZE: u16 = 1232;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Udp { sock: usize, from: SocketAddr },
    Tcp { conn: u64 },
}

/// What an epoll event is about: a kind in the top byte, an index or id below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    ListenUdp(usize),
    ListenTcp(usize),
    Client(u64),
    Upstream(u64),
}

impl Token {
    const SHIFT: u32 = 56;
    fn encode(self) -> u64 {
        let (kind, v) = match self {
            Token::ListenUdp(i) => (1, i as u64),
            Token::ListenTcp(i) => (2, i as u64),
            Token::Client(c) => (3, c),
            Token::Upstream(u) => (4, u),
        };
        (kind << Self::SHIFT) | (v & ((1 << Self::SHIFT) - 1))
    }
    fn decode(t: u64) -> Option<Token> {
        let v = t & ((1 << Self::SHIFT) - 1);
        Some(match t >> Self::SHIFT {
            1 => Token::ListenUdp(v as usize),
            2 => Token::ListenTcp(v as usize),
            3 => Token::Client(v),
            4 => Token::Upstream(v),
            _ => return None,
        })
    }
}

/// A client's question, kept until it is answered.
struct Ask {
    client: Client,
    client_id: u16,
    /// RD and CD as the client set them.
    client_flags: [u8; 2],
    /// The question section as the client spelled it (name, type, class): restored in the
    /// answer it receives.
    client_question: Vec<u8>,
    /// Lower-case name and type (what the policy and the answer parser read).
    q: Query,
    /// The client asked with EDNS (a UDP answer may exceed 512 bytes).
    edns: bool,
    groups: BTreeSet<Group>,
    tcp: bool,
    /// The server of the next attempt (an index into the servers, taken modulo).
    server: usize,
    tries: u8,
}

/// One attempt on the wire: its own socket, id and spelling.
struct Attempt {
    sent: Sent,
    link: Link,
    deadline: Instant,
}

enum Link {
    Udp(UdpSocket),
    Tcp {
        s: TcpStream,
        out: Vec<u8>,
        written: usize,
        inbuf: Vec<u8>,
    },
}

impl Link {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Link::Udp(s) => s.as_fd(),
            Link::Tcp { s, .. } => s.as_fd(),
        }
    }
}

struct Pending {
    ask: Ask,
    attempt: Attempt,
}

struct TcpClient {
    s: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    inflight: usize,
    eof: bool,
    idle_until: Instant,
    /// The interest registered in the epoll set.
    interest: EpollFlags,
}

struct Server {
    addr: SocketAddr,
    /// It answered a question in another letter case than asked: ask it without random
    /// case (and compare names without case).
    folds_case: bool,
}

pub struct Forwarder {
    poll: Epoll,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    servers: Vec<Server>,
    /// Shared with the control socket, which changes it in a running sandbox.
    policy: Shared,
    pending: HashMap<u64, Pending>,
    /// (deadline, pending id), earliest first.
    timers: BTreeSet<(Instant, u64)>,
    udp_pending: usize,
    tcp_pending: usize,
    max_pending: usize,
    clients: HashMap<u64, TcpClient>,
    next_id: u64,
    tracker: Tracker,
    writer: Option<SetWriter>,
    reporter: SharedReporter,
    rng: Entropy,
    /// Source ports of UDP attempts (`upstream::private_ports`).
    ports: Option<(u16, u16)>,
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
    /// Datagrams on an attempt's socket that were not its answer.
    pub rejected: u64,
    /// Attempts repeated without random case (the server folds case).
    pub case_fallbacks: u64,
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

/// Queries in flight that the descriptor limit allows (each holds a socket): the soft
/// limit is raised to the hard one first (no privilege needed).
fn pending_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 256;
    };
    let want = hard.min(65_536);
    let soft = if soft < want && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        want
    } else {
        soft
    };
    // Room for the TCP clients and connections, the listeners and PID 1's other duties.
    let spare = soft.saturating_sub(512) as usize;
    (spare / 2).clamp(16, MAX_PENDING)
}

/// The query that goes upstream: our id, RD/CD from the client, the question (as we spell
/// it) and an EDNS record; nothing else the child put in its message leaves the container.
fn upstream_query(id: u16, flags: [u8; 2], question: &[u8]) -> Vec<u8> {
    let mut up = Vec::with_capacity(12 + question.len() + 11);
    up.extend_from_slice(&id.to_be_bytes());
    up.extend_from_slice(&[flags[0] & 0x01, flags[1] & 0x10, 0, 1, 0, 0, 0, 0, 0, 1]);
    up.extend_from_slice(question);
    up.extend_from_slice(&[0, 0, 41]);
    up.extend_from_slice(&EDNS_SIZE.to_be_bytes());
    up.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    up
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
        let poll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| format!("DNS filter: cannot create an epoll set: {e}"))?;
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
        let register = |fd: BorrowedFd<'_>, t: Token| {
            poll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, t.encode()))
                .map_err(|e| format!("DNS filter: epoll: {e}"))
        };
        for (i, u) in udp.iter().enumerate() {
            register(u.as_fd(), Token::ListenUdp(i))?;
        }
        for (i, t) in tcp.iter().enumerate() {
            register(t.as_fd(), Token::ListenTcp(i))?;
        }
        // Our own addresses are never an upstream (that would loop).
        let servers: Vec<Server> = upstreams
            .iter()
            .filter(|ip| **ip != IpAddr::V4(LISTEN_V4) && **ip != IpAddr::V6(LISTEN_V6))
            .map(|ip| Server {
                addr: SocketAddr::new(*ip, PORT),
                folds_case: false,
            })
            .collect();
        if servers.is_empty() {
            log::warn!(
                "DNS filter: /etc/resolv.conf names no usable resolver; allowed names will \
                 fail (SERVFAIL)"
            );
        }
        Ok(Forwarder {
            poll,
            udp,
            tcp,
            servers,
            policy: std::rc::Rc::new(std::cell::RefCell::new(policy)),
            pending: HashMap::new(),
            timers: BTreeSet::new(),
            udp_pending: 0,
            tcp_pending: 0,
            max_pending: pending_limit(),
            clients: HashMap::new(),
            next_id: 0,
            tracker: Tracker::default(),
            writer,
            reporter,
            rng: Entropy::default(),
            ports: upstream::private_ports(upstream::ephemeral_range()),
            recorded: false,
            buf: vec![0u8; 65536],
            stats: Stats::default(),
        })
    }

    /// The policy this forwarder answers by; replacing what it holds changes the names
    /// allowed from the next query on.
    pub fn policy(&self) -> Shared {
        self.policy.clone()
    }

    /// Addresses resolved at start: kept (and refreshed) like the answer of a query.
    pub fn seed_learned(&mut self, name: &str, addrs: &[IpAddr], now: Instant) {
        let groups = self.policy.borrow().groups(name);
        for a in addrs {
            for g in &groups {
                // Already in the sets (the firewall batch put them there).
                self.tracker.learn(*a, *g, 0, now);
            }
        }
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
            crate::runtime::report::print(&line);
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
            self.policy.borrow().groups(&q.name)
        } else {
            BTreeSet::new()
        };
        if groups.is_empty() {
            self.deny_line(&q.name);
            return wire::error_answer(msg, Some(q.end), wire::RCODE_NXDOMAIN);
        }
        let tcp = matches!(client, Client::Tcp { .. });
        let full = if tcp {
            self.tcp_pending >= MAX_UPSTREAM_TCP
        } else {
            self.udp_pending >= self.max_pending
        };
        if self.servers.is_empty() || full {
            self.stats.servfail += 1;
            return wire::error_answer(msg, Some(q.end), wire::RCODE_SERVFAIL);
        }
        if let Client::Tcp { conn } = client {
            if let Some(c) = self.clients.get_mut(&conn) {
                c.inflight += 1;
            }
        }
        let ask = Ask {
            client,
            client_id: q.id,
            client_flags: [msg[2], msg[3]],
            client_question: msg[wire::HEADER..q.end].to_vec(),
            edns: msg.get(10..12) != Some(&[0, 0]),
            q,
            groups,
            tcp,
            server: 0,
            tries: 0,
        };
        self.stats.forwarded += 1;
        self.launch(ask, now);
        None
    }

    /// Sends the next attempt of `ask` (a new socket, id and spelling), to the next
    /// server that takes it; SERVFAIL when none does.
    fn launch(&mut self, mut ask: Ask, now: Instant) {
        let n = self.servers.len();
        for _ in 0..n.max(1) {
            let Some(server) = self.servers.get(ask.server % n.max(1)) else {
                break;
            };
            let (addr, exact_case) = (server.addr, !server.folds_case);
            let id = self.rng.u16();
            let mut question = ask.client_question.clone();
            if exact_case {
                upstream::randomize_case(&mut question, &mut self.rng);
            }
            let msg = upstream_query(id, ask.client_flags, &question);
            let link = if ask.tcp {
                upstream::tcp_connect(addr).map(|s| {
                    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&msg);
                    Link::Tcp {
                        s,
                        out,
                        written: 0,
                        inbuf: vec![],
                    }
                })
            } else {
                upstream::udp_socket(addr, self.ports, &mut self.rng)
                    .and_then(|s| s.send(&msg).map(|_| Link::Udp(s)))
            };
            let link = match link {
                Ok(l) => l,
                Err(e) => {
                    log::debug!("DNS filter: to {addr}: {e}");
                    ask.server += 1;
                    continue;
                }
            };
            let interest = match link {
                Link::Tcp { .. } => EpollFlags::EPOLLOUT,
                Link::Udp(_) => EpollFlags::EPOLLIN,
            };
            self.next_id += 1;
            let pid = self.next_id;
            if let Err(e) = self.poll.add(
                link.fd(),
                EpollEvent::new(interest, Token::Upstream(pid).encode()),
            ) {
                log::debug!("DNS filter: epoll: {e}");
                break;
            }
            ask.tries += 1;
            let deadline = now + if ask.tcp { TCP_TIMEOUT } else { TRY_TIMEOUT };
            if ask.tcp {
                self.tcp_pending += 1;
            } else {
                self.udp_pending += 1;
            }
            self.timers.insert((deadline, pid));
            let sent = Sent {
                server: addr,
                id,
                question,
                exact_case,
            };
            let attempt = Attempt {
                sent,
                link,
                deadline,
            };
            self.pending.insert(pid, Pending { ask, attempt });
            return;
        }
        self.fail(ask);
    }

    /// Ends an attempt: out of the maps and the counts. Its socket closes when the caller
    /// drops it, which also takes it out of the epoll set (nothing else holds the socket:
    /// no EPOLL_CTL_DEL needed, one system call less per query).
    fn take(&mut self, pid: u64) -> Option<Pending> {
        let p = self.pending.remove(&pid)?;
        self.timers.remove(&(p.attempt.deadline, pid));
        if p.ask.tcp {
            self.tcp_pending -= 1;
        } else {
            self.udp_pending -= 1;
        }
        Some(p)
    }

    /// The attempt failed (timeout, refused, closed): the next one, or SERVFAIL.
    fn retry(&mut self, mut ask: Ask, now: Instant) {
        if ask.tries < TRIES {
            ask.server += 1;
            self.launch(ask, now);
        } else {
            self.fail(ask);
        }
    }

    /// SERVFAIL to the client.
    fn fail(&mut self, ask: Ask) {
        self.stats.servfail += 1;
        let mut q = ask.client_id.to_be_bytes().to_vec();
        q.extend_from_slice(&ask.client_flags);
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(&ask.client_question);
        let end = q.len();
        if let Some(a) = wire::error_answer(&q, Some(end), wire::RCODE_SERVFAIL) {
            self.reply(ask.client, a, true);
        }
    }

    /// A datagram or message that arrived for attempt `pid`: released when it is the
    /// answer, else the attempt goes on (or is repeated without random case).
    fn on_answer(&mut self, pid: u64, from: SocketAddr, msg: &[u8], now: Instant) -> bool {
        let Some(p) = self.pending.get(&pid) else {
            return true;
        };
        match upstream::check(&p.attempt.sent, from, msg) {
            Check::Accept => {
                let q = Query {
                    id: p.attempt.sent.id,
                    ..p.ask.q.clone()
                };
                let Some(a) = wire::parse_answer(msg, &q) else {
                    self.stats.rejected += 1;
                    return false;
                };
                if let Some(p) = self.take(pid) {
                    self.release(&p.ask, msg.to_vec(), &a, now);
                }
                true
            }
            Check::CaseOnly => {
                let i = p.ask.server % self.servers.len().max(1);
                if let Some(s) = self.servers.get_mut(i) {
                    if !s.folds_case {
                        log::info!(
                            "DNS filter: {} does not echo the letter case of questions; \
                             asking it without random case",
                            s.addr
                        );
                    }
                    s.folds_case = true;
                }
                self.stats.case_fallbacks += 1;
                if let Some(mut p) = self.take(pid) {
                    // Same server again, plainly: not counted as a try.
                    p.ask.tries = p.ask.tries.saturating_sub(1);
                    self.launch(p.ask, now);
                }
                true
            }
            Check::Reject(why) => {
                self.stats.rejected += 1;
                log::trace!("DNS filter: not an answer from {from}: {why}");
                false
            }
        }
    }

    /// An upstream answer: addresses into the sets first, then the answer out, with the
    /// client's id and spelling.
    fn release(&mut self, ask: &Ask, mut msg: Vec<u8>, a: &wire::Answer, now: Instant) {
        if !a.addrs.is_empty() {
            let mut push = vec![];
            {
                let mut r = self.reporter.borrow_mut();
                for (addr, ttl) in &a.addrs {
                    r.learned(*addr, &ask.q.name);
                    for g in &ask.groups {
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
        msg[0..2].copy_from_slice(&ask.client_id.to_be_bytes());
        // The checks made sure the question there is the client's, up to letter case.
        let qlen = ask.client_question.len();
        if let Some(qs) = msg.get_mut(wire::HEADER..wire::HEADER + qlen) {
            qs.copy_from_slice(&ask.client_question);
        }
        if !ask.tcp && !ask.edns && msg.len() > 512 {
            // A client without EDNS takes 512 bytes: tell it to retry over TCP.
            let end = wire::HEADER + qlen;
            if let Some(mut t) = wire::error_answer(&msg, Some(end), a.rcode) {
                t[2] |= 0x02;
                msg = t;
            }
        }
        self.stats.answered += 1;
        self.reply(ask.client, msg, true);
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
                let Some(c) = self.clients.get_mut(&conn) else {
                    return;
                };
                if done {
                    c.inflight = c.inflight.saturating_sub(1);
                }
                if c.wbuf.len() + msg.len() + 2 > MAX_CLIENT_OUT {
                    // Not reading its answers: drop the connection.
                    self.close_client(conn);
                    return;
                }
                c.wbuf.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                c.wbuf.extend_from_slice(&msg);
                flush(c);
                self.update_client(conn);
            }
        }
    }

    fn serve_udp(&mut self, i: usize, now: Instant) {
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..BURST {
            let Some(sock) = self.udp.get(i) else { break };
            let (n, from) = match sock.recv_from(&mut buf) {
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
        self.buf = buf;
    }

    fn accept_tcp(&mut self, i: usize, now: Instant) {
        for _ in 0..BURST {
            let Some(l) = self.tcp.get(i) else { break };
            let s = match l.accept() {
                Ok((s, _)) => s,
                Err(_) => break,
            };
            if self.clients.len() >= MAX_TCP_CLIENTS || s.set_nonblocking(true).is_err() {
                continue; // dropped: closes at once
            }
            self.next_id += 1;
            let conn = self.next_id;
            let interest = EpollFlags::EPOLLIN;
            let ev = EpollEvent::new(interest, Token::Client(conn).encode());
            if self.poll.add(s.as_fd(), ev).is_err() {
                continue;
            }
            self.clients.insert(
                conn,
                TcpClient {
                    s,
                    rbuf: vec![],
                    wbuf: vec![],
                    inflight: 0,
                    eof: false,
                    idle_until: now + TCP_IDLE,
                    interest,
                },
            );
        }
    }

    fn close_client(&mut self, conn: u64) {
        if let Some(c) = self.clients.remove(&conn) {
            let _ = self.poll.delete(c.s.as_fd());
        }
    }

    /// Registers what the client must still be watched for: input until it closed its
    /// side (a half-closed client is never polled for reading again: its end-of-file
    /// would wake PID 1 at once, over and over), output while answers wait. A client with
    /// nothing left to read, send or wait for is closed.
    fn update_client(&mut self, conn: u64) {
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        if c.eof && c.inflight == 0 && c.wbuf.is_empty() {
            self.close_client(conn);
            return;
        }
        let mut want = EpollFlags::empty();
        if !c.eof {
            want |= EpollFlags::EPOLLIN;
        }
        if !c.wbuf.is_empty() {
            want |= EpollFlags::EPOLLOUT;
        }
        if want != c.interest {
            let mut ev = EpollEvent::new(want, Token::Client(conn).encode());
            if self.poll.modify(c.s.as_fd(), &mut ev).is_ok() {
                c.interest = want;
            }
        }
    }

    fn serve_client(&mut self, conn: u64, flags: EpollFlags, now: Instant) {
        let mut msgs = vec![];
        let mut close = false;
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        flush(c);
        let mut tmp = [0u8; 4096];
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
        // Reset or error: nothing more can be delivered.
        if close || flags.contains(EpollFlags::EPOLLERR) || flags.contains(EpollFlags::EPOLLHUP) {
            self.close_client(conn);
            return;
        }
        for m in msgs {
            let client = Client::Tcp { conn };
            let over = self
                .clients
                .get(&conn)
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
        self.update_client(conn);
    }

    /// Readiness of an attempt's socket.
    fn serve_upstream(&mut self, pid: u64, flags: EpollFlags, now: Instant) {
        let Some(p) = self.pending.get_mut(&pid) else {
            return;
        };
        let server = p.attempt.sent.server;
        match &mut p.attempt.link {
            Link::Udp(s) => {
                let mut got = vec![];
                let mut error = None;
                for _ in 0..UPSTREAM_BURST {
                    match s.recv_from(&mut self.buf) {
                        Ok((n, from)) => got.push((self.buf[..n].to_vec(), from)),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                for (msg, from) in got {
                    if self.on_answer(pid, from, &msg, now) {
                        return;
                    }
                }
                if let Some(e) = error {
                    // An ICMP error (the port refused, no route): the next attempt now.
                    log::debug!("DNS filter: {server}: {e}");
                    if let Some(p) = self.take(pid) {
                        self.retry(p.ask, now);
                    }
                }
            }
            Link::Tcp {
                s,
                out,
                written,
                inbuf,
            } => {
                let mut failed = flags.contains(EpollFlags::EPOLLERR);
                while !failed && *written < out.len() {
                    match s.write(&out[*written..]) {
                        Ok(n) => *written += n,
                        Err(e)
                            if e.kind() == ErrorKind::WouldBlock
                                || e.kind() == ErrorKind::NotConnected =>
                        {
                            break
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => failed = true,
                    }
                }
                let mut tmp = [0u8; 8192];
                let mut eof = false;
                if !failed && *written == out.len() {
                    loop {
                        match s.read(&mut tmp) {
                            Ok(0) => {
                                eof = true;
                                break;
                            }
                            Ok(n) => {
                                inbuf.extend_from_slice(&tmp[..n]);
                                if inbuf.len() > 65537 {
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
                let framed = (inbuf.len() >= 2)
                    .then(|| u16::from_be_bytes([inbuf[0], inbuf[1]]) as usize)
                    .filter(|len| inbuf.len() >= 2 + len);
                if let Some(len) = framed {
                    let msg = inbuf[2..2 + len].to_vec();
                    // A connection carries one answer: anything else ends the attempt.
                    if !self.on_answer(pid, server, &msg, now) {
                        if let Some(p) = self.take(pid) {
                            self.retry(p.ask, now);
                        }
                    }
                    return;
                }
                if failed || eof {
                    if let Some(p) = self.take(pid) {
                        self.retry(p.ask, now);
                    }
                    return;
                }
                if *written == out.len() {
                    // Sent: wait for the answer only.
                    let mut ev =
                        EpollEvent::new(EpollFlags::EPOLLIN, Token::Upstream(pid).encode());
                    let _ = self.poll.modify(s.as_fd(), &mut ev);
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, pid)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if let Some(p) = self.take(pid) {
                self.retry(p.ask, now);
            }
        }
        let idle: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| now >= c.idle_until && c.inflight == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.close_client(id);
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

impl Duty for Forwarder {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.poll.0.as_fd()]
    }

    fn on_ready(&mut self, now: Instant) {
        let mut events = [EpollEvent::empty(); EVENTS];
        let n = self.poll.wait(&mut events, 0u8).unwrap_or(0);
        // Upstream answers first (they release waiting clients), then new queries.
        let mut order: Vec<(Token, EpollFlags)> = events[..n]
            .iter()
            .filter_map(|e| Some((Token::decode(e.data())?, e.events())))
            .collect();
        order.sort_by_key(|(t, _)| !matches!(t, Token::Upstream(_)));
        for (token, flags) in order {
            match token {
                Token::Upstream(pid) => self.serve_upstream(pid, flags, now),
                Token::ListenUdp(i) => self.serve_udp(i, now),
                Token::ListenTcp(i) => self.accept_tcp(i, now),
                Token::Client(c) => self.serve_client(c, flags, now),
            }
        }
        self.expire(now);
        let due = self.tracker.due(now);
        if let Some(w) = &mut self.writer {
            w.add(&due);
        }
        if std::mem::take(&mut self.recorded) {
            self.reporter.borrow_mut().flush();
        }
        // Denied names are shown after a short hold (a flood under one domain is one line).
        let lines = self.reporter.borrow_mut().due_lines(now, false);
        for l in lines {
            crate::runtime::report::print(&l);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let mut d = self.tracker.deadline();
        let mut consider = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        if let Some(&(t, _)) = self.timers.first() {
            consider(t);
        }
        for c in self.clients.values().filter(|c| c.inflight == 0) {
            consider(c.idle_until);
        }
        d
    }

    fn finish(&mut self) {
        let lines = self.reporter.borrow_mut().due_lines(Instant::now(), true);
        for l in lines {
            crate::runtime::report::print(&l);
        }
        let s = &self.stats;
        log::debug!(
            "DNS filter: {} denied, {} forwarded, {} answered, {} servfail, {} malformed, \
             {} datagrams not taken as answers, {} repeated without random case",
            s.denied,
            s.forwarded,
            s.answered,
            s.servfail,
            s.malformed,
            s.rejected,
            s.case_fallbacks
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::ListenUdp(0),
            Token::ListenTcp(1),
            Token::Client(7),
            Token::Upstream((1 << 56) - 1),
        ] {
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }

    #[test]
    fn the_upstream_query_carries_only_the_question() {
        let q = upstream_query(0xabcd, [0xff, 0xff], b"\x01a\x04test\x00\x00\x01\x00\x01");
        assert_eq!(&q[..2], &[0xab, 0xcd]);
        // RD and CD only, one question, one additional (OPT), nothing else
        assert_eq!(&q[2..12], &[0x01, 0x10, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&q[12..24], b"\x01a\x04test\x00\x00\x01\x00\x01");
        assert_eq!(&q[24..27], &[0, 0, 41]);
        assert_eq!(q.len(), 24 + 11);
    }
}
