//! Tier 2, the interactive session: sandbox-init as PID 1 with its stderr on a terminal
//! (script(1) gives the run a pseudo-terminal, as `docker run -it` does). While the command
//! runs, PID 1 writes nothing to that terminal; the summary of what was blocked comes after
//! the command has exited. Without a terminal on stderr the lines come as they happen.

mod common;

use common::netns::*;
use common::*;
use std::process::Command;
use std::time::Duration;

/// The command as one `sh -c` line (script(1) takes one), every word quoted.
fn shell_line(cmd: &Command) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` under script(1) (`suffix` added to its shell line); returns what reached the
/// terminal, in order.
fn on_terminal(cmd: &Command, suffix: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sbx-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join(format!("screen-{}", suffix.len()));
    let mut s = Command::new("script");
    s.args(["-qfec", &format!("{}{suffix}", shell_line(cmd))])
        .arg(&capture)
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(cmd.get_current_dir().unwrap());
    let r = run_bounded(&mut s, Duration::from_secs(60));
    let screen = String::from_utf8_lossy(&std::fs::read(&capture).unwrap_or_default()).into_owned();
    let _ = std::fs::remove_file(&capture);
    assert_eq!(r.code, Some(0), "{}\nscreen:\n{screen}", r.stderr);
    screen
}

#[test]
fn pid1_keeps_the_terminal_clean_while_the_command_runs_and_summarizes_after() {
    require_root();
    assert!(which("script"), "script(1) is needed (util-linux)");
    let net = Net::new();
    let root = Rootfs::new();
    root.write("etc/resolv.conf", &format!("nameserver {DNS1}\n"));
    let target = format!("{OTHER4}:80");
    // The blocked connection, then a pause: a line PID 1 printed for it would come before
    // the pause's output.
    let args = [
        "-q",
        "--dns",
        "resolver",
        "--",
        PROBE_IN_ROOT,
        "dns",
        "--connect",
        &target,
        "--sleep",
        "1500",
    ];
    let cmd = root.command(&args, &[("SANDBOX_PRESETS", "")], Some(&net.box_ns));
    let line = format!("sandbox-init: blocked tcp {target}");

    // Control: PID 1's stderr on a pipe (the command's output still on the terminal). The
    // line comes as it happens, before the pause is over.
    let screen = on_terminal(&cmd, " 2>&1 | cat");
    let at = screen
        .find(&line)
        .unwrap_or_else(|| panic!("no line:\n{screen}"));
    let paused = screen.find("\"step\":\"sleep\"").expect("the pause ended");
    assert!(
        at < paused,
        "the control shows the line during the run:\n{screen}"
    );

    // On the terminal: nothing from PID 1 until the command is gone, then the summary.
    let screen = on_terminal(&cmd, "");
    let paused = screen.find("\"step\":\"sleep\"").expect("the pause ended");
    let first = screen
        .find("sandbox-init:")
        .unwrap_or_else(|| panic!("no summary:\n{screen}"));
    assert!(first > paused, "PID 1 wrote during the run:\n{screen}");
    let after = &screen[paused..];
    assert!(
        after.contains(
            "sandbox-init: the sandbox blocked 1 attempt to 1 destination during the session:"
        ),
        "{screen}"
    );
    assert!(
        after.contains(&format!(
            "sandbox-init:   x1 blocked tcp {target}; to allow it: SANDBOX_ALLOW={target} (or \
             --allow)"
        )),
        "{screen}"
    );
    assert!(!after.contains(&line), "the live line too:\n{screen}");
}

/// `sandbox-init hook post-tool-use` as the sandboxed user (as Claude Code runs it) while
/// the sandbox runs: it tells what PID 1 blocked, with the exact entry that allows it, once;
/// the events file is root's and the user cannot change it.
#[test]
fn the_hook_tells_the_agent_what_was_blocked_once() {
    require_root();
    let net = Net::new();
    let root = Rootfs::new();
    root.write("etc/resolv.conf", &format!("nameserver {DNS1}\n"));
    let target = format!("{OTHER4}:80");
    let args = [
        "--dns",
        "resolver",
        "--",
        PROBE_IN_ROOT,
        "dns",
        "--connect",
        &target,
        "--sleep",
        "30000",
    ];
    let running =
        Running::start(&mut root.command(&args, &[("SANDBOX_PRESETS", "")], Some(&net.box_ns)));
    let connect = running.line(Duration::from_secs(20));
    assert!(connect.contains("\"step\":\"connect\""), "{connect}");
    running.stderr_until(Duration::from_secs(5), |l| {
        l.contains(&format!("blocked tcp {target}"))
    });
    // As the user, in the sandbox's root, where PID 1 wrote its file.
    let as_user = |argv: &[&str]| {
        let mut c = Command::new("/usr/sbin/chroot");
        c.args(["--userspec=1000:1000", "--groups=1000"])
            .arg(root.join(""))
            .args(argv)
            .env_clear()
            .env("HOME", "/home/claude")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        c
    };
    let events = root.join("run/sandbox-init-events/events.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&events).is_ok_and(|t| t.contains(&target)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no event in {events:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::metadata(&events).unwrap();
        let d = std::fs::metadata(events.parent().unwrap()).unwrap();
        assert_eq!((f.uid(), f.mode() & 0o7777), (0, 0o644));
        assert_eq!((d.uid(), d.mode() & 0o7777), (0, 0o755));
    }
    let hook = || {
        let mut child = as_user(&[INIT_IN_ROOT, "hook", "post-tool-use"])
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"hook_event_name":"PostToolUse","tool_name":"Bash"}"#)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = hook();
    let v: serde_json::Value =
        serde_json::from_str(first.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert_eq!(v["hookSpecificOutput"]["hookEventName"], "PostToolUse");
    let context = v["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap();
    assert!(
        context.contains(&format!(
            "- blocked tcp {target}; to allow it: SANDBOX_ALLOW={target} (or --allow)"
        )),
        "{context}"
    );
    assert_eq!(hook(), "", "told once");
    // The user can neither write, remove nor replace the file the hook believes (the
    // host's shell as uid 1000 on the same files: the rootfs has no shell).
    let dir = events.parent().unwrap().display().to_string();
    let forged = format!("/tmp/sbx-forged-{}", std::process::id());
    let attack = format!(
        "echo forged > {dir}/events.json || echo NOT-WRITTEN; rm -f {dir}/events.json || echo \
         NOT-REMOVED; mkdir -p {forged} && echo FORGED > {forged}/events.json && \
         mv -T {forged} {dir} || echo NOT-REPLACED; rm -rf {forged}"
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "sh",
            "-c",
            &attack,
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    for w in ["NOT-WRITTEN", "NOT-REMOVED", "NOT-REPLACED"] {
        assert!(
            said.contains(w),
            "{said}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!std::fs::read_to_string(&events).unwrap().contains("FORGED"));
    running.signal(libc::SIGTERM);
    running.wait(Duration::from_secs(10));
}
