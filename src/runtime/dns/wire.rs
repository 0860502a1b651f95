//! The few parts of the DNS wire format (RFC 1035) the filter needs, read from untrusted
//! bytes: the question of a query, and the A/AAAA records (after CNAMEs) of an answer.
//! hickory-proto's decoder does the reading: every read is bounds-checked, labels are
//! capped at 63 bytes and names at 255, and a compression pointer is followed only to an
//! earlier offset, so no byte string can panic or loop (see the proptests). This module
//! adds what the filter needs on top: the text a name is matched by, the `plain` rule, the
//! CNAME chain with its cap, and where the TTLs are (to cap them in place).

use hickory_proto::op::{Header, HeaderCounts, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use std::fmt::Write as _;
use std::net::IpAddr;

pub const HEADER: usize = 12;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
/// CNAME links followed from the question name.
const MAX_CHAIN: usize = 16;
/// The longest text of a query's name (the most a name on the wire spells without
/// escapes): it is shown in reports and logs.
const MAX_TEXT: usize = 255;

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

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The text a name is matched and reported by, and whether it is `plain`: labels
/// lower-cased and joined by dots, no trailing dot. A byte no host name has is written
/// `\DDD` (a backslash too, so `\DDD` in the text is always an escape, which the reports
/// rely on to show each byte as it was); such a name is not plain, never matched.
fn name_text(name: &Name) -> (String, bool) {
    let mut text = String::with_capacity(name.len());
    let mut plain = true;
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        for &c in label {
            let c = c.to_ascii_lowercase();
            if c == b'.' || c == b'\\' || !(0x21..0x7f).contains(&c) {
                plain = false;
                let _ = write!(text, "\\{c:03}");
            } else {
                text.push(c as char);
            }
        }
    }
    (text, plain)
}

/// A question's name and type; its class is read past (any class is asked for as sent).
fn read_question(d: &mut BinDecoder<'_>) -> Option<(Name, u16)> {
    let name = Name::read(d).ok()?;
    let qtype = d.read_u16().ok()?.unverified(/* any type is a type */);
    d.read_u16().ok()?;
    Some((name, qtype))
}

/// Parses a client's query: one question, opcode QUERY.
pub fn parse_query(msg: &[u8]) -> Result<Query, Bad> {
    let header = Header::read(&mut BinDecoder::new(msg)).map_err(|_| Bad::Drop)?;
    if header.message_type == MessageType::Response {
        return Err(Bad::Drop);
    }
    if header.op_code != OpCode::Query {
        return Err(Bad::Answer(RCODE_NOTIMP));
    }
    if header.counts.queries != 1 {
        return Err(Bad::Answer(RCODE_FORMERR));
    }
    // The question of a query carries no compression pointer (nothing precedes it): read
    // from a buffer that starts at the question, where no pointer can point backwards.
    let question = msg.get(HEADER..).ok_or(Bad::Drop)?;
    let mut d = BinDecoder::new(question);
    let (name, qtype) = read_question(&mut d).ok_or(Bad::Answer(RCODE_FORMERR))?;
    let (name, plain) = name_text(&name);
    if name.len() > MAX_TEXT {
        return Err(Bad::Answer(RCODE_FORMERR));
    }
    Ok(Query {
        id: header.id,
        name,
        plain,
        qtype,
        end: HEADER + d.index(),
    })
}

/// Our own answer to a query: its header and question, with `rcode` and no records.
pub fn error_answer(msg: &[u8], q_end: Option<usize>, rcode: u8) -> Option<Vec<u8>> {
    let end = q_end.unwrap_or(HEADER).min(msg.len());
    let mut header = Header::read(&mut BinDecoder::new(msg.get(..end)?)).ok()?;
    // QR, opcode and RD kept from the query; RA set; AA, TC, Z, AD and CD cleared.
    let m = &mut header.metadata;
    m.message_type = MessageType::Response;
    m.authoritative = false;
    m.truncation = false;
    m.recursion_available = true;
    m.authentic_data = false;
    m.checking_disabled = false;
    m.response_code = ResponseCode::from_low(rcode & 0x0f);
    header.counts = HeaderCounts {
        queries: u16::from(q_end.is_some()),
        ..HeaderCounts::default()
    };
    let mut out = Vec::with_capacity(end);
    header.emit(&mut BinEncoder::new(&mut out)).ok()?;
    out.extend_from_slice(msg.get(HEADER..end)?);
    Some(out)
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

/// One resource record of an answer section, where it lies in the message.
struct Record<'a> {
    /// As `name_text` writes it.
    owner: String,
    rtype: RecordType,
    ttl: u32,
    ttl_at: usize,
    rdata_at: usize,
    rdata: &'a [u8],
}

fn read_record<'a>(d: &mut BinDecoder<'a>) -> Option<Record<'a>> {
    let (owner, _) = name_text(&Name::read(d).ok()?);
    let rtype = RecordType::from(d.read_u16().ok()?.unverified(/* any type is a type */));
    d.read_u16().ok()?;
    let ttl_at = d.index();
    let ttl = d.read_u32().ok()?.unverified(/* capped later */);
    let len = d.read_u16().ok()?.unverified(/* bounds-checked by read_slice */);
    let rdata_at = d.index();
    let rdata = d.read_slice(len.into()).ok()?.unverified(/* read by type below */);
    Some(Record {
        owner,
        rtype,
        ttl,
        ttl_at,
        rdata_at,
        rdata,
    })
}

/// The target of a CNAME record: a name inside its data, compressed against anything
/// before it in the message.
fn cname_target(msg: &[u8], r: &Record<'_>) -> Option<String> {
    let upto = msg.get(..r.rdata_at + r.rdata.len())?;
    let mut d = BinDecoder::new(upto);
    d.read_slice(r.rdata_at).ok()?;
    Some(name_text(&Name::read(&mut d).ok()?).0)
}

/// The address of an A or AAAA record (`None` for any other record, or a malformed one).
fn address(r: &Record<'_>) -> Option<IpAddr> {
    let mut d = BinDecoder::new(r.rdata);
    match (r.rtype, r.rdata.len()) {
        (RecordType::A, 4) => Some(IpAddr::V4(A::read(&mut d).ok()?.0)),
        (RecordType::AAAA, 16) => Some(IpAddr::V6(AAAA::read(&mut d).ok()?.0)),
        _ => None,
    }
}

/// Parses an upstream answer to `q` (same id, name and type, or `None`): a reply that does
/// not answer the question asked is never used.
pub fn parse_answer(msg: &[u8], q: &Query) -> Option<Answer> {
    let mut d = BinDecoder::new(msg);
    let header = Header::read(&mut d).ok()?;
    if header.message_type != MessageType::Response
        || header.id != q.id
        || header.counts.queries != 1
    {
        return None;
    }
    let (qname, qtype) = read_question(&mut d)?;
    if qtype != q.qtype || name_text(&qname).0 != q.name {
        return None;
    }
    let mut out = Answer {
        rcode: header.response_code.low(),
        truncated: header.truncation,
        ..Answer::default()
    };
    let mut records = vec![];
    // Every record takes at least 11 bytes: the count cannot make this loop long. The
    // records before a malformed one are used.
    for _ in 0..header.counts.answers {
        let Some(r) = read_record(&mut d) else {
            break;
        };
        out.ttl_offsets.push(r.ttl_at);
        records.push(r);
    }
    // Follow the CNAME chain from the question name.
    let mut chain = vec![q.name.clone()];
    for _ in 0..MAX_CHAIN {
        let Some(last) = chain.last() else { break };
        let next = records
            .iter()
            .find(|r| r.rtype == RecordType::CNAME && &r.owner == last)
            .and_then(|r| cname_target(msg, r));
        match next {
            Some(n) if !chain.contains(&n) => chain.push(n),
            _ => break,
        }
    }
    for r in &records {
        if !chain.contains(&r.owner) {
            continue;
        }
        if let Some(addr) = address(r) {
            out.addrs.push((addr, r.ttl));
        }
    }
    Some(out)
}

/// Caps every answer record's TTL at `max` seconds, so no client caches an address past
/// the time its firewall entry is kept. In place: the rest of the answer leaves as the
/// resolver wrote it.
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

/// Builds a query with hickory-proto's encoder, the name's letters as given (the tests).
#[cfg(test)]
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    use hickory_proto::op::Message;
    let labels = name.split('.').filter(|l| !l.is_empty());
    let name = Name::from_labels(labels.map(str::as_bytes)).unwrap();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(hickory_proto::op::Query::query(
        name,
        RecordType::from(qtype),
    ));
    m.to_vec().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TYPE_A: u16 = 1;
    const TYPE_CNAME: u16 = 5;
    const TYPE_AAAA: u16 = 28;

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
    fn a_pointer_in_the_question_of_a_query_is_formerr() {
        // Back into the header: "\x01\x00" there reads as a label holding a zero byte.
        let mut m = build_query(1, "x", 1);
        m.truncate(HEADER);
        m.extend_from_slice(&[0xc0, 2, 0, 1, 0, 1]);
        // Control: read from the start of the message, the pointer is taken.
        let mut whole = BinDecoder::new(&m);
        whole.read_slice(HEADER).unwrap();
        assert_eq!(Name::read(&mut whole).unwrap().num_labels(), 1);
        assert_eq!(parse_query(&m), Err(Bad::Answer(RCODE_FORMERR)));
    }

    #[test]
    fn names_over_255_bytes_are_formerr() {
        let label = |n: usize| vec![b'a'; n];
        let (l63, l61, l62) = (label(63), label(61), label(62));
        // 4 labels of 63, 63, 63 and 61 bytes: 255 bytes on the wire, the most there is.
        let longest = parse_query(&query_with_labels(&[&l63, &l63, &l63, &l61])).unwrap();
        assert_eq!(longest.name.len(), 253);
        assert_eq!(
            parse_query(&query_with_labels(&[&l63, &l63, &l63, &l62])),
            Err(Bad::Answer(RCODE_FORMERR))
        );
        assert_eq!(
            parse_query(&query_with_labels(&[&label(64)])),
            Err(Bad::Answer(RCODE_FORMERR))
        );
        // Short enough on the wire, but its escapes would make a line of 1000 characters.
        let odd = vec![1u8; 60];
        assert_eq!(
            parse_query(&query_with_labels(&[&odd, &odd, &odd, &odd])),
            Err(Bad::Answer(RCODE_FORMERR))
        );
        let q = parse_query(&query_with_labels(&[&odd[..20], &label(63), &label(63)])).unwrap();
        assert!(
            !q.plain && q.name.len() == 20 * 4 + 2 + 126,
            "{}",
            q.name.len()
        );
    }

    #[test]
    fn a_cname_target_is_read_within_its_record() {
        let q = build_query(9, "www.allowed.test", TYPE_A);
        let pq = parse_query(&q).unwrap();
        let mut m = answer(
            &q,
            &[
                ("edge.example", TYPE_A, 20, vec![10, 0, 0, 1]),
                (
                    "www.allowed.test",
                    TYPE_CNAME,
                    300,
                    name_bytes("edge.example"),
                ),
            ],
        );
        assert_eq!(parse_answer(&m, &pq).unwrap().addrs.len(), 1);
        // The CNAME's data length cut to its first label: the rest of the name still
        // follows in the message, but outside the record it is no name of the record's.
        let rdlen_at = q.len() + name_bytes("edge.example").len() + 14 + 10;
        assert_eq!(m[rdlen_at..rdlen_at + 2], 14u16.to_be_bytes());
        m[rdlen_at..rdlen_at + 2].copy_from_slice(&5u16.to_be_bytes());
        let a = parse_answer(&m, &pq).unwrap();
        assert!(a.addrs.is_empty(), "{a:?}");
        assert_eq!(a.ttl_offsets.len(), 2);
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
    fn error_answer_flags_for_every_query_flag_byte() {
        // QR set, opcode and RD kept, AA and TC cleared; RA set, Z, AD, CD cleared.
        let q = build_query(1, "a.test", 1);
        for (b2, b3) in (0..=255u8).flat_map(|a| (0..=255u8).map(move |b| (a, b))) {
            let mut m = q.clone();
            m[2] = b2;
            m[3] = b3;
            let a = error_answer(&m, Some(m.len()), RCODE_SERVFAIL).unwrap();
            assert_eq!(a[2], 0x80 | (b2 & 0x79), "{b2:#x}");
            assert_eq!(a[3], 0x80 | RCODE_SERVFAIL, "{b3:#x}");
        }
        let header_only = error_answer(&q, None, RCODE_FORMERR).unwrap();
        assert_eq!(header_only.len(), HEADER);
        assert_eq!(&header_only[4..], &[0; 8]);
        assert_eq!(error_answer(&q[..HEADER - 1], None, RCODE_FORMERR), None);
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
        fn any_label_bytes_give_their_text_or_are_not_plain(
            labels in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..6),
        ) {
            let refs: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
            let m = query_with_labels(&refs);
            let host = |c: &u8| {
                let c = c.to_ascii_lowercase();
                c != b'.' && c != b'\\' && (0x21..0x7f).contains(&c)
            };
            // One character per byte a host name has, four (`\DDD`) per other byte.
            let bytes = labels.iter().flatten();
            let text_len = bytes.map(|c| if host(c) { 1 } else { 4 }).sum::<usize>()
                + labels.len().saturating_sub(1);
            let Ok(q) = parse_query(&m) else {
                prop_assert!(text_len > MAX_TEXT);
                return Ok(());
            };
            prop_assert!(text_len <= MAX_TEXT);
            prop_assert_eq!(q.name.len(), text_len);
            prop_assert_eq!(q.end, m.len());
            prop_assert_eq!(q.plain, labels.iter().flatten().all(host));
            if q.plain {
                let text: Vec<String> = labels
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                    .collect();
                prop_assert_eq!(q.name, text.join("."));
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
