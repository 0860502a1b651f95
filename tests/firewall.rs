//! Tier 2, firewall: sandbox-init as PID 1 in a "box" network namespace joined to a "world"
//! namespace with DNS and TCP servers (see common/netns.rs). The probe, running as the
//! sandboxed user, reports what it can reach; the kernel's view is read with `nft -j`.

mod common;

use common::netns::*;
use common::*;
use serde_json::Value;

const NO_PRESETS: (&str, &str) = ("SANDBOX_PRESETS", "");

fn rootfs() -> Rootfs {
    let r = Rootfs::new();
    r.write("etc/resolv.conf", &format!("nameserver {DNS1}\n"));
    r
}

/// Runs sandbox-init with `flags` in the box, the probe as the command.
fn probe(root: &Rootfs, net: &Net, flags: &[&str], probe_args: &[&str]) -> Run {
    let mut args: Vec<&str> = flags.to_vec();
    args.extend_from_slice(&["--", PROBE_IN_ROOT, "report", "--timeout-ms", "1500"]);
    args.extend_from_slice(probe_args);
    root.run_in(&args, &[NO_PRESETS], Some(&net.box_ns))
}

fn tcp4(a: &str, port: u16) -> String {
    format!("{a}:{port}")
}
fn tcp6(a: &str, port: u16) -> String {
    format!("[{a}]:{port}")
}

/// The probe's result for one TCP target.
fn tcp_result<'a>(r: &'a Value, target: &str) -> &'a Value {
    r["tcp"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .unwrap_or_else(|| panic!("no result for {target}: {r}"))
}

fn assert_connected(r: &Value, target: &str) {
    let t = tcp_result(r, target);
    assert_eq!(
        t["result"], "connected",
        "{target} should be reachable: {t}"
    );
    assert!(
        t["body"].as_str().unwrap_or("").contains("hello from"),
        "{target}: {t}"
    );
}

/// Blocked, and rejected (a reset or an ICMP error), not left to time out.
fn assert_rejected_fast(r: &Value, target: &str) {
    let t = tcp_result(r, target);
    assert_eq!(t["result"], "error", "{target} should be blocked: {t}");
    // A dropped packet would end in a timeout (EAGAIN), never in a refusal.
    assert_eq!(t["error"], "ECONNREFUSED", "{target}: {t}");
}

fn args(list: &[String]) -> Vec<&str> {
    list.iter().flat_map(|t| ["--tcp", t.as_str()]).collect()
}

#[test]
fn allowlist_is_reachable_on_both_families_and_nothing_else() {
    let net = Net::new();
    let root = rootfs();
    let dns2_before = net.dns_queries("dns2").len();
    // The second server is up and answers (so an empty log below means blocked).
    let (ok, out) = net.in_world(&[
        "dig",
        "+short",
        "+time=1",
        "+tries=1",
        &format!("@{DNS2}"),
        "allowed.test",
    ]);
    assert!(
        ok && out.contains(DNS2_ANSWER),
        "dns2 does not answer: {out}"
    );
    let dns2_live = net.dns_queries("dns2").len();
    assert!(dns2_live > dns2_before);

    let targets = [
        tcp4(ALLOWED4, 80),
        tcp6(ALLOWED6, 80),
        tcp4(ALLOWED4, 22),
        tcp4(OTHER4, 80),
        tcp6(OTHER6, 80),
        tcp4(OTHER4, 22),
        tcp6(OTHER6, 22),
        tcp4(ROUTED4, 80),
    ];
    let mut pa = args(&targets);
    let dns1 = format!("{DNS1}:53");
    let dns2 = format!("{DNS2}:53");
    pa.extend_from_slice(&[
        "--dns",
        &dns1,
        "allowed.test",
        "--dns",
        &dns2,
        "allowed.test",
    ]);
    pa.extend_from_slice(&["--dns-tcp", &dns2, "allowed.test"]);
    // Resolver mode: the child talks to the configured resolver itself, and nothing else.
    // (Filter mode answers every port-53 query itself: tests/dns.rs.)
    let flags = ["--allow", "allowed.test", "--dns", "resolver"];
    let run = probe(&root, &net, &flags, &pa);
    run.assert_code(0);
    assert!(!run.stderr.contains("FIREWALL OFF"), "{}", run.stderr);
    // the resolver runtime is gone before PID 1 forks
    assert!(!run.stderr.contains("threads remain"), "{}", run.stderr);
    let r = run.report();
    assert_eq!(r["uid"], 1000);

    assert_connected(&r, &tcp4(ALLOWED4, 80));
    assert_connected(&r, &tcp6(ALLOWED6, 80));
    // a bare name allows every port
    assert_connected(&r, &tcp4(ALLOWED4, 22));
    // another name's addresses, TCP 22 elsewhere, another subnet: rejected at once
    for t in [
        tcp4(OTHER4, 80),
        tcp6(OTHER6, 80),
        tcp4(OTHER4, 22),
        tcp6(OTHER6, 22),
        tcp4(ROUTED4, 80),
    ] {
        assert_rejected_fast(&r, &t);
    }

    // DNS: the configured resolver answers; the second server is unreachable (UDP and TCP)
    let dns = r["dns"].as_array().unwrap();
    assert_eq!(dns[0]["result"], "reply", "{}", dns[0]);
    assert!(dns[0]["addrs"].to_string().contains(ALLOWED4));
    for d in &dns[1..] {
        assert_eq!(
            d["result"], "error",
            "DNS to the second server went through: {d}"
        );
    }
    assert_eq!(
        net.dns_queries("dns2").len(),
        dns2_live,
        "the second DNS server received a query from the box: {:?}",
        net.dns_queries("dns2")
    );

    // the kernel's view: our table, drop policies, the resolved addresses in sets
    let t = net.nft_json(&["table", "inet", "sandbox_init"]);
    let items = t["nftables"].as_array().unwrap();
    // the base chains (the `live` chain, empty until `sandbox-init allow`, has no hook)
    let chains: Vec<&Value> = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c.get("hook").is_some())
        .collect();
    assert_eq!(chains.len(), 2, "{t}");
    for c in &chains {
        assert_eq!(c["policy"], "drop", "{c}");
    }
    let sets: Vec<&Value> = items.iter().filter_map(|i| i.get("set")).collect();
    let elems = serde_json::to_string(&sets).unwrap();
    assert!(
        elems.contains(ALLOWED4) && elems.contains(ALLOWED6),
        "{elems}"
    );
    assert!(!elems.contains(OTHER4), "{elems}");
    // blocked attempts were counted by the reject rules
    let rejected: u64 = items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| r["expr"].to_string().contains("reject"))
        .flat_map(|r| r["expr"].as_array().unwrap().iter())
        .filter_map(|e| e.get("counter"))
        .map(|c| c["packets"].as_u64().unwrap())
        .sum();
    assert!(rejected >= 5, "reject counters: {rejected}");
}

#[test]
fn gateway_blocked_unless_allow_gateway_which_opens_only_the_gateway() {
    let net = Net::new();
    let root = rootfs();
    let targets = [tcp4(GATEWAY4, 80), tcp6(GATEWAY6, 80), tcp4(OTHER4, 80)];
    let run = probe(&root, &net, &["--allow", "allowed.test"], &args(&targets));
    run.assert_code(0);
    let r = run.report();
    assert_rejected_fast(&r, &tcp4(GATEWAY4, 80));
    assert_rejected_fast(&r, &tcp6(GATEWAY6, 80));

    let run = probe(
        &root,
        &net,
        &["--allow", "allowed.test", "--allow-gateway"],
        &args(&targets),
    );
    run.assert_code(0);
    let r = run.report();
    assert_connected(&r, &tcp4(GATEWAY4, 80));
    assert_connected(&r, &tcp6(GATEWAY6, 80));
    // the gateway's subnet stays closed
    assert_rejected_fast(&r, &tcp4(OTHER4, 80));

    // a network covering the gateway does not open it, and says so
    let run = probe(&root, &net, &["--allow", "10.77.0.0/24"], &args(&targets));
    run.assert_code(0);
    assert!(
        run.stderr.contains("covers the default gateway 10.77.0.1"),
        "{}",
        run.stderr
    );
    let r = run.report();
    assert_rejected_fast(&r, &tcp4(GATEWAY4, 80));
    assert_connected(&r, &tcp4(OTHER4, 80));
}

/// Resolution at start: every name in resolver mode (an unresolvable one warns), every name
/// in strict mode (an unresolvable one is fatal, DNS filter or not), none in filter mode.
#[test]
fn unresolvable_name_warns_and_strict_refuses_to_start() {
    let net = Net::new();
    let root = rootfs();
    let targets = [tcp4(ALLOWED4, 80)];
    let flags = ["--allow", "gone.test", "--allow", "allowed.test"];
    let queried = |name: &str| {
        net.dns_queries("dns1")
            .iter()
            .filter(|l| l.contains(name))
            .count()
    };

    // filter mode (the default), first: the command starts without a single upstream query
    let run = probe(&root, &net, &flags, &args(&[]));
    run.assert_code(0);
    assert!(!run.stderr.contains("cannot resolve"), "{}", run.stderr);
    assert_eq!(run.report()["uid"], 1000);
    assert_eq!(
        (queried("gone.test"), queried("allowed.test")),
        (0, 0),
        "names were resolved at start: {:?}",
        net.dns_queries("dns1")
    );
    net.in_box(&["nft", "delete", "table", "inet", "sandbox_init"]);

    let mut strict = flags.to_vec();
    strict.push("--strict");
    let run = probe(&root, &net, &strict, &args(&targets));
    run.assert_code(70);
    assert!(run.stderr.contains("gone.test"), "{}", run.stderr);
    assert!(
        queried("gone.test") > 0 && queried("allowed.test") > 0,
        "strict mode must check every name: {:?}",
        net.dns_queries("dns1")
    );
    assert!(
        !run.stdout.contains("\"uid\""),
        "the command ran: {}",
        run.stdout
    );
    // and nothing was applied
    let (_, tables) = net.in_box(&["nft", "list", "tables"]);
    assert!(!tables.contains("sandbox_init"), "{tables}");

    let mut resolver = flags.to_vec();
    resolver.extend(["--dns", "resolver"]);
    let run = probe(&root, &net, &resolver, &args(&targets));
    run.assert_code(0);
    assert!(
        run.stderr.contains("cannot resolve gone.test") && run.stderr.contains("NXDOMAIN"),
        "{}",
        run.stderr
    );
    assert_connected(&run.report(), &tcp4(ALLOWED4, 80));
}

#[test]
fn cidr_and_port_entries() {
    let net = Net::new();
    let root = rootfs();
    let targets = [
        tcp4(ROUTED4, 80),
        tcp4(ROUTED4, 22),
        tcp4(ALLOWED4, 8443),
        tcp4(ALLOWED4, 80),
        tcp6(OTHER6, 8443),
        tcp6(OTHER6, 80),
        tcp6(ALLOWED6, 8443),
    ];
    let run = probe(
        &root,
        &net,
        &[
            "--allow",
            "10.77.1.0/24",
            "--allow",
            "allowed.test:8443",
            "--allow",
            "[fd77::11]:8443",
            // names resolved at start, into static sets (filter mode: tests/dns.rs)
            "--dns",
            "resolver",
        ],
        &args(&targets),
    );
    run.assert_code(0);
    let r = run.report();
    assert_connected(&r, &tcp4(ROUTED4, 80));
    assert_connected(&r, &tcp4(ROUTED4, 22));
    assert_connected(&r, &tcp4(ALLOWED4, 8443));
    assert_connected(&r, &tcp6(ALLOWED6, 8443));
    assert_connected(&r, &tcp6(OTHER6, 8443));
    assert_rejected_fast(&r, &tcp4(ALLOWED4, 80));
    assert_rejected_fast(&r, &tcp6(OTHER6, 80));
}

#[test]
fn inbound_is_dropped_outbound_replies_pass() {
    let mut net = Net::new();
    let root = rootfs();
    net.serve_in_box(BOX4, 9000);
    let connect = |net: &Net| {
        net.in_world(&[
            "python3",
            "-c",
            "import socket,sys\ns=socket.socket();s.settimeout(0.5)\n\
             try:\n s.connect(('10.77.0.2',9000));print('connected')\n\
             except Exception as e:\n print(type(e).__name__)",
        ])
        .1
    };
    assert_eq!(
        connect(&net).trim(),
        "connected",
        "the fixture must work unfirewalled"
    );
    root.run_in(
        &["apply", "--allow", "allowed.test"],
        &[NO_PRESETS],
        Some(&net.box_ns),
    )
    .assert_code(0);
    let got = connect(&net);
    assert!(
        got.to_lowercase().contains("timeout"),
        "inbound was not dropped: {got}"
    );
}

#[test]
fn foreign_table_untouched_and_apply_twice_leaves_one_table() {
    let net = Net::new();
    let root = rootfs();
    // like Docker's rules for 127.0.0.11 in the container's namespace
    let docker = "table ip nat {\n chain DOCKER_OUTPUT {\n  type nat hook output priority -100; policy accept;\n  \
                  ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:35511\n }\n}\n";
    net.load_nft(docker);
    let before = net.nft_json(&["table", "ip", "nat"]);

    for _ in 0..2 {
        root.run_in(
            &["apply", "--allow", "allowed.test"],
            &[NO_PRESETS],
            Some(&net.box_ns),
        )
        .assert_code(0);
    }
    let all = net.nft_json(&["tables"]);
    let names: Vec<String> = all["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("table"))
        .map(|t| {
            format!(
                "{} {}",
                t["family"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["ip nat", "inet sandbox_init"], "{all}");
    let after = net.nft_json(&["table", "ip", "nat"]);
    assert_eq!(before, after, "the foreign table changed");
}

#[test]
fn loopback_resolver_upstream_is_open_to_root_only() {
    let net = Net::new();
    let root = rootfs();
    // Docker's embedded DNS: a loopback resolver that forwards upstream as root
    root.write(
        "etc/resolv.conf",
        &format!("nameserver 127.0.0.11\noptions ndots:0\n# ExtServers: [{DNS2}]\n"),
    );
    root.run_in(
        &["apply", "--allow", ALLOWED4],
        &[NO_PRESETS],
        Some(&net.box_ns),
    )
    .assert_code(0);
    let dig = |server: &str| {
        vec![
            "dig".to_string(),
            "+short".into(),
            "+time=1".into(),
            "+tries=1".into(),
            format!("@{server}"),
            "allowed.test".into(),
        ]
    };
    let run = |prefix: &[&str], server: &str| {
        let d = dig(server);
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.extend(d.iter().map(|s| s.as_str()));
        net.in_box(&argv).1
    };
    let as_user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"];
    assert!(
        run(&[], DNS2).contains(DNS2_ANSWER),
        "root cannot reach the upstream"
    );
    assert!(
        !run(&as_user, DNS2).contains(DNS2_ANSWER),
        "uid 1000 reached the upstream"
    );
    // not listed as an upstream: closed for root too
    assert!(
        !run(&[], DNS1).contains(ALLOWED4),
        "root reached a non-upstream server"
    );
}

#[test]
fn without_net_admin_the_command_never_runs() {
    let net = Net::new();
    let root = rootfs();
    let caps = DOCKER_CAPS.replace(",+net_admin", "");
    assert!(!caps.contains("net_admin"));
    let mut cmd = root.command_with_caps(
        &["--allow", "allowed.test", "--", PROBE_IN_ROOT, "report"],
        &[NO_PRESETS],
        Some(&net.box_ns),
        &caps,
    );
    let child = {
        let _turn = spawn_guard();
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let run = Run::from(wait_bounded(child, std::time::Duration::from_secs(30)));
    run.assert_code(70);
    assert!(run.stderr.contains("--cap-add NET_ADMIN"), "{}", run.stderr);
    assert!(
        !run.stdout.contains("\"uid\""),
        "the command ran: {}",
        run.stdout
    );
}

#[test]
fn check_prints_plan_and_addresses_and_changes_nothing() {
    let net = Net::new();
    let root = rootfs();
    let run = root.run_in(
        &[
            "check",
            "--allow",
            "allowed.test",
            "--allow",
            "10.9.0.0/16:443",
        ],
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    run.assert_code(0);
    assert!(
        run.stdout
            .contains(&format!("allowed.test: {ALLOWED4} {ALLOWED6}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("tcp 443: 10.9.0.0/16"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("reject  gateway 10.77.0.1 fd77::1"),
        "{}",
        run.stdout
    );
    let (_, tables) = net.in_box(&["nft", "list", "tables"]);
    assert!(
        tables.trim().is_empty(),
        "check changed the ruleset: {tables}"
    );
}

/// `sandbox-init --typo -- cmd` is a usage error that builds nothing; the same start without
/// the typo (the control) builds the sandbox and runs the command.
#[test]
fn a_mistyped_option_before_the_command_builds_nothing() {
    let net = Net::new();
    let root = rootfs();
    let tables = || net.in_box(&["nft", "list", "tables"]).1;
    let command = ["--", PROBE_IN_ROOT, "report", "--timeout-ms", "500"];
    let mut typo = vec!["--allow", "allowed.test", "--typo"];
    typo.extend_from_slice(&command);
    let run = root.run_in(&typo, &[NO_PRESETS], Some(&net.box_ns));
    run.assert_code(64);
    assert!(
        run.stderr.contains("unknown option '--typo'"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("\"uid\""),
        "the command ran: {}",
        run.stdout
    );
    assert!(
        tables().trim().is_empty(),
        "a firewall was built: {}",
        tables()
    );
    // `config` validates and prints, and builds nothing either.
    let run = root.run_in(
        &["config", "--allow", "allowed.test"],
        &[NO_PRESETS],
        Some(&net.box_ns),
    );
    run.assert_code(0);
    assert!(run.stdout.contains("firewall.allow"), "{}", run.stdout);
    assert!(
        tables().trim().is_empty(),
        "config built a firewall: {}",
        tables()
    );

    let mut control = vec!["--allow", "allowed.test"];
    control.extend_from_slice(&command);
    let run = root.run_in(&control, &[NO_PRESETS], Some(&net.box_ns));
    run.assert_code(0);
    assert_eq!(run.report()["uid"], 1000, "{}", run.stdout);
    assert!(tables().contains("inet sandbox_init"), "{}", tables());
}
