//! Tier 2, foundation: sandbox-init as PID 1 of fresh pid and mount namespaces in a
//! throwaway rootfs, with Docker's default capabilities plus NET_ADMIN. The probe, running
//! as the command, reports what it has; these tests assert on that report.

mod common;

use common::*;
use std::time::Duration;

const NO_FW: &str = "--no-firewall";

fn probe_report(root: &Rootfs, extra: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut args = vec![NO_FW];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", PROBE_IN_ROOT, "report"]);
    let run = root.run(&args, env);
    run.assert_code(0);
    run.report()
}

#[test]
fn the_command_has_nothing_left_to_escalate_with() {
    require_root();
    let root = Rootfs::new();
    let r = probe_report(&root, &[], &[]);
    assert_eq!(r["uid"], 1000);
    assert_eq!(r["euid"], 1000);
    assert_eq!(r["gid"], 1000);
    assert_eq!(r["egid"], 1000);
    // the user's own groups; `sudo` is withheld
    let mut groups: Vec<u64> = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    groups.sort();
    assert_eq!(groups, vec![500, 1000]);
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(cap(&r, key), 0, "{key} is not empty: {r}");
    }
    assert_eq!(r["status"]["NoNewPrivs"], "1");
    // no descriptor of ours: 0, 1, 2 and the probe's own listing of /proc/self/fd
    let fds: Vec<i64> = r["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fd"].as_i64().unwrap())
        .collect();
    assert!(fds.iter().all(|fd| *fd <= 3), "extra fds: {}", r["fds"]);
    assert_eq!(fds.iter().filter(|fd| **fd <= 2).count(), 3);
    // PID 1 is ours, and the probe is its direct child
    assert_eq!(r["ppid"], 1);
}

#[test]
fn environment_is_scrubbed_and_pid1_copy_is_wiped() {
    require_root();
    let root = Rootfs::new();
    let secret = "sk-ant-oat01-SECRET-never-visible";
    let r = probe_report(
        &root,
        &[],
        &[
            ("CLAUDE_CODE_OAUTH_TOKEN", secret),
            ("ANTHROPIC_API_KEY", "sk-ant-api-SECRET2"),
            ("GH_TOKEN", "ghp_SECRET3"),
            ("SSH_AUTH_SOCK", "/tmp/agent.sock"),
            ("SANDBOX_STRICT", "0"),
            ("ANTHROPIC_BASE_URL", "http://mock.test"),
            ("TERM", "xterm-256color"),
        ],
    );
    let env = env_map(&r);
    for gone in [
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_API_KEY",
        "GH_TOKEN",
        "SSH_AUTH_SOCK",
        "SANDBOX_STRICT",
    ] {
        assert!(!env.contains_key(gone), "{gone} reached the child");
    }
    // A credential was given, so the broker (on by default) holds it: the container's
    // base URL is the broker's upstream, and the child gets the broker's.
    assert!(
        env["ANTHROPIC_BASE_URL"].starts_with("http://127.0.0.1:"),
        "{env:?}"
    );
    assert_eq!(env["TERM"], "xterm-256color");
    assert_eq!(env["HOME"], "/home/claude");
    assert_eq!(env["USER"], "claude");
    assert_eq!(env["LOGNAME"], "claude");
    assert_eq!(env["SHELL"], "/bin/sh");
    assert_eq!(env["DISABLE_AUTOUPDATER"], "1");
    assert!(env["PATH"].contains("/usr/local/bin"));
    // /proc/1/environ: unreadable (PID 1 is not dumpable), and even for root the secret is
    // gone from the block; check both ways.
    let pid1 = &r["pid1_environ"];
    if pid1["result"] == "ok" {
        let content = pid1["content"].as_str().unwrap();
        assert!(!content.contains("SECRET"), "PID 1 environ shows a secret");
    }
    assert!(
        !r.to_string().contains("SECRET"),
        "a secret is in the report: {r}"
    );
}

#[test]
fn pid1_wipes_its_own_environ_block() {
    require_root();
    let root = Rootfs::new();
    let mut cmd = root.command(
        &[NO_FW, "--", PROBE_IN_ROOT, "signals", "1"],
        &[
            ("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-WIPED"),
            ("GITHUB_TOKEN", "ghp_WIPED"),
            ("KEEP_ME", "visible"),
        ],
        None,
    );
    let run = Running::start(&mut cmd);
    assert_eq!(run.line(Duration::from_secs(10)), "ready");
    // Read as root from the host: what anyone with ptrace rights would see.
    let environ = std::fs::read(format!("/proc/{}/environ", run.init_pid())).unwrap();
    let text = String::from_utf8_lossy(&environ);
    assert!(!text.contains("WIPED"), "secret still in /proc/1/environ");
    assert!(text.contains("KEEP_ME=visible"));
    // PID 1 is not dumpable, so the sandboxed user cannot read it at all.
    let status = std::fs::read_to_string(format!("/proc/{}/status", run.init_pid())).unwrap();
    let cap_eff = status
        .lines()
        .find(|l| l.starts_with("CapEff"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        u64::from_str_radix(&cap_eff, 16).unwrap(),
        1 << 5,
        "PID 1 keeps only CAP_KILL"
    );
    run.signal(libc::SIGTERM);
    let (code, _) = run.wait(Duration::from_secs(5));
    assert_eq!(code, Some(0));
}

#[test]
fn exit_code_passes_through() {
    require_root();
    let root = Rootfs::new();
    for n in [0, 1, 3, 42, 255] {
        let n_s = n.to_string();
        root.run(&[NO_FW, PROBE_IN_ROOT, "exit", &n_s], &[])
            .assert_code(n);
    }
}

#[test]
fn death_by_signal_is_128_plus_n() {
    require_root();
    let root = Rootfs::new();
    root.run(&[NO_FW, PROBE_IN_ROOT, "die", "9"], &[])
        .assert_code(137);
    root.run(&[NO_FW, PROBE_IN_ROOT, "die", "15"], &[])
        .assert_code(143);
    root.run(&[NO_FW, PROBE_IN_ROOT, "die", "6"], &[])
        .assert_code(134);
}

#[test]
fn bad_exec_is_127_or_126_with_a_message() {
    require_root();
    let root = Rootfs::new();
    let r = root.run(&[NO_FW, "no-such-command"], &[]);
    r.assert_code(127);
    assert!(
        r.stderr.contains("no-such-command: command not found"),
        "{}",
        r.stderr
    );
    root.write("usr/local/bin/not-exec", "#!/bin/sh\n");
    let r = root.run(&[NO_FW, "not-exec"], &[]);
    r.assert_code(126);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
    // a script whose interpreter is missing: exec says ENOENT
    root.install(PROBE, "usr/local/bin/x", 0o755);
    root.write("usr/local/bin/script", "#!/nonexistent/sh\n");
    std::fs::set_permissions(
        root.join("usr/local/bin/script"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let r = root.run(&[NO_FW, "script"], &[]);
    r.assert_code(127);
    assert!(r.stderr.contains("interpreter"), "{}", r.stderr);
}

#[test]
fn every_forwarded_signal_reaches_the_command() {
    require_root();
    let root = Rootfs::new();
    let sigs = [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ];
    let n = sigs.len().to_string();
    let mut cmd = root.command(&[NO_FW, PROBE_IN_ROOT, "signals", &n], &[], None);
    let run = Running::start(&mut cmd);
    assert_eq!(run.line(Duration::from_secs(10)), "ready");
    for sig in sigs {
        run.signal(sig);
        assert_eq!(run.line(Duration::from_secs(5)), format!("got {sig}"));
    }
    let (code, _) = run.wait(Duration::from_secs(5));
    assert_eq!(code, Some(0));
}

#[test]
fn sigterm_is_forwarded_and_ends_the_command() {
    require_root();
    let root = Rootfs::new();
    // `sleep` keeps the default disposition: SIGTERM kills it -> 143.
    let mut cmd = root.command(&[NO_FW, PROBE_IN_ROOT, "sleep", "30"], &[], None);
    let run = Running::start(&mut cmd);
    run.init_pid();
    std::thread::sleep(Duration::from_millis(200));
    run.signal(libc::SIGTERM);
    let (code, took) = run.wait(Duration::from_secs(5));
    // 143 is 128 + SIGTERM: forwarded and taken by the command (a runtime's SIGKILL after
    // its grace period would show as 137). The time is reported, never asserted.
    assert_eq!(code, Some(143));
    eprintln!("SIGTERM to exit: {took:?}");
}

#[test]
fn orphans_are_reaped() {
    require_root();
    let root = Rootfs::new();
    let r = root.run(&[NO_FW, PROBE_IN_ROOT, "orphans", "500"], &[]);
    r.assert_code(0);
    let rep = r.report();
    assert_eq!(rep["orphans"], 500);
    assert_eq!(rep["zombies"], 0, "zombies left: {rep}");
}

#[test]
fn the_rest_of_the_process_group_is_ended_after_the_command() {
    require_root();
    let root = Rootfs::new();
    // The probe leaves 3 sleeping children in its group and exits at once: sandbox-init
    // must end them and exit promptly with the probe's code.
    let start = std::time::Instant::now();
    let r = root.run(&[NO_FW, PROBE_IN_ROOT, "group", "3"], &[]);
    r.assert_code(0);
    // The children sleep 60 s: returning well before that means they were ended, not
    // waited for (a behaviour, not a speed: any machine is far inside the margin).
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn terminal_foreground_group_belongs_to_the_command() {
    require_root();
    assert!(which("script"), "script (bsdutils) is missing");
    let root = Rootfs::new();
    let inner = root.command(&[NO_FW, PROBE_IN_ROOT, "tty"], &[], None);
    let line = format!(
        "{} {}",
        inner.get_program().to_string_lossy(),
        inner
            .get_args()
            .map(|a| a.to_string_lossy().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    // `script` gives the whole chain a pseudo-terminal, as `docker run -it` does.
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(&root.path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = text
        .lines()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .unwrap_or_else(|| panic!("no tty report: {text}"));
    assert_eq!(json["pgid"], json["pid"], "the command leads its own group");
    assert_eq!(
        json["foreground"], json["pgid"],
        "and owns the terminal: {json}"
    );
}

#[test]
fn workdir_defaults_to_pid1_cwd_and_can_be_set() {
    require_root();
    let root = Rootfs::new();
    let r = probe_report(&root, &[], &[]);
    assert_eq!(r["cwd"], "/");
    let r = probe_report(&root, &["--workdir", "/workspace"], &[]);
    assert_eq!(r["cwd"], "/workspace");
    let r = probe_report(&root, &[], &[("SANDBOX_WORKDIR", "/workspace")]);
    assert_eq!(r["cwd"], "/workspace");
}

#[test]
fn host_uid_gid_run_the_command_and_reown_the_home() {
    require_root();
    let root = Rootfs::new();
    root.write("home/claude/.bashrc", "# rc\n");
    std::fs::create_dir_all(root.join("home/claude/.claude")).unwrap();
    root.write("home/claude/.claude/settings.json", "{}");
    std::os::unix::fs::lchown(root.join("home/claude/.bashrc"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(root.join("home/claude/.claude"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(
        root.join("home/claude/.claude/settings.json"),
        Some(1000),
        Some(1000),
    )
    .unwrap();
    // a planted symlink to a root file: re-owned as a link, its target untouched
    std::os::unix::fs::symlink("/etc/passwd", root.join("home/claude/evil")).unwrap();
    std::os::unix::fs::lchown(root.join("home/claude/evil"), Some(1000), Some(1000)).unwrap();
    let r = probe_report(&root, &[], &[("SANDBOX_UID", "501"), ("SANDBOX_GID", "20")]);
    assert_eq!(r["uid"], 501);
    assert_eq!(r["gid"], 20);
    assert_eq!(env_map(&r)["HOME"], "/home/claude");
    use std::os::unix::fs::MetadataExt;
    for p in [
        "home/claude",
        "home/claude/.bashrc",
        "home/claude/.claude/settings.json",
    ] {
        let m = std::fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (501, 20), "{p}");
    }
    let passwd = std::fs::metadata(root.join("etc/passwd")).unwrap();
    assert_eq!(passwd.uid(), 0, "symlink target was re-owned");
}

#[test]
fn never_root_and_bad_users_are_config_errors() {
    require_root();
    let root = Rootfs::new();
    let r = root.run(&[NO_FW, "--user", "root", PROBE_IN_ROOT, "exit", "0"], &[]);
    r.assert_code(64);
    let r = root.run(
        &[NO_FW, PROBE_IN_ROOT, "exit", "0"],
        &[("SANDBOX_USER", "ghost")],
    );
    r.assert_code(78);
    assert!(r.stderr.contains("'ghost'"), "{}", r.stderr);
    let r = root.run(
        &[NO_FW, PROBE_IN_ROOT, "exit", "0"],
        &[("SANDBOX_UID", "0")],
    );
    r.assert_code(78);
}

#[test]
fn agent_writable_config_is_refused() {
    require_root();
    let root = Rootfs::new();
    root.write(
        "workspace/evil.toml",
        "[firewall]\nallow = [\"0.0.0.0/0\"]\n",
    );
    std::os::unix::fs::chown(root.join("workspace/evil.toml"), Some(1000), Some(1000)).unwrap();
    let r = root.run(
        &[NO_FW, PROBE_IN_ROOT, "exit", "0"],
        &[("SANDBOX_CONFIG", "/workspace/evil.toml")],
    );
    r.assert_code(78);
    assert!(
        r.stderr.contains("writable by the sandboxed user"),
        "{}",
        r.stderr
    );
}

#[test]
fn config_errors_name_file_line_and_key() {
    require_root();
    let root = Rootfs::new();
    root.write(
        "etc/sandbox-init/config.toml",
        "user = \"claude\"\n[firewall]\nalow = []\n",
    );
    let r = root.run(&[NO_FW, PROBE_IN_ROOT, "exit", "0"], &[]);
    r.assert_code(78);
    assert!(
        r.stderr.contains("/etc/sandbox-init/config.toml:3: alow"),
        "{}",
        r.stderr
    );
    let r = root.run(&["--bogus-flag"], &[]);
    r.assert_code(64);
}

#[test]
fn check_prints_where_each_value_came_from() {
    require_root();
    let root = Rootfs::new();
    root.write(
        "etc/sandbox-init/config.toml",
        "[firewall]\nallow = [\"a.test\"]\n",
    );
    let r = root.run(
        &["check", "--strict", "--no-firewall"],
        &[("SANDBOX_ALLOW", "b.test")],
    );
    r.assert_code(0);
    assert!(
        r.stdout.contains("firewall.allow")
            && r.stdout
                .contains("a.test  <- /etc/sandbox-init/config.toml:2"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("b.test  <- env SANDBOX_ALLOW"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("firewall.strict              true  <- flag --strict"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("target user: claude uid=1000"),
        "{}",
        r.stdout
    );
}

#[test]
fn file_capabilities_in_the_image_raise_nothing() {
    require_root();
    let root = Rootfs::new();
    let cap_net_raw = 1u64 << 13;
    root.install(PROBE, "usr/local/bin/capprobe", 0o755);
    set_file_caps(&root.join("usr/local/bin/capprobe"), cap_net_raw);

    // The attack works without the sandbox: an unprivileged user gains CAP_NET_RAW.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(root.join("usr/local/bin/capprobe"))
        .arg("report")
        .output()
        .unwrap();
    let plain: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(plain["uid"], 1000);
    assert_eq!(
        cap(&plain, "CapEff"),
        cap_net_raw,
        "the planted file capability must work"
    );

    // In the sandbox the same file gives nothing. The kernel either refuses the exec (a
    // file marked effective whose capabilities cannot all be granted: EPERM, our 126), or
    // runs it with every set empty; it never runs it with CAP_NET_RAW.
    let run = root.run(&[NO_FW, "--", "/usr/local/bin/capprobe", "report"], &[]);
    match run.code {
        Some(126) => assert!(
            run.stderr.contains("Operation not permitted"),
            "{}",
            run.stderr
        ),
        _ => {
            run.assert_code(0);
            let r = run.report();
            assert_eq!(r["uid"], 1000);
            for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
                assert_eq!(
                    cap(&r, key),
                    0,
                    "{key} after exec of a file with capabilities: {r}"
                );
            }
        }
    }
}
