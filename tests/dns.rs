//! Tier 2, DNS `filter` mode: sandbox-init as PID 1 in the box namespace answers the child's
//! DNS itself. The upstream is a dnsmasq of this test ("dns3", 10.77.0.55) that logs every
//! query, so "never left the container" is read from its log. The probe's `dns` steps run
//! as the sandboxed user and print one JSON line each.

mod common;

use common::netns::*;
use common::*;
use serde_json::Value;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NO_PRESETS: (&str, &str) = ("SANDBOX_PRESETS", "");
const DNS3: &str = "10.77.0.55";
const DNS3_53: &str = "10.77.0.55:53";
/// Reached through a CNAME only (www.cname.test -> edge.cdn.test).
const CDN4: &str = ROUTED4;

/// A dnsmasq that logs every query, started by this test (killed by pid on drop).
struct Upstream {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    hosts: PathBuf,
}

impl Upstream {
    /// `ns` namespace, listening on `addr`:`port`.
    fn start(ns: &str, addr: &str, port: u16, tag: &str) -> Upstream {
        let base = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = PathBuf::from(base).join(format!("dns-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("queries.log");
        let hosts = dir.join("hosts");
        fs::write(
            &hosts,
            format!("{ALLOWED4} rot.test\n{CDN4} edge.cdn.test\n"),
        )
        .unwrap();
        let args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            ns.into(),
            "dnsmasq".into(),
            "--no-daemon".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            "--user=root".into(),
            "--group=root".into(),
            "--pid-file=".into(),
            "--log-queries".into(),
            "--local-ttl=1".into(),
            format!("--port={port}"),
            format!("--listen-address={addr}"),
            format!("--log-facility={}", log.display()),
            format!("--addn-hosts={}", hosts.display()),
            format!("--address=/allowed.test/{ALLOWED4}"),
            format!("--address=/allowed.test/{ALLOWED6}"),
            format!("--address=/evil.test/{OTHER4}"),
            format!("--address=/evilallowed.test/{OTHER4}"),
            "--txt-record=txt.allowed.test,hello".into(),
            "--cname=www.cname.test,edge.cdn.test".into(),
        ];
        let child = {
            let _turn = spawn_guard();
            Command::new("ip")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let up = Upstream {
            child,
            dir,
            log,
            hosts,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(&up.log)
            .unwrap_or_default()
            .contains("started")
        {
            assert!(Instant::now() < deadline, "dnsmasq {tag} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        up
    }

    /// dns3 in the world namespace.
    fn world(net: &Net) -> Upstream {
        let (ok, _) = net.in_world(&["ip", "addr", "add", &format!("{DNS3}/32"), "dev", "up0"]);
        assert!(ok, "cannot add {DNS3}");
        Upstream::start(&net.world_ns, DNS3, 53, "dns3")
    }

    /// The query lines, lower-cased (PID 1 asks in random letter case).
    fn queries(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("query["))
            .map(|l| l.to_ascii_lowercase())
            .collect()
    }

    /// Rewrites the hosts file and makes dnsmasq re-read it.
    fn set_hosts(&self, content: &str) {
        fs::write(&self.hosts, content).unwrap();
        // SAFETY: signalling the dnsmasq this fixture started (`ip netns exec` execs it).
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        assert_eq!(rc, 0);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn rootfs(resolver: &str) -> Rootfs {
    let r = Rootfs::new();
    r.write("etc/resolv.conf", &format!("nameserver {resolver}\n"));
    r
}

fn sandbox_args<'a>(allow: &[&'a str], steps: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--dns", "filter"];
    for e in allow {
        a.extend_from_slice(&["--allow", e]);
    }
    a.extend_from_slice(&["--", PROBE_IN_ROOT, "dns"]);
    a.extend_from_slice(steps);
    a
}

/// Runs the probe's DNS steps in the sandbox; returns the run and one value per step.
fn steps(root: &Rootfs, net: &Net, allow: &[&str], steps: &[&str]) -> (Run, Vec<Value>) {
    let run = root.run_in(
        &sandbox_args(allow, steps),
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    run.assert_code(0);
    let out: Vec<Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let want = steps.iter().filter(|s| s.starts_with("--")).count();
    assert_eq!(
        out.len(),
        want,
        "every step reports (PID 1 alive to the end)\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    (run, out)
}

fn addrs(v: &Value) -> Vec<String> {
    v["addrs"]
        .as_array()
        .unwrap_or_else(|| panic!("no addrs: {v}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn assert_answer(v: &Value, addr: &str) {
    assert_eq!(v["rcode"], "NOERROR", "{v}");
    assert!(addrs(v).iter().any(|a| a == addr), "{addr} not in {v}");
}

/// NXDOMAIN: the filter's own answer (the fixture's upstream has an address for every
/// name the tests deny), never a timeout, which the probe reports as an error.
fn assert_denied(v: &Value) {
    assert_eq!(v["rcode"], "NXDOMAIN", "{v}");
}

fn assert_connected(v: &Value) {
    assert_eq!(v["result"], "connected", "{v}");
    assert!(
        v["body"].as_str().unwrap_or("").contains("hello from"),
        "{v}"
    );
}

/// Refused by a reject rule: a dropped packet would show as a timeout, not ECONNREFUSED.
fn assert_rejected(v: &Value) {
    assert_eq!(v["result"], "error", "should be blocked: {v}");
    assert_eq!(v["error"], "ECONNREFUSED", "{v}");
}

#[test]
fn wildcard_names_resolve_and_connect_and_nothing_else_does() {
    let net = Net::new();
    let up = Upstream::world(&net);
    let root = rootfs(DNS3);
    let dns2 = format!("{DNS2}:53");
    let other53 = format!("{OTHER4}:53");
    let (other80, v6_80) = (format!("{OTHER4}:80"), format!("[{ALLOWED6}]:80"));
    let dns2_before = net.dns_queries("dns2").len();
    #[rustfmt::skip]
    let s = [
        "--resolve-connect", DNS3_53, "a.allowed.test", "80",
        "--resolve-connect", DNS3_53, "b.c.allowed.test", "80",
        "--query", "udp", DNS3_53, "allowed.test", "AAAA",
        "--connect", &v6_80,
        "--query", "udp", DNS3_53, "allowed.test.evil.test", "A",
        "--query", "tcp", DNS3_53, "evilallowed.test", "A",
        "--query", "udp", DNS3_53, "evilallowed.test", "TXT",
        "--connect", &other80,
        // other types of allowed names pass through
        "--query", "udp", DNS3_53, "txt.allowed.test", "TXT",
        // the addresses behind a CNAME are learned
        "--resolve-connect", DNS3_53, "www.cname.test", "80",
        // another server, or a host that serves no DNS: it is still us who answers
        "--query", "udp", &dns2, "a.allowed.test", "A",
        "--query", "tcp", &dns2, "x.allowed.test.evil.test", "A",
        "--query", "udp", &other53, "evil.test", "A",
        "--pid1",
    ];
    let (run, r) = steps(&root, &net, &["*.allowed.test", "www.cname.test"], &s);
    let r: Vec<Value> = std::iter::once(Value::Null).chain(r).collect();
    assert_answer(&r[1], ALLOWED4);
    // Asked upstream in random letter case (the upstream's log below), answered in the
    // client's own spelling.
    for v in [&r[1], &r[2], &r[3], &r[10]] {
        assert_eq!(v["echoed"], true, "{v}");
    }
    assert_connected(&r[1]["connect"]);
    assert_answer(&r[2], ALLOWED4);
    assert_connected(&r[2]["connect"]);
    assert_answer(&r[3], ALLOWED6);
    assert_connected(&r[4]);
    for v in &r[5..8] {
        assert_denied(v);
    }
    // a denied name's address stays closed
    assert_rejected(&r[8]);
    assert_eq!(r[9]["rcode"], "NOERROR", "{}", r[9]);
    assert!(r[9]["ancount"].as_u64().unwrap() >= 1, "{}", r[9]);
    assert_answer(&r[10], CDN4);
    assert_connected(&r[10]["connect"]);
    assert_answer(&r[11], ALLOWED4);
    assert!(!addrs(&r[11]).contains(&DNS2_ANSWER.to_string()));
    assert_denied(&r[12]);
    assert_denied(&r[13]);
    // PID 1: root, other uid: no signal, no ptrace, no reading its memory
    let p = &r[14];
    assert_eq!(p["kill"], "EPERM", "{p}");
    assert_eq!(p["ptrace"], "EPERM", "{p}");
    assert_ne!(p["environ"], "ok", "{p}");

    // the upstream saw the allowed names, and never a denied one
    let raw = fs::read_to_string(&up.log).unwrap();
    assert!(
        !raw.contains("query[A] a.allowed.test ") || !raw.contains("query[A] b.c.allowed.test "),
        "no random letter case upstream: {raw}"
    );
    let q = up.queries();
    assert!(q.iter().any(|l| l.contains("a.allowed.test")), "{q:?}");
    assert!(q.iter().any(|l| l.contains("b.c.allowed.test")), "{q:?}");
    for l in &q {
        assert!(
            !l.contains("evil"),
            "a denied name reached the upstream: {l}"
        );
    }
    assert_eq!(
        net.dns_queries("dns2").len(),
        dns2_before,
        "the child reached another DNS server"
    );
    // one line per denied name, with the setting that would allow it
    assert!(
        run.stderr.contains(
            "blocked dns name allowed.test.evil.test (not in the allowlist); to allow it: \
             SANDBOX_ALLOW=allowed.test.evil.test"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr
            .matches("blocked dns name evilallowed.test ")
            .count(),
        1,
        "{}",
        run.stderr
    );
}

#[test]
fn exfiltration_through_random_names_never_reaches_the_upstream() {
    let net = Net::new();
    let up = Upstream::world(&net);
    let root = rootfs(DNS3);
    let before = up.queries().len();
    #[rustfmt::skip]
    let s = [
        "--flood", "udp", DNS3_53, "exfil.evil.test", "500",
        "--flood", "tcp", DNS3_53, "exfil2.evil.test", "500",
        // the wildcard's apex is no loophole for a sibling domain either
        "--flood", "udp", DNS3_53, "exfil.allowedtest", "100",
        "--resolve-connect", DNS3_53, "still.allowed.test", "80",
    ];
    let (run, r) = steps(&root, &net, &["*.allowed.test"], &s);
    for (v, n) in [(&r[0], 500), (&r[1], 500), (&r[2], 100)] {
        assert_eq!(
            v["rcodes"],
            serde_json::json!({ "NXDOMAIN": n }),
            "every query answered NXDOMAIN: {v}"
        );
    }
    assert_connected(&r[3]["connect"]);
    let q = up.queries();
    let leaked: Vec<&String> = q.iter().filter(|l| l.contains("exfil")).collect();
    assert!(
        leaked.is_empty(),
        "{} reached the upstream: {:?}",
        leaked.len(),
        &leaked[..leaked.len().min(5)]
    );
    assert!(q.len() > before, "the upstream saw no query at all");
    // 1100 denied names: named, but the log stays readable (rate-limited)
    let lines = run.stderr.matches("blocked dns name").count();
    assert!((1..=60).contains(&lines), "{lines} lines:\n{}", run.stderr);
}

#[test]
fn malformed_packets_and_a_burst_of_10000_queries_leave_it_serving() {
    let net = Net::new();
    let _up = Upstream::world(&net);
    let root = rootfs(DNS3);
    #[rustfmt::skip]
    let s = [
        "--garbage", DNS3_53, "3000",
        "--query", "udp", DNS3_53, "after-garbage.allowed.test", "A",
        "--blast", DNS3_53, "10000",
        "--flood", "udp", DNS3_53, "allowed.test", "1000",
        "--resolve-connect", DNS3_53, "after-burst.allowed.test", "80",
        "--query", "tcp", DNS3_53, "tcp.allowed.test", "A",
    ];
    let (run, r) = steps(&root, &net, &["*.allowed.test"], &s);
    assert!(r[0]["datagrams"].as_u64().unwrap() >= 2900, "{}", r[0]);
    assert_answer(&r[1], ALLOWED4);
    let sent = r[2]["sent"].as_u64().unwrap();
    let answers = r[2]["answers"].as_u64().unwrap();
    assert_eq!(sent, 10000, "{}", r[2]);
    // The forwarder's 4 MiB receive queue holds thousands of these queries, and the probe
    // counts on a second thread while it sends (here: ~all 10,000 answered, 9,988 under
    // load). The floor holds even if that thread is starved for the whole burst: the
    // probe's own receive buffer keeps what arrived meanwhile (the old probe, which read
    // only after sending, counted 264 in CI).
    assert!(answers >= 200 && answers <= sent, "{}", r[2]);
    // 1000 allowed names of every type right after: forwarded and answered, none lost
    // (the fixture answers A/AAAA and refuses the other types it has no data for)
    let rc = r[3]["rcodes"].as_object().unwrap();
    let upstream: u64 = ["NOERROR", "REFUSED"]
        .iter()
        .filter_map(|k| rc.get(*k).and_then(|v| v.as_u64()))
        .sum();
    assert_eq!(upstream, 1000, "{}", r[3]);
    assert!(rc["NOERROR"].as_u64().unwrap() >= 200, "{}", r[3]);
    assert_answer(&r[4], ALLOWED4);
    assert_connected(&r[4]["connect"]);
    assert_answer(&r[5], ALLOWED4);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

/// Docker's embedded DNS exactly as on a user-defined network (common/netns.rs): PID 1
/// forwards to 127.0.0.11:53, Docker's DNAT takes it to the resolver; the child reaches
/// neither 127.0.0.11 nor the resolver's own ports except through the filter.
#[test]
fn docker_embedded_dns_is_reached_only_through_the_filter() {
    let mut net = Net::new();
    let docker = net.docker_dns();
    let root = rootfs("127.0.0.11");
    let (udp, tcp) = (
        format!("127.0.0.11:{}", docker.udp_port),
        format!("127.0.0.11:{}", docker.tcp_port),
    );
    #[rustfmt::skip]
    let s = [
        "--query", "udp", "127.0.0.11:53", "a.allowed.test", "A",
        "--query", "tcp", "127.0.0.11:53", "b.allowed.test", "A",
        "--query", "udp", "127.0.0.11:53", "x.exfil.evil.test", "TXT",
        "--query", "udp", &udp, "y.exfil.evil.test", "A",
        "--query", "tcp", &tcp, "z.exfil.evil.test", "A",
        "--resolve-connect", "127.0.0.11:53", "c.allowed.test", "80",
    ];
    let (_, r) = steps(&root, &net, &["*.allowed.test"], &s);
    assert_answer(&r[0], ALLOWED4);
    assert_answer(&r[1], ALLOWED4);
    assert_denied(&r[2]);
    for v in &r[3..5] {
        assert_eq!(
            v["result"], "error",
            "the child reached the embedded DNS: {v}"
        );
    }
    assert_connected(&r[5]["connect"]);
    let q = docker.asked();
    assert!(q.iter().any(|n| n == "a.allowed.test"), "{q:?}");
    assert!(q.iter().any(|n| n == "b.allowed.test"), "{q:?}");
    assert!(q.iter().all(|n| !n.contains("exfil")), "{q:?}");
}

#[test]
fn rotated_addresses_work_at_once_and_old_ones_expire() {
    let net = Net::new();
    let up = Upstream::world(&net);
    let root = rootfs(DNS3);
    let (a80, o80) = (format!("{ALLOWED4}:80"), format!("{OTHER4}:80"));
    #[rustfmt::skip]
    let s = [
        "--resolve-connect", DNS3_53, "rot.test", "80",   // 0: old address
        "--connect", &o80,                                // 1: not yet
        "--wait-file", "/tmp/rotated",                    // 2
        "--resolve-connect", DNS3_53, "rot.test", "80",   // 3: new address, at once
        "--connect", &a80,                                // 4: old one, still within its TTL floor
        "--sleep", "21000",                               // 5: past max(TTL, 10 s) + 10 s
        "--connect", &a80,                                // 6: expired
        "--connect", &o80,                                // 7: expired too (no lookup since)
        "--resolve-connect", DNS3_53, "rot.test", "80",   // 8: learned again
    ];
    let args = sandbox_args(&["rot.test"], &s);
    let mut cmd = root.command(&args, &[NO_PRESETS], Some(&net.box_ns));
    let sbx = Running::start(&mut cmd);
    let line = |n: usize| -> Value {
        let l = sbx.line(Duration::from_secs(40));
        serde_json::from_str(&l).unwrap_or_else(|_| panic!("step {n}: {l}"))
    };
    let r0 = line(0);
    assert_answer(&r0, ALLOWED4);
    assert_connected(&r0["connect"]);
    assert_rejected(&line(1));

    // PID 1 while the command runs: CAP_KILL and CAP_NET_ADMIN, nothing else
    let status = fs::read_to_string(format!("/proc/{}/status", sbx.init_pid())).unwrap();
    let cap = |k: &str| {
        let v = status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap();
        u64::from_str_radix(v, 16).unwrap()
    };
    assert_eq!(cap("CapEff:"), (1 << 5) | (1 << 12), "{status}");
    assert_eq!(cap("CapPrm:"), (1 << 5) | (1 << 12), "{status}");
    assert_eq!(cap("CapBnd:"), 0, "{status}");

    up.set_hosts(&format!("{OTHER4} rot.test\n{CDN4} edge.cdn.test\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = net.in_world(&[
            "dig",
            "+short",
            "+time=1",
            "+tries=1",
            &format!("@{DNS3}"),
            "rot.test",
        ]);
        if out.trim() == OTHER4 {
            break;
        }
        assert!(Instant::now() < deadline, "dnsmasq did not reload: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    root.write("tmp/rotated", "");
    assert_eq!(line(2)["found"], true);
    let r3 = line(3);
    assert_answer(&r3, OTHER4);
    assert_connected(&r3["connect"]);
    assert_connected(&line(4));
    line(5);
    assert_rejected(&line(6));
    assert_rejected(&line(7));
    let r8 = line(8);
    assert_answer(&r8, OTHER4);
    assert_connected(&r8["connect"]);
    let (code, _) = sbx.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

#[test]
fn filter_mode_table_has_the_redirect_and_expiring_sets() {
    let net = Net::new();
    let _up = Upstream::world(&net);
    let root = rootfs(DNS3);
    let run = root.run_in(
        &sandbox_args(
            &["*.allowed.test", "api.allowed.test:443"],
            &["--query", "udp", DNS3_53, "allowed.test", "A"],
        ),
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    run.assert_code(0);
    // (the table outlives the sandbox: it belongs to the namespace)
    let t = net.nft_json(&["table", "inet", "sandbox_init"]);
    let items = t["nftables"].as_array().unwrap();
    let nat = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .find(|c| c["name"] == "dns_redirect")
        .unwrap_or_else(|| panic!("{t}"));
    assert_eq!(nat["type"], "nat");
    assert_eq!(nat["hook"], "output");
    assert_eq!(nat["prio"], -150);
    let sets: Vec<&Value> = items.iter().filter_map(|i| i.get("set")).collect();
    for name in ["dyn_any_v4", "dyn_any_v6", "dyn_tcp443_v4", "dyn_tcp443_v6"] {
        let s = sets
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no set {name}: {t}"));
        assert_eq!(s["timeout"], 10, "{s}");
    }
    // the command's answer for the apex went into the dynamic set, not a static one (no
    // name is resolved at start in filter mode)
    let any_v4 = sets.iter().find(|s| s["name"] == "dyn_any_v4").unwrap();
    assert!(any_v4.to_string().contains(ALLOWED4), "{any_v4}");
    assert!(!sets.iter().any(|s| s["name"] == "any_v4"), "{t}");
}

// ---------------------------------------------------------------------------------------
// The sandboxed user must never answer for an upstream resolver (the probe's `hijack`
// attacks, run as the sandboxed child in the Docker-exact fixture of common/netns.rs).

/// The attacker's address: a world host that is not allowlisted and serves every port of
/// `PORTS`.
const PLANTED: &str = OTHER4;

/// Runs `sandbox-probe hijack` as the command; returns the run and its report.
fn hijack(root: &Rootfs, net: &Net, flags: &[&str], attack: &[&str]) -> (Run, Value) {
    let mut args: Vec<&str> = flags.to_vec();
    args.extend_from_slice(&["--", PROBE_IN_ROOT, "hijack", "--answer", PLANTED]);
    for p in ["--port", "80", "--port", "22", "--port", "8443"] {
        args.push(p);
    }
    args.extend_from_slice(attack);
    let run = root.run_in(&args, &[NO_PRESETS], Some(&net.box_ns));
    run.assert_code(0);
    let r = run.report();
    eprintln!("hijack report: {r}");
    (run, r)
}

/// Packets counted by the drop rules of our output chain: (the rule's matches as JSON,
/// packets). Shows which of our rules stopped an attack.
fn drops(net: &Net) -> Vec<(String, u64)> {
    let t = net.nft_json(&["chain", "inet", "sandbox_init", "output"]);
    t["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter_map(|r| {
            let expr = r["expr"].as_array()?;
            expr.iter().any(|e| e.get("drop").is_some()).then_some(())?;
            let n = expr.iter().find_map(|e| e["counter"]["packets"].as_u64())?;
            Some((r["expr"].to_string(), n))
        })
        .collect()
}

/// How many packets the drop rule matching every `needle` counted.
fn dropped_by(net: &Net, needles: &[&str]) -> u64 {
    drops(net)
        .iter()
        .filter(|(e, _)| needles.iter().all(|n| e.contains(n)))
        .map(|(_, n)| n)
        .sum()
}

/// The attack failed: nothing intercepted or taken, the real answer arrived, and the
/// planted address stays closed on every port.
fn assert_not_hijacked(r: &Value, real: &str) {
    assert_eq!(r["hijacked"], false, "{r}");
    assert_ne!(r["intercepted"], true, "{r}");
    assert_eq!(r["answer_taken"], false, "{r}");
    if !real.is_empty() {
        assert_answer(&r["trigger"], real);
    }
    for c in r["connect"].as_array().unwrap() {
        assert_rejected(c);
    }
}

/// The control of the attacks on PID 1's upstream: the same sandbox and the same attack in
/// a fresh namespace, with our two rules against it deleted from the live table. The TCP
/// attack guesses the kernel's next source port, so it may miss: up to three tries, each
/// in namespaces of its own; one hijack proves the attack works. Returns the last report.
fn control_hijacks(attack: &[&str]) -> Value {
    let mut r = Value::Null;
    for _ in 0..3 {
        let mut net = Net::new();
        let _docker = net.docker_dns();
        let root = rootfs("127.0.0.11");
        r = hijack_without_the_guards(&root, &net, attack);
        if r["hijacked"] == true {
            break;
        }
    }
    r
}

/// Runs the attack with the guard rules deleted (by handle, from outside, once PID 1 has
/// built them; the probe starts when `tmp/go` exists). Returns the report.
fn hijack_without_the_guards(root: &Rootfs, net: &Net, attack: &[&str]) -> Value {
    let mut args = vec!["--dns", "filter", "--allow", "*.allowed.test", "--"];
    #[rustfmt::skip]
    args.extend_from_slice(&[
        PROBE_IN_ROOT, "hijack", "--wait-file", "/tmp/go", "--answer", PLANTED,
        "--port", "80",
    ]);
    args.extend_from_slice(attack);
    let mut cmd = root.command(&args, &[NO_PRESETS], Some(&net.box_ns));
    let sbx = Running::start(&mut cmd);
    delete_hijack_guards(|args| {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        net.in_box(&argv)
    });
    root.write("tmp/go", "");
    let r: Value = serde_json::from_str(&sbx.line(Duration::from_secs(60))).unwrap();
    eprintln!("control (guards deleted) report: {r}");
    let (code, _) = sbx.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    r
}

#[test]
fn pid1s_udp_upstream_cannot_be_answered_by_the_user() {
    let mut net = Net::new();
    let docker = net.docker_dns();
    let root = rootfs("127.0.0.11");
    let (_, r) = hijack(
        &root,
        &net,
        &["--dns", "filter", "--allow", "*.allowed.test"],
        &[
            "--method",
            "plant",
            "--resolver",
            "127.0.0.11:53",
            "--ask",
            "127.0.0.11:53",
            "--name",
            "x.allowed.test",
        ],
    );
    assert_not_hijacked(&r, ALLOWED4);
    assert!(docker.asked().iter().any(|n| n == "x.allowed.test"));
    // every datagram refused by our rule against a resolver's address as the source
    assert_eq!(r["planted"], 0, "{r}");
    assert!(
        dropped_by(&net, &["saddr", "127.0.0.11"]) >= 64_512,
        "{:?}",
        drops(&net)
    );
    // Control: in a fresh namespace, the same attack with our two rules deleted takes PID
    // 1's upstream query and plants its answer. (The probe asks the filter's own address:
    // its flows planted towards every port would catch its own query to 127.0.0.11 too.)
    #[rustfmt::skip]
    let r = control_hijacks(&[
        "--method", "plant", "--resolver", "127.0.0.11:53", "--ask", "127.0.0.1:53",
        "--name", "x.allowed.test",
    ]);
    assert_eq!(r["hijacked"], true, "{r}");
}

/// The attack waits until the conntrack entry of PID 1's earlier, legitimate query has
/// expired, then plants its own.
#[test]
fn pid1s_udp_upstream_cannot_be_answered_after_a_legitimate_query_either() {
    let mut net = Net::new();
    let _docker = net.docker_dns();
    // Shortens the attacker's wait only (Docker's defaults: 30 s idle, 120 s once a flow
    // has seen traffic both ways); nothing else depends on these values.
    let (ok, _) = net.in_box(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_udp_timeout=2",
        "net.netfilter.nf_conntrack_udp_timeout_stream=2",
    ]);
    assert!(ok);
    let root = rootfs("127.0.0.11");
    let (_, r) = hijack(
        &root,
        &net,
        &["--dns", "filter", "--allow", "*.allowed.test"],
        &[
            "--method",
            "plant",
            "--prime",
            "p.allowed.test",
            "--wait-flow-ms",
            "4000",
            "--resolver",
            "127.0.0.11:53",
            "--ask",
            "127.0.0.11:53",
            "--name",
            "x.allowed.test",
        ],
    );
    assert_answer(&r["prime"], ALLOWED4);
    assert_not_hijacked(&r, ALLOWED4);
}

/// TCP: the attacker sees PID 1's last upstream connection in /proc/net/tcp, sends SYNs
/// from 127.0.0.11:53 to the ports the next one will use, and listens on 127.0.0.11:53.
#[test]
fn pid1s_tcp_upstream_cannot_be_answered_by_the_user() {
    let mut net = Net::new();
    let docker = net.docker_dns();
    let root = rootfs("127.0.0.11");
    let (_, r) = hijack(
        &root,
        &net,
        &["--dns", "filter", "--allow", "*.allowed.test"],
        &[
            "--method",
            "tcp-plant",
            "--prime",
            "p.allowed.test",
            "--resolver",
            "127.0.0.11:53",
            // Not 127.0.0.11: the probe's own connections would draw from the same
            // sequence of source ports as PID 1's.
            "--ask",
            "127.0.0.1:53",
            "--name",
            "x.allowed.test",
        ],
    );
    assert_answer(&r["prime"], ALLOWED4);
    assert_not_hijacked(&r, ALLOWED4);
    assert!(docker.asked().iter().any(|n| n == "x.allowed.test"));
    // every planting SYN dropped by our rule against a resolver's address as the source
    assert!(
        dropped_by(&net, &["saddr", "127.0.0.11"]) >= 400,
        "{:?}",
        drops(&net)
    );
    // Control: without our two rules the same attack takes PID 1's upstream connection.
    #[rustfmt::skip]
    let r = control_hijacks(&[
        "--method", "tcp-plant", "--prime", "p.allowed.test", "--resolver", "127.0.0.11:53",
        "--ask", "127.0.0.1:53", "--name", "x.allowed.test",
    ]);
    assert_eq!(r["hijacked"], true, "{r}");
}

/// IPv6: `IPV6_FREEBIND` lets any user bind the upstream's own address and send from it to
/// PID 1's socket over the local route (IPv4 refuses a non-local source without
/// IP_TRANSPARENT). The upstream takes its time, as a resolver without the name cached
/// does: the attacker answers for every id before it.
#[test]
fn an_ipv6_upstream_cannot_be_spoofed_through_freebind() {
    let mut net = Net::new();
    let (ok, _) = net.in_world(&["ip", "addr", "add", "fd77::53/128", "dev", "up0", "nodad"]);
    assert!(ok);
    net.slow_dns(
        "[fd77::53]:53".parse().unwrap(),
        ALLOWED4.parse().unwrap(),
        Duration::from_millis(800),
    );
    let root = rootfs("fd77::53");
    let (_, r) = hijack(
        &root,
        &net,
        &["--dns", "filter", "--allow", "*.allowed.test"],
        &[
            "--method",
            "spoof",
            "--resolver",
            "[fd77::53]:53",
            "--ask",
            "[fd77::53]:53",
            "--name",
            "x.allowed.test",
        ],
    );
    assert_not_hijacked(&r, ALLOWED4);
    // dropped for their source address (the rule against port 53 comes after it)
    assert!(dropped_by(&net, &["fd77::53"]) > 0, "{:?}", drops(&net));
    // PID 1's attempt was visible (the upstream took its time) on a port above the
    // kernel's ephemeral range: no socket of the user's ever gets it by chance.
    let targets = r["targets"].as_array().unwrap();
    assert!(!targets.is_empty(), "{r}");
    for t in targets {
        let port: u16 = t
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(port > 60999, "{r}");
    }
}

/// A root process of the container (a `docker exec` session, Docker's own resolver) asks
/// 127.0.0.11 while the sandboxed user has planted a flow from 127.0.0.11:53 to every
/// port from 1024 up. Returns the probe's report and the root lookup's addresses.
fn root_lookup_under_attack(net: &Net, root: &Rootfs, flags: &[&str]) -> (Value, Vec<String>) {
    let mut args: Vec<&str> = flags.to_vec();
    #[rustfmt::skip]
    args.extend_from_slice(&[
        "--", PROBE_IN_ROOT, "hijack", "--method", "plant", "--no-trigger",
        "--victim-wait-ms", "3000", "--resolver", "127.0.0.11:53",
        "--name", "x.allowed.test", "--answer", PLANTED, "--port", "80",
    ]);
    let mut cmd = root.command(&args, &[NO_PRESETS], Some(&net.box_ns));
    let sbx = Running::start(&mut cmd);
    let planted: Value = serde_json::from_str(&sbx.line(Duration::from_secs(30))).unwrap();
    assert_eq!(planted["stage"], "planted", "{planted}");
    let victim = net
        .lookup_as_root("127.0.0.11:53".parse().unwrap(), "x.allowed.test")
        .unwrap_or_else(|e| panic!("the root lookup failed: {e}"));
    let report: Value = serde_json::from_str(&sbx.line(Duration::from_secs(30))).unwrap();
    eprintln!("hijack report: {report}\nroot lookup: {victim:?}");
    let (code, _) = sbx.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    (report, victim)
}

#[test]
fn root_lookups_cannot_be_answered_by_the_user_in_resolver_mode() {
    let mut net = Net::new();
    let _docker = net.docker_dns();
    let root = rootfs("127.0.0.11");
    let (r, victim) = root_lookup_under_attack(
        &net,
        &root,
        &["--dns", "resolver", "--allow", "x.allowed.test"],
    );
    assert_eq!(r["intercepted"], false, "{r}");
    assert_eq!(r["planted"], 0, "{r}");
    assert_eq!(victim, vec![ALLOWED4.to_string()]);
    // Control, afterwards (so its planted flows cannot decide the run above): without our
    // table (it outlives a sandbox: it belongs to the namespace) the same attack takes the
    // root lookup.
    let (ok, _) = net.in_box(&["nft", "delete", "table", "inet", "sandbox_init"]);
    assert!(ok);
    let (r, victim) = root_lookup_under_attack(&net, &root, &["--no-firewall"]);
    assert_eq!(r["intercepted"], true, "{r}");
    assert_eq!(victim, vec![PLANTED.to_string()]);
}

/// The rules above never touch the user's own loopback traffic: a dev server on localhost
/// (any port but 53, any address but a resolver's), over TCP and UDP, IPv4 and IPv6, in
/// both DNS modes.
#[test]
fn the_users_own_loopback_servers_keep_working_in_both_modes() {
    let mut net = Net::new();
    let _docker = net.docker_dns();
    let root = rootfs("127.0.0.11");
    for mode in ["filter", "resolver"] {
        #[rustfmt::skip]
        let s = [
            "--loopback-echo", "127.0.0.1:8080",
            "--loopback-echo", "[::1]:8080",
            "--loopback-echo", "127.0.0.1:5353",
            "--loopback-echo", "127.0.0.2:40000",
            "--loopback-echo", "[::1]:61000",
            "--query", "udp", "127.0.0.11:53", "a.allowed.test", "A",
        ];
        let mut args = vec!["--dns", mode, "--allow", "a.allowed.test"];
        args.extend_from_slice(&["--", PROBE_IN_ROOT, "dns"]);
        args.extend_from_slice(&s);
        let run = root.run_in(&args, &[NO_PRESETS], Some(&net.box_ns));
        run.assert_code(0);
        let out: Vec<Value> = run
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(out.len(), 6, "{mode}: {}", run.stdout);
        for v in &out[..5] {
            assert_eq!(v["tcp"], "ok", "{mode}: {v}");
            assert_eq!(v["udp"], "ok", "{mode}: {v}");
        }
        assert_answer(&out[5], ALLOWED4);
    }
    // What is not theirs: answering from port 53 (here in resolver mode, where a query to
    // the user's own server on 127.0.0.2:53 reaches it): refused by our rule.
    let args = [
        "--dns",
        "resolver",
        "--",
        PROBE_IN_ROOT,
        "dns",
        "--loopback-echo",
        "127.0.0.2:53",
    ];
    let run = root.run_in(&args, &[NO_PRESETS], Some(&net.box_ns));
    run.assert_code(0);
    let v: Value = serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["udp"], "EPERM", "{v}");
    assert_ne!(v["tcp"], "ok", "{v}");
    assert!(dropped_by(&net, &["udp", "sport"]) > 0, "{:?}", drops(&net));
    assert!(dropped_by(&net, &["tcp", "sport"]) > 0, "{:?}", drops(&net));
}

/// CPU time (user + system) of a process, in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime 13th.
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A TCP client half-closes its connection while its query waits for a silent upstream:
/// PID 1 stays idle (it stops polling the socket for input after the end-of-file) and
/// still answers the client once the upstream gives up.
#[test]
fn a_half_closed_tcp_client_leaves_pid1_idle() {
    const SILENT: &str = "10.77.0.56";
    let mut net = Net::new();
    let (ok, _) = net.in_world(&["ip", "addr", "add", &format!("{SILENT}/32"), "dev", "up0"]);
    assert!(ok);
    net.silent_dns(format!("{SILENT}:53").parse().unwrap());
    let root = rootfs(SILENT);
    let args = sandbox_args(
        &["*.allowed.test"],
        &["--half-close", "127.0.0.1:53", "x.allowed.test", "12000"],
    );
    let mut cmd = root.command(&args, &[NO_PRESETS], Some(&net.box_ns));
    let sbx = Running::start(&mut cmd);
    let first: Value = serde_json::from_str(&sbx.line(Duration::from_secs(20))).unwrap();
    assert_eq!(first["step"], "half-closed", "{first}");
    let pid1 = sbx.init_pid();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid1));
    std::thread::sleep(Duration::from_secs(3));
    let (wall, cpu) = (t0.elapsed(), cpu_ticks(pid1) - c0);
    // SC_CLK_TCK is 100 on Linux: a tick is 10 ms. Near idle: under a tenth of the time.
    let cpu_ms = cpu * 10;
    assert!(
        cpu_ms * 10 < wall.as_millis() as u64,
        "PID 1 used {cpu_ms} ms of CPU in {wall:?} with a half-closed client waiting"
    );
    // The upstream never answers: after its attempts the client still gets SERVFAIL.
    let last: Value = serde_json::from_str(&sbx.line(Duration::from_secs(20))).unwrap();
    assert_eq!(last["rcode"], "SERVFAIL", "{last}");
    let (code, _) = sbx.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}
