//! Tier 2, changing a running sandbox: sandbox-init is PID 1 of the box with the DNS filter
//! on (upstream dns1, which logs every query), the probe runs as the sandboxed user and
//! waits for files the test creates between its steps. Root's commands enter the running
//! sandbox as `docker exec` does (its pid, mount and network namespaces, its root and
//! working directory) with `nsenter`; the protocol tests speak to the socket's path in the
//! rootfs directly, as root.

mod common;

use common::netns::*;
use common::*;
use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

const NO_PRESETS: (&str, &str) = ("SANDBOX_PRESETS", "");
const SOCKET: &str = "run/sandbox-init/control.sock";

fn rootfs() -> Rootfs {
    let r = Rootfs::new();
    r.write("etc/resolv.conf", &format!("nameserver {DNS1}\n"));
    r
}

/// The probe's DNS steps as the sandbox's command, filter mode, with `flags`.
fn session(
    root: &Rootfs,
    net: &Net,
    flags: &[&str],
    steps: &[&str],
    env: &[(&str, &str)],
) -> Running {
    let mut args = vec!["--dns", "filter"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", PROBE_IN_ROOT, "dns"]);
    args.extend_from_slice(steps);
    let mut all_env = vec![NO_PRESETS];
    all_env.extend_from_slice(env);
    let mut cmd = root.command(&args, &all_env, Some(&net.box_ns));
    Running::start(&mut cmd)
}

/// The probe's `steps` with allowed.test allowed and the audit log at /root/audit.jsonl.
fn audited_session(root: &Rootfs, net: &Net, steps: &[&str]) -> Running {
    let flags = [
        "--allow",
        "allowed.test",
        "--audit-log",
        "/root/audit.jsonl",
    ];
    session(root, net, &flags, steps, &[])
}

/// The audit log's events whose name starts with `prefix`.
fn audit_events(root: &Rootfs, prefix: &str) -> Vec<Value> {
    let audit = fs::read_to_string(root.join("root/audit.jsonl")).unwrap();
    audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"].as_str().is_some_and(|e| e.starts_with(prefix)))
        .collect()
}

/// A session whose command waits for `file`, with its control socket up.
fn waiting_session(root: &Rootfs, net: &Net, file: &str) -> Running {
    let sbx = session(
        root,
        net,
        &["--allow", "allowed.test"],
        &["--wait-file", file],
        &[],
    );
    wait_for_socket(root);
    sbx
}

/// Lets a command waiting for /tmp/go end; PID 1 exits with its code 0.
fn finish(sbx: Running, root: &Rootfs) {
    root.write("tmp/go", "");
    let (code, _) = sbx.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

fn step(sbx: &Running, n: usize) -> Value {
    let l = sbx.line(Duration::from_secs(20));
    serde_json::from_str(&l).unwrap_or_else(|_| panic!("step {n}: {l}"))
}

/// A command inside the running sandbox as `docker exec` starts one: PID 1's namespaces,
/// root and working directory; `uid` 0 unless given; environment `env` only.
fn exec_in(sbx: &Running, uid: Option<u32>, argv: &[&str], env: &[(&str, &str)]) -> Run {
    let pid = sbx.init_pid().to_string();
    let mut full: Vec<String> = ["nsenter", "-t", &pid, "-p", "-m", "-n", "-r", "-w"]
        .map(String::from)
        .to_vec();
    if let Some(u) = uid {
        full.extend(["-S".into(), u.to_string(), "-G".into(), u.to_string()]);
    }
    full.extend(argv.iter().map(|s| s.to_string()));
    let mut cmd = Command::new(&full[0]);
    cmd.args(&full[1..]).env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(&mut cmd, Duration::from_secs(30))
}

fn sandbox_init(sbx: &Running, args: &[&str]) -> Run {
    let mut argv = vec![INIT_IN_ROOT];
    argv.extend_from_slice(args);
    exec_in(sbx, None, &argv, &[])
}

/// One request line to the socket, as root from the host; the answer line.
fn ask(root: &Rootfs, line: &[u8]) -> Value {
    let mut s = UnixStream::connect(root.join(SOCKET)).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(line).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("answer: {out:?}"))
}

fn wait_for_socket(root: &Rootfs) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(root.join(SOCKET)).is_err() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[track_caller]
fn assert_has(text: &str, needle: impl AsRef<str>) {
    let needle = needle.as_ref();
    assert!(text.contains(needle), "{needle:?} not in:\n{text}");
}

fn assert_connected(v: &Value) {
    assert_eq!(v["result"], "connected", "{v}");
}

fn assert_rejected(v: &Value) {
    assert_eq!(v["result"], "error", "should be blocked: {v}");
    assert_eq!(v["error"], "ECONNREFUSED", "{v}");
}

fn vm_rss_kb(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn allow_and_deny_change_a_running_session_and_the_dns_filter_stays_on() {
    let net = Net::new();
    let root = rootfs();
    let (dns1, routed80) = (format!("{DNS1}:53"), format!("{ROUTED4}:80"));
    let other80 = format!("{OTHER4}:80");
    #[rustfmt::skip]
    let steps = [
        "--resolve-connect", &dns1, "other.test", "80",  // 0: not allowed
        "--connect", &routed80,                           // 1: not allowed
        "--wait-file", "/tmp/allowed",                    // 2
        "--resolve-connect", &dns1, "other.test", "80",  // 3: allowed live
        "--connect", &routed80,                           // 4: allowed live
        "--wait-file", "/tmp/denied",                     // 5
        "--resolve-connect", &dns1, "other.test", "80",  // 6: denied again
        "--connect", &routed80,                           // 7: denied again
        "--query", "udp", &dns1, "never.test", "A",       // 8: never allowed
        "--wait-file", "/tmp/forgotten",                  // 9
        "--connect", &other80,                            // 10: its learned address
    ];
    let sbx = audited_session(&root, &net, &steps);
    let s0 = step(&sbx, 0);
    assert_eq!(s0["rcode"], "NXDOMAIN", "{s0}");
    assert_rejected(&step(&sbx, 1));
    assert!(net
        .dns_queries("dns1")
        .iter()
        .all(|q| !q.contains("other.test")));

    // `blocked` names the destination and the live command that admits it
    let deadline = Instant::now() + Duration::from_secs(10);
    let blocked = loop {
        let b = sandbox_init(&sbx, &["blocked"]);
        if b.stdout.contains(&routed80) {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "not in blocked: {}{}",
            b.stdout,
            b.stderr
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    blocked.assert_code(0);
    assert_has(&blocked.stdout, format!("sandbox-init allow {routed80}"));
    assert_has(&blocked.stdout, "SANDBOX_ALLOW=");
    // PID 1's own line offers the live way too, with the container's name (its hostname;
    // this fixture shares the host's), and the entry is one word of the grammar.
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let line = sbx.stderr_until(Duration::from_secs(5), |l| l.contains(&routed80));
    let line = line.lines().find(|l| l.contains(&routed80)).unwrap();
    assert_has(
        line,
        format!(
            "to allow it: SANDBOX_ALLOW={routed80} (or --allow); to allow it now: docker exec {} \
             sandbox-init allow {routed80}",
            host.trim()
        ),
    );

    let allow = sandbox_init(&sbx, &["allow", "other.test:80", &routed80]);
    allow.assert_code(0);
    assert_has(&allow.stdout, "other.test:80: allowed");
    let status = sandbox_init(&sbx, &["status"]);
    status.assert_code(0);
    assert_has(&status.stdout, "allowed.test <- flag --allow");
    assert_has(&status.stdout, "other.test:80 <- live (uid 0 pid");
    assert_has(&status.stdout, "dns mode: filter");

    root.write("tmp/allowed", "");
    assert_eq!(step(&sbx, 2)["found"], true);
    let s3 = step(&sbx, 3);
    assert_eq!(s3["rcode"], "NOERROR", "{s3}");
    assert_connected(&s3["connect"]);
    assert_connected(&step(&sbx, 4));

    let deny = sandbox_init(&sbx, &["deny", "other.test:80", &routed80, "allowed.test"]);
    deny.assert_code(0);
    assert_has(&deny.stdout, "other.test:80: denied");
    assert!(
        deny.stdout
            .contains("allowed.test: allowed since the start"),
        "{}",
        deny.stdout
    );
    root.write("tmp/denied", "");
    assert_eq!(step(&sbx, 5)["found"], true);
    let s6 = step(&sbx, 6);
    assert_eq!(s6["rcode"], "NXDOMAIN", "{s6}");
    assert_rejected(&step(&sbx, 7));
    assert_eq!(step(&sbx, 8)["rcode"], "NXDOMAIN");
    // The address the denied name's answer put in the sets goes too, within the set's
    // timeout of the deny (not the answer's TTL): PID 1 stops keeping it alive.
    let deadline = Instant::now() + Duration::from_secs(30);
    while net
        .nft_json(&["set", "inet", "sandbox_init", "dyn_tcp80_v4"])
        .to_string()
        .contains(OTHER4)
    {
        assert!(
            Instant::now() < deadline,
            "{OTHER4} still in the set after deny"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    root.write("tmp/forgotten", "");
    assert_eq!(step(&sbx, 9)["found"], true);
    assert_rejected(&step(&sbx, 10));
    let (code, _) = sbx.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));

    // Only the one allowed lookup reached the upstream; the DNS filter never switched off.
    let q = net.dns_queries("dns1");
    assert_eq!(
        q.iter().filter(|l| l.contains("other.test")).count(),
        1,
        "{q:?}"
    );
    assert!(q.iter().all(|l| !l.contains("never.test")), "{q:?}");
    // Every change is on stderr and in the audit log with who made it.
    let changes = audit_events(&root, "live_");
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["event"], "live_allow");
    assert_eq!(changes[0]["uid"], 0);
    assert!(changes[0]["pid"].as_i64().unwrap() > 1);
    assert_eq!(changes[1]["event"], "live_deny");
}

/// The box's tracked connections from `local_port` to `dst` port 9000 (one line each; the
/// original direction's fields come first, IPv6 written out in full).
fn tracked(net: &Net, dst: &str, local_port: u64) -> Vec<String> {
    let (ok, table) = net.in_box(&["cat", "/proc/net/nf_conntrack"]);
    assert!(ok, "{table}");
    let dst: std::net::IpAddr = dst.parse().unwrap();
    let first = |l: &str, key: &str| -> Option<String> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(String::from)
    };
    table
        .lines()
        .filter(|l| {
            first(l, "dst=").and_then(|a| a.parse().ok()) == Some(dst)
                && first(l, "sport=") == Some(local_port.to_string())
                && first(l, "dport=").as_deref() == Some("9000")
        })
        .map(String::from)
        .collect()
}

#[test]
fn deny_closes_established_connections_only_with_kill() {
    let mut net = Net::new();
    let (v4, v6) = (format!("{OTHER4}:9000"), format!("[{OTHER6}]:9000"));
    net.serve_echo(v4.parse().unwrap());
    net.serve_echo(v6.parse().unwrap());
    let root = rootfs();
    #[rustfmt::skip]
    let steps = [
        "--wait-file", "/tmp/allowed",  // 0
        "--hold", &v4,                  // 1: allowed live, kept open
        "--hold", &v6,                  // 2
        "--wait-file", "/tmp/denied",   // 3
        "--exchange",                   // 4: denied without --kill: still open
        "--connect", &v4,               // 5: a new one is refused
        "--wait-file", "/tmp/killed",   // 6
        "--exchange",                   // 7: after --kill: closed
        "--connect", &v4,               // 8
    ];
    let sbx = audited_session(&root, &net, &steps);
    wait_for_socket(&root);
    sandbox_init(&sbx, &["allow", &v4, &v6]).assert_code(0);
    root.write("tmp/allowed", "");
    assert_eq!(step(&sbx, 0)["found"], true);
    let held: Vec<Value> = (1..=2).map(|n| step(&sbx, n)).collect();
    let mut ports = vec![];
    for (h, dst) in held.iter().zip([OTHER4, OTHER6]) {
        assert_eq!(h["result"], "ok", "{h}");
        let port = h["local_port"].as_u64().unwrap();
        let entries = tracked(&net, dst, port);
        assert!(
            entries.len() == 1 && entries[0].contains("ESTABLISHED"),
            "{entries:?} {}",
            net.in_box(&["cat", "/proc/net/nf_conntrack"]).1
        );
        ports.push(port);
    }

    // Control: deny alone closes nothing established, and refuses a new connection.
    let deny = sandbox_init(&sbx, &["deny", &v4, &v6]);
    deny.assert_code(0);
    assert_has(&deny.stdout, format!("{v4}: denied"));
    assert!(!deny.stdout.contains("closed"), "{}", deny.stdout);
    root.write("tmp/denied", "");
    assert_eq!(step(&sbx, 3)["found"], true);
    let still = step(&sbx, 4);
    assert_eq!(
        still["results"],
        serde_json::json!([{"result": "ok"}, {"result": "ok"}])
    );
    assert_rejected(&step(&sbx, 5));
    assert_eq!(tracked(&net, OTHER4, ports[0]).len(), 1);

    // --kill (the entries are no longer live: it closes what they named all the same)
    let kill = sandbox_init(&sbx, &["deny", "--kill", &v4, &v6]);
    kill.assert_code(0);
    assert_has(&kill.stdout, "closed 2 established connections (--kill)");
    for (dst, port) in [OTHER4, OTHER6].iter().zip(&ports) {
        assert_eq!(tracked(&net, dst, *port), Vec::<String>::new());
    }
    let log = sbx.stderr_until(Duration::from_secs(5), |l| l.contains("deny --kill"));
    assert_has(&log, "live allowlist: deny --kill by uid 0 pid ");
    root.write("tmp/killed", "");
    assert_eq!(step(&sbx, 6)["found"], true);
    let closed = step(&sbx, 7);
    for r in closed["results"].as_array().unwrap() {
        assert_eq!(r["result"], "error", "{closed}");
        assert_eq!(r["error"], "ECONNRESET", "{closed}");
    }
    assert_rejected(&step(&sbx, 8));
    let (code, _) = sbx.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));

    let kills = audit_events(&root, "live_kill");
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0]["closed"], 2);
    assert_eq!(kills[0]["uid"], 0);
    assert!(kills[0]["pid"].as_i64().unwrap() > 1);
}

#[test]
fn changes_are_logged_on_stderr_with_who_made_them() {
    let net = Net::new();
    let root = rootfs();
    let sbx = waiting_session(&root, &net, "/tmp/go");
    sandbox_init(&sbx, &["allow", "10.77.1.0/24:22"]).assert_code(0);
    let log = sbx.stderr_until(Duration::from_secs(5), |l| l.contains("live allowlist"));
    assert!(
        log.contains("live allowlist: allow by uid 0 pid ")
            && log.contains("10.77.1.0/24:22: allowed"),
        "{log}"
    );
    // nothing downgraded: the redirect to the DNS filter is still there, and the
    // table gained the rule in its live chain only
    let t = net.nft_json(&["table", "inet", "sandbox_init"]);
    let text = t.to_string();
    assert!(text.contains("dns_redirect"), "{text}");
    let live_rules = t["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| r["chain"] == "live")
        .count();
    assert_eq!(live_rules, 1, "{text}");
    finish(sbx, &root);
}

#[test]
fn the_sandboxed_user_cannot_use_the_control_socket() {
    let net = Net::new();
    let root = rootfs();
    let sbx = waiting_session(&root, &net, "/tmp/go");
    let probe = |extra: &[&str]| -> Value {
        let mut argv = vec![PROBE_IN_ROOT, "report"];
        argv.extend_from_slice(extra);
        let run = exec_in(&sbx, Some(1000), &argv, &[]);
        run.report()
    };
    let attempts = [
        "--unix",
        "/run/sandbox-init/control.sock",
        "--unix-abstract",
        "sandbox-init",
        "--unix-abstract",
        "/run/sandbox-init/control.sock",
    ];
    let r = probe(&attempts);
    assert_eq!(r["uid"], 1000);
    let u = r["unix"].as_array().unwrap();
    assert_eq!(u[0]["error"], "EACCES", "{r}");
    assert_eq!(u[1]["error"], "ECONNREFUSED", "no abstract socket: {r}");
    assert_eq!(u[2]["error"], "ECONNREFUSED", "no abstract socket: {r}");
    // Nothing of the box listens in the abstract namespace at all.
    let (_, unix) = net.in_box(&["cat", "/proc/net/unix"]);
    assert!(!unix.contains(" @"), "{unix}");

    // Control: with the directory and the socket opened to everyone the user reaches the
    // socket, and PID 1 still refuses it by its peer credentials.
    fs::set_permissions(
        root.join("run/sandbox-init"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::set_permissions(root.join(SOCKET), fs::Permissions::from_mode(0o666)).unwrap();
    let r = probe(&attempts[..2]);
    let u = &r["unix"][0];
    assert_eq!(u["result"], "connected", "{r}");
    assert!(u["reply"].as_str().unwrap().contains("only root"), "{r}");
    let log = sbx.stderr_until(Duration::from_secs(5), |l| l.contains("refused uid 1000"));
    assert!(log.contains("only root may change the sandbox"), "{log}");
    let status = ask(&root, b"{\"v\":1,\"op\":\"status\"}\n");
    let entries = status["data"]["entries"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["source"] != "live"), "{status}");

    // The client itself says what to do when not root.
    let run = exec_in(&sbx, Some(1000), &[INIT_IN_ROOT, "allow", "x.test"], &[]);
    run.assert_code(64);
    assert_has(&run.stderr, "only root in the container");
    finish(sbx, &root);
}

#[test]
fn malformed_requests_get_an_error_and_a_thousand_allows_leave_pid1_bounded() {
    let net = Net::new();
    let root = rootfs();
    let sbx = waiting_session(&root, &net, "/tmp/never");
    for bad in [
        &b"allow 10.0.0.1\n"[..],
        b"{\"v\":1,\"op\":\"allow\",\"entries\":[\"a.test; rm -rf /\"]}\n",
        b"{\"v\":7,\"op\":\"status\"}\n",
        b"\x00\xff\xfe\n",
    ] {
        let a = ask(&root, bad);
        assert_eq!(a["ok"], false, "{a}");
        assert!(a["error"].as_str().unwrap().len() > 5, "{a}");
    }
    // larger than the cap, without a newline: refused, not buffered
    let mut s = UnixStream::connect(root.join(SOCKET)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&vec![b'x'; 64 * 1024]);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains("larger than"), "{out}");
    // a connection that says nothing is closed at its deadline
    let mut idle = UnixStream::connect(root.join(SOCKET)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = String::new();
    let _ = idle.read_to_string(&mut out);
    assert!(out.contains("no request"), "{out}");

    let pid = sbx.init_pid();
    let before = vm_rss_kb(pid);
    for i in 0..1000u32 {
        let entry = format!("10.200.{}.{}:80", i / 250, i % 250);
        let line = format!("{{\"v\":1,\"op\":\"allow\",\"entries\":[\"{entry}\"]}}\n");
        let a = ask(&root, line.as_bytes());
        if i < 256 {
            assert_eq!(a["ok"], true, "{i}: {a}");
        } else {
            // past the cap on live entries: refused, nothing grows
            assert_eq!(a["ok"], false, "{i}: {a}");
        }
    }
    let after = vm_rss_kb(pid);
    eprintln!("PID 1 VmRSS: {before} kB before, {after} kB after 1000 allow calls");
    assert!(after < before + 8 * 1024, "{before} -> {after} kB");
    let status = ask(&root, b"{\"v\":1,\"op\":\"status\"}\n");
    assert_eq!(status["ok"], true);
    let live = status["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "live")
        .count();
    assert_eq!(live, 256);
    // signals are still forwarded at once: the probe dies of SIGTERM
    let start = Instant::now();
    sbx.signal(libc::SIGTERM);
    let (code, _) = sbx.wait(Duration::from_secs(5));
    assert_eq!(code, Some(128 + libc::SIGTERM));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn apply_and_a_second_entrypoint_are_refused_in_a_live_session() {
    let net = Net::new();
    let root = rootfs();
    let dns1 = format!("{DNS1}:53");
    let steps = [
        "--resolve-connect",
        &dns1,
        "allowed.test",
        "80",
        "--wait-file",
        "/tmp/go",
    ];
    let sbx = session(&root, &net, &["--allow", "allowed.test"], &steps, &[]);
    assert_connected(&step(&sbx, 0)["connect"]);
    // what the DNS filter learned is in the table
    let before = net.nft_json(&["table", "inet", "sandbox_init"]);
    assert!(before.to_string().contains(ALLOWED4), "{before}");
    for args in [
        &["apply", "--dns", "resolver"][..],
        &["--", "/usr/local/bin/sandbox-probe", "exit", "0"],
        &["--allow-host-pid-namespace", "apply"],
    ] {
        let run = sandbox_init(&sbx, args);
        run.assert_code(64);
        assert_has(&run.stderr, "sandbox-init allow ENTRY");
        assert_has(&run.stderr, "sandbox-init exec bash");
    }
    let after = net.nft_json(&["table", "inet", "sandbox_init"]);
    // A learned address's remaining time counts down (and PID 1 refreshes it), and a stray
    // packet of the box moves a counter: the comparison is of what the table holds, not of
    // when each element expires or what traffic was counted.
    assert_eq!(
        without_countdowns(before),
        without_countdowns(after),
        "the live table was changed"
    );
    // Control: the same `apply` where no sandbox-init is PID 1 (a fresh one, in the same
    // network namespace) does replace the table, DNS redirect and learned address gone.
    root.run_in(
        &["apply", "--dns", "resolver", "--allow", "allowed.test"],
        &[NO_PRESETS],
        Some(&net.box_ns),
    )
    .assert_code(0);
    let replaced = net.nft_json(&["table", "inet", "sandbox_init"]).to_string();
    assert!(!replaced.contains("dns_redirect"), "{replaced}");
    finish(sbx, &root);
}

#[test]
fn sandbox_init_refuses_to_build_a_sandbox_in_the_hosts_pid_namespace() {
    let net = Net::new();
    let root = rootfs();
    let ours = fs::read_link("/proc/self/ns/pid").unwrap();
    if ours.to_str() != Some("pid:[4026531836]") {
        // This suite itself runs in a container (the fresh-machine check): there is no
        // host PID namespace to be in, and a container's own must not be refused.
        eprintln!("not in the initial PID namespace ({ours:?}): checking that it runs");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.box_ns, "unshare", "--mount"])
            .arg(format!("--mount-proc={}", root.join("proc").display()))
            .arg("chroot")
            .arg(&root.path)
            .args([INIT_IN_ROOT, "apply", "--dns", "resolver"])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("SANDBOX_PRESETS", "");
        run_bounded(&mut cmd, Duration::from_secs(30)).assert_code(0);
        return;
    }
    // The host's PID namespace, but this test's network namespace and a chroot: the
    // control run below must not touch the machine either.
    let run = |extra: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.box_ns, "unshare", "--mount"])
            .arg(format!("--mount-proc={}", root.join("proc").display()))
            .arg("chroot")
            .arg(&root.path)
            .arg(INIT_IN_ROOT)
            .args(extra)
            .args(["apply", "--dns", "resolver"])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("SANDBOX_PRESETS", "");
        run_bounded(&mut cmd, Duration::from_secs(30))
    };
    let refused = run(&[]);
    refused.assert_code(64);
    assert_has(&refused.stderr, "initial PID namespace");
    assert_has(&refused.stderr, "--allow-host-pid-namespace");
    let (ok, out) = net.in_box(&["nft", "list", "tables"]);
    assert!(ok && !out.contains("sandbox_init"), "{out}");
    // Control: the same command with the override builds the sandbox there.
    run(&["--allow-host-pid-namespace"]).assert_code(0);
    let (_, out) = net.in_box(&["nft", "list", "tables"]);
    assert!(out.contains("sandbox_init"), "{out}");
}

#[test]
fn exec_runs_a_command_as_the_entrypoints_child_runs() {
    let net = Net::new();
    let root = rootfs();
    let secret = ("ANTHROPIC_API_KEY", "sk-ant-api03-control-test-secret");
    // The entrypoint's child, for reference.
    let child = root.run_in(
        &["--dns", "filter", "--", PROBE_IN_ROOT, "report"],
        &[NO_PRESETS, secret],
        Some(&net.box_ns),
    );
    child.assert_code(0);
    let want = child.report();

    let sbx = session(&root, &net, &[], &["--wait-file", "/tmp/go"], &[secret]);
    wait_for_socket(&root);
    // docker exec's environment is the container's: the secret included
    let env = [NO_PRESETS, secret];
    // Control: a plain `docker exec` session has root, capabilities and the secret.
    let plain = exec_in(&sbx, None, &[PROBE_IN_ROOT, "report"], &env).report();
    assert_eq!(plain["uid"], 0);
    assert_ne!(cap(&plain, "CapEff"), 0);
    assert!(env_map(&plain).contains_key(secret.0));

    let run = exec_in(
        &sbx,
        None,
        &[INIT_IN_ROOT, "exec", "--", PROBE_IN_ROOT, "report"],
        &env,
    );
    run.assert_code(0);
    let got = run.report();
    for k in ["uid", "euid", "gid", "egid", "groups", "cwd"] {
        assert_eq!(got[k], want[k], "{k}: {got}");
    }
    assert_eq!(got["uid"], 1000);
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(cap(&got, k), 0, "{k}: {got}");
    }
    assert_eq!(got["status"]["NoNewPrivs"], "1", "{got}");
    let env_got = env_map(&got);
    assert!(!env_got.contains_key(secret.0), "{got}");
    assert!(!run.stdout.contains(secret.1) && !run.stderr.contains(secret.1));
    assert_eq!(
        env_got.get("HOME").map(String::as_str),
        Some("/home/claude")
    );

    // As the user it does nothing and says why.
    let as_user = exec_in(&sbx, Some(1000), &[INIT_IN_ROOT, "exec", "true"], &[]);
    as_user.assert_code(64);
    assert_has(&as_user.stderr, "not root");
    finish(sbx, &root);
}

/// `v` with every set element's countdown ("expires") and every counter's values taken out.
fn without_countdowns(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("expires");
                if let Some(counter) = m.get_mut("counter") {
                    *counter = Value::Null;
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}
