//! The few parts of the DNS wire format (RFC 1035) the filter needs, read from untrusted
//! bytes: the question of a query, and the A/AAAA records (after CNAMEs) of an answer.
//! Every read is bounds-checked, names are capped at 255 bytes and compression pointers at
//! a fixed number of jumps, so no byte string can panic or loop (see the proptests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const HEADER: usize = 12;
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
const MAX_NAME: usize = 255;
const MAX_JUMPS: usize = 32;
/// CNAME links followed from the question name.
const MAX_CHAIN: usize = 16;

/// The question of a client's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lower-case, dot-separated, no trailing dot ("" for the root).
    pub name: String,
    /// False when a label holds a byte that has no place in a host name (a dot, a space, a
    /// control character): such a name cannot be matched by text safely, so it is denied.
    pub plain: bool,
    pub qtype: u16,
    /// End of the question section: header + question are echoed in our own answers.
    pub end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Not worth an answer (too short for a header, or itself a response): dropped.
    Drop,
    /// A query we can answer with this error code.
    Answer(u8),
}

pub fn id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(o)?, *b.get(o + 1)?]))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Parses a client's query: one question, opcode QUERY.
pub fn parse_query(msg: &[u8]) -> Result<Query, Bad> {
    if msg.len() < HEADER || msg[2] & 0x80 != 0 {
        return Err(Bad::Drop);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    if (msg[2] >> 3) & 0x0f != 0 {
        return Err(Bad::Answer(RCODE_NOTIMP));
    }
    if u16_at(msg, 4) != Some(1) {
        return Err(Bad::Answer(RCODE_FORMERR));
    }
    // The question of a query carries no compression pointer (nothing precedes it).
    let mut name = String::new();
    let mut plain = true;
    let mut o = HEADER;
    loop {
        let len = *msg.get(o).ok_or(Bad::Answer(RCODE_FORMERR))? as usize;
        o += 1;
        if len == 0 {
            break;
        }
        if len > 63 || name.len() + len + 1 > MAX_NAME {
            return Err(Bad::Answer(RCODE_FORMERR));
        }
        let label = msg.get(o..o + len).ok_or(Bad::Answer(RCODE_FORMERR))?;
        if !name.is_empty() {
            name.push('.');
        }
        for &c in label {
            let c = c.to_ascii_lowercase();
            // A backslash too: the text form is then unambiguous (`\DDD` is always an
            // escape), which the reports rely on to show each byte as it was.
            if c == b'.' || c == b'\\' || !(0x21..0x7f).contains(&c) {
                plain = false;
                // Kept visible for the log line, never matched.
                name.push_str(&format!("\\{c:03}"));
            } else {
                name.push(c as char);
            }
        }
        o += len;
    }
    let qtype = u16_at(msg, o).ok_or(Bad::Answer(RCODE_FORMERR))?;
    u16_at(msg, o + 2).ok_or(Bad::Answer(RCODE_FORMERR))?;
    Ok(Query {
        id,
        name,
        plain,
        qtype,
        end: o + 4,
    })
}

/// Our own answer to a query: its header and question, with `rcode` and no records.
pub fn error_answer(msg: &[u8], q_end: Option<usize>, rcode: u8) -> Option<Vec<u8>> {
    let end = q_end.unwrap_or(HEADER).min(msg.len());
    if end < HEADER {
        return None;
    }
    let mut out = msg[..end].to_vec();
    // QR, opcode and RD kept from the query; RA set; AA, TC, Z cleared.
    out[2] = 0x80 | (msg[2] & 0x79);
    out[3] = 0x80 | (rcode & 0x0f);
    let qd: u16 = if q_end.is_some() { 1 } else { 0 };
    out[4..6].copy_from_slice(&qd.to_be_bytes());
    out[6..12].fill(0);
    Some(out)
}

/// Reads a (possibly compressed) name at `o`; returns it lower-cased and where the name
/// ends in place (after the first pointer, if any).
fn read_name(msg: &[u8], mut o: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(o)? as usize;
        match len & 0xc0 {
            0xc0 => {
                let ptr = ((len & 0x3f) << 8) | *msg.get(o + 1)? as usize;
                end.get_or_insert(o + 2);
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return None;
                }
                o = ptr;
            }
            0 if len == 0 => {
                return Some((name, end.unwrap_or(o + 1)));
            }
            0 => {
                if name.len() + len + 1 > MAX_NAME {
                    return None;
                }
                let label = msg.get(o + 1..o + 1 + len)?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &c in label {
                    let c = c.to_ascii_lowercase();
                    // Same escaping as queries, so chains compare like for like.
                    if c == b'.' || c == b'\\' || !(0x21..0x7f).contains(&c) {
                        name.push_str(&format!("\\{c:03}"));
                    } else {
                        name.push(c as char);
                    }
                }
                o += 1 + len;
            }
            _ => return None,
        }
    }
}

/// What the filter takes from an upstream answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    pub rcode: u8,
    pub truncated: bool,
    /// A/AAAA addresses of the question name (after CNAMEs), each with its TTL.
    pub addrs: Vec<(IpAddr, u32)>,
    /// Offsets of the TTL field of every answer record (to cap them).
    pub ttl_offsets: Vec<usize>,
}

/// Parses an upstream answer to `q` (same id, name and type, or `None`): a reply that does
/// not answer the question asked is never used.
pub fn parse_answer(msg: &[u8], q: &Query) -> Option<Answer> {
    if msg.len() < HEADER || msg[2] & 0x80 == 0 || id(msg)? != q.id {
        return None;
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)? as usize;
    if qd != 1 {
        return None;
    }
    let (qname, mut o) = read_name(msg, HEADER)?;
    if qname != q.name || u16_at(msg, o)? != q.qtype {
        return None;
    }
    o += 4;
    let mut records: Vec<(String, u16, u32, usize, usize)> = vec![];
    let mut out = Answer {
        rcode: msg[3] & 0x0f,
        truncated: msg[2] & 0x02 != 0,
        ..Answer::default()
    };
    // An answer section can hold at most one record per 11 bytes: `an` cannot make us loop.
    for _ in 0..an {
        let Some((owner, after)) = read_name(msg, o) else {
            break;
        };
        let (Some(rtype), Some(ttl), Some(rdlen)) = (
            u16_at(msg, after),
            u32_at(msg, after + 4),
            u16_at(msg, after + 8),
        ) else {
            break;
        };
        let rdata = after + 10;
        if rdata + rdlen as usize > msg.len() {
            break;
        }
        out.ttl_offsets.push(after + 4);
        records.push((owner, rtype, ttl, rdata, rdlen as usize));
        o = rdata + rdlen as usize;
    }
    // Follow the CNAME chain from the question name.
    let mut chain = vec![q.name.clone()];
    for _ in 0..MAX_CHAIN {
        let Some(last) = chain.last() else { break };
        let next = records
            .iter()
            .find(|r| r.1 == TYPE_CNAME && &r.0 == last)
            .and_then(|r| read_name(msg, r.3))
            .map(|(n, _)| n);
        match next {
            Some(n) if !chain.contains(&n) => chain.push(n),
            _ => break,
        }
    }
    for (owner, rtype, ttl, rd, len) in &records {
        if !chain.contains(owner) {
            continue;
        }
        let addr = match (*rtype, *len) {
            (TYPE_A, 4) => {
                let b: [u8; 4] = msg.get(*rd..rd + 4)?.try_into().ok()?;
                IpAddr::V4(Ipv4Addr::from(b))
            }
            (TYPE_AAAA, 16) => {
                let b: [u8; 16] = msg.get(*rd..rd + 16)?.try_into().ok()?;
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => continue,
        };
        out.addrs.push((addr, *ttl));
    }
    Some(out)
}

/// Caps every answer record's TTL at `max` seconds, so no client caches an address past
/// the time its firewall entry is kept.
pub fn cap_ttls(msg: &mut [u8], offsets: &[usize], max: u32) {
    for &o in offsets {
        if let Some(ttl) = u32_at(msg, o) {
            if ttl > max {
                if let Some(b) = msg.get_mut(o..o + 4) {
                    b.copy_from_slice(&max.to_be_bytes());
                }
            }
        }
    }
}

/// Builds a query (the probe, the benchmark and the tests use the same shape).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(HEADER + name.len() + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An answer as a server would send it: question, then records (owner, type, ttl, rdata)
    /// with owners and CNAME targets compressed against the question name where equal.
    fn answer(q: &[u8], records: &[(&str, u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] |= 0x80;
        m[3] = 0x80;
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (owner, ty, ttl, rdata) in records {
            let qn = parse_query(q).unwrap().name;
            if *owner == qn {
                m.extend_from_slice(&[0xc0, 12]);
            } else {
                m.extend_from_slice(&build_query(0, owner, 0)[12..][..owner.len() + 2]);
            }
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&[0, 1]);
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(rdata);
        }
        m
    }

    fn name_bytes(n: &str) -> Vec<u8> {
        build_query(0, n, 0)[12..][..n.len() + 2].to_vec()
    }

    #[test]
    fn query_name_is_lowercased_and_typed() {
        let q = parse_query(&build_query(7, "A.Allowed.TEST.", 16)).unwrap();
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype, q.plain),
            (7, "a.allowed.test", 16, true)
        );
        assert_eq!(q.end, build_query(7, "a.allowed.test", 16).len());
    }

    /// A query whose question has exactly these labels (bytes as given).
    fn query_with_labels(labels: &[&[u8]]) -> Vec<u8> {
        let mut m = build_query(1, "x", 1);
        m.truncate(12);
        for l in labels {
            m.push(l.len() as u8);
            m.extend_from_slice(l);
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    }

    #[test]
    fn a_dot_inside_a_label_is_not_plain() {
        // labels ["a.allowed", "test"]: as text it would read a.allowed.test
        let q = parse_query(&query_with_labels(&[b"a.allowed", b"test"])).unwrap();
        assert!(!q.plain);
        assert_ne!(q.name, "a.allowed.test");
        // a label spelling that escape with a backslash is not plain either, and its text
        // differs from the dot's
        let qb = parse_query(&query_with_labels(&[b"a\\046allowed", b"test"])).unwrap();
        assert!(!qb.plain);
        assert_ne!(qb.name, q.name);
    }

    #[test]
    fn bad_queries() {
        assert_eq!(parse_query(&[0; 5]), Err(Bad::Drop));
        let mut resp = build_query(1, "a.test", 1);
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), Err(Bad::Drop));
        let mut two = build_query(1, "a.test", 1);
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(Bad::Answer(RCODE_FORMERR)));
        let mut upd = build_query(1, "a.test", 1);
        upd[2] = 5 << 3;
        assert_eq!(parse_query(&upd), Err(Bad::Answer(RCODE_NOTIMP)));
        let short = build_query(1, "a.test", 1);
        assert_eq!(
            parse_query(&short[..short.len() - 1]),
            Err(Bad::Answer(RCODE_FORMERR))
        );
        let mut ptr = build_query(1, "a.test", 1);
        ptr[12] = 0xc0;
        assert_eq!(parse_query(&ptr), Err(Bad::Answer(RCODE_FORMERR)));
    }

    #[test]
    fn error_answer_echoes_the_question() {
        let q = build_query(0xbeef, "x.evil.test", 16);
        let pq = parse_query(&q).unwrap();
        let a = error_answer(&q, Some(pq.end), RCODE_NXDOMAIN).unwrap();
        assert_eq!(&a[..2], &[0xbe, 0xef]);
        assert_eq!(a[2] & 0x80, 0x80);
        assert_eq!(a[3] & 0x0f, RCODE_NXDOMAIN);
        assert_eq!(&a[12..], &q[12..]);
        assert_eq!(&a[6..12], &[0; 6]);
    }

    #[test]
    fn answer_follows_cnames_and_ignores_other_owners() {
        let q = build_query(9, "www.allowed.test", TYPE_A);
        let pq = parse_query(&q).unwrap();
        let m = answer(
            &q,
            &[
                (
                    "www.allowed.test",
                    TYPE_CNAME,
                    300,
                    name_bytes("cdn.example"),
                ),
                ("cdn.example", TYPE_CNAME, 300, name_bytes("edge.example")),
                ("edge.example", TYPE_A, 20, vec![10, 0, 0, 1]),
                (
                    "edge.example",
                    TYPE_AAAA,
                    30,
                    vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                ),
                ("unrelated.example", TYPE_A, 20, vec![10, 0, 0, 9]),
            ],
        );
        let a = parse_answer(&m, &pq).unwrap();
        assert_eq!(a.rcode, 0);
        assert_eq!(
            a.addrs,
            vec![
                ("10.0.0.1".parse().unwrap(), 20),
                ("fd00::1".parse().unwrap(), 30)
            ]
        );
        assert_eq!(a.ttl_offsets.len(), 5);
        let mut capped = m.clone();
        cap_ttls(&mut capped, &a.ttl_offsets, 25);
        let a2 = parse_answer(&capped, &pq).unwrap();
        assert_eq!(a2.addrs[0].1, 20);
        assert_eq!(a2.addrs[1].1, 25);
    }

    #[test]
    fn answer_to_another_question_is_refused() {
        let q = build_query(9, "a.allowed.test", TYPE_A);
        let pq = parse_query(&q).unwrap();
        let other = build_query(9, "b.allowed.test", TYPE_A);
        assert!(parse_answer(&answer(&other, &[]), &pq).is_none());
        let other_id = build_query(10, "a.allowed.test", TYPE_A);
        assert!(parse_answer(&answer(&other_id, &[]), &pq).is_none());
        assert!(parse_answer(&q, &pq).is_none(), "a query is not an answer");
    }

    #[test]
    fn compression_loops_end() {
        let q = build_query(9, "a.test", TYPE_A);
        let pq = parse_query(&q).unwrap();
        let mut m = answer(&q, &[]);
        m[6..8].copy_from_slice(&1u16.to_be_bytes());
        let at = m.len();
        m.extend_from_slice(&[0xc0, at as u8]); // points at itself
        m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        let a = parse_answer(&m, &pq).unwrap();
        assert!(a.addrs.is_empty());
    }

    fn valid_answer() -> (Vec<u8>, Query) {
        let q = build_query(9, "www.allowed.test", TYPE_A);
        let pq = parse_query(&q).unwrap();
        let m = answer(
            &q,
            &[
                (
                    "www.allowed.test",
                    TYPE_CNAME,
                    300,
                    name_bytes("edge.example"),
                ),
                ("edge.example", TYPE_A, 20, vec![10, 0, 0, 1]),
            ],
        );
        (m, pq)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        #[test]
        fn no_byte_string_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_query(&bytes);
            let _ = error_answer(&bytes, Some(bytes.len()), RCODE_NXDOMAIN);
            let _ = error_answer(&bytes, None, RCODE_FORMERR);
            let (_, pq) = valid_answer();
            let _ = parse_answer(&bytes, &pq);
            if let Ok(q) = parse_query(&bytes) {
                let _ = parse_answer(&bytes, &q);
                prop_assert!(q.end <= bytes.len());
                let mut b = bytes.clone();
                cap_ttls(&mut b, &[q.end, usize::MAX - 2, bytes.len()], 1);
            }
        }

        #[test]
        fn mutated_answers_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let (mut m, pq) = valid_answer();
            for (at, v) in flips {
                let n = m.len();
                m[at % n] = v;
            }
            m.truncate(cut % (m.len() + 1));
            if let Some(a) = parse_answer(&m, &pq) {
                let mut b = m.clone();
                cap_ttls(&mut b, &a.ttl_offsets, 5);
                prop_assert!(a.ttl_offsets.iter().all(|o| o + 4 <= m.len()));
            }
            let _ = parse_query(&m);
        }
    }
}
