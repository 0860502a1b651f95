//! Shared fixtures for the privileged tiers: a throwaway root filesystem holding the static
//! sandbox-init and probe, and a runner that starts sandbox-init as PID 1 of fresh pid and
//! mount namespaces, chrooted there, with Docker's default capabilities plus NET_ADMIN.
//!
//! These tests need root (CI runs as root). Without it they fail with a message; they never
//! pass silently.

#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");
/// The probe, a package of its own (probe/): `make test` builds it before the tiers
/// (`cargo build --target x86_64-unknown-linux-musl -p sandbox-probe`); `probe_built`
/// says so when it is missing or older than its sources. The test binaries' own profile
/// directory (target/<triple>/tmp is beside it).
pub const PROBE: &str = if cfg!(debug_assertions) {
    concat!(env!("CARGO_TARGET_TMPDIR"), "/../debug/sandbox-probe")
} else {
    concat!(env!("CARGO_TARGET_TMPDIR"), "/../release/sandbox-probe")
};

/// Panics, with the command that fixes it, when the probe is not built or is older than
/// a source file of its own (a tier would test a stale probe).
pub fn probe_built() {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| {
        let fix = "build it first: cargo build --target x86_64-unknown-linux-musl -p \
                   sandbox-probe (make test does)";
        let built = fs::metadata(PROBE)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("no probe at {PROBE} ({e}): {fix}"));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("probe/src");
        for f in fs::read_dir(&src).unwrap().map_while(Result::ok) {
            let changed = f.metadata().and_then(|m| m.modified()).unwrap();
            assert!(
                changed <= built,
                "{PROBE} is older than {}: {fix}",
                f.path().display()
            );
        }
    });
}

/// Where the binaries sit inside the rootfs.
pub const INIT_IN_ROOT: &str = "/usr/local/sbin/sandbox-init";
pub const PROBE_IN_ROOT: &str = "/usr/local/bin/sandbox-probe";

/// Docker's default capability set plus NET_ADMIN (CapEff 00000000a80435fb).
pub const DOCKER_CAPS: &str = "-all,+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,\
+setuid,+setpcap,+net_bind_service,+net_raw,+sys_chroot,+mknod,+audit_write,+setfcap,+net_admin";

pub fn require_root() {
    // SAFETY: plain getter.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this privileged integration test needs root (it creates namespaces and chroots); \
         run it as root, as CI does: sudo make test"
    );
    for tool in ["unshare", "setpriv", "chroot"] {
        assert!(
            which(tool),
            "{tool} (util-linux) is missing: apt-get install util-linux"
        );
    }
}

pub fn which(tool: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(tool).exists())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Copying a binary holds a writable descriptor; a child forked by another test thread at
/// that moment inherits it until its exec, and exec of that binary then fails with ETXTBSY
/// ("Text file busy"). Copies and spawns take turns.
static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn spawn_guard() -> std::sync::MutexGuard<'static, ()> {
    SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A root filesystem in a temporary directory, removed on drop.
pub struct Rootfs {
    pub path: PathBuf,
}

/// Debian's CA bundle, the first the broker looks for.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Rootfs {
    /// The minimal image: /etc/passwd with root and claude (1000), the two binaries, /tmp,
    /// the home and /workspace owned by claude.
    pub fn new() -> Rootfs {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
        let path = PathBuf::from(base).join(format!("rootfs-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        for d in [
            "etc/sandbox-init",
            "etc/ssl/certs",
            "proc",
            "dev",
            "tmp",
            "usr/local/sbin",
            "usr/local/bin",
            "usr/bin",
            "bin",
            "home/claude",
            "workspace",
            "root",
        ] {
            fs::create_dir_all(path.join(d)).expect("create rootfs dir");
        }
        fs::set_permissions(path.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::set_permissions(path.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
        let r = Rootfs { path };
        r.write(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nclaude:x:1000:1000:Claude:/home/claude:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        );
        r.write(
            "etc/group",
            "root:x:0:\nsudo:x:27:claude\ndev:x:500:claude\nclaude:x:1000:\nnogroup:x:65534:\n",
        );
        r.write("etc/resolv.conf", "nameserver 127.0.0.1\n");
        // The character devices every Docker container has (the credential broker's stdin
        // and stdout are /dev/null).
        for (name, minor) in [
            ("null", "3"),
            ("zero", "5"),
            ("full", "7"),
            ("urandom", "9"),
        ] {
            let node = r.join(&format!("dev/{name}"));
            let made = Command::new("mknod")
                .arg(&node)
                .args(["c", "1", minor])
                .status()
                .expect("run mknod");
            assert!(made.success(), "mknod {}", node.display());
            fs::set_permissions(&node, fs::Permissions::from_mode(0o666)).unwrap();
        }
        // Real images carry a CA bundle (ours installs ca-certificates): the credential
        // broker, on by default, needs one for the real API.
        r.install(CA_BUNDLE, CA_BUNDLE, 0o644);
        r.install(INIT, INIT_IN_ROOT, 0o755);
        probe_built();
        r.install(PROBE, PROBE_IN_ROOT, 0o755);
        chown(r.path.join("home/claude"), Some(1000), Some(1000)).unwrap();
        chown(r.path.join("workspace"), Some(1000), Some(1000)).unwrap();
        r
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel.trim_start_matches('/'))
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(p, content).unwrap();
    }

    pub fn install(&self, from: &str, rel: &str, mode: u32) {
        let p = self.join(rel);
        let _turn = spawn_guard();
        fs::copy(from, &p).unwrap_or_else(|e| panic!("copy {from}: {e}"));
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The command that starts sandbox-init as PID 1 in this rootfs. `netns` runs it inside
    /// an existing network namespace (`ip netns exec`).
    pub fn command(&self, args: &[&str], env: &[(&str, &str)], netns: Option<&str>) -> Command {
        self.command_with_caps(args, env, netns, DOCKER_CAPS)
    }

    /// As `command`, with another capability bounding set (`setpriv --bounding-set` syntax).
    pub fn command_with_caps(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        netns: Option<&str>,
        caps: &str,
    ) -> Command {
        self.command_full(args, env, netns, caps, false)
    }

    /// As `command_with_caps`; `no_new_privs` sets it before sandbox-init's exec, as
    /// `docker run --security-opt no-new-privileges` has the runtime do.
    pub fn command_full(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        netns: Option<&str>,
        caps: &str,
        no_new_privs: bool,
    ) -> Command {
        let proc_dir = self.join("proc");
        let mut argv: Vec<String> = vec![];
        if let Some(ns) = netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        argv.extend(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--kill-child",
                &format!("--mount-proc={}", proc_dir.display()),
                "setpriv",
                &format!("--bounding-set={caps}"),
                "--inh-caps=-all",
            ]
            .map(String::from),
        );
        if no_new_privs {
            argv.push("--no-new-privs".into());
        }
        argv.extend(["chroot".to_string(), self.path.display().to_string()]);
        argv.push(INIT_IN_ROOT.into());
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.env_clear();
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.current_dir(&self.path);
        cmd
    }

    /// Runs to completion (bounded) and returns the output.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.run_in(args, env, None)
    }

    pub fn run_in(&self, args: &[&str], env: &[(&str, &str)], netns: Option<&str>) -> Run {
        run_bounded(&mut self.command(args, env, netns), Duration::from_secs(60))
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Runs `cmd` (stdin closed, output collected) to completion, killed after `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Run {
    let child = {
        let _turn = spawn_guard();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start unshare")
    };
    Run::from(wait_bounded(child, limit))
}

/// Waits for a child, killing it after `limit` (a hung sandbox must fail the test, not CI).
pub fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("wait: {e}"),
        }
    }
    child.wait_with_output().expect("collect output")
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

impl Run {
    /// The probe's JSON report (the last line of stdout that parses).
    pub fn report(&self) -> Value {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "no probe report (exit {:?})\nstdout:\n{}\nstderr:\n{}",
                    self.code, self.stdout, self.stderr
                )
            })
    }

    pub fn assert_code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(want),
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A sandbox running in the background, for signal and timing tests.
pub struct Running {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    pub fn start(cmd: &mut Command) -> Running {
        let turn = spawn_guard();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start unshare");
        drop(turn);
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = err_buf.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running {
            child,
            lines: rx,
            stderr: err_buf,
        }
    }

    /// The next stdout line, or a panic after `limit`.
    pub fn line(&self, limit: Duration) -> String {
        self.lines.recv_timeout(limit).unwrap_or_else(|_| {
            panic!(
                "no output within {limit:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            )
        })
    }

    /// The stderr captured so far once `done` holds for it, or a panic after `limit`. The
    /// reader of stderr is its own thread: a line written before the command's first
    /// stdout line may still be on its way when that line arrives.
    pub fn stderr_until(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.stderr.lock().unwrap().clone();
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "stderr did not show what was expected within {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Host pid of sandbox-init: the only child of `unshare --fork`.
    pub fn init_pid(&self) -> i32 {
        let unshare = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                return pid.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "sandbox-init never started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling a process this test started.
        let rc = unsafe { libc::kill(self.init_pid(), sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the exit, bounded; returns the exit code and how long it took.
    pub fn wait(mut self, limit: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), start.elapsed());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "did not exit within {limit:?}; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // --kill-child makes unshare's death take sandbox-init (and its namespace) along.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses a hex Cap* line from the probe's report.
pub fn cap(report: &Value, key: &str) -> u64 {
    let s = report["status"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in report"));
    u64::from_str_radix(s, 16).unwrap()
}

pub fn env_map(report: &Value) -> BTreeMap<String, String> {
    report["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Writes a `security.capability` xattr (VFS_CAP_REVISION_2, effective) granting `caps` as
/// permitted: what `setcap cap_net_raw+ep FILE` does.
pub fn set_file_caps(path: &std::path::Path, caps: u64) {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
    let mut v = vec![];
    for word in [
        VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
        caps as u32,
        0,
        (caps >> 32) as u32,
        0,
    ] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string and buffer for the call's duration.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"security.capability".as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

pub mod mock;
pub mod netns;

/// The handles of our output chain's rules against answering for a resolver, in `nft -j
/// list chain inet sandbox_init output`: the drop of every non-root user's traffic from
/// port 53 or from a resolver's address, and the drop of root's DNS in a flow root did not
/// open (the conntrack mark). The hijack tests' controls delete them.
pub fn hijack_guard_handles(chain: &serde_json::Value) -> Vec<u64> {
    chain["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("rule"))
        .filter(|r| {
            let e = r["expr"].to_string();
            e.contains("\"drop\"") && (e.contains("\"mark\"") || e.contains("\"skuid\""))
        })
        .filter_map(|r| r["handle"].as_u64())
        .collect()
}

/// Waits (up to 30 s) until our output chain holds the rules against answering for a
/// resolver, then deletes them by handle. `nft` runs nft with the given arguments in the
/// sandbox's network namespace and returns (success, stdout or stderr).
pub fn delete_hijack_guards(nft: impl Fn(&[&str]) -> (bool, String)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let guards = loop {
        let (_, out) = nft(&["-j", "list", "chain", "inet", "sandbox_init", "output"]);
        let guards = hijack_guard_handles(&serde_json::from_str(&out).unwrap_or_default());
        if guards.len() >= 2 {
            break guards;
        }
        assert!(Instant::now() < deadline, "no guard rules in {out}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for handle in guards {
        let h = handle.to_string();
        let (ok, out) = nft(&[
            "delete",
            "rule",
            "inet",
            "sandbox_init",
            "output",
            "handle",
            &h,
        ]);
        assert!(ok, "deleting rule {h}: {out}");
    }
}
