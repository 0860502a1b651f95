//! Network fixtures for the firewall tier: a "box" namespace (where sandbox-init runs) joined
//! by a veth pair to a "world" namespace holding two dnsmasq servers and small TCP servers
//! on addresses the test creates. Everything is torn down on drop: processes we started are
//! killed by pid, namespaces deleted.
//!
//! Addresses (the same in every test: each test has its own namespaces):
//!   box eth0  10.77.0.2/24  fd77::2/64      default routes via 10.77.0.1 / fd77::1
//!   world up0 10.77.0.1 fd77::1 (gateway), 10.77.0.10 fd77::10 (allowed.test),
//!             10.77.0.11 fd77::11 (other.test), 10.77.0.53 (dns), 10.77.0.54 (dns2),
//!             10.77.1.5 (another subnet, routed through the gateway)
//!
//! The box is set up as Docker sets up a container's namespace: any uid may bind any port
//! (`net.ipv4.ip_unprivileged_port_start=0`) and open ICMP echo sockets (`ping_group_range`
//! open). `docker_dns` adds Docker's embedded DNS of a user-defined network exactly: no
//! 127.0.0.11 on `lo`, Docker's own nat rules (DNAT 127.0.0.11:53 to a resolver on random
//! ports, SNAT of its answers back to port 53), and a resolver that forwards to dns1 from
//! uid-0 sockets inside the box, one per query, as dockerd does.

use super::spawn_guard;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const GATEWAY4: &str = "10.77.0.1";
pub const GATEWAY6: &str = "fd77::1";
pub const BOX4: &str = "10.77.0.2";
pub const ALLOWED4: &str = "10.77.0.10";
pub const ALLOWED6: &str = "fd77::10";
pub const OTHER4: &str = "10.77.0.11";
pub const OTHER6: &str = "fd77::11";
pub const DNS1: &str = "10.77.0.53";
pub const DNS2: &str = "10.77.0.54";
/// Answered by DNS2 only: proves a query reached it.
pub const DNS2_ANSWER: &str = "10.77.0.12";
pub const ROUTED4: &str = "10.77.1.5";
/// TCP ports every world server listens on.
pub const PORTS: &[u16] = &[80, 22, 8443];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn require_net_tools() {
    for tool in ["ip", "nft", "dnsmasq"] {
        assert!(
            super::which(tool),
            "{tool} is missing: apt-get install -y iproute2 nftables dnsmasq-base"
        );
    }
}

/// Runs a command to completion and collects its output (spawns take turns, see
/// `spawn_guard`).
fn output(argv: &[&str]) -> std::process::Output {
    let child = {
        let _turn = spawn_guard();
        Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    child
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .wait_with_output()
        .unwrap()
}

/// Runs a command to completion; panics with its output when it fails.
pub fn sh(argv: &[&str]) -> String {
    let out = output(argv);
    assert!(
        out.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

/// Runs a command and returns (success, stdout) without asserting.
pub fn try_sh(argv: &[&str]) -> (bool, String) {
    let out = output(argv);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
    )
}

pub struct Net {
    pub box_ns: String,
    pub world_ns: String,
    dir: PathBuf,
    children: Vec<Child>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Net {
    pub fn new() -> Net {
        super::require_root();
        require_net_tools();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let base = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
        let dir = PathBuf::from(base).join(format!("net-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut net = Net {
            box_ns: format!("sbx-box-{id}"),
            world_ns: format!("sbx-world-{id}"),
            dir,
            children: vec![],
            stop: Arc::new(AtomicBool::new(false)),
            threads: vec![],
        };
        let (b, w) = (net.box_ns.clone(), net.world_ns.clone());
        sh(&["ip", "netns", "add", &b]);
        sh(&["ip", "netns", "add", &w]);
        sh(&[
            "ip", "link", "add", "eth0", "netns", &b, "type", "veth", "peer", "name", "up0",
            "netns", &w,
        ]);
        for ns in [&b, &w] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "-n", &b, "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
        sh(&[
            "ip",
            "-n",
            &b,
            "addr",
            "add",
            "fd77::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        sh(&["ip", "-n", &b, "link", "set", "eth0", "up"]);
        // Docker's per-container sysctls.
        sh(&[
            "ip",
            "netns",
            "exec",
            &b,
            "sysctl",
            "-qw",
            "net.ipv4.ip_unprivileged_port_start=0",
            "net.ipv4.ping_group_range=0 2147483647",
        ]);
        sh(&["ip", "-n", &b, "route", "add", "default", "via", GATEWAY4]);
        sh(&[
            "ip", "-n", &b, "-6", "route", "add", "default", "via", GATEWAY6,
        ]);
        sh(&["ip", "-n", &w, "addr", "add", "10.77.0.1/24", "dev", "up0"]);
        sh(&[
            "ip",
            "-n",
            &w,
            "addr",
            "add",
            "fd77::1/64",
            "dev",
            "up0",
            "nodad",
        ]);
        for a in [ALLOWED4, OTHER4, DNS1, DNS2, DNS2_ANSWER, ROUTED4] {
            sh(&[
                "ip",
                "-n",
                &w,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "up0",
            ]);
        }
        for a in [ALLOWED6, OTHER6] {
            sh(&[
                "ip",
                "-n",
                &w,
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "up0",
                "nodad",
            ]);
        }
        sh(&["ip", "-n", &w, "link", "set", "up0", "up"]);

        net.dnsmasq(
            "dns1",
            DNS1,
            &[
                &format!("--address=/allowed.test/{ALLOWED4}"),
                &format!("--address=/allowed.test/{ALLOWED6}"),
                &format!("--address=/other.test/{OTHER4}"),
                &format!("--address=/other.test/{OTHER6}"),
                &format!("--address=/gateway.test/{GATEWAY4}"),
                // a login host of the `anthropic` preset, served by the other test host
                &format!("--address=/claude.ai/{OTHER4}"),
                // an empty address: NXDOMAIN for the name and everything under it
                "--address=/gone.test/",
            ],
        );
        net.dnsmasq(
            "dns2",
            DNS2,
            &[&format!("--address=/allowed.test/{DNS2_ANSWER}")],
        );
        for addr in [
            GATEWAY4, ALLOWED4, OTHER4, ROUTED4, GATEWAY6, ALLOWED6, OTHER6,
        ] {
            for port in PORTS {
                net.serve(addr, *port);
            }
        }
        net
    }

    fn dnsmasq(&mut self, name: &str, addr: &str, extra: &[&str]) {
        let log = self.dir.join(format!("{name}.log"));
        let mut args: Vec<String> = [
            "ip",
            "netns",
            "exec",
            &self.world_ns,
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--group=root",
            "--pid-file=",
            "--log-queries",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--listen-address={addr}"));
        args.push(format!("--log-facility={}", log.display()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = {
            let _turn = spawn_guard();
            Command::new(&args[0])
                .args(&args[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("started")
        {
            assert!(Instant::now() < deadline, "dnsmasq {name} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A TCP server in the world namespace: answers `hello from ADDR:PORT` to anything.
    fn serve(&mut self, addr: &str, port: u16) {
        let sa: SocketAddr = if addr.contains(':') {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        }
        .parse()
        .unwrap();
        self.listen_in_world(sa, move |mut s, _| {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.0 200 OK\r\n\r\nhello from {sa}\n");
        });
    }

    /// A TCP echo server in the world namespace that keeps every connection open (a
    /// long-lived connection for `deny --kill`), each in its own thread.
    pub fn serve_echo(&mut self, sa: SocketAddr) {
        self.listen_in_world(sa, |mut s, stop| {
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    match s.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) if s.write_all(&buf[..n]).is_err() => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            });
        });
    }

    /// Listens on `sa` in the world namespace until the fixture stops, handing each
    /// connection (blocking) to `handle`; returns when it is bound.
    fn listen_in_world(
        &mut self,
        sa: SocketAddr,
        handle: impl Fn(TcpStream, Arc<AtomicBool>) + Send + 'static,
    ) {
        let stop = self.stop.clone();
        let ns = self.world_ns.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            enter_netns(&ns);
            let l = TcpListener::bind(sa).unwrap_or_else(|e| panic!("bind {sa}: {e}"));
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        handle(s, stop.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("server {sa} did not start"));
    }

    /// A listener inside the box (for the inbound test); returns when it is bound.
    pub fn serve_in_box(&mut self, addr: &str, port: u16) {
        let ns = std::mem::replace(&mut self.world_ns, self.box_ns.clone());
        self.serve(addr, port);
        self.world_ns = ns;
    }

    /// Docker's embedded DNS in the box, as on a user-defined network (see the module
    /// comment). The resolver forwards to dns1; the names it was asked are in `asked`.
    pub fn docker_dns(&mut self) -> DockerDns {
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (udp_tx, udp_rx) = std::sync::mpsc::channel();
        let (stop, ns, log) = (self.stop.clone(), self.box_ns.clone(), asked.clone());
        self.threads.push(std::thread::spawn(move || {
            enter_netns(&ns);
            // Random ports on 127.0.0.11, which binds although it is not an address of lo
            // (all of 127/8 is local).
            let u = UdpSocket::bind("127.0.0.11:0").unwrap();
            u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let t = TcpListener::bind("127.0.0.11:0").unwrap();
            t.set_nonblocking(true).unwrap();
            let ports = (
                u.local_addr().unwrap().port(),
                t.local_addr().unwrap().port(),
            );
            udp_tx.send(ports).unwrap();
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let q = buf[..n].to_vec();
                    log.lock().unwrap().push(question_name(&q));
                    let reply = u.try_clone().unwrap();
                    std::thread::spawn(move || {
                        if let Some(a) = forward_udp(&q) {
                            let _ = reply.send_to(&a, from);
                        }
                    });
                }
                if let Ok((c, _)) = t.accept() {
                    let log = log.clone();
                    std::thread::spawn(move || relay_tcp(c, &log));
                }
            }
        }));
        let (udp_port, tcp_port) = udp_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the embedded resolver did not start");
        // What Docker writes with iptables-nft (`iptables-save -t nat` of a container on a
        // user-defined network), in nft syntax.
        self.load_nft(&format!(
            "table ip nat {{
  chain DOCKER_OUTPUT {{
    ip daddr 127.0.0.11 tcp dport 53 counter dnat to 127.0.0.11:{tcp_port}
    ip daddr 127.0.0.11 udp dport 53 counter dnat to 127.0.0.11:{udp_port}
  }}
  chain OUTPUT {{
    type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.11 counter jump DOCKER_OUTPUT
  }}
  chain DOCKER_POSTROUTING {{
    ip saddr 127.0.0.11 tcp sport {tcp_port} counter snat to :53
    ip saddr 127.0.0.11 udp sport {udp_port} counter snat to :53
  }}
  chain POSTROUTING {{
    type nat hook postrouting priority srcnat; policy accept;
    ip daddr 127.0.0.11 counter jump DOCKER_POSTROUTING
  }}
}}
"
        ));
        DockerDns {
            udp_port,
            tcp_port,
            asked,
        }
    }

    /// A DNS server in the world namespace that answers every query with one A record of
    /// `addr`, after `delay` (an upstream resolving a name it has not cached), UDP only.
    pub fn slow_dns(&mut self, listen: SocketAddr, addr: std::net::IpAddr, delay: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, ns) = (self.stop.clone(), self.world_ns.clone());
        self.threads.push(std::thread::spawn(move || {
            enter_netns(&ns);
            let u = UdpSocket::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
            u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let q = buf[..n].to_vec();
                    let reply = u.try_clone().unwrap();
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        if let Some(a) = answer_a(&q, addr) {
                            let _ = reply.send_to(&a, from);
                        }
                    });
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the slow DNS server did not start");
    }

    /// A listener in the world namespace that accepts connections and datagrams and never
    /// answers (an upstream that went silent).
    pub fn silent_dns(&mut self, listen: SocketAddr) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, ns) = (self.stop.clone(), self.world_ns.clone());
        self.threads.push(std::thread::spawn(move || {
            enter_netns(&ns);
            let t = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
            t.set_nonblocking(true).unwrap();
            let u = UdpSocket::bind(listen).unwrap();
            u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            tx.send(()).unwrap();
            let mut held = vec![];
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((c, _)) = t.accept() {
                    held.push(c);
                }
                let _ = u.recv_from(&mut buf);
            }
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the silent DNS server did not start");
    }

    /// An A query for `name` to `server` from a uid-0 socket in the box (a root process of
    /// the container, such as a `docker exec` session); the addresses of the answer.
    pub fn lookup_as_root(&self, server: SocketAddr, name: &str) -> Result<Vec<String>, String> {
        let ns = self.box_ns.clone();
        let name = name.to_string();
        std::thread::spawn(move || {
            enter_netns(&ns);
            let any = if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = UdpSocket::bind(any).map_err(|e| e.to_string())?;
            s.connect(server).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
            let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for l in name.split('.') {
                q.push(l.len() as u8);
                q.extend_from_slice(l.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            s.send(&q).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4096];
            let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
            Ok(a_records(&buf[..n]))
        })
        .join()
        .unwrap()
    }

    /// The query lines a dnsmasq has logged, lower-cased (PID 1's DNS filter asks in
    /// random letter case).
    pub fn dns_queries(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("query["))
            .map(|l| l.to_ascii_lowercase())
            .collect()
    }

    /// `nft -j list ...` in the box namespace, parsed.
    pub fn nft_json(&self, what: &[&str]) -> serde_json::Value {
        let mut argv = vec!["ip", "netns", "exec", &self.box_ns, "nft", "-j", "list"];
        argv.extend_from_slice(what);
        serde_json::from_str(&sh(&argv)).unwrap()
    }

    /// Runs a command in the box namespace (outside any sandbox), as root.
    /// Loads an nft ruleset into the box, as Docker puts its own nat table there.
    pub fn load_nft(&self, rules: &str) {
        let base = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
        let file = std::path::Path::new(&base).join(format!("{}.nft", self.box_ns));
        std::fs::write(&file, rules).unwrap();
        let path = file.display().to_string();
        sh(&["ip", "netns", "exec", &self.box_ns, "nft", "-f", &path]);
        let _ = std::fs::remove_file(&file);
    }

    pub fn in_box(&self, argv: &[&str]) -> (bool, String) {
        let mut full = vec!["ip", "netns", "exec", &self.box_ns];
        full.extend_from_slice(argv);
        try_sh(&full)
    }

    pub fn in_world(&self, argv: &[&str]) -> (bool, String) {
        let mut full = vec!["ip", "netns", "exec", &self.world_ns];
        full.extend_from_slice(argv);
        try_sh(&full)
    }
}

/// Docker's embedded DNS as `Net::docker_dns` set it up.
pub struct DockerDns {
    pub udp_port: u16,
    pub tcp_port: u16,
    /// The names it was asked, in order.
    pub asked: Arc<std::sync::Mutex<Vec<String>>>,
}

impl DockerDns {
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// The question name of a DNS message, lower-cased ("" when there is none).
pub fn question_name(m: &[u8]) -> String {
    let mut labels = vec![];
    let mut o = 12;
    while let Some(&len) = m.get(o) {
        if len == 0 || len > 63 {
            break;
        }
        match m.get(o + 1..o + 1 + len as usize) {
            Some(l) => labels.push(String::from_utf8_lossy(l).to_ascii_lowercase()),
            None => break,
        }
        o += 1 + len as usize;
    }
    labels.join(".")
}

/// The A records of an answer whose records all point at the question name.
fn a_records(m: &[u8]) -> Vec<String> {
    let mut o = 12;
    while let Some(&len) = m.get(o) {
        if len == 0 {
            break;
        }
        o += 1 + len as usize;
    }
    o += 5;
    let an = m.get(6..8).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let mut out = vec![];
    for _ in 0..an {
        // a compressed owner name (2 bytes), type, class, ttl, rdlength
        let Some(h) = m.get(o..o + 12) else { break };
        let (ty, len) = (
            u16::from_be_bytes([h[2], h[3]]),
            u16::from_be_bytes([h[10], h[11]]) as usize,
        );
        if let (1, Some(d)) = (ty, m.get(o + 12..o + 12 + len).filter(|_| len == 4)) {
            out.push(format!("{}.{}.{}.{}", d[0], d[1], d[2], d[3]));
        }
        o += 12 + len;
    }
    out
}

/// An answer to query `q` with one A record, its question echoed.
fn answer_a(q: &[u8], addr: std::net::IpAddr) -> Option<Vec<u8>> {
    let std::net::IpAddr::V4(a) = addr else {
        return None;
    };
    let mut o = 12;
    while *q.get(o)? != 0 {
        o += 1 + *q.get(o)? as usize;
    }
    let end = o + 5;
    let mut m = q.get(..end)?.to_vec();
    m[2] = 0x80 | (q[2] & 0x01);
    m[3] = 0x80;
    m[4..12].copy_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
    m.extend_from_slice(&a.octets());
    Some(m)
}

/// One query to dns1 from a fresh uid-0 socket of the box, as Docker's resolver does.
fn forward_udp(q: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect((DNS1, 53)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.send(q).ok()?;
    let mut buf = vec![0u8; 4096];
    let n = s.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// A TCP client of the embedded resolver: each framed query is forwarded over TCP to dns1.
fn relay_tcp(mut c: TcpStream, log: &std::sync::Mutex<Vec<String>>) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    loop {
        let mut len = [0u8; 2];
        if c.read_exact(&mut len).is_err() {
            return;
        }
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        if c.read_exact(&mut q).is_err() {
            return;
        }
        log.lock().unwrap().push(question_name(&q));
        let answer = (|| {
            let mut up = TcpStream::connect((DNS1, 53)).ok()?;
            up.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            up.write_all(&len).ok()?;
            up.write_all(&q).ok()?;
            let mut alen = [0u8; 2];
            up.read_exact(&mut alen).ok()?;
            let mut a = vec![0u8; u16::from_be_bytes(alen) as usize];
            up.read_exact(&mut a).ok()?;
            Some((alen, a))
        })();
        let Some((alen, a)) = answer else { return };
        if c.write_all(&alen).and_then(|_| c.write_all(&a)).is_err() {
            return;
        }
    }
}

/// Moves the calling thread into a named network namespace.
pub fn enter_netns(name: &str) {
    let f = fs::File::open(format!("/run/netns/{name}")).unwrap();
    // SAFETY: setns on this thread only, with a valid namespace fd.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for c in &mut self.children {
            // `ip netns exec` execs dnsmasq in place: this pid is dnsmasq's.
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = try_sh(&["ip", "netns", "del", &self.box_ns]);
        let _ = try_sh(&["ip", "netns", "del", &self.world_ns]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
