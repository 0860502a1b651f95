//! sandbox-probe: runs as the sandboxed command in the integration tiers and reports, as
//! one JSON object on stdout, what it is and what it can reach. Tests assert on that report,
//! so the sandbox is checked from the inside.
//!
//! Usage:
//!   sandbox-probe report [--tcp ADDR:PORT]... [--udp ADDR:PORT]... [--dns SERVER NAME]...
//!                        [--dns-tcp SERVER NAME]... [--read PATH]... [--write PATH]...
//!                        [--exec PATH]... [--resolve NAME]... [--timeout-ms N]
//!   sandbox-probe flood N ADDR PORT0  N TCP connects to ADDR:PORT0, ADDR:PORT0+1, ... in a
//!                                   thread; prints "flooding" after N/10, then for each of two signals
//!                                   "got SIG after K attempts", and "done {json}" after the
//!                                   flood; exits 0 after the flood and the second signal
//!   sandbox-probe exit N            exit with code N
//!   sandbox-probe die SIGNAL        kill itself with SIGNAL (a number)
//!   sandbox-probe signals N         print "ready", then one line per signal received;
//!                                   exit 0 after N signals
//!   sandbox-probe orphans N         leave N orphaned grandchildren, wait, count zombies
//!   sandbox-probe group N           start N children in its own process group, exit at once
//!   sandbox-probe sleep SECONDS     sleep with default signal dispositions
//!   sandbox-probe tty               report the process group and the terminal's foreground group
//!   sandbox-probe ids               print {"uid","euid","gid","egid"} (run as a set-uid copy)
//!   sandbox-probe stamp             print the microseconds since $BENCH_T0 (CLOCK_MONOTONIC ns,
//!                                   taken by the benchmark right before it exec'd the chain)
//!   sandbox-probe search NEEDLES ROOT...  every file it can read under each ROOT (links not
//!                                   followed; /proc, /sys and /dev skipped), its own
//!                                   environment and every /proc/*/environ and cmdline it can
//!                                   open, searched for each of the comma-separated NEEDLES
//!                                   (hex-encoded, so that argv does not hold them);
//!                                   prints {"hits": [{"needle","where"}], "files", "denied"}
//!   sandbox-probe plant SPEC...     leaves things where the next start looks, as an agent could;
//!                                   SPEC is KIND:PATH[:ARG], KIND one of fifo, dir, socket,
//!                                   file (ARG: content), json-mib (a valid JSON object of ARG
//!                                   MiB), mode (ARG: octal); prints one JSON result per SPEC
//!   sandbox-probe dns STEP...       DNS steps in order, one JSON line each as it finishes:
//!       --query udp|tcp SERVER NAME TYPE   one query (TYPE: A, AAAA, TXT, MX, ANY, ... or a number)
//!       --query-raw SERVER LABELS TYPE     one UDP query whose labels hold any bytes: LABELS are
//!                                          separated by '.', and `\xNN` in one is that byte (a dot
//!                                          inside a label is `\x2e`)
//!       --connect ADDR:PORT                a TCP connection (as `report --tcp`)
//!       --resolve-connect SERVER NAME PORT A query over UDP, then TCP to its first address
//!       --flood udp|tcp SERVER SUFFIX N    N random labels under SUFFIX, rotating record types;
//!                                          counts the answers by rcode
//!       --blast SERVER N                   N UDP queries sent back to back, answers counted after
//!       --garbage SERVER N                 N malformed/oversized datagrams and TCP streams
//!       --pid1                             try to signal, ptrace and read PID 1
//!       --loopback-echo ADDR:PORT          serve TCP and UDP echo on ADDR:PORT, then be a
//!                                          client of both (a dev server on localhost)
//!       --half-close SERVER NAME MS        a TCP query, then shutdown(SHUT_WR); prints
//!                                          {"step":"half-closed"} at once, then waits up to
//!                                          MS for the answer
//!       --hold ADDR:PORT                   a TCP connection kept open for --exchange, with
//!                                          one exchange at once (its local port reported)
//!       --exchange                         on each held connection in order: send a line,
//!                                          read the echo ({"results": [...]})
//!       --wait-file PATH                   wait (up to 60 s) until PATH exists
//!       --sleep MS
//!   sandbox-probe dns-flood N SERVER SUFFIX ALLOWED
//!                                   N distinct random names under SUFFIX over UDP in a
//!                                   thread; prints "flooding" after N/10, then one query
//!                                   for ALLOWED during the flood ({"allowed": ...}), then
//!                                   "got SIG after K queries" for a signal, and "done
//!                                   {json}" (with the first 100 names) after the flood
//!   sandbox-probe hijack --method plant|tcp-plant|spoof --resolver ADDR:PORT --ask ADDR:PORT
//!                        --name NAME --answer IP [--port P]... [--prime NAME]
//!                        [--wait-flow-ms MS] [--no-trigger] [--victim-wait-ms MS]
//!                        [--wait-file PATH]
//!                                   answer DNS in place of a root process's upstream
//!                                   (see sandbox-probe/hijack.rs); one JSON report

mod hijack;

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("report") => report(&args[1..]),
        Some("exit") => args.get(1).and_then(|n| n.parse().ok()).unwrap_or(2),
        Some("die") => die(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(9)),
        Some("signals") => signals(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1)),
        Some("orphans") => orphans(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10)),
        Some("group") => group(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(3)),
        Some("sleep") => {
            let s = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(60);
            std::thread::sleep(Duration::from_secs(s));
            0
        }
        Some("tty") => tty(),
        Some("ids") => ids(),
        Some("stamp") => stamp(),
        Some("dns") => dns_steps(&args[1..]),
        Some("flood") => flood(&args[1..]),
        Some("search") => search(&args[1..]),
        Some("plant") => plant(&args[1..]),
        Some("hijack") => hijack::main(&args[1..]),
        Some("dns-flood") => dns_flood_signals(&args[1..]),
        _ => {
            eprintln!("usage: sandbox-probe report|exit|die|signals|orphans|group|sleep|tty ...");
            2
        }
    };
    std::process::exit(code);
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EAGAIN) => "EAGAIN".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ENOENT) => "ENOENT".into(),
        Some(libc::ELOOP) => "ELOOP".into(),
        Some(n) => format!("errno {n}"),
        None if e.kind() == std::io::ErrorKind::TimedOut => "ETIMEDOUT".into(),
        None if e.kind() == std::io::ErrorKind::WouldBlock => "ETIMEDOUT".into(),
        None => e.to_string(),
    }
}

fn status_fields() -> Value {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut m = Map::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.starts_with("Cap") || k == "NoNewPrivs" || k == "Seccomp" || k == "Groups" {
                m.insert(k.into(), Value::String(v.trim().into()));
            }
        }
    }
    Value::Object(m)
}

fn open_fds() -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return vec![];
    };
    // The listing itself holds one descriptor; report it as such so a test can ignore it.
    let mut fds = vec![];
    for ent in dir.flatten() {
        let name = ent.file_name().to_string_lossy().to_string();
        let target = std::fs::read_link(ent.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        fds.push(json!({"fd": name.parse::<i64>().unwrap_or(-1), "target": target}));
    }
    fds
}

fn tcp(addr: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    let sa: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => return json!({"target": addr, "result": "bad-address", "error": e.to_string()}),
    };
    let (result, error, body) = match TcpStream::connect_timeout(&sa, timeout) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut buf = vec![0; 256];
            let n = s.read(&mut buf).unwrap_or(0);
            buf.truncate(n);
            ("connected", None, String::from_utf8_lossy(&buf).to_string())
        }
        Err(e) => ("error", Some(errno_name(&e)), String::new()),
    };
    json!({"target": addr, "result": result, "error": error, "body": body,
           "ms": start.elapsed().as_millis() as u64})
}

/// A DNS query for `name` with record type `qtype`, its letters as given (the tests read
/// the case back). An error for a name hickory-proto cannot encode (a label over 63 bytes,
/// over 255 in all).
fn dns_query(name: &str, id: u16, qtype: u16) -> std::io::Result<Vec<u8>> {
    dns_query_labels(name.split('.').map(str::as_bytes), id, qtype)
}

/// A query whose name has exactly these labels (any bytes; empty ones are left out).
fn dns_query_labels<'a>(
    labels: impl IntoIterator<Item = &'a [u8]>,
    id: u16,
    qtype: u16,
) -> std::io::Result<Vec<u8>> {
    let bad = |e: hickory_proto::ProtoError| std::io::Error::other(format!("bad name: {e}"));
    let labels = labels.into_iter().filter(|l| !l.is_empty());
    let name = Name::from_labels(labels).map_err(bad)?;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, RecordType::from(qtype)));
    m.to_vec().map_err(bad)
}

/// Reads rcode and the A/AAAA addresses of a response (enough for the tests): the records
/// before a malformed one count.
fn dns_parse(resp: &[u8]) -> Value {
    let mut d = BinDecoder::new(resp);
    let Ok(header) = Header::read(&mut d) else {
        return json!({"result": "short-reply"});
    };
    let rcode = header.response_code.low();
    if Message::read_queries(&mut d, header.counts.queries.into()).is_err() {
        return json!({"result": "bad-reply", "rcode": rcode});
    }
    let mut addrs = vec![];
    for _ in 0..header.counts.answers {
        let Ok(record) = Record::read(&mut d) else {
            break;
        };
        match record.data {
            RData::A(a) => addrs.push(a.0.to_string()),
            RData::AAAA(a) => addrs.push(a.0.to_string()),
            _ => {}
        }
    }
    let rname = match rcode {
        0 => "NOERROR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        5 => "REFUSED",
        _ => "OTHER",
    };
    json!({"result": "reply", "rcode": rname, "addrs": addrs})
}

/// The question of a DNS message, spelled as it came: `{"name", "type", "id"}`.
fn dns_parse_question(msg: &[u8]) -> Value {
    let mut d = BinDecoder::new(msg);
    let id = Header::read(&mut d).ok().map(|h| h.id);
    let question = id.and_then(|_| Query::read(&mut d).ok());
    let name = question.as_ref().map(|q| {
        let labels: Vec<_> = q.name().iter().map(String::from_utf8_lossy).collect();
        labels.join(".")
    });
    let ty = question.map(|q| u16::from(q.query_type()));
    json!({"name": name.unwrap_or_default(), "type": ty, "id": id})
}

/// Sends one query over `proto` ("udp" or "tcp") and returns the raw reply.
fn dns_exchange(
    proto: &str,
    sa: SocketAddr,
    name: &str,
    ty: u16,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let q = dns_query(name, 0x5a5a, ty)?;
    if proto == "tcp" {
        let mut s = TcpStream::connect_timeout(&sa, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut msg = (q.len() as u16).to_be_bytes().to_vec();
        msg.extend_from_slice(&q);
        s.write_all(&msg)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut buf = vec![0; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf)?;
        Ok(buf)
    } else {
        let s = udp_socket(&sa)?;
        s.set_read_timeout(Some(timeout))?;
        s.send(&q)?;
        let mut buf = vec![0; 65536];
        let n = s.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// One DNS query as a report entry: the parsed reply (rcode, addresses, answer count,
/// truncation) or the error, and how long it took.
fn dns_report(proto: &str, server: &str, name: &str, ty: u16, timeout: Duration) -> Value {
    let start = Instant::now();
    let reply = server
        .parse::<SocketAddr>()
        .map_err(|_| std::io::Error::other("bad server address"))
        .and_then(|sa| dns_exchange(proto, sa, name, ty, timeout));
    let mut v = match reply {
        Ok(resp) => {
            let mut v = dns_parse(&resp);
            if let (Some(flags), Some(an)) = (resp.get(2), resp.get(6..8)) {
                v["ancount"] = json!(u16::from_be_bytes([an[0], an[1]]));
                v["tc"] = json!(flags & 0x02 != 0);
            }
            // The question came back byte for byte as asked (letter case included).
            let asked = dns_query(name, 0, ty).unwrap_or_default();
            let asked = asked.get(12..).unwrap_or_default();
            v["echoed"] = json!(resp.get(12..12 + asked.len()) == Some(asked));
            v
        }
        Err(e) => json!({"result": "error", "error": errno_name(&e)}),
    };
    v["server"] = json!(server);
    v["name"] = json!(name);
    v["proto"] = json!(proto);
    v["ms"] = json!(start.elapsed().as_millis() as u64);
    v
}

fn udp(addr: &str, timeout: Duration) -> Value {
    // A DNS-shaped datagram: our fixtures answer it, so "reply" proves the path both ways.
    let mut v = dns_report("udp", addr, "probe.test", 1, timeout);
    v["target"] = json!(addr);
    v
}

fn read_file(path: &str) -> Value {
    match std::fs::read(path) {
        Ok(b) => json!({"path": path, "result": "ok", "content": String::from_utf8_lossy(&b)}),
        Err(e) => json!({"path": path, "result": "error", "error": errno_name(&e)}),
    }
}

fn write_file(path: &str) -> Value {
    let r = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(b""));
    match r {
        Ok(()) => json!({"path": path, "result": "ok"}),
        Err(e) => json!({"path": path, "result": "error", "error": errno_name(&e)}),
    }
}

/// Runs a program and reports its exit status and output (e.g. a set-uid copy of the probe
/// reporting its euid, or `sudo -n true`).
fn exec(cmdline: &str) -> Value {
    let mut parts = cmdline.split_whitespace();
    let Some(prog) = parts.next() else {
        return json!({"cmd": cmdline, "result": "error", "error": "empty"});
    };
    match std::process::Command::new(prog).args(parts).output() {
        Ok(o) => json!({"cmd": cmdline, "result": "ran", "code": o.status.code(),
                         "stdout": String::from_utf8_lossy(&o.stdout),
                         "stderr": String::from_utf8_lossy(&o.stderr)}),
        Err(e) => json!({"cmd": cmdline, "result": "error", "error": errno_name(&e)}),
    }
}

fn report(args: &[String]) -> i32 {
    let mut timeout = Duration::from_millis(2000);
    let mut tcp_t = vec![];
    let mut udp_t = vec![];
    let mut dns_t = vec![];
    let mut reads = vec![];
    let mut writes = vec![];
    let mut execs = vec![];
    let mut resolves = vec![];
    let mut unix_t = vec![];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut next = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--tcp" => tcp_t.push(next()),
            "--udp" => udp_t.push(next()),
            "--dns" => dns_t.push(("udp", next(), next())),
            "--dns-tcp" => dns_t.push(("tcp", next(), next())),
            "--read" => reads.push(next()),
            "--write" => writes.push(next()),
            "--exec" => execs.push(next()),
            "--resolve" => resolves.push(next()),
            "--unix" => unix_t.push((false, next())),
            "--unix-abstract" => unix_t.push((true, next())),
            "--timeout-ms" => {
                timeout = Duration::from_millis(next().parse().unwrap_or(2000));
            }
            other => {
                eprintln!("sandbox-probe: unknown option {other}");
                return 2;
            }
        }
    }
    let mut groups: Vec<u32> = vec![0; 256];
    // SAFETY: the buffer has room for 256 gids.
    let n = unsafe { libc::getgroups(256, groups.as_mut_ptr()) };
    groups.truncate(n.max(0) as usize);
    let env: Map<String, Value> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().to_string(),
                Value::String(v.to_string_lossy().to_string()),
            )
        })
        .collect();
    // SAFETY: plain getters.
    let (uid, euid, gid, egid, pid, ppid, pgid, sid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
            libc::getpid(),
            libc::getppid(),
            libc::getpgrp(),
            libc::getsid(0),
        )
    };
    let pid1_environ = match std::fs::read("/proc/1/environ") {
        Ok(b) => {
            json!({"result": "ok", "content": String::from_utf8_lossy(&b).replace('\0', "\n")})
        }
        Err(e) => json!({"result": "error", "error": errno_name(&e)}),
    };
    let out = json!({
        "uid": uid, "euid": euid, "gid": gid, "egid": egid, "groups": groups,
        "pid": pid, "ppid": ppid, "pgid": pgid, "sid": sid,
        "status": status_fields(),
        "env": env,
        "cwd": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
        "fds": open_fds(),
        "pid1_environ": pid1_environ,
        "tcp": tcp_t.iter().map(|a| tcp(a, timeout)).collect::<Vec<_>>(),
        "udp": udp_t.iter().map(|a| udp(a, timeout)).collect::<Vec<_>>(),
        "dns": dns_t.iter().map(|(p, s, n)| dns_report(p, s, n, 1, timeout)).collect::<Vec<_>>(),
        "read": reads.iter().map(|p| read_file(p)).collect::<Vec<_>>(),
        "write": writes.iter().map(|p| write_file(p)).collect::<Vec<_>>(),
        "exec": execs.iter().map(|c| exec(c)).collect::<Vec<_>>(),
        "resolve": resolves.iter().map(|n| resolve(n)).collect::<Vec<_>>(),
        "unix": unix_t.iter().map(|(a, p)| unix_connect(*a, p, timeout)).collect::<Vec<_>>(),
    });
    println!("{out}");
    0
}

/// Connects to a Unix socket (a path, or a name in the abstract namespace), sends one
/// control request line that would widen the sandbox, and reports what came back.
fn unix_connect(abstract_name: bool, target: &str, timeout: Duration) -> Value {
    use std::io::{BufRead, Write};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let stream = if abstract_name {
        SocketAddr::from_abstract_name(target.as_bytes()).and_then(|a| UnixStream::connect_addr(&a))
    } else {
        UnixStream::connect(target)
    };
    let mut s = match stream {
        Ok(s) => s,
        Err(e) => {
            return json!({"target": target, "abstract": abstract_name, "result": "error",
                "error": errno_name(&e)})
        }
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.write_all(b"{\"v\":1,\"op\":\"allow\",\"entries\":[\"0.0.0.0/0\"]}\n");
    let mut line = String::new();
    let _ = std::io::BufReader::new(&s).read_line(&mut line);
    json!({"target": target, "abstract": abstract_name, "result": "connected",
        "reply": line.trim_end()})
}

/// The system resolver (musl: /etc/resolv.conf), as a program in the sandbox would use it.
fn resolve(name: &str) -> Value {
    use std::net::ToSocketAddrs;
    let start = Instant::now();
    let mut v = match (name, 0u16).to_socket_addrs() {
        Ok(addrs) => {
            let a: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            json!({"result": "ok", "addrs": a})
        }
        Err(e) => json!({"result": "error", "error": e.to_string()}),
    };
    v["name"] = json!(name);
    v["ms"] = json!(start.elapsed().as_millis() as u64);
    v
}

fn flood(args: &[String]) -> i32 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let Some(addr) = args.get(1).and_then(|a| a.parse::<std::net::IpAddr>().ok()) else {
        eprintln!("sandbox-probe: flood N ADDR PORT0");
        return 2;
    };
    let port0: u16 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    // SAFETY: blocking every catchable signal (inherited by the flood thread) to wait for
    // them synchronously.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    let start = Instant::now();
    let worker = std::thread::spawn(move || {
        let mut refused = 0usize;
        for i in 0..n {
            let port = port0.wrapping_add((i % 60_000) as u16).max(1);
            let sa = SocketAddr::new(addr, port);
            if let Err(e) = TcpStream::connect_timeout(&sa, Duration::from_millis(500)) {
                if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    refused += 1;
                }
            }
            counter.store(i + 1, Ordering::SeqCst);
        }
        refused
    });
    // Announce once the flood is well under way (PID 1 has a backlog of reports to read).
    while done.load(Ordering::SeqCst) < n / 10 && !worker.is_finished() {
        std::thread::sleep(Duration::from_micros(200));
    }
    println!("flooding");
    let _ = std::io::stdout().flush();
    let wait = |done: &AtomicUsize| {
        // SAFETY: set holds every signal; they are blocked in every thread.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        println!("got {sig} after {} attempts", done.load(Ordering::SeqCst));
        let _ = std::io::stdout().flush();
    };
    wait(&done);
    let refused = worker.join().unwrap_or(0);
    println!(
        "done {}",
        json!({"attempts": n, "refused": refused, "ms": start.elapsed().as_millis() as u64})
    );
    let _ = std::io::stdout().flush();
    wait(&done);
    0
}

fn dns_flood_signals(args: &[String]) -> i32 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let (Some(server), Some(suffix), Some(allowed)) = (
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).cloned(),
        args.get(3).cloned(),
    ) else {
        eprintln!("sandbox-probe: dns-flood N SERVER SUFFIX ALLOWED");
        return 2;
    };
    // SAFETY: blocking every catchable signal (inherited by the flood thread) to wait for
    // them synchronously.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut rng = Rng::new();
    let names: Vec<String> = (0..n)
        .map(|i| format!("{i:06}{}.{suffix}", rng.label(10)))
        .collect();
    let first: Vec<String> = names.iter().take(100).cloned().collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let start = Instant::now();
    let worker = std::thread::spawn(move || -> (u64, u64) {
        let Ok(s) = udp_socket(&server) else {
            return (0, 0);
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        let (mut nx, mut other) = (0u64, 0u64);
        let mut buf = vec![0u8; 4096];
        for chunk in names.chunks(256) {
            for (i, name) in chunk.iter().enumerate() {
                if let Ok(q) = dns_query(name, i as u16, 1) {
                    let _ = s.send(&q);
                }
            }
            for _ in chunk {
                match s.recv(&mut buf) {
                    Ok(k) if rcode_name(&buf[..k]) == "NXDOMAIN" => nx += 1,
                    Ok(_) => other += 1,
                    Err(_) => break,
                }
            }
            counter.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        (nx, other)
    });
    while sent.load(Ordering::SeqCst) < n / 10 && !worker.is_finished() {
        std::thread::sleep(Duration::from_micros(200));
    }
    println!("flooding");
    let allowed = dns_report(
        "udp",
        &server.to_string(),
        &allowed,
        1,
        Duration::from_secs(2),
    );
    println!(
        "{}",
        json!({"allowed": allowed, "sent": sent.load(Ordering::SeqCst)})
    );
    let _ = std::io::stdout().flush();
    // SAFETY: set holds every signal; they are blocked in every thread.
    let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
    println!("got {sig} after {} queries", sent.load(Ordering::SeqCst));
    let _ = std::io::stdout().flush();
    let (nx, other) = worker.join().unwrap_or((0, 0));
    println!(
        "done {}",
        json!({"queries": n, "nxdomain": nx, "other": other, "first": first,
               "ms": start.elapsed().as_millis() as u64})
    );
    let _ = std::io::stdout().flush();
    0
}

fn die(sig: i32) -> i32 {
    // SAFETY: resetting to the default disposition, then signalling ourselves.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
    std::thread::sleep(Duration::from_secs(5));
    1
}

fn signals(n: usize) -> i32 {
    // SAFETY: blocking every catchable signal and waiting for them synchronously.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        println!("ready");
        let _ = std::io::stdout().flush();
        for _ in 0..n {
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            println!("got {sig}");
            let _ = std::io::stdout().flush();
        }
    }
    0
}

fn zombies() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .count()
}

fn orphans(n: usize) -> i32 {
    for _ in 0..n {
        // SAFETY: fork in a single-threaded program; the children only sleep and _exit.
        match unsafe { libc::fork() } {
            0 => {
                // child: start a grandchild, then exit so it is orphaned
                if unsafe { libc::fork() } == 0 {
                    std::thread::sleep(Duration::from_millis(100));
                    unsafe { libc::_exit(0) };
                }
                unsafe { libc::_exit(0) };
            }
            pid if pid > 0 => {
                let mut st = 0;
                // SAFETY: reaping our own direct child.
                unsafe { libc::waitpid(pid, &mut st, 0) };
            }
            _ => return 3,
        }
    }
    // Orphans exit after 100 ms and are reparented to PID 1: give it time to reap them.
    std::thread::sleep(Duration::from_millis(1000));
    println!("{}", json!({"orphans": n, "zombies": zombies()}));
    0
}

fn group(n: usize) -> i32 {
    for _ in 0..n {
        // SAFETY: as in orphans; the children stay in our process group and sleep.
        if unsafe { libc::fork() } == 0 {
            std::thread::sleep(Duration::from_secs(60));
            unsafe { libc::_exit(0) };
        }
    }
    println!("{}", json!({"started": n}));
    0
}

fn ids() -> i32 {
    // SAFETY: plain getters.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    println!(
        "{}",
        json!({"uid": uid, "euid": euid, "gid": gid, "egid": egid})
    );
    0
}

fn tty() -> i32 {
    // SAFETY: plain getters on our own process and stdin.
    let (pgid, fg) = unsafe { (libc::getpgrp(), libc::tcgetpgrp(0)) };
    println!(
        "{}",
        json!({"pgid": pgid, "foreground": fg, "pid": unsafe { libc::getpid() }})
    );
    0
}

fn stamp() -> i32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
    let Some(t0) = std::env::var("BENCH_T0")
        .ok()
        .and_then(|v| v.parse::<i128>().ok())
    else {
        eprintln!("sandbox-probe: BENCH_T0 is not set");
        return 2;
    };
    println!("{}", (now - t0) / 1000);
    0
}

fn qtype(s: &str) -> u16 {
    match s.to_ascii_uppercase().as_str() {
        "A" => 1,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "NULL" => 10,
        "PTR" => 12,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "HTTPS" => 65,
        "ANY" => 255,
        n => n.parse().unwrap_or(1),
    }
}

struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(t ^ ((std::process::id() as u64) << 32) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn label(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }
}

fn rcode_name(resp: &[u8]) -> &'static str {
    match resp.get(3).map(|b| b & 0x0f) {
        Some(0) => "NOERROR",
        Some(1) => "FORMERR",
        Some(2) => "SERVFAIL",
        Some(3) => "NXDOMAIN",
        Some(4) => "NOTIMP",
        Some(5) => "REFUSED",
        Some(_) => "OTHER",
        None => "short",
    }
}

fn udp_socket(server: &SocketAddr) -> std::io::Result<UdpSocket> {
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(server)?;
    Ok(s)
}

fn one_query(proto: &str, server: &str, name: &str, ty: u16, timeout: Duration) -> Value {
    let mut v = dns_report(proto, server, name, ty, timeout);
    v["step"] = json!("query");
    v["type"] = json!(ty);
    v
}

const FLOOD_TYPES: &[u16] = &[1, 16, 28, 15, 10, 255, 5, 33, 65, 12];

/// Queries for random names under `suffix`, `window` at a time, each answered or timed out.
fn dns_flood(proto: &str, server: &str, suffix: &str, n: usize) -> Value {
    let start = Instant::now();
    let mut rng = Rng::new();
    let mut counts: Map<String, Value> = Map::new();
    let mut bump = |k: &str| {
        let c = counts.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        counts.insert(k.to_string(), json!(c + 1));
    };
    let Ok(sa) = server.parse::<SocketAddr>() else {
        return json!({"step": "flood", "result": "bad-address"});
    };
    let mut names = vec![];
    for i in 0..n {
        let name = format!("{}.{suffix}", rng.label(12 + (i % 20)));
        names.push((name, FLOOD_TYPES[i % FLOOD_TYPES.len()]));
    }
    for chunk in names.chunks(50) {
        if proto == "tcp" {
            let run = || -> std::io::Result<Vec<Vec<u8>>> {
                let mut s = TcpStream::connect_timeout(&sa, DNS_PATIENCE)?;
                s.set_read_timeout(Some(DNS_PATIENCE))?;
                let mut out = vec![];
                for (i, (name, ty)) in chunk.iter().enumerate() {
                    let q = dns_query(name, i as u16, *ty)?;
                    out.extend_from_slice(&(q.len() as u16).to_be_bytes());
                    out.extend_from_slice(&q);
                }
                s.write_all(&out)?;
                let mut got = vec![];
                for _ in chunk {
                    let mut len = [0u8; 2];
                    s.read_exact(&mut len)?;
                    let mut buf = vec![0; u16::from_be_bytes(len) as usize];
                    s.read_exact(&mut buf)?;
                    got.push(buf);
                }
                Ok(got)
            };
            match run() {
                Ok(got) => got.iter().for_each(|r| bump(rcode_name(r))),
                Err(e) => bump(&format!("error {}", errno_name(&e))),
            }
        } else {
            let Ok(s) = udp_socket(&sa) else {
                bump("error socket");
                continue;
            };
            let _ = s.set_read_timeout(Some(DNS_PATIENCE));
            for (i, (name, ty)) in chunk.iter().enumerate() {
                if let Ok(q) = dns_query(name, i as u16, *ty) {
                    let _ = s.send(&q);
                }
            }
            let mut buf = vec![0; 65536];
            for _ in chunk {
                match s.recv(&mut buf) {
                    Ok(n) => bump(rcode_name(&buf[..n])),
                    Err(e) => bump(&format!("error {}", errno_name(&e))),
                }
            }
        }
    }
    json!({"step": "flood", "proto": proto, "suffix": suffix, "sent": n, "rcodes": counts,
           "ms": start.elapsed().as_millis() as u64})
}

/// Fire-and-forget: `n` queries as fast as the socket takes them, while a second thread
/// counts the answers as they arrive (so the probe's own receive buffer, a few hundred
/// datagrams, never caps the count), until 500 ms pass with none after the last send.
fn blast(server: &str, n: usize) -> Value {
    use std::sync::atomic::{AtomicBool, Ordering};
    let start = Instant::now();
    let Ok(sa) = server.parse::<SocketAddr>() else {
        return json!({"step": "blast", "result": "bad-address"});
    };
    let Ok(s) = udp_socket(&sa) else {
        return json!({"step": "blast", "result": "error"});
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let sending = AtomicBool::new(true);
    let count_until_quiet = || {
        let mut buf = vec![0; 65536];
        let mut answers = 0u64;
        // once sending has ended: since the last answer (or the end, if none came since)
        let mut quiet_since = None;
        loop {
            let got = s.recv(&mut buf).is_ok();
            answers += u64::from(got);
            if sending.load(Ordering::Acquire) {
                continue;
            }
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if got {
                quiet_since = Some(Instant::now());
            } else if since.elapsed() >= Duration::from_millis(500) {
                return answers;
            }
        }
    };
    let (sent, answers) = std::thread::scope(|scope| {
        let counting = scope.spawn(count_until_quiet);
        let mut rng = Rng::new();
        let mut sent = 0;
        for i in 0..n {
            let name = format!("{}.flood.evil.test", rng.label(16));
            let q = dns_query(&name, i as u16, FLOOD_TYPES[i % FLOOD_TYPES.len()]);
            if q.is_ok_and(|q| s.send(&q).is_ok()) {
                sent += 1;
            }
        }
        sending.store(false, Ordering::Release);
        (sent, counting.join().unwrap_or(0))
    });
    json!({"step": "blast", "sent": sent, "answers": answers,
           "ms": start.elapsed().as_millis() as u64})
}

/// Bytes no resolver should choke on: random, truncated, oversized, looping pointers,
/// answers posing as queries; over TCP, lying length prefixes and half messages.
fn garbage(server: &str, n: usize) -> Value {
    let start = Instant::now();
    let Ok(sa) = server.parse::<SocketAddr>() else {
        return json!({"step": "garbage", "result": "bad-address"});
    };
    let mut rng = Rng::new();
    let mut sent = 0;
    if let Ok(s) = udp_socket(&sa) {
        for i in 0..n {
            let mut m: Vec<u8> = match i % 6 {
                0 => (0..(rng.next() % 600) as usize)
                    .map(|_| rng.next() as u8)
                    .collect(),
                1 => {
                    let mut q = dns_query("a.allowed.test", 1, 1).unwrap_or_default();
                    q.truncate((rng.next() % 20) as usize);
                    q
                }
                2 => vec![0x41; 60_000],
                3 => {
                    // a pointer to itself in the question
                    let mut q = dns_query("x", 3, 1).unwrap_or_default();
                    q.truncate(12);
                    q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
                    q
                }
                4 => {
                    let mut q = dns_query("a.allowed.test", 4, 1).unwrap_or_default();
                    q[2] |= 0x80; // a response
                    q
                }
                _ => {
                    let mut q = dns_query("a.allowed.test", 5, 1).unwrap_or_default();
                    let at = 12 + (rng.next() as usize % (q.len() - 12));
                    q[at] = rng.next() as u8;
                    q[5] = (rng.next() % 4) as u8; // qdcount 0..3
                    q
                }
            };
            if m.is_empty() {
                m.push(0);
            }
            if s.send(&m).is_ok() {
                sent += 1;
            }
        }
    }
    let mut streams = 0;
    for i in 0..20 {
        if let Ok(mut t) = TcpStream::connect_timeout(&sa, Duration::from_secs(1)) {
            streams += 1;
            let _ = match i % 4 {
                0 => t.write_all(&[0xff, 0xff, 1, 2, 3]), // promises 65535 bytes, sends 3
                1 => t.write_all(&[0, 3, 1, 2, 3, 0, 12]), // too short to be a query
                2 => {
                    let junk: Vec<u8> = (0..5000).map(|_| rng.next() as u8).collect();
                    t.write_all(&junk)
                }
                _ => t.write_all(&[0]),
            };
            // closed half-way through
        }
    }
    json!({"step": "garbage", "datagrams": sent, "streams": streams,
           "ms": start.elapsed().as_millis() as u64})
}

/// A TCP client that sends a query and closes its sending side at once (as `dig +tcp` or a
/// pipe that ends): the server must answer it, and must not spin on the end-of-file while
/// the answer is on its way.
fn half_close(server: &str, name: &str, ms: u64) -> Value {
    let start = Instant::now();
    let run = || -> std::io::Result<Vec<u8>> {
        let sa: SocketAddr = server
            .parse()
            .map_err(|_| std::io::Error::other("bad server address"))?;
        let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
        let q = dns_query(name, 0x4242, 1)?;
        let mut msg = (q.len() as u16).to_be_bytes().to_vec();
        msg.extend_from_slice(&q);
        s.write_all(&msg)?;
        s.shutdown(std::net::Shutdown::Write)?;
        println!("{}", json!({"step": "half-closed"}));
        let _ = std::io::stdout().flush();
        s.set_read_timeout(Some(Duration::from_millis(ms.max(1))))?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut buf = vec![0; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf)?;
        Ok(buf)
    };
    let mut v = match run() {
        Ok(resp) => dns_parse(&resp),
        Err(e) => json!({"result": "error", "error": errno_name(&e)}),
    };
    v["step"] = json!("half-close");
    v["ms"] = json!(start.elapsed().as_millis() as u64);
    v
}

/// A server of the user's own on a loopback address (TCP and UDP echo), and one exchange
/// with each as a client: `{"tcp": "ok"|error, "udp": "ok"|error}`.
fn loopback_echo(addr: &str) -> Value {
    let Ok(sa) = addr.parse::<SocketAddr>() else {
        return json!({"step": "loopback-echo", "result": "bad-address"});
    };
    let t = Duration::from_secs(2);
    let tcp_result = (|| -> std::io::Result<()> {
        let l = std::net::TcpListener::bind(sa)?;
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut c, _) = l.accept()?;
            let mut b = [0u8; 5];
            c.read_exact(&mut b)?;
            c.write_all(&b)
        });
        let mut c = TcpStream::connect_timeout(&sa, t)?;
        c.set_read_timeout(Some(t))?;
        c.write_all(b"hello")?;
        let mut b = [0u8; 5];
        c.read_exact(&mut b)?;
        server
            .join()
            .map_err(|_| std::io::Error::other("server"))??;
        (&b == b"hello")
            .then_some(())
            .ok_or(std::io::Error::other("echo"))
    })();
    let udp_result = (|| -> std::io::Result<()> {
        let srv = UdpSocket::bind(sa)?;
        srv.set_read_timeout(Some(t))?;
        let c = udp_socket(&sa)?;
        c.set_read_timeout(Some(t))?;
        c.send(b"hello")?;
        let mut b = [0u8; 16];
        let (n, from) = srv.recv_from(&mut b)?;
        srv.send_to(&b[..n], from)?;
        let n = c.recv(&mut b)?;
        (&b[..n] == b"hello")
            .then_some(())
            .ok_or(std::io::Error::other("echo"))
    })();
    let show = |r: std::io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => errno_name(&e),
    };
    json!({"step": "loopback-echo", "addr": addr, "tcp": show(tcp_result), "udp": show(udp_result)})
}

fn pid1_attacks() -> Value {
    // Signal 0 checks the permission without delivering anything.
    // SAFETY: kill and ptrace on PID 1 with no memory passed; both are expected to fail.
    let (kill_rc, kill_err) = unsafe { (libc::kill(1, 0), std::io::Error::last_os_error()) };
    let (pt_rc, pt_err) = unsafe {
        (
            libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0),
            std::io::Error::last_os_error(),
        )
    };
    let mem = std::fs::read("/proc/1/environ");
    json!({"step": "pid1",
           "kill": if kill_rc == 0 { "ok".to_string() } else { errno_name(&kill_err) },
           "ptrace": if pt_rc == 0 { "ok".to_string() } else { errno_name(&pt_err) },
           "environ": match mem { Ok(_) => "ok".to_string(), Err(e) => errno_name(&e) }})
}

/// `a\x2eb.c` -> [b"a.b", b"c"]: labels with arbitrary bytes, for names no resolver
/// library would send.
fn raw_labels(escaped: &str) -> Vec<Vec<u8>> {
    escaped
        .split('.')
        .map(|label| {
            let b = label.as_bytes();
            let mut out = vec![];
            let mut i = 0;
            while i < b.len() {
                let hex = b
                    .get(i + 2..i + 4)
                    .filter(|_| b[i..].starts_with(b"\\x"))
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 4;
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            out
        })
        .collect()
}

fn raw_query(server: &str, escaped: &str, ty: u16, timeout: Duration) -> Value {
    let labels = raw_labels(escaped);
    let reply = server
        .parse::<SocketAddr>()
        .map_err(|_| std::io::Error::other("bad server address"))
        .and_then(|sa| {
            let q = dns_query_labels(labels.iter().map(Vec::as_slice), 0x3c3c, ty)?;
            let s = udp_socket(&sa)?;
            s.set_read_timeout(Some(timeout))?;
            s.send(&q)?;
            let mut buf = vec![0; 65536];
            let n = s.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        });
    let mut v = match reply {
        Ok(resp) => dns_parse(&resp),
        Err(e) => json!({"result": "error", "error": errno_name(&e)}),
    };
    v["step"] = json!("query-raw");
    v["name"] = json!(escaped);
    v
}

fn plant(specs: &[String]) -> i32 {
    use std::os::unix::fs::PermissionsExt;
    let mut code = 0;
    for spec in specs {
        let mut parts = spec.splitn(3, ':');
        let (kind, path, arg) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        if kind != "mode" {
            // whatever was there goes first, as an agent would do it
            let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
        }
        let r: std::io::Result<()> = match kind {
            "fifo" => mkfifo(path),
            "dir" => std::fs::create_dir(path),
            "socket" => std::os::unix::net::UnixListener::bind(path).map(drop),
            "file" => std::fs::write(path, arg),
            "json-mib" => {
                let mib: usize = arg.parse().unwrap_or(1);
                // [0,0,...]: two bytes per value, the costliest shape to parse
                let mut body = String::with_capacity(mib << 20);
                body.push_str("{\"a\":[0");
                while body.len() < (mib << 20) - 2 {
                    body.push_str(",0");
                }
                body.push_str("]}");
                std::fs::write(path, body)
            }
            "mode" => u32::from_str_radix(arg, 8)
                .map_err(std::io::Error::other)
                .and_then(|m| std::fs::set_permissions(path, std::fs::Permissions::from_mode(m))),
            other => Err(std::io::Error::other(format!("unknown kind {other}"))),
        };
        let v = match r {
            Ok(()) => json!({"plant": spec, "result": "ok"}),
            Err(e) => {
                code = 1;
                json!({"plant": spec, "result": "error", "error": e.to_string()})
            }
        };
        println!("{v}");
    }
    code
}

fn mkfifo(path: &str) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path).map_err(std::io::Error::other)?;
    // SAFETY: c is NUL-terminated.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Looks for secrets wherever the sandboxed user can read (see the usage above).
fn search(args: &[String]) -> i32 {
    let unhex = |h: &str| -> String {
        let b: Vec<u8> = (0..h.len() / 2)
            .filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    let needles: Vec<String> = args
        .first()
        .map(|n| n.split(',').filter(|s| !s.is_empty()).map(unhex).collect())
        .unwrap_or_default();
    let mut hits = vec![];
    let (mut files, mut denied) = (0u64, 0u64);
    let look = |bytes: &[u8], place: &str, hits: &mut Vec<Value>| {
        for n in &needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                hits.push(json!({"needle": n, "where": place}));
            }
        }
    };
    let mut stack: Vec<std::path::PathBuf> = args[1.min(args.len())..]
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            denied += 1;
            continue;
        };
        if meta.is_dir() {
            if ["/proc", "/sys", "/dev"]
                .iter()
                .any(|s| p == std::path::Path::new(s))
            {
                continue;
            }
            match std::fs::read_dir(&p) {
                Ok(d) => stack.extend(d.flatten().map(|e| e.path())),
                Err(_) => denied += 1,
            }
        } else if meta.is_file() {
            // never block on a FIFO, never read more than a few MiB of one file
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(&p);
            let mut bytes = vec![];
            match f.and_then(|f| f.take(8 << 20).read_to_end(&mut bytes)) {
                Ok(_) => {
                    files += 1;
                    look(&bytes, &p.display().to_string(), &mut hits);
                }
                Err(_) => denied += 1,
            }
        }
    }
    for (k, v) in std::env::vars_os() {
        let kv = format!("{}={}", k.to_string_lossy(), v.to_string_lossy());
        look(kv.as_bytes(), "env", &mut hits);
    }
    let mut environs = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        for what in ["environ", "cmdline"] {
            let p = e.path().join(what);
            if let Ok(b) = std::fs::read(&p) {
                environs += 1;
                look(&b, &p.display().to_string(), &mut hits);
            }
        }
    }
    println!(
        "{}",
        json!({"hits": hits, "files": files, "denied": denied, "proc_read": environs})
    );
    0
}

/// Long enough for the forwarder's second attempt (two of 1.5 s): a query the upstream lost
/// once under load is still answered, and a step that waits this long has really failed.
const DNS_PATIENCE: Duration = Duration::from_millis(4000);

/// One line out, its echo back, on a held connection.
fn exchange(mut s: &TcpStream) -> Value {
    let result = (|| -> std::io::Result<()> {
        s.write_all(b"ping\n")?;
        let mut b = [0u8; 5];
        s.read_exact(&mut b)?;
        (&b == b"ping\n")
            .then_some(())
            .ok_or(std::io::Error::other("not an echo"))
    })();
    match result {
        Ok(()) => json!({"result": "ok"}),
        Err(e) => json!({"result": "error", "error": errno_name(&e)}),
    }
}

fn dns_steps(args: &[String]) -> i32 {
    let timeout = DNS_PATIENCE;
    let mut it = args.iter();
    let mut out = std::io::stdout();
    let mut held: Vec<TcpStream> = vec![];
    while let Some(a) = it.next() {
        let mut next = || it.next().cloned().unwrap_or_default();
        let v = match a.as_str() {
            "--hold" => {
                let target = next();
                let mut v = match target.parse::<SocketAddr>() {
                    Ok(sa) => match TcpStream::connect_timeout(&sa, timeout) {
                        Ok(s) => {
                            let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
                            let _ = s.set_read_timeout(Some(timeout));
                            let mut v = exchange(&s);
                            v["local_port"] = json!(port);
                            held.push(s);
                            v
                        }
                        Err(e) => json!({"result": "error", "error": errno_name(&e)}),
                    },
                    Err(_) => json!({"result": "bad-address"}),
                };
                v["step"] = json!("hold");
                v["target"] = json!(target);
                v
            }
            "--exchange" => {
                let results: Vec<Value> = held.iter().map(exchange).collect();
                json!({"step": "exchange", "results": results})
            }
            "--query" => {
                let (p, s, n, t) = (next(), next(), next(), next());
                one_query(&p, &s, &n, qtype(&t), timeout)
            }
            "--query-raw" => {
                let (s, labels, t) = (next(), next(), next());
                raw_query(&s, &labels, qtype(&t), timeout)
            }
            "--connect" => {
                let mut v = tcp(&next(), timeout);
                v["step"] = json!("connect");
                v
            }
            "--resolve-connect" => {
                let (server, name, port) = (next(), next(), next());
                let mut v = one_query("udp", &server, &name, 1, timeout);
                let first = v["addrs"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|a| a.as_str())
                    .map(String::from);
                v["step"] = json!("resolve-connect");
                v["connect"] = match first {
                    Some(a) => tcp(&format!("{a}:{port}"), timeout),
                    None => json!({"result": "no-address"}),
                };
                v
            }
            "--flood" => {
                let (p, s, suf, n) = (next(), next(), next(), next());
                dns_flood(&p, &s, &suf, n.parse().unwrap_or(100))
            }
            "--blast" => {
                let (s, n) = (next(), next());
                blast(&s, n.parse().unwrap_or(1000))
            }
            "--garbage" => {
                let (s, n) = (next(), next());
                garbage(&s, n.parse().unwrap_or(1000))
            }
            "--pid1" => pid1_attacks(),
            "--loopback-echo" => loopback_echo(&next()),
            "--half-close" => {
                let (server, name, ms) = (next(), next(), next());
                half_close(&server, &name, ms.parse().unwrap_or(3000))
            }
            "--wait-file" => {
                let p = next();
                let start = Instant::now();
                while !std::path::Path::new(&p).exists() && start.elapsed().as_secs() < 60 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                json!({"step": "wait-file", "path": p,
                       "found": std::path::Path::new(&p).exists()})
            }
            "--sleep" => {
                let ms: u64 = next().parse().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                json!({"step": "sleep", "ms": ms})
            }
            other => {
                eprintln!("sandbox-probe: unknown dns step {other}");
                return 2;
            }
        };
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
    0
}
