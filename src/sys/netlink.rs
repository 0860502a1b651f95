//! Netlink for the whole crate: the one NETLINK_NETFILTER socket type, and the one walker of
//! netlink messages and attributes (every other module hands bytes here and gets values).
//!
//! netlink-sys opens the socket, sends, receives and sets NETLINK_CAP_ACK (neither nix nor
//! rustix knows that option); nix sets the forced buffer sizes and the receive timeout, which
//! netlink-sys lacks; netlink-packet-core reads and writes message headers, error codes and
//! attributes. Hand-written, as none of them speaks nfnetlink: its 4-byte header (nfgenmsg)
//! and the batch, dump and request loops. (rustables keeps its parser private, nf_tables only.)

use netlink_packet_core::{
    DefaultNla, Emitable, ErrorBuffer, NetlinkBuffer, NetlinkHeader, NlasIterator, NLA_F_NESTED,
    NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// An errno as the kernel or libc gave it.
pub type Errno = i32;

/// Flag of an attribute whose value holds attributes.
pub const NESTED: u16 = NLA_F_NESTED;

/// The netlink header (struct nlmsghdr).
const HEADER_LEN: usize = 16;
/// The nfnetlink header (struct nfgenmsg): family, version, resource id.
const NFGENMSG_LEN: usize = 4;
/// NFNETLINK_V0, the only version.
const NFNETLINK_V0: u8 = 0;

/// Why a netlink exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// socket(AF_NETLINK, NETLINK_NETFILTER) failed: no netfilter netlink here.
    #[error("cannot open a netfilter netlink socket: {}", os(*.0))]
    Open(Errno),
    #[error("cannot send to the kernel: {}", os(*.0))]
    Send(Errno),
    #[error("cannot read the kernel's answer: {}", os(*.0))]
    Recv(Errno),
    /// The kernel refused message `seq` (0 = the batch itself).
    #[error("the kernel refused message {seq}: {}", os(*.errno))]
    Refused { errno: Errno, seq: u32 },
    /// No acknowledgement before the deadline.
    #[error("no answer from the kernel")]
    NoAnswer,
}

impl Error {
    /// The errno underneath (EAGAIN for a missing answer).
    pub fn errno(&self) -> Errno {
        match *self {
            Error::Open(e) | Error::Send(e) | Error::Recv(e) => e,
            Error::Refused { errno, .. } => errno,
            Error::NoAnswer => libc::EAGAIN,
        }
    }
}

fn os(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

fn errno_of(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Netlink messages and attributes start on 4-byte boundaries.
fn align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// One message of a datagram, its header read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// What follows the header, up to the message's length.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// An acknowledgement (NLMSG_ERROR): `Some(0)` accepted, else the errno of the refusal.
    pub fn ack(&self) -> Option<Errno> {
        if self.kind != NLMSG_ERROR {
            return None;
        }
        // A message too short to hold a code reads as accepted.
        let code = ErrorBuffer::new_checked(self.payload)
            .ok()
            .and_then(|e| e.code())
            .map_or(0, |c| c.get());
        Some(code.wrapping_neg())
    }

    /// The end of a dump (NLMSG_DONE).
    pub fn is_done(&self) -> bool {
        self.kind == NLMSG_DONE
    }

    /// An nfnetlink message's family (from its nfgenmsg) and its attribute bytes; `None`
    /// when it is too short to be one.
    pub fn nfnl(&self) -> Option<(u8, &'a [u8])> {
        let family = *self.payload.first()?;
        Some((family, self.payload.get(NFGENMSG_LEN..)?))
    }
}

/// The messages of one datagram, in order; stops at the first one whose length does not fit.
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = Message<'_>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < HEADER_LEN {
            return None;
        }
        let m = NetlinkBuffer::new_checked(rest).ok()?;
        let len = m.length() as usize;
        let message = Message {
            kind: m.message_type(),
            flags: m.flags(),
            seq: m.sequence_number(),
            payload: m.payload(),
        };
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some(message)
    })
}

/// The attributes in `bytes`: type (flags such as NESTED masked off) and value; stops at the
/// first one whose length does not fit.
pub fn attrs(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(bytes).map_while(|nla| {
        let nla = nla.ok()?;
        let kind = nla.kind();
        let len = usize::from(nla.length());
        let whole: &[u8] = nla.into_inner();
        Some((kind, whole.get(4..len)?))
    })
}

/// The attributes of one message, in order, owned (they outlive the receive buffer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs(Vec<(u16, Vec<u8>)>);

impl Attrs {
    pub fn parse(bytes: &[u8]) -> Attrs {
        Attrs(attrs(bytes).map(|(t, v)| (t, v.to_vec())).collect())
    }

    /// The first attribute of type `kind`.
    pub fn get(&self, kind: u16) -> Option<&[u8]> {
        self.0.iter().find(|(t, _)| *t == kind).map(|(_, v)| &v[..])
    }

    /// A NUL-terminated string attribute.
    pub fn str(&self, kind: u16) -> Option<&str> {
        let v = self.get(kind)?;
        std::str::from_utf8(v.strip_suffix(&[0]).unwrap_or(v)).ok()
    }

    /// A big-endian u32 attribute.
    pub fn be32(&self, kind: u16) -> Option<u32> {
        let v = self.get(kind)?;
        Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One attribute, padded: the value of a nested attribute is a run of these.
pub fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let nla = DefaultNla::new(kind, value.to_vec());
    let mut out = vec![0u8; nla.buffer_len()];
    nla.emit(&mut out);
    out
}

/// A NUL-terminated string value.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One nfnetlink message: header, nfgenmsg (`family`, version 0, `res_id`), attributes.
pub fn nfnl_message<V: AsRef<[u8]>>(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attributes: &[(u16, V)],
) -> Vec<u8> {
    let nlas: Vec<DefaultNla> = attributes
        .iter()
        .map(|(t, v)| DefaultNla::new(*t, v.as_ref().to_vec()))
        .collect();
    let len = HEADER_LEN + NFGENMSG_LEN + nlas.as_slice().buffer_len();
    let mut header = NetlinkHeader::default();
    header.length = len as u32;
    header.message_type = kind;
    header.flags = flags;
    header.sequence_number = seq;
    let mut out = vec![0u8; len];
    header.emit(&mut out[..HEADER_LEN]);
    out[HEADER_LEN] = family;
    out[HEADER_LEN + 1] = NFNETLINK_V0;
    out[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&res_id.to_be_bytes());
    nlas.as_slice().emit(&mut out[HEADER_LEN + NFGENMSG_LEN..]);
    out
}

/// An nfnetlink request the kernel acknowledges (NLM_F_ACK), sequence number `seq`.
pub fn acked_request<V: AsRef<[u8]>>(
    kind: u16,
    family: u8,
    res_id: u16,
    seq: u32,
    attributes: &[(u16, V)],
) -> Vec<u8> {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    nfnl_message(kind, flags, seq, family, res_id, attributes)
}

/// How far the acknowledgements of a batch are.
#[derive(Debug, PartialEq, Eq)]
enum Acks {
    More,
    Done,
    Refused { errno: Errno, seq: u32 },
}

/// One datagram of a batch's answers: an error message with a non-zero code is a refusal;
/// the ack of the last message (or NLMSG_DONE) ends the transaction.
fn batch_acks(datagram: &[u8], last_seq: u32) -> Acks {
    for m in messages(datagram) {
        if m.is_done() {
            return Acks::Done;
        }
        match m.ack() {
            Some(0) if m.seq >= last_seq => return Acks::Done,
            Some(0) | None => {}
            Some(errno) => return Acks::Refused { errno, seq: m.seq },
        }
    }
    Acks::More
}

/// The errno of the acknowledgement of `seq` in one datagram (0 = accepted).
fn ack_of(datagram: &[u8], seq: u32) -> Option<Errno> {
    messages(datagram)
        .filter(|m| m.seq == seq)
        .find_map(|m| m.ack())
}

/// One answer of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    /// The family of its nfgenmsg.
    pub family: u8,
    pub attrs: Attrs,
}

/// What one run of non-blocking reads gave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    /// The kernel dropped messages (receive buffer full), as often as it said so.
    pub overruns: u64,
    /// Nothing more to read now.
    pub drained: bool,
}

/// A NETLINK_NETFILTER socket, close-on-exec. Requests go to the kernel (port 0, the default
/// destination of an unconnected netlink socket).
#[derive(Debug)]
pub struct Socket {
    inner: netlink_sys::Socket,
}

impl Socket {
    /// A blocking socket; with `timeout`, every read gives up after it (EAGAIN): a kernel that
    /// never answers must not hang PID 1 or `check`.
    pub fn open(timeout: Option<Duration>) -> Result<Socket, Error> {
        let inner = netlink_sys::Socket::new(libc::NETLINK_NETFILTER as isize)
            .map_err(|e| Error::Open(errno_of(e)))?;
        let sock = Socket { inner };
        if let Some(t) = timeout {
            use nix::sys::time::{TimeVal, TimeValLike};
            let tv = TimeVal::microseconds(i64::try_from(t.as_micros()).unwrap_or(i64::MAX));
            // Best effort, as a socket without it still works.
            let _ = nix::sys::socket::setsockopt(
                &sock.inner,
                nix::sys::socket::sockopt::ReceiveTimeout,
                &tv,
            );
        }
        Ok(sock)
    }

    /// A socket whose reads never wait (for PID 1's poll loop).
    pub fn open_nonblocking() -> Result<Socket, Error> {
        let sock = Socket::open(None)?;
        sock.inner
            .set_non_blocking(true)
            .map_err(|e| Error::Open(errno_of(e)))?;
        Ok(sock)
    }

    /// SO_SNDBUFFORCE: a batch larger than the default send buffer goes in one send. Needs
    /// CAP_NET_ADMIN; returns whether it was set.
    pub fn force_send_buffer(&self, bytes: usize) -> bool {
        use nix::sys::socket::{setsockopt, sockopt::SndBufForce};
        setsockopt(&self.inner, SndBufForce, &bytes).is_ok()
    }

    /// SO_RCVBUFFORCE (beyond rmem_max; needs CAP_NET_ADMIN); returns whether it was set.
    pub fn force_recv_buffer(&self, bytes: usize) -> bool {
        use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
        setsockopt(&self.inner, RcvBufForce, &bytes).is_ok()
    }

    /// SO_RCVBUF (capped by rmem_max); returns whether it was set.
    pub fn set_recv_buffer(&self, bytes: usize) -> bool {
        use nix::sys::socket::{setsockopt, sockopt::RcvBuf};
        setsockopt(&self.inner, RcvBuf, &bytes).is_ok()
    }

    /// NETLINK_CAP_ACK: the ack of a refused message comes without the (possibly huge)
    /// message echoed back. Best effort.
    pub fn cap_acks(&self) {
        let _ = self.inner.set_cap_ack(true);
    }

    pub fn send(&self, bytes: &[u8]) -> Result<(), Errno> {
        self.inner.send(bytes, 0).map(|_| ()).map_err(errno_of)
    }

    fn recv_flags(&self, buf: &mut [u8], flags: libc::c_int) -> Result<usize, Errno> {
        let len = buf.len();
        let mut window: &mut [u8] = buf;
        let n = self.inner.recv(&mut window, flags).map_err(errno_of)?;
        Ok(n.min(len))
    }

    /// One datagram (waits as the socket does); EINTR is retried.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        loop {
            match self.recv_flags(buf, 0) {
                Err(libc::EINTR) => continue,
                other => return other,
            }
        }
    }

    /// One datagram if one is queued (EAGAIN when none is).
    pub fn recv_now(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        self.recv_flags(buf, libc::MSG_DONTWAIT)
    }

    /// Sends a batch of messages numbered up to `last_seq` and waits for every
    /// acknowledgement; a refusal names the message by its sequence number.
    pub fn batch(&self, bytes: &[u8], last_seq: u32) -> Result<(), Error> {
        self.send(bytes).map_err(Error::Send)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut buf).map_err(Error::Recv)?;
            match batch_acks(&buf[..n], last_seq) {
                Acks::More => {}
                Acks::Done => return Ok(()),
                Acks::Refused { errno, seq } => return Err(Error::Refused { errno, seq }),
            }
        }
    }

    /// One NLM_F_DUMP request of message type `kind` (subsystem << 8 | message) for
    /// `family`, filtered by `attributes`; every answer until NLMSG_DONE, or the errno of the
    /// first failure (sending, reading, or the kernel's).
    pub fn dump<V: AsRef<[u8]>>(
        &self,
        kind: u16,
        family: u8,
        attributes: &[(u16, V)],
    ) -> Result<Vec<Dumped>, Errno> {
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        self.send(&nfnl_message(kind, flags, 0, family, 0, attributes))?;
        let mut out = vec![];
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n]) {
                if m.is_done() {
                    return Ok(out);
                }
                match m.ack() {
                    Some(0) => {}
                    Some(errno) => return Err(errno),
                    None => {
                        if let Some((family, attrs)) = m.nfnl() {
                            out.push(Dumped {
                                family,
                                attrs: Attrs::parse(attrs),
                            });
                        }
                    }
                }
            }
        }
    }

    /// One request with NLM_F_ACK; `Ok` when the kernel acknowledged it, else the errno.
    pub fn request<V: AsRef<[u8]>>(
        &self,
        kind: u16,
        family: u8,
        attributes: &[(u16, V)],
    ) -> Result<(), Errno> {
        self.send(&acked_request(kind, family, 0, 0, attributes))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.recv(&mut buf)?;
            if let Some(errno) = messages(&buf[..n]).find_map(|m| m.ack()) {
                return if errno == 0 { Ok(()) } else { Err(errno) };
            }
        }
    }

    /// The refusals among the acknowledgements queued now, without waiting (the kernel
    /// answers a batch inside the send, so after one they are all there).
    pub fn refusals(&self) -> Vec<Errno> {
        let mut out = vec![];
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = self.recv_now(&mut buf) {
            out.extend(
                messages(&buf[..n])
                    .filter_map(|m| m.ack())
                    .filter(|e| *e != 0),
            );
        }
        out
    }

    /// A non-blocking socket subscribed by one acked `request` (sequence number `seq`),
    /// with a receive buffer of `recv_buffer` bytes (forced when privileged): the kernel's
    /// acknowledgement is awaited for at most `within`.
    pub fn subscribe(
        request: &[u8],
        seq: u32,
        recv_buffer: usize,
        within: Duration,
    ) -> Result<Socket, Error> {
        let sock = Socket::open_nonblocking()?;
        if !sock.force_recv_buffer(recv_buffer) {
            sock.set_recv_buffer(recv_buffer);
        }
        sock.send(request).map_err(Error::Send)?;
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::NoAnswer);
            }
            let wait_ms = u16::try_from(left.as_millis().min(2000)).unwrap_or(2000);
            let mut ready = [nix::poll::PollFd::new(
                sock.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            // A failed or interrupted poll only means reading once more.
            let _ = nix::poll::poll(&mut ready, wait_ms);
            match sock.recv_now(&mut buf) {
                Err(libc::EAGAIN | libc::EINTR) => continue,
                Err(e) => return Err(Error::Recv(e)),
                Ok(n) => match ack_of(&buf[..n], seq) {
                    Some(0) => return Ok(sock),
                    Some(errno) => return Err(Error::Refused { errno, seq }),
                    None => continue,
                },
            }
        }
    }

    /// Reads at most `max` datagrams without waiting, each handed to `each`.
    pub fn read_now(&self, buf: &mut [u8], max: usize, mut each: impl FnMut(&[u8])) -> Reads {
        let mut reads = Reads::default();
        for _ in 0..max {
            match self.recv_now(buf) {
                Ok(n) => each(&buf[..n]),
                Err(libc::ENOBUFS) => reads.overruns += 1,
                Err(libc::EINTR) => {}
                // EAGAIN: drained; anything else: nothing more to read now either.
                Err(_) => {
                    reads.drained = true;
                    return reads;
                }
            }
        }
        reads
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// Datagrams as the kernel sends them, for the tests of the modules that read them.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A message of `kind` with sequence number `seq` and `payload`.
    pub fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = HEADER_LEN + payload.len();
        let mut header = NetlinkHeader::default();
        header.length = len as u32;
        header.message_type = kind;
        header.sequence_number = seq;
        let mut out = vec![0u8; align(len)];
        header.emit(&mut out[..HEADER_LEN]);
        out[HEADER_LEN..len].copy_from_slice(payload);
        out
    }

    /// The acknowledgement of `seq`: 0 accepted, else the errno of the refusal.
    pub fn ack(seq: u32, errno: Errno) -> Vec<u8> {
        let mut payload = (-errno).to_ne_bytes().to_vec();
        // The refused message's header, echoed back (NETLINK_CAP_ACK).
        payload.extend([0u8; HEADER_LEN]);
        message(NLMSG_ERROR, seq, &payload)
    }

    pub fn done(seq: u32) -> Vec<u8> {
        message(NLMSG_DONE, seq, &0i32.to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ack, done, message};
    use super::*;

    #[test]
    fn acks_end_at_the_last_sequence_and_errors_carry_theirs() {
        let mut buf = ack(1, 0);
        buf.extend(ack(2, 0));
        assert_eq!(batch_acks(&buf, 3), Acks::More);
        buf.extend(ack(3, 0));
        assert_eq!(batch_acks(&buf, 3), Acks::Done);
        let mut buf = ack(1, 0);
        buf.extend(ack(2, libc::EPERM));
        assert_eq!(
            batch_acks(&buf, 3),
            Acks::Refused {
                errno: libc::EPERM,
                seq: 2
            }
        );
        assert_eq!(batch_acks(&buf[..10], 3), Acks::More);
        assert_eq!(batch_acks(&done(0), 3), Acks::Done);
    }

    #[test]
    fn acks_are_matched_by_sequence() {
        let e = ack(3, libc::EBUSY);
        assert_eq!(ack_of(&e, 3), Some(libc::EBUSY));
        assert_eq!(ack_of(&e, 4), None);
        assert_eq!(ack_of(&ack(3, 0), 3), Some(0));
        // a packet message with that sequence number is no ack
        assert_eq!(ack_of(&message(0x400, 3, &[0; 8]), 3), None);
    }

    #[test]
    fn messages_stop_where_a_length_does_not_fit() {
        let mut buf = message(0x400, 1, &[2, 0, 0, 0, 8, 0, 1, 0, 7, 7, 7, 7]);
        buf.extend(done(1));
        let all: Vec<Message> = messages(&buf).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].nfnl().map(|(f, _)| f), Some(2));
        assert!(all[1].is_done());
        // a length beyond the datagram ends the walk; so does a length below the header's
        let mut bad = buf.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(messages(&bad).count(), 0);
        bad[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(messages(&bad).count(), 0);
        for cut in 0..buf.len() {
            assert!(messages(&buf[..cut]).count() <= 2);
        }
    }

    #[test]
    fn attributes_round_trip_and_garbage_ends_the_walk() {
        let nested = [attr(1, &[10, 0, 0, 2]), attr(2, b"ab")].concat();
        let bytes = [attr(7 | NESTED, &nested), attr(3, &cstr("output"))].concat();
        let a = Attrs::parse(&bytes);
        assert_eq!(a.len(), 2);
        assert_eq!(a.str(3), Some("output"));
        let inner = Attrs::parse(a.get(7).unwrap());
        assert_eq!(inner.get(2), Some(&b"ab"[..]));
        assert_eq!(inner.be32(1), Some(0x0a00_0002));
        for cut in 0..bytes.len() {
            assert!(Attrs::parse(&bytes[..cut]).len() <= 2);
        }
        let mut short = attr(1, &[1, 2, 3, 4]);
        short[0..2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(Attrs::parse(&short).is_empty());
    }

    #[test]
    fn nfnl_messages_carry_family_resource_and_padded_attributes() {
        let m = acked_request(
            0x401,
            libc::AF_UNSPEC as u8,
            7,
            9,
            &[(1, vec![1u8]), (2, vec![])],
        );
        assert_eq!(m.len() % 4, 0);
        let all: Vec<Message> = messages(&m).collect();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].kind, all[0].seq), (0x401, 9));
        assert_eq!(all[0].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(&all[0].payload[..4], &[0, 0, 0, 7]);
        let (family, body) = all[0].nfnl().unwrap();
        assert_eq!(family, libc::AF_UNSPEC as u8);
        let a: Vec<(u16, &[u8])> = attrs(body).collect();
        assert_eq!(a, vec![(1, &[1u8][..]), (2, &[][..])]);
    }
}
