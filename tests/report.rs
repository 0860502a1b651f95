//! Tier 2, reports of what was blocked: sandbox-init as PID 1 in the box namespace (see
//! common/netns.rs) reads the reject rules' NFLOG group and prints one line per blocked
//! destination with the exact setting that allows it; the audit log holds every event;
//! `check` run inside the running sandbox shows the counters and recent destinations.

mod common;

use common::netns::*;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const NO_PRESETS: (&str, &str) = ("SANDBOX_PRESETS", "");
const AUDIT: &str = "/var/log/sandbox-init/audit.jsonl";

fn rootfs() -> Rootfs {
    let r = Rootfs::new();
    r.write("etc/resolv.conf", &format!("nameserver {DNS1}\n"));
    std::fs::create_dir_all(r.join("var/log/sandbox-init")).unwrap();
    r
}

/// The report lines on stderr (the `blocked` lines of the contract).
fn blocked_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("sandbox-init: blocked "))
        .collect()
}

fn audit(root: &Rootfs) -> Vec<Value> {
    let text = std::fs::read_to_string(root.join(AUDIT)).expect("audit log exists");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn mode(root: &Rootfs, rel: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(root.join(rel))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn each_blocked_destination_is_one_line_with_the_setting_that_allows_it() {
    let net = Net::new();
    let root = rootfs();
    let v4 = format!("{OTHER4}:80");
    let v6 = format!("[{OTHER6}]:22");
    let unnamed6 = "[fd77::99]:8443".to_string();
    let udp = format!("{DNS2}:53");
    let flags = [
        // Resolver mode: in filter mode PID 1 answers every port-53 datagram itself, so the
        // UDP destination below would never be blocked (tests/dns.rs covers that mode).
        "--dns",
        "resolver",
        "--allow",
        "allowed.test",
        // other.test resolves at start: its addresses are named in the report
        "--allow",
        "other.test:443",
        "--audit-log",
        AUDIT,
        "--",
        PROBE_IN_ROOT,
        "report",
        "--timeout-ms",
        "1500",
    ];
    let mut args: Vec<&str> = flags.to_vec();
    // every destination twice: still one line each
    for _ in 0..2 {
        args.extend([
            "--tcp", &v4, "--tcp", &v6, "--tcp", &unnamed6, "--udp", &udp,
        ]);
    }
    let run = root.run_in(&args, &[NO_PRESETS], Some(&net.box_ns));
    run.assert_code(0);
    let r = run.report();
    for t in r["tcp"].as_array().unwrap() {
        assert_eq!(t["error"], "ECONNREFUSED", "{t}");
    }
    let lines = blocked_lines(&run.stderr);
    let expect = [
        (
            format!("blocked tcp {OTHER4}:80 (other.test); "),
            "SANDBOX_ALLOW=other.test:80 ".to_string(),
        ),
        (
            format!("blocked tcp [{OTHER6}]:22 (other.test); "),
            "SANDBOX_ALLOW=other.test:22 ".to_string(),
        ),
        (
            "blocked tcp [fd77::99]:8443; ".to_string(),
            // brackets glob in a shell: the suggestion is quoted
            "SANDBOX_ALLOW='[fd77::99]:8443' ".to_string(),
        ),
        (
            format!("blocked udp {DNS2}:53; "),
            format!("SANDBOX_ALLOW={DNS2}:53/udp "),
        ),
    ];
    for (what, allow) in &expect {
        let found: Vec<&&str> = lines.iter().filter(|l| l.contains(what.as_str())).collect();
        assert_eq!(found.len(), 1, "{what}: {lines:#?}\n{}", run.stderr);
        assert!(found[0].contains(allow.as_str()), "{}", found[0]);
    }
    assert_eq!(lines.len(), 4, "{lines:#?}");
    // the summary at info level on exit
    assert!(
        run.stderr
            .contains("session summary: 8 blocked attempts to 4 destinations"),
        "{}",
        run.stderr
    );

    // The audit log: a new file 0600, one JSON object per line: the first attempt to each
    // destination, then its repeats counted.
    assert_eq!(mode(&root, AUDIT), 0o600);
    let events = audit(&root);
    for e in &events {
        for k in ["event", "proto", "addr", "port", "name", "time"] {
            assert!(e.get(k).is_some(), "{k} missing: {e}");
        }
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    let count = |addr: &str, port: u64, proto: &str| {
        let of = |e: &&Value| e["addr"] == addr && e["port"] == port && e["proto"] == proto;
        let first = events
            .iter()
            .filter(of)
            .filter(|e| e["event"] == "blocked")
            .count();
        let repeats: u64 = events
            .iter()
            .filter(of)
            .filter(|e| e["event"] == "repeated")
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        (first, repeats)
    };
    assert_eq!(count(OTHER4, 80, "tcp"), (1, 1), "{events:#?}");
    assert_eq!(count(OTHER6, 22, "tcp"), (1, 1));
    assert_eq!(count("fd77::99", 8443, "tcp"), (1, 1));
    assert_eq!(count(DNS2, 53, "udp"), (1, 1));
    let named = events.iter().find(|e| e["addr"] == OTHER4).unwrap();
    assert_eq!(named["event"], "blocked");
    assert_eq!(named["name"], "other.test");
    assert_eq!(named["allow"], "other.test:80");

    // The suggestions are the exact settings: given them, the same destinations connect
    // (and UDP gets its answer), and nothing is reported.
    let allow = format!("other.test:80 other.test:22 {DNS2}:53/udp");
    let run = root.run_in(
        &[
            "--dns",
            "resolver",
            "--allow",
            "allowed.test",
            "--",
            PROBE_IN_ROOT,
            "report",
            "--timeout-ms",
            "1500",
            "--tcp",
            &v4,
            "--tcp",
            &v6,
            "--udp",
            &udp,
        ],
        &[NO_PRESETS, ("SANDBOX_ALLOW", &allow)],
        Some(&net.box_ns),
    );
    run.assert_code(0);
    let r = run.report();
    for t in r["tcp"].as_array().unwrap() {
        assert_eq!(t["result"], "connected", "{t}");
    }
    assert_eq!(r["udp"][0]["result"], "reply", "{}", r["udp"][0]);
    assert!(blocked_lines(&run.stderr).is_empty(), "{}", run.stderr);
}

#[test]
fn the_gateway_is_reported_with_its_own_address() {
    let net = Net::new();
    let root = rootfs();
    let gw = format!("{GATEWAY4}:8443");
    let run = root.run_in(
        &[
            "--allow",
            "allowed.test",
            "--",
            PROBE_IN_ROOT,
            "report",
            "--tcp",
            &gw,
        ],
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    run.assert_code(0);
    let lines = blocked_lines(&run.stderr);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].contains(&format!(
            "blocked tcp {GATEWAY4}:8443 (the default gateway)"
        )),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!("SANDBOX_ALLOW={GATEWAY4}:8443 ")),
        "{}",
        lines[0]
    );
}

/// SIGUSR1 to PID 1 during a flood of `n` (the probe counts `what`): it reaches the command
/// at once, while the flood is still going.
fn signal_arrives_during_the_flood(run: &Running, n: usize, what: &str) {
    let sent = Instant::now();
    run.signal(libc::SIGUSR1);
    let got = run.line(Duration::from_secs(5));
    let took = sent.elapsed();
    let k: usize = got
        .strip_prefix(&format!("got {} after ", libc::SIGUSR1))
        .and_then(|r| r.strip_suffix(&format!(" {what}")))
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line: {got}"));
    assert!(
        k > 0 && k < n,
        "the signal did not arrive during the flood ({k} {what}): make the flood longer"
    );
    // Reported, never asserted: a loaded machine may take longer without a defect.
    eprintln!("SIGUSR1 forwarded in {took:?} during the flood");
}

/// A flood of 10,000 blocked connections to distinct ports: a bounded number of lines,
/// signals still forwarded at once, every event accounted for in the audit log, and
/// `check` (run in the running sandbox, as `docker exec` would) shows the counters and the
/// recent ones.
#[test]
fn a_flood_is_bounded_signals_stay_prompt_and_check_shows_it() {
    const N: usize = 10_000;
    let net = Net::new();
    let root = rootfs();
    let n = N.to_string();
    let mut cmd = root.command(
        &[
            // Resolver mode: PID 1 keeps CAP_KILL and, for the live allowlist of
            // `sandbox-init allow`, CAP_NET_ADMIN; nothing else (below).
            "--dns",
            "resolver",
            "--allow",
            "allowed.test",
            "--audit-log",
            AUDIT,
            "--",
            PROBE_IN_ROOT,
            "flood",
            &n,
            OTHER4,
            "1",
        ],
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    let run = Running::start(&mut cmd);
    assert_eq!(run.line(Duration::from_secs(20)), "flooding");
    signal_arrives_during_the_flood(&run, N, "attempts");
    let done = run.line(Duration::from_secs(60));
    let done: Value = serde_json::from_str(done.strip_prefix("done ").unwrap()).unwrap();
    assert_eq!(done["refused"], N as u64, "{done}");

    // PID 1 kept CAP_KILL and CAP_NET_ADMIN (the control socket changes the sets) only.
    let status = std::fs::read_to_string(format!("/proc/{}/status", run.init_pid())).unwrap();
    let capeff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(capeff, "0000000000001020", "{status}");

    // `check` in the running sandbox: kernel counters and PID 1's recent destinations.
    // Give PID 1 its status-file interval to catch up with the last packets.
    std::thread::sleep(Duration::from_millis(1500));
    let check = root.run_in(
        &["check", "--allow", "allowed.test"],
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    check.assert_code(0);
    let out = &check.stdout;
    assert!(
        out.contains("blocked so far (this running sandbox):"),
        "{out}"
    );
    let (counters, tcp) = kernel_tcp_resets(out);
    assert!(tcp >= N as u64, "{counters}");
    assert!(!counters.contains("do not log"), "{counters}");
    // every blocked attempt reached PID 1 (its status file is at most a second old)
    assert!(
        out.contains(&format!("reported by PID 1: {N} events, 4096+ distinct")),
        "{out}"
    );
    assert!(
        out.contains(&format!("SANDBOX_ALLOW={OTHER4}:")),
        "recent destinations missing: {out}"
    );
    assert!(
        out.contains("audit log: /var/log/sandbox-init/audit.jsonl"),
        "{out}"
    );
    // the status file is root's alone
    assert_eq!(mode(&root, "run/sandbox-init"), 0o700);
    assert_eq!(mode(&root, "run/sandbox-init/status.json"), 0o600);
    let st: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("run/sandbox-init/status.json")).unwrap(),
    )
    .unwrap();
    let overruns = st["nflog"]["overruns"].as_u64().unwrap();

    run.signal(libc::SIGTERM);
    let stderr = run.stderr.clone();
    let (code, _) = run.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let stderr = stderr.lock().unwrap().clone();
    let lines = blocked_lines(&stderr);
    // the burst, at most one line per refill interval, and the "not shown" notes
    assert!(
        lines.len() >= 10 && lines.len() <= 30,
        "{} lines:\n{stderr}",
        lines.len()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("more destinations not shown (rate limit)")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("session summary: {N} blocked attempts")),
        "{stderr}"
    );

    // Every event accounted for in the audit log (the kernel dropped none: a drop would
    // be counted): the first destinations of the address one by one, the rest counted.
    assert_eq!(overruns, 0, "the kernel dropped NFLOG messages: {st}");
    let events = audit(&root);
    let listed: Vec<u64> = events
        .iter()
        .filter(|e| e["addr"] == OTHER4 && e["proto"] == "tcp" && e["event"] == "blocked")
        .map(|e| e["port"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, (1..=100).collect::<Vec<u64>>());
    let counted: u64 = events
        .iter()
        .filter(|e| e["addr"] == OTHER4 && e["event"] == "summary")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        listed.len() as u64 + counted,
        N as u64,
        "{:#?}",
        &events[100..]
    );
}

/// The DNS-aware mode reports a denied name the same way: one line with the
/// name and the setting, and a `denied_name` event in the audit log.
#[test]
fn a_denied_name_is_one_line_and_an_audit_event() {
    let net = Net::new();
    let root = rootfs();
    let run = root.run_in(
        &[
            "--allow",
            "allowed.test",
            "--dns",
            "filter",
            "--audit-log",
            AUDIT,
            "--",
            PROBE_IN_ROOT,
            "report",
            "--resolve",
            "other.test",
            "--resolve",
            "other.test",
            "--resolve",
            "allowed.test",
        ],
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    run.assert_code(0);
    let r = run.report();
    assert_eq!(r["resolve"][0]["result"], "error", "{}", r["resolve"][0]);
    assert_eq!(r["resolve"][2]["result"], "ok", "{}", r["resolve"][2]);
    let lines: Vec<&str> = blocked_lines(&run.stderr)
        .into_iter()
        .filter(|l| l.contains("blocked dns name other.test"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].contains("SANDBOX_ALLOW=other.test "),
        "{}",
        lines[0]
    );
    let events = audit(&root);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "denied_name" && e["name"] == "other.test"),
        "{events:#?}"
    );
}

/// In filter mode no name is resolved at start: the DNS filter's answer is what names the
/// address, from the moment the command has it.
#[test]
fn in_filter_mode_the_answer_names_the_blocked_address() {
    let net = Net::new();
    let root = rootfs();
    let dns1 = format!("{DNS1}:53");
    let blocked = format!("{OTHER4}:80");
    let run = root.run_in(
        &[
            "--allow",
            "other.test:443",
            "--dns",
            "filter",
            "--",
            PROBE_IN_ROOT,
            "dns",
            "--query",
            "udp",
            &dns1,
            "other.test",
            "A",
            "--connect",
            &blocked,
        ],
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    run.assert_code(0);
    assert!(
        run.stdout.contains(OTHER4),
        "the filter answered: {}",
        run.stdout
    );
    let line = blocked_lines(&run.stderr)
        .into_iter()
        .find(|l| l.contains(&format!("blocked tcp {blocked}")))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(
        line.contains(&format!("blocked tcp {blocked} (other.test); "))
            && line.contains("SANDBOX_ALLOW=other.test:80 "),
        "{line}"
    );
}

#[test]
fn a_planted_symlink_as_audit_log_is_refused() {
    let root = rootfs();
    std::os::unix::fs::symlink("/etc/passwd", root.join(AUDIT)).unwrap();
    let run = root.run(
        &[
            "--no-firewall",
            "--audit-log",
            AUDIT,
            "--",
            PROBE_IN_ROOT,
            "exit",
            "0",
        ],
        &[],
    );
    run.assert_code(78);
    assert!(run.stderr.contains("is a symlink"), "{}", run.stderr);
    assert!(
        std::fs::read_to_string(root.join("etc/passwd"))
            .unwrap()
            .contains("claude:x:1000"),
        "the target was touched"
    );
}

/// 100,000 distinct denied names under one domain in a few seconds (data smuggled out in
/// random labels): the audit log grows by at most 1 MB and still lists the first 100 names
/// one by one; stderr gets one line for the domain, saying it looks like tunnelling and
/// suggesting nothing; an allowed name is answered during the flood, and a signal to PID 1
/// reaches the command at once.
#[test]
fn a_flood_of_denied_names_is_bounded_in_the_audit_log_and_one_line_on_stderr() {
    const N: usize = 100_000;
    let net = Net::new();
    let root = rootfs();
    let n = N.to_string();
    let dns1 = format!("{DNS1}:53");
    let mut cmd = root.command(
        &[
            "--dns",
            "filter",
            "--allow",
            "allowed.test",
            "--audit-log",
            AUDIT,
            "--",
            PROBE_IN_ROOT,
            "dns-flood",
            &n,
            &dns1,
            "tunnel.evil.test",
            "allowed.test",
        ],
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    let run = Running::start(&mut cmd);
    assert_eq!(run.line(Duration::from_secs(20)), "flooding");
    let during: Value = serde_json::from_str(&run.line(Duration::from_secs(10))).unwrap();
    let allowed = &during["allowed"];
    assert_eq!(allowed["rcode"], "NOERROR", "{during}");
    signal_arrives_during_the_flood(&run, N, "queries");
    let done = run.line(Duration::from_secs(120));
    let done: Value = serde_json::from_str(done.strip_prefix("done ").unwrap()).unwrap();
    assert_eq!(
        done["nxdomain"], N as u64,
        "every name answered NXDOMAIN: {done}"
    );
    let stderr = run.stderr.clone();
    let (code, _) = run.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));

    let size = std::fs::metadata(root.join(AUDIT)).unwrap().len();
    eprintln!(
        "{N} denied names in {} ms: {size} bytes of audit log",
        done["ms"]
    );
    assert!(size <= 1_000_000, "the audit log grew to {size} bytes");
    let events = audit(&root);
    for name in done["first"].as_array().unwrap() {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "denied_name" && &e["name"] == name),
            "{name} is not in the audit log"
        );
    }
    let summary = events
        .iter()
        .rfind(|e| e["event"] == "summary" && e["domain"] == "tunnel.evil.test")
        .unwrap_or_else(|| panic!("no summary for the domain: {:#?}", &events[..5]));
    assert_eq!(summary["tunnelling"], true, "{summary}");
    assert_eq!(summary["events_total"], N as u64, "{summary}");

    let stderr = stderr.lock().unwrap().clone();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("tunnel.evil.test"))
        .collect();
    let blocked: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("sandbox-init: blocked"))
        .collect();
    assert_eq!(blocked.len(), 1, "{stderr}");
    assert!(blocked[0].contains("tunnelling"), "{}", blocked[0]);
    // nothing anywhere suggests allowing a random label, nor shows one
    for l in &lines {
        assert!(!l.contains("SANDBOX_ALLOW"), "{l}");
        assert!(!l.contains("000000"), "{l}");
    }
}

/// The kernel's TCP reset counters of the reject rules, summed, and the blocked TCP
/// attempts PID 1 reported (its recent destinations' counts; 0 while PID 1 has written no
/// status yet), as `check` in the running sandbox shows them.
fn resets_and_reported(root: &Rootfs, net: &Net) -> (u64, u64) {
    let check = root.run_in(
        &["check", "--dns", "resolver", "--allow", "allowed.test"],
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    let out = &check.stdout;
    let (_, resets) = kernel_tcp_resets(out);
    assert!(
        out.contains("reported by PID 1: ") || out.contains("no report from PID 1"),
        "{out}"
    );
    // "    TIME xN blocked tcp ADDR:PORT; ..."
    let reported = out
        .lines()
        .filter_map(|l| l.trim().split_once(" x")?.1.split_once(" blocked tcp "))
        .map(|(n, _)| n.parse::<u64>().unwrap_or_else(|_| panic!("{out}")))
        .sum();
    (resets, reported)
}

/// A connection the firewall rejects while PID 1 is still starting (in Docker a `docker
/// exec` can run at any moment after the container starts) is reported like every later
/// one: the reject rules go live only once PID 1 listens to their NFLOG group, so the
/// kernel never counts a reject whose copy nobody receives. The attack: a process in the
/// box connects in a loop from before PID 1 starts until its first connection is refused,
/// then does nothing more. The control: it connected before the firewall came up (so it
/// raced the start), and the kernel counted its rejected attempt. Repeated: each round is
/// a new start. (With the group bound after the rules, every round lost the first reject,
/// on an idle machine too.)
#[test]
fn a_connection_blocked_while_pid1_starts_is_reported() {
    const ROUNDS: usize = 5;
    let mut lost = vec![];
    for round in 0..ROUNDS {
        let net = Net::new();
        let root = rootfs();
        let target: std::net::SocketAddr = format!("{OTHER4}:80").parse().unwrap();
        let ns = net.box_ns.clone();
        let racer = std::thread::spawn(move || {
            enter_netns(&ns);
            let mut connected = 0u64;
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
                    Ok(_) => connected += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return (connected, true);
                    }
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (connected, false)
        });
        // Let the racer connect before the firewall exists.
        std::thread::sleep(Duration::from_millis(20));
        let mut cmd = root.command(
            &[
                "--dns",
                "resolver",
                "--allow",
                "allowed.test",
                "--",
                PROBE_IN_ROOT,
                "sleep",
                "30",
            ],
            &[NO_PRESETS],
            Some(&net.box_ns),
        );
        let run = Running::start(&mut cmd);
        let (connected, refused) = racer.join().unwrap();
        assert!(refused, "control: the firewall never refused the racer");
        assert!(
            connected > 0,
            "control: the racer started after the firewall (it must race the start)"
        );
        // PID 1 rewrites its status file at most once a second: wait for it to catch up
        // (bounded), then compare what the kernel counted with what PID 1 reported.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (resets, reported) = loop {
            let (resets, reported) = resets_and_reported(&root, &net);
            if (resets > 0 && reported == resets) || Instant::now() > deadline {
                break (resets, reported);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(resets >= 1, "control: the kernel counted no reject");
        eprintln!(
            "round {round}: {connected} connects before the firewall, {resets} resets counted, \
             {reported} reported"
        );
        if reported != resets {
            lost.push((round, resets, reported));
        }
        run.signal(libc::SIGTERM);
        // The probe's sleep ends by the signal: only the exit itself matters here.
        let _ = run.wait(Duration::from_secs(10));
    }
    assert!(
        lost.is_empty(),
        "rejects the kernel counted but PID 1 never reported (round, counted, reported): \
         {lost:?}"
    );
}

/// `check`'s line of kernel reject counters, and the packets its TCP-reset rules counted
/// ("tcp reset N packets", summed over every such rule).
fn kernel_tcp_resets(check_out: &str) -> (&str, u64) {
    let line = check_out
        .lines()
        .find(|l| l.contains("kernel reject counters: "))
        .unwrap_or_else(|| panic!("no counters in: {check_out}"));
    let resets = line
        .split("tcp reset ")
        .skip(1)
        .map(|r| r.split(' ').next().and_then(|p| p.parse::<u64>().ok()))
        .map(|p| p.unwrap_or_else(|| panic!("{line}")))
        .sum();
    (line, resets)
}
