//! DNS over TCP framing (RFC 1035 4.2.2: every message preceded by its length, two bytes,
//! big-endian), for the forwarder's TCP clients and its TCP attempts upstream: what has
//! arrived is split into whole messages, what must go out waits in a bounded queue. Both
//! work on any `Read`/`Write` (a non-blocking socket in the forwarder), so a peer that
//! sends in pieces or stops reading can be played in a test.

use std::io::{ErrorKind, Read, Write};

/// What a read loop ended on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Nothing more to read now (the socket would block).
    Waiting,
    /// The peer closed its side.
    Closed,
    /// More than `limit` bytes are waiting unframed: a peer that sends faster than it
    /// asks, or a length no message completes.
    Overflow,
    /// A read failed (reset): nothing more can be delivered.
    Failed,
}

/// Bytes from a peer, taken apart into messages.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    /// Reads what `from` has (until it would block, closes or fails), keeping at most
    /// `limit` unframed bytes. `progress` is told when any byte arrived.
    pub fn read_from(
        &mut self,
        from: &mut impl Read,
        limit: usize,
        progress: &mut bool,
    ) -> Received {
        let mut tmp = [0u8; 8192];
        loop {
            match from.read(&mut tmp) {
                Ok(0) => return Received::Closed,
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    *progress = true;
                    if self.buf.len() > limit {
                        return Received::Overflow;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Received::Waiting,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Received::Failed,
            }
        }
    }

    /// The complete messages received so far, in order (a partial one stays for later).
    pub fn messages(&mut self) -> Vec<Vec<u8>> {
        let mut msgs = vec![];
        let mut off = 0;
        while let Some(msg) = frame_at(&self.buf, off) {
            msgs.push(msg.to_vec());
            off += 2 + msg.len();
        }
        self.buf.drain(..off);
        msgs
    }

    /// The first complete message, when it has arrived (a connection upstream carries one).
    pub fn first(&self) -> Option<&[u8]> {
        frame_at(&self.buf, 0)
    }
}

fn frame_at(buf: &[u8], off: usize) -> Option<&[u8]> {
    let head = buf.get(off..off + 2)?;
    let len = u16::from_be_bytes([head[0], head[1]]) as usize;
    buf.get(off + 2..off + 2 + len)
}

/// `msg` with its length in front. `None` when it does not fit the two bytes.
pub fn frame(msg: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(msg.len()).ok()?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    Some(out)
}

/// Framed messages waiting to be written, at most `limit` bytes of them.
#[derive(Debug)]
pub struct Outbox {
    buf: Vec<u8>,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox { buf: vec![], limit }
    }

    /// Queues `msg`; false (and nothing queued) when it would pass the limit or is too long
    /// to frame: a peer that does not read its answers.
    pub fn queue(&mut self, msg: &[u8]) -> bool {
        match frame(msg) {
            Some(f) if self.buf.len() + f.len() <= self.limit => {
                self.buf.extend_from_slice(&f);
                true
            }
            _ => false,
        }
    }

    /// Writes what `to` takes now; the rest waits for the next call.
    pub fn flush(&mut self, to: &mut impl Write) {
        while !self.buf.is_empty() {
            match to.write(&self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io;

    /// A peer's side of a non-blocking socket: the chunks it delivers, one per read, then
    /// `end` (would block, end of file or a reset).
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        end: ErrorKind,
    }

    impl Read for Chunks {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some(mut c) = self.chunks.pop_front() else {
                return match self.end {
                    ErrorKind::UnexpectedEof => Ok(0),
                    k => Err(k.into()),
                };
            };
            let n = c.len().min(out.len());
            out[..n].copy_from_slice(&c[..n]);
            if n < c.len() {
                self.chunks.push_front(c.split_off(n));
            }
            Ok(n)
        }
    }

    fn chunks(parts: &[&[u8]], end: ErrorKind) -> Chunks {
        Chunks {
            chunks: parts.iter().map(|p| p.to_vec()).collect(),
            end,
        }
    }

    fn read(d: &mut Deframer, from: &mut Chunks) -> Received {
        let mut progress = false;
        d.read_from(from, 1 << 20, &mut progress)
    }

    #[test]
    fn a_message_split_across_reads_comes_out_whole_once_complete() {
        let msg: Vec<u8> = (0..40u8).collect();
        let framed = frame(&msg).unwrap();
        let mut d = Deframer::default();
        // the length's first byte, then the second with part of the body
        let mut peer = chunks(&[&framed[..1]], ErrorKind::WouldBlock);
        assert_eq!(read(&mut d, &mut peer), Received::Waiting);
        assert!(d.messages().is_empty());
        let mut peer = chunks(&[&framed[1..10]], ErrorKind::WouldBlock);
        read(&mut d, &mut peer);
        assert!(d.messages().is_empty());
        assert_eq!(d.first(), None);
        let mut peer = chunks(&[&framed[10..]], ErrorKind::WouldBlock);
        read(&mut d, &mut peer);
        assert_eq!(d.first(), Some(&msg[..]));
        assert_eq!(d.messages(), vec![msg]);
        assert!(d.messages().is_empty(), "taken once");
    }

    #[test]
    fn two_messages_in_one_read_come_out_in_order_with_the_partial_third_kept() {
        let (a, b, c) = (b"first".to_vec(), b"second!".to_vec(), b"third".to_vec());
        let mut one = frame(&a).unwrap();
        one.extend(frame(&b).unwrap());
        let third = frame(&c).unwrap();
        one.extend_from_slice(&third[..3]);
        let mut d = Deframer::default();
        let mut peer = chunks(&[&one], ErrorKind::WouldBlock);
        assert_eq!(read(&mut d, &mut peer), Received::Waiting);
        assert_eq!(d.messages(), vec![a, b]);
        let mut peer = chunks(&[&third[3..]], ErrorKind::UnexpectedEof);
        assert_eq!(read(&mut d, &mut peer), Received::Closed);
        assert_eq!(d.messages(), vec![c]);
    }

    #[test]
    fn an_empty_message_is_a_message() {
        let mut d = Deframer::default();
        let mut peer = chunks(&[&[0, 0, 0, 1, 7]], ErrorKind::WouldBlock);
        read(&mut d, &mut peer);
        assert_eq!(d.messages(), vec![vec![], vec![7]]);
    }

    #[test]
    fn a_length_that_nothing_completes_overflows_the_limit() {
        // 65535 announced, bytes keep coming but never as many: waits, then overflows.
        let mut d = Deframer::default();
        let mut announced = vec![0xff, 0xff];
        announced.extend(vec![0u8; 100]);
        let mut peer = chunks(&[&announced], ErrorKind::WouldBlock);
        let mut progress = false;
        assert_eq!(
            d.read_from(&mut peer, 1000, &mut progress),
            Received::Waiting
        );
        assert!(progress);
        assert!(d.messages().is_empty());
        let mut peer = chunks(&[&[0u8; 2000]], ErrorKind::WouldBlock);
        assert_eq!(
            d.read_from(&mut peer, 1000, &mut progress),
            Received::Overflow
        );
        // a short length header alone is no message either
        let mut d = Deframer::default();
        let mut peer = chunks(&[&[0]], ErrorKind::UnexpectedEof);
        assert_eq!(read(&mut d, &mut peer), Received::Closed);
        assert!(d.messages().is_empty());
    }

    #[test]
    fn a_reset_is_a_failure_and_no_bytes_is_no_progress() {
        let mut d = Deframer::default();
        let mut peer = chunks(&[], ErrorKind::ConnectionReset);
        let mut progress = false;
        assert_eq!(d.read_from(&mut peer, 100, &mut progress), Received::Failed);
        assert!(!progress);
    }

    #[test]
    fn a_message_longer_than_the_length_field_is_not_framed() {
        assert!(frame(&vec![0u8; 65535]).is_some());
        assert!(frame(&vec![0u8; 65536]).is_none());
        let mut o = Outbox::new(1 << 20);
        assert!(!o.queue(&vec![0u8; 65536]));
        assert!(o.is_empty());
    }

    /// A peer that takes `room` bytes, then stops reading (its window is full).
    struct Stalled {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.room);
            self.got.extend_from_slice(&b[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_peer_that_stops_reading_keeps_the_rest_queued_up_to_the_limit() {
        let mut o = Outbox::new(30);
        let mut peer = Stalled {
            got: vec![],
            room: 5,
        };
        assert!(o.queue(b"0123456789"));
        o.flush(&mut peer);
        assert_eq!(peer.got, b"\x00\x0a012");
        assert!(!o.is_empty(), "the rest waits");
        assert!(o.queue(b"abcdefghij"), "7 + 12 bytes of 30");
        assert!(!o.queue(b"ABCDEFGHIJ"), "19 + 12 would pass 30: refused");
        // it reads again: everything queued arrives, in order, once
        peer.room = 100;
        o.flush(&mut peer);
        assert!(o.is_empty());
        assert_eq!(peer.got, b"\x00\x0a0123456789\x00\x0aabcdefghij");
    }
}
