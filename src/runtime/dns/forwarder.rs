//! The DNS forwarder PID 1 serves on loopback port 53 (the child's port-53 traffic is
//! redirected here by the firewall). Single-threaded and non-blocking: a `Duty` of the
//! supervisor loop, with its own epoll set (`events`). This module decides: denied names
//! are answered NXDOMAIN at once and never leave the container; allowed names go upstream
//! (the resolvers of /etc/resolv.conf; `upstream` says what an answer must match, `retry`
//! when an attempt has failed), and the addresses of the answer enter the firewall's
//! dynamic sets before the answer is released to the client (`server`).

use super::events::Token;
use super::retry::{Book, Tries};
use super::server::{Client, Clients, Listeners};
use super::sets::{SetWriter, Tracker, CEILING};
use super::upstream::{self, Check, Entropy, Link, Progress, Sent};
use super::wire::{self, Bad, Query};
use crate::policy::names::{Group, Policy, Shared};
use crate::runtime::report::{Event, SharedReporter};
use crate::runtime::supervise::Duty;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

pub use crate::policy::ruleset::{
    DNS_LISTEN_V4 as LISTEN_V4, DNS_LISTEN_V6 as LISTEN_V6, DNS_PORT as PORT,
};

/// Queries waiting for an upstream answer over UDP (each holds its own socket; beyond:
/// SERVFAIL at once). Lowered when the descriptor limit is smaller.
const MAX_PENDING: usize = 1024;
const MAX_UPSTREAM_TCP: usize = 64;
/// A client message this size or larger is not a query we answer.
const MAX_QUERY: usize = 4096;
/// Datagrams read per listening socket per event, so no socket starves the others.
const BURST: usize = 256;
/// Events taken from the epoll set per wake-up.
const EVENTS: usize = 256;

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
    tries: Tries,
}

/// A question and its attempt on the wire: its own socket, id and spelling.
struct Pending {
    ask: Ask,
    sent: Sent,
    link: Link,
}

struct Server {
    addr: SocketAddr,
    /// It answered a question in another letter case than asked: ask it without random
    /// case (and compare names without case).
    folds_case: bool,
}

pub struct Forwarder {
    poll: Epoll,
    listeners: Listeners,
    clients: Clients,
    servers: Vec<Server>,
    /// Shared with the control socket, which changes it in a running sandbox.
    policy: Shared,
    pending: Book<Pending>,
    max_pending: usize,
    /// Ids of attempts and client connections (never reused).
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

impl Forwarder {
    /// Binds 127.0.0.1:53 (required) and [::1]:53 (when the host has IPv6), UDP and TCP.
    /// Must run while PID 1 may still bind privileged ports.
    pub fn bind(
        policy: Policy,
        upstreams: &[IpAddr],
        writer: Option<SetWriter>,
        reporter: SharedReporter,
    ) -> Result<Forwarder, String> {
        let listen = [
            (SocketAddr::new(IpAddr::V4(LISTEN_V4), PORT), true),
            (SocketAddr::new(IpAddr::V6(LISTEN_V6), PORT), false),
        ];
        // Our own addresses are never an upstream (that would loop).
        let servers: Vec<SocketAddr> = upstreams
            .iter()
            .filter(|ip| **ip != IpAddr::V4(LISTEN_V4) && **ip != IpAddr::V6(LISTEN_V6))
            .map(|ip| SocketAddr::new(*ip, PORT))
            .collect();
        Forwarder::listen(&listen, policy, &servers, writer, reporter)
    }

    /// A forwarder on the given addresses (required ones must bind), asking `servers`.
    fn listen(
        listen: &[(SocketAddr, bool)],
        policy: Policy,
        servers: &[SocketAddr],
        writer: Option<SetWriter>,
        reporter: SharedReporter,
    ) -> Result<Forwarder, String> {
        let poll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| format!("DNS filter: cannot create an epoll set: {e}"))?;
        let listeners = Listeners::bind(listen)?;
        listeners.register(&poll)?;
        if servers.is_empty() {
            log::warn!(
                "DNS filter: /etc/resolv.conf names no usable resolver; allowed names will \
                 fail (SERVFAIL)"
            );
        }
        Ok(Forwarder {
            poll,
            listeners,
            clients: Clients::default(),
            servers: servers
                .iter()
                .map(|addr| Server {
                    addr: *addr,
                    folds_case: false,
                })
                .collect(),
            policy: std::rc::Rc::new(std::cell::RefCell::new(policy)),
            pending: Book::default(),
            max_pending: pending_limit(),
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
                self.tracker.learn(*a, *g, name, 0, now);
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
            self.pending.in_flight(true) >= MAX_UPSTREAM_TCP
        } else {
            self.pending.in_flight(false) >= self.max_pending
        };
        if self.servers.is_empty() || full {
            self.stats.servfail += 1;
            return wire::error_answer(msg, Some(q.end), wire::RCODE_SERVFAIL);
        }
        if let Client::Tcp { conn } = client {
            self.clients.forwarded(conn);
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
            tries: Tries::default(),
        };
        self.stats.forwarded += 1;
        self.launch(ask, now);
        None
    }

    /// Sends the next attempt of `ask` (a new socket, id and spelling), to the next
    /// server that takes it; SERVFAIL when none does.
    fn launch(&mut self, mut ask: Ask, now: Instant) {
        let n = self.servers.len().max(1);
        for _ in 0..n {
            let Some(server) = self.servers.get(ask.tries.server % n) else {
                break;
            };
            let (addr, exact_case) = (server.addr, !server.folds_case);
            let id = self.rng.u16();
            let mut question = ask.client_question.clone();
            if exact_case {
                upstream::randomize_case(&mut question, &mut self.rng);
            }
            let msg = upstream::query(id, ask.client_flags, &question);
            let link = match Link::open(addr, ask.tcp, &msg, self.ports, &mut self.rng) {
                Ok(l) => l,
                Err(e) => {
                    log::debug!("DNS filter: to {addr}: {e}");
                    ask.tries.skip_server();
                    continue;
                }
            };
            let interest = if link.writes_first() {
                EpollFlags::EPOLLOUT
            } else {
                EpollFlags::EPOLLIN
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
            ask.tries.made();
            let sent = Sent {
                server: addr,
                id,
                question,
                exact_case,
            };
            let tcp = ask.tcp;
            self.pending
                .insert(pid, tcp, now, Pending { ask, sent, link });
            return;
        }
        self.fail(ask);
    }

    /// Ends an attempt. Its socket closes when the caller drops it, which also takes it
    /// out of the epoll set (nothing else holds the socket: no EPOLL_CTL_DEL needed, one
    /// system call less per query).
    fn take(&mut self, pid: u64) -> Option<Pending> {
        self.pending.take(pid)
    }

    /// The attempt failed (timeout, refused, closed): the next one, or SERVFAIL.
    fn retry(&mut self, mut ask: Ask, now: Instant) {
        if ask.tries.failed() {
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
        let Some(p) = self.pending.get(pid) else {
            return true;
        };
        match upstream::check(&p.sent, from, msg) {
            Check::Accept => {
                let q = Query {
                    id: p.sent.id,
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
                let i = p.ask.tries.server % self.servers.len().max(1);
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
                    p.ask.tries.again();
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
                        if self.tracker.learn(*addr, *g, &ask.q.name, *ttl, now) {
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
                if let Some(s) = self.listeners.udp.get(sock) {
                    // A full buffer drops the answer; the client retries.
                    let _ = s.send_to(&msg, from);
                }
            }
            Client::Tcp { conn } => self.clients.answer(conn, &msg, done, &self.poll),
        }
    }

    fn serve_udp(&mut self, i: usize, now: Instant) {
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..BURST {
            let Some(sock) = self.listeners.udp.get(i) else {
                break;
            };
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
        if let Some(l) = self.listeners.tcp.get(i) {
            self.clients.accept(l, &self.poll, &mut self.next_id, now);
        }
    }

    fn serve_client(&mut self, conn: u64, flags: EpollFlags, now: Instant) {
        for m in self.clients.serve(conn, flags, &self.poll, now) {
            let client = Client::Tcp { conn };
            let answer = if self.clients.busy(conn) || m.len() >= MAX_QUERY {
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
        self.clients.update(conn, &self.poll);
    }

    /// Readiness of an attempt's socket.
    fn serve_upstream(&mut self, pid: u64, flags: EpollFlags, now: Instant) {
        let Some(p) = self.pending.get_mut(pid) else {
            return;
        };
        let server = p.sent.server;
        match &mut p.link {
            Link::Udp(s) => {
                let (got, error) = upstream::receive(s, &mut self.buf);
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
            Link::Tcp(t) => match t.progress(flags.contains(EpollFlags::EPOLLERR)) {
                Progress::Sending | Progress::Waiting => {}
                Progress::Sent => {
                    // Sent: wait for the answer only.
                    let mut ev =
                        EpollEvent::new(EpollFlags::EPOLLIN, Token::Upstream(pid).encode());
                    let _ = self.poll.modify(p.link.fd(), &mut ev);
                }
                Progress::Answer(msg) => {
                    // A connection carries one answer: anything else ends the attempt.
                    if !self.on_answer(pid, server, &msg, now) {
                        if let Some(p) = self.take(pid) {
                            self.retry(p.ask, now);
                        }
                    }
                }
                Progress::Failed => {
                    if let Some(p) = self.take(pid) {
                        self.retry(p.ask, now);
                    }
                }
            },
        }
    }

    fn expire(&mut self, now: Instant) {
        for p in self.pending.expired(now) {
            self.retry(p.ask, now);
        }
        self.clients.expire(now, &self.poll);
    }
}

#[cfg(test)]
impl Forwarder {
    fn clients_waiting_to_write(&self) -> bool {
        self.clients.waiting_to_write()
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
        // A name denied since (`sandbox-init deny`) no longer keeps its addresses alive.
        let due = {
            let policy = self.policy.borrow();
            self.tracker
                .due(now, |name, group| policy.groups(name).contains(&group))
        };
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
        [
            self.tracker.deadline(),
            self.pending.deadline(),
            self.clients.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
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

/// The forwarder driven with a clock of the test's own (every `on_ready` gets its `now`),
/// against a resolver and clients on loopback sockets: timelines of seconds run at once.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Entry;
    use crate::runtime::dns::retry::TRY_TIMEOUT;
    use crate::runtime::report::Reporter;
    use std::io::{Read, Write};
    use std::net::{TcpStream, UdpSocket};
    use std::time::Duration;

    const LIVENESS: Duration = Duration::from_secs(2);

    struct World {
        f: Forwarder,
        upstream: UdpSocket,
        client: UdpSocket,
        t0: Instant,
    }

    fn loopback_udp() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(LIVENESS)).unwrap();
        s
    }

    fn world() -> World {
        let upstream = loopback_udp();
        let entries: Vec<Entry> = vec!["*.allowed.test".parse().unwrap()];
        let f = Forwarder::listen(
            &[("127.0.0.1:0".parse().unwrap(), true)],
            Policy::new(&entries),
            &[upstream.local_addr().unwrap()],
            None,
            Reporter::shared(),
        )
        .unwrap();
        let client = loopback_udp();
        client
            .connect(f.listeners.udp[0].local_addr().unwrap())
            .unwrap();
        World {
            f,
            upstream,
            client,
            t0: Instant::now(),
        }
    }

    impl World {
        fn at(&mut self, ms: u64) {
            self.f.on_ready(self.t0 + Duration::from_millis(ms));
        }

        /// The next query that reached the resolver, and where from.
        fn upstream_query(&self) -> (Vec<u8>, SocketAddr) {
            let mut buf = [0u8; 4096];
            let (n, from) = self.upstream.recv_from(&mut buf).unwrap();
            (buf[..n].to_vec(), from)
        }

        fn nothing_upstream(&self) -> bool {
            self.upstream.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 4096];
            let r = self.upstream.recv_from(&mut buf);
            self.upstream.set_nonblocking(false).unwrap();
            matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
        }

        fn client_answer(&self) -> Option<Vec<u8>> {
            self.client.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 4096];
            let r = self.client.recv(&mut buf);
            self.client.set_nonblocking(false).unwrap();
            r.ok().map(|n| buf[..n].to_vec())
        }
    }

    /// The resolver's answer to `query` (as it reached the resolver): its id and question,
    /// one A record.
    fn answer_to(query: &[u8], addr: [u8; 4]) -> Vec<u8> {
        // the question ends before the OPT record (11 bytes) we add
        let question = &query[wire::HEADER..query.len() - 11];
        let mut a = query[..2].to_vec();
        a.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
        a.extend_from_slice(question);
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        a.extend_from_slice(&addr);
        a
    }

    fn rcode(msg: &[u8]) -> u8 {
        msg[3] & 0x0f
    }

    fn ask(w: &World, id: u16, name: &str) {
        w.client.send(&wire::build_query(id, name, 1)).unwrap();
    }

    fn assert_released(msg: &[u8], id: u16, name: &str, addr: [u8; 4]) {
        assert_eq!(&msg[..2], &id.to_be_bytes(), "the client's id");
        assert_eq!(rcode(msg), 0);
        let asked = wire::build_query(id, name, 1);
        assert_eq!(
            &msg[wire::HEADER..asked.len()],
            &asked[wire::HEADER..],
            "the client's spelling"
        );
        assert_eq!(&msg[msg.len() - 4..], &addr);
    }

    #[test]
    fn a_lost_first_attempt_is_repeated_after_the_timeout_and_its_answer_released() {
        let mut w = world();
        ask(&w, 0x4242, "www.Allowed.test");
        w.at(0);
        let (first, from1) = w.upstream_query();
        if let Some((lo, hi)) = w.f.ports {
            assert!((lo..=hi).contains(&from1.port()), "{from1}");
        }
        // lost: nothing more goes out before the attempt's deadline
        assert_eq!(w.f.deadline(), Some(w.t0 + TRY_TIMEOUT));
        w.at(1499);
        assert!(w.nothing_upstream());
        assert!(w.client_answer().is_none());
        w.at(1500);
        let (second, from2) = w.upstream_query();
        let q = |m: &[u8]| m[wire::HEADER..m.len() - 11].to_vec();
        assert!(
            q(&second).eq_ignore_ascii_case(&q(&first)),
            "the same question"
        );
        w.upstream
            .send_to(&answer_to(&second, [10, 0, 0, 7]), from2)
            .unwrap();
        w.at(1510);
        let got = w.client_answer().expect("the answer of the second attempt");
        assert_released(&got, 0x4242, "www.Allowed.test", [10, 0, 0, 7]);
        assert_eq!((w.f.stats.answered, w.f.stats.servfail), (1, 0));
        assert_eq!(w.f.pending.in_flight(false), 0);
    }

    #[test]
    fn the_listening_udp_socket_gets_its_large_buffer_while_privileged() {
        let w = world();
        let got = socket2::SockRef::from(&w.f.listeners.udp[0])
            .recv_buffer_size()
            .unwrap();
        if nix::unistd::geteuid().is_root() {
            assert!(got >= 4 << 20, "{got}");
        } else {
            assert!(got > 0);
        }
    }

    #[test]
    fn both_attempts_lost_is_servfail_with_the_clients_id_and_question() {
        let mut w = world();
        ask(&w, 0x0707, "a.allowed.test");
        w.at(0);
        w.upstream_query();
        w.at(1500);
        w.upstream_query();
        w.at(2999);
        assert!(
            w.client_answer().is_none(),
            "the second attempt is still waiting"
        );
        w.at(3000);
        let got = w.client_answer().expect("SERVFAIL");
        assert_eq!(&got[..2], &[0x07, 0x07]);
        assert_eq!(rcode(&got), wire::RCODE_SERVFAIL);
        let asked = wire::build_query(0x0707, "a.allowed.test", 1);
        assert_eq!(&got[wire::HEADER..asked.len()], &asked[wire::HEADER..]);
        assert!(w.nothing_upstream(), "no third attempt");
        assert_eq!(w.f.stats.servfail, 1);
        assert_eq!(w.f.deadline(), None, "nothing left to wait for");
    }

    #[test]
    fn a_late_answer_to_the_first_attempt_is_not_taken_after_the_retry() {
        let mut w = world();
        ask(&w, 0x1111, "late.allowed.test");
        w.at(0);
        let (first, from1) = w.upstream_query();
        w.at(1500);
        let (second, from2) = w.upstream_query();
        // the first attempt's answer, at last: to its own (closed) port and to the live
        // attempt's port; carrying another address than the real answer
        let late = answer_to(&first, [10, 66, 6, 6]);
        w.upstream.send_to(&late, from1).unwrap();
        if first[..2] != second[..2] {
            w.upstream.send_to(&late, from2).unwrap();
        }
        w.at(1600);
        assert!(
            w.client_answer().is_none(),
            "the late answer is not released"
        );
        w.upstream
            .send_to(&answer_to(&second, [10, 0, 0, 8]), from2)
            .unwrap();
        w.at(1700);
        let got = w.client_answer().expect("the second attempt's answer");
        assert_released(&got, 0x1111, "late.allowed.test", [10, 0, 0, 8]);
        assert!(w.client_answer().is_none(), "one answer");
    }

    #[test]
    fn answers_with_another_id_question_or_sender_are_rejected_and_the_attempt_goes_on() {
        let mut w = world();
        ask(&w, 0x2222, "www.allowed.test");
        w.at(0);
        let (query, from) = w.upstream_query();
        let real = answer_to(&query, [10, 0, 0, 9]);
        let mut wrong_id = real.clone();
        wrong_id[1] ^= 1;
        let other_question = answer_to(
            &upstream::query(
                u16::from_be_bytes([query[0], query[1]]),
                [1, 0],
                &wire::build_query(0, "xww.allowed.test", 1)[wire::HEADER..],
            ),
            [10, 66, 6, 6],
        );
        let mut other_type = real.clone();
        other_type[query.len() - 11 - 3] = 28; // AAAA
        for bad in [&wrong_id, &other_question, &other_type] {
            w.upstream.send_to(bad, from).unwrap();
        }
        // the right answer from another port of the resolver's address
        let spoofer = loopback_udp();
        spoofer.send_to(&real, from).unwrap();
        w.at(10);
        assert!(w.client_answer().is_none(), "nothing released");
        assert_eq!(
            w.f.stats.rejected, 3,
            "the spoofer's never arrives (connected socket)"
        );
        assert_eq!(w.f.pending.in_flight(false), 1, "still waiting");
        w.upstream.send_to(&real, from).unwrap();
        w.at(20);
        let got = w.client_answer().expect("the exact answer");
        assert_released(&got, 0x2222, "www.allowed.test", [10, 0, 0, 9]);
    }

    #[test]
    fn an_answer_in_another_letter_case_is_never_released_the_server_is_asked_plainly() {
        let mut w = world();
        ask(&w, 0x3333, "www.allowed.test");
        w.at(0);
        let (query, from) = w.upstream_query();
        let mut folded = answer_to(&query, [10, 66, 6, 6]);
        // one letter in the other case than we sent it
        folded[wire::HEADER + 1] ^= 0x20;
        w.upstream.send_to(&folded, from).unwrap();
        w.at(10);
        assert!(w.client_answer().is_none());
        assert_eq!(w.f.stats.case_fallbacks, 1);
        // asked again, in the client's spelling, from a fresh socket
        let (plain, from2) = w.upstream_query();
        let asked = wire::build_query(0x3333, "www.allowed.test", 1);
        assert_eq!(
            &plain[wire::HEADER..plain.len() - 11],
            &asked[wire::HEADER..]
        );
        let mut upper = answer_to(&plain, [10, 0, 0, 3]);
        upper[wire::HEADER + 1..wire::HEADER + 4].make_ascii_uppercase();
        w.upstream.send_to(&upper, from2).unwrap();
        w.at(20);
        let got = w.client_answer().expect("compared without case now");
        assert_released(&got, 0x3333, "www.allowed.test", [10, 0, 0, 3]);
        // the plain attempt did not count as a try: one more is left after a loss
        ask(&w, 0x3334, "b.allowed.test");
        w.at(30);
        w.upstream_query();
        w.at(1530);
        w.upstream_query();
    }

    fn tcp_client(w: &World) -> TcpStream {
        let s = TcpStream::connect(w.f.listeners.tcp[0].local_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(LIVENESS)).unwrap();
        s
    }

    /// A TCP client whose answers fill the kernel's buffers after a few KiB (small buffers
    /// on both ends: the forwarder's accepted socket inherits the listener's).
    fn small_window_client(w: &World) -> TcpStream {
        let listener = socket2::SockRef::from(&w.f.listeners.tcp[0]);
        listener.set_send_buffer_size(4096).unwrap();
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.set_recv_buffer_size(4096).unwrap();
        c.connect(&w.f.listeners.tcp[0].local_addr().unwrap().into())
            .unwrap();
        c.into()
    }

    fn read_framed(s: &mut TcpStream) -> Vec<u8> {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut msg).unwrap();
        msg
    }

    #[test]
    fn tcp_queries_split_and_batched_are_all_answered_in_order() {
        let mut w = world();
        let mut c = tcp_client(&w);
        w.at(0); // accepted
        let mut bytes = vec![];
        for (id, name) in [
            (1u16, "one.evil.test"),
            (2, "two.evil.test"),
            (3, "three.evil.test"),
        ] {
            bytes.extend(super::super::framing::frame(&wire::build_query(id, name, 1)).unwrap());
        }
        // the first length byte alone, then the rest of the first, two and a half, the end
        let cuts = [1, 20, bytes.len() - 5, bytes.len()];
        let mut at = 0;
        for (i, cut) in cuts.iter().enumerate() {
            c.write_all(&bytes[at..*cut]).unwrap();
            at = *cut;
            w.at(1 + i as u64);
        }
        for id in [1u16, 2, 3] {
            let got = read_framed(&mut c);
            assert_eq!(&got[..2], &id.to_be_bytes());
            assert_eq!(rcode(&got), wire::RCODE_NXDOMAIN);
        }
        assert_eq!(w.f.stats.denied, 3);
    }

    #[test]
    fn a_tcp_client_that_never_reads_its_answers_is_dropped_and_the_rest_is_served() {
        let mut w = world();
        let mut c = small_window_client(&w);
        w.at(0);
        assert_eq!(w.f.clients.len(), 1);
        let batch: Vec<u8> = (0..200u16)
            .flat_map(|i| {
                super::super::framing::frame(&wire::build_query(i, "never.evil.test", 1)).unwrap()
            })
            .collect();
        let mut t = 1;
        // 256 KiB of unread answers is about 6,000 of these: bounded, as a liveness check
        while w.f.clients.len() == 1 && t < 200 {
            if c.write_all(&batch).is_err() {
                break; // the forwarder closed it mid-batch
            }
            w.at(t);
            t += 1;
        }
        assert_eq!(w.f.clients.len(), 0, "dropped after {t} batches");
        ask(&w, 9, "x.evil.test");
        w.at(t + 1);
        let got = w.client_answer().expect("still serving");
        assert_eq!(rcode(&got), wire::RCODE_NXDOMAIN);
    }

    #[test]
    fn pending_tcp_output_waits_for_writability_not_for_a_timer() {
        let mut w = world();
        let mut c = small_window_client(&w);
        c.set_read_timeout(Some(LIVENESS)).unwrap();
        w.at(0);
        // enough answers that some must wait in the forwarder (the client's window is full)
        let mut sent = 0u16;
        while !w.f.clients_waiting_to_write() && sent < 4000 {
            let batch: Vec<u8> = (sent..sent + 100)
                .flat_map(|i| {
                    super::super::framing::frame(&wire::build_query(i, "w.evil.test", 1)).unwrap()
                })
                .collect();
            c.write_all(&batch).unwrap();
            sent += 100;
            w.at(1);
        }
        assert!(w.f.clients_waiting_to_write(), "output is waiting");
        // no tick: the only deadline is the idle connection's
        let d = w.f.deadline().expect("the idle timer");
        assert!(d >= w.t0 + Duration::from_secs(5), "{:?}", d - w.t0);
        // the client reads: the forwarder's descriptor becomes readable, it writes the rest
        let mut got = 0u16;
        while got < sent {
            let msg = read_framed(&mut c);
            assert_eq!(&msg[..2], &got.to_be_bytes(), "in order");
            got += 1;
            let ready = {
                let fd = w.f.poll.0.as_fd();
                let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap() > 0
            };
            if ready {
                w.at(2);
            }
        }
        assert!(!w.f.clients_waiting_to_write());
    }
}
