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

use super::spawn_guard;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
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
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buf = [0u8; 256];
                        let _ = s.read(&mut buf);
                        let _ = write!(s, "HTTP/1.0 200 OK\r\n\r\nhello from {sa}\n");
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

    /// The query lines a dnsmasq has logged.
    pub fn dns_queries(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("query["))
            .map(String::from)
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

/// Moves the calling thread into a named network namespace.
fn enter_netns(name: &str) {
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
