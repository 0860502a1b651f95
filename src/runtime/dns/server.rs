//! The forwarder's side towards its clients (the child's lookups): the UDP and TCP sockets
//! it listens on, and the TCP connections it accepted, each with its framing, its queries
//! in flight and its bounded output.

use super::events::Token;
use super::framing::{Deframer, Outbox, Received};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

pub const MAX_TCP_CLIENTS: usize = 128;
/// Per client connection: queries in flight, unsent output.
pub const MAX_CLIENT_INFLIGHT: usize = 16;
pub const MAX_CLIENT_OUT: usize = 256 * 1024;
/// Unframed input a connection may have waiting: two messages of the largest size.
const MAX_CLIENT_IN: usize = 2 * 65538;
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Connections accepted per listener per event, so no socket starves the others.
const ACCEPT_BURST: usize = 256;

/// Who asked, and where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Udp { sock: usize, from: SocketAddr },
    Tcp { conn: u64 },
}

/// The sockets the forwarder listens on, UDP and TCP for each address.
pub struct Listeners {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

/// A large receive buffer for a listening UDP socket (a burst of queries must not be
/// dropped): FORCE works while PID 1 is still privileged (binding happens before the
/// command starts); the plain one, capped by the system's maximum, is the fallback.
fn set_rcvbuf(s: &UdpSocket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(s, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(s, sockopt::RcvBuf, &bytes);
    }
}

impl Listeners {
    /// Binds UDP and TCP on each address; an address marked required must work.
    pub fn bind(addrs: &[(SocketAddr, bool)]) -> Result<Listeners, String> {
        let mut udp = vec![];
        let mut tcp = vec![];
        for &(sa, required) in addrs {
            let pair = UdpSocket::bind(sa).and_then(|u| {
                u.set_nonblocking(true)?;
                let t = TcpListener::bind(sa)?;
                t.set_nonblocking(true)?;
                Ok((u, t))
            });
            match pair {
                Ok((u, t)) => {
                    set_rcvbuf(&u, 4 << 20);
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
        Ok(Listeners { udp, tcp })
    }

    /// Watches every listening socket for input.
    pub fn register(&self, poll: &Epoll) -> Result<(), String> {
        let register = |fd: BorrowedFd<'_>, t: Token| {
            poll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, t.encode()))
                .map_err(|e| format!("DNS filter: epoll: {e}"))
        };
        for (i, u) in self.udp.iter().enumerate() {
            register(u.as_fd(), Token::ListenUdp(i))?;
        }
        for (i, t) in self.tcp.iter().enumerate() {
            register(t.as_fd(), Token::ListenTcp(i))?;
        }
        Ok(())
    }
}

struct TcpClient {
    s: TcpStream,
    input: Deframer,
    output: Outbox,
    inflight: usize,
    eof: bool,
    idle_until: Instant,
    /// The interest registered in the epoll set.
    interest: EpollFlags,
}

/// The TCP connections accepted, by connection id.
#[derive(Default)]
pub struct Clients {
    conns: HashMap<u64, TcpClient>,
}

impl Clients {
    /// Takes the connections waiting on `listener` (beyond the limit: closed at once);
    /// each gets an id from `next_id`.
    pub fn accept(
        &mut self,
        listener: &TcpListener,
        poll: &Epoll,
        next_id: &mut u64,
        now: Instant,
    ) {
        for _ in 0..ACCEPT_BURST {
            let s = match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => break,
            };
            if self.conns.len() >= MAX_TCP_CLIENTS || s.set_nonblocking(true).is_err() {
                continue; // dropped: closes at once
            }
            *next_id += 1;
            let conn = *next_id;
            let interest = EpollFlags::EPOLLIN;
            let ev = EpollEvent::new(interest, Token::Client(conn).encode());
            if poll.add(s.as_fd(), ev).is_err() {
                continue;
            }
            self.conns.insert(
                conn,
                TcpClient {
                    s,
                    input: Deframer::default(),
                    output: Outbox::new(MAX_CLIENT_OUT),
                    inflight: 0,
                    eof: false,
                    idle_until: now + TCP_IDLE,
                    interest,
                },
            );
        }
    }

    pub fn close(&mut self, conn: u64, poll: &Epoll) {
        if let Some(c) = self.conns.remove(&conn) {
            let _ = poll.delete(c.s.as_fd());
        }
    }

    /// Registers what the client must still be watched for: input until it closed its
    /// side (a half-closed client is never polled for reading again: its end-of-file
    /// would wake PID 1 at once, over and over), output while answers wait (writability
    /// wakes the forwarder, no timer). A client with nothing left to read, send or wait
    /// for is closed.
    pub fn update(&mut self, conn: u64, poll: &Epoll) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.eof && c.inflight == 0 && c.output.is_empty() {
            self.close(conn, poll);
            return;
        }
        let mut want = EpollFlags::empty();
        if !c.eof {
            want |= EpollFlags::EPOLLIN;
        }
        if !c.output.is_empty() {
            want |= EpollFlags::EPOLLOUT;
        }
        if want != c.interest {
            let mut ev = EpollEvent::new(want, Token::Client(conn).encode());
            if poll.modify(c.s.as_fd(), &mut ev).is_ok() {
                c.interest = want;
            }
        }
    }

    /// Readiness of a connection: waiting output goes out, input is read, and the
    /// complete messages it sent are returned in order. A reset, an error or too much
    /// unframed input closes it (and nothing it sent is taken).
    pub fn serve(
        &mut self,
        conn: u64,
        flags: EpollFlags,
        poll: &Epoll,
        now: Instant,
    ) -> Vec<Vec<u8>> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return vec![];
        };
        c.output.flush(&mut c.s);
        let mut close = false;
        if !c.eof {
            let mut progress = false;
            match c.input.read_from(&mut c.s, MAX_CLIENT_IN, &mut progress) {
                Received::Waiting => {}
                Received::Closed => c.eof = true,
                Received::Overflow | Received::Failed => close = true,
            }
            if progress {
                c.idle_until = now + TCP_IDLE;
            }
        }
        let msgs = c.input.messages();
        if close || flags.contains(EpollFlags::EPOLLERR) || flags.contains(EpollFlags::EPOLLHUP) {
            self.close(conn, poll);
            return vec![];
        }
        msgs
    }

    /// Whether the connection may not have another query forwarded now (too many in
    /// flight, or gone).
    pub fn busy(&self, conn: u64) -> bool {
        self.conns
            .get(&conn)
            .is_none_or(|c| c.inflight >= MAX_CLIENT_INFLIGHT)
    }

    /// A query of the connection went upstream.
    pub fn forwarded(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.inflight += 1;
        }
    }

    /// An answer for the connection (`done`: the end of a query it had in flight). A
    /// client that lets its answers pile up past the limit is dropped.
    pub fn answer(&mut self, conn: u64, msg: &[u8], done: bool, poll: &Epoll) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if done {
            c.inflight = c.inflight.saturating_sub(1);
        }
        if !c.output.queue(msg) {
            self.close(conn, poll);
            return;
        }
        c.output.flush(&mut c.s);
        self.update(conn, poll);
    }

    /// Closes the connections idle past their time with nothing in flight.
    pub fn expire(&mut self, now: Instant, poll: &Epoll) {
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now >= c.idle_until && c.inflight == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.close(id, poll);
        }
    }

    /// The earliest time an idle connection is closed.
    pub fn deadline(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter(|c| c.inflight == 0)
            .map(|c| c.idle_until)
            .min()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn waiting_to_write(&self) -> bool {
        self.conns.values().any(|c| !c.output.is_empty())
    }
}
