//! Tier 2, lockdown: set-user-ID programs and sudo rules of the image give the command
//! nothing. Each check has a control run from the host (no sandbox, no no_new_privs) that
//! shows the same program *does* give root before the lockdown, so the test can fail.
//!
//! The sudo tests need a real Debian root filesystem with sudo: scripts/debian-rootfs.sh
//! builds it once into .cache/ (debootstrap required) and every test works on a copy.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NO_FW: &str = "--no-firewall";
const SUID_PROBE: &str = "/usr/local/bin/suid-probe";

fn mode(root: &Rootfs, rel: &str) -> u32 {
    fs::symlink_metadata(root.join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `argv` inside the rootfs as uid/gid 1000 straight from the host: no sandbox, no
/// no_new_privs. The control for every "gives nothing" assertion.
fn as_user_without_sandbox(root: &Rootfs, argv: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("chroot");
    cmd.arg("--userspec=1000:1000")
        .arg("--groups=1000")
        .arg(&root.path)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let turn = spawn_guard();
    let child = cmd.spawn().expect("start chroot");
    drop(turn);
    wait_bounded(child, std::time::Duration::from_secs(30))
}

fn euid_without_sandbox(root: &Rootfs) -> u64 {
    let out = as_user_without_sandbox(root, &[SUID_PROBE, "ids"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    v["euid"].as_u64().unwrap()
}

fn run_probe(root: &Rootfs, execs: &[&str]) -> (Run, Value) {
    let mut args = vec![
        NO_FW,
        "--workdir",
        "/workspace",
        "--",
        PROBE_IN_ROOT,
        "report",
    ];
    for e in execs {
        args.extend_from_slice(&["--exec", e]);
    }
    let r = root.run(&args, &[("SANDBOX_LOG", "debug")]);
    r.assert_code(0);
    let rep = r.report();
    (r, rep)
}

/// The probe's `exec` result for `cmd`.
fn exec_result<'a>(rep: &'a Value, cmd: &str) -> &'a Value {
    rep["exec"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cmd"] == cmd)
        .unwrap_or_else(|| panic!("no exec of {cmd}: {rep}"))
}

fn exec_euid(rep: &Value, cmd: &str) -> u64 {
    let e = exec_result(rep, cmd);
    assert_eq!(e["result"], "ran", "{e}");
    let v: Value = serde_json::from_str(e["stdout"].as_str().unwrap())
        .unwrap_or_else(|err| panic!("{err}: {e}"));
    v["euid"].as_u64().unwrap()
}

/// Mounts made on the host for one test, undone (lazily, recursively) when it ends.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn mount(&mut self, args: &[&str], target: &Path) {
        self.mount_only(args, target);
        self.0.push(target.to_path_buf());
    }

    /// A remount: nothing new to undo.
    fn mount_only(&mut self, args: &[&str], target: &Path) {
        let st = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .expect("mount");
        assert!(st.success(), "mount {args:?} {}", target.display());
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for t in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(t).status();
        }
    }
}

/// The probe's `--exec` gives the program /dev/null as stdin; the minimal rootfs has an
/// empty /dev.
fn dev_null(root: &Rootfs) {
    let p = std::ffi::CString::new(root.join("dev/null").display().to_string()).unwrap();
    // SAFETY: mknod with a valid path; the test runs as root.
    let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(
        rc,
        0,
        "mknod /dev/null: {}",
        std::io::Error::last_os_error()
    );
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn plant_suid_probe(root: &Rootfs, rel: &str) {
    root.install(PROBE, rel, 0o4755);
    // fs::copy + chmod as root: owned by root, set-user-ID
    assert_eq!(fs::metadata(root.join(rel)).unwrap().uid(), 0);
    assert_eq!(mode(root, rel), 0o4755);
}

#[test]
fn a_set_uid_root_program_gives_no_root_and_loses_its_bit() {
    require_root();
    let root = Rootfs::new();
    dev_null(&root);
    plant_suid_probe(&root, SUID_PROBE);
    root.install(PROBE, "usr/local/bin/sgid-probe", 0o2755);
    // control: the planted copy does give root to uid 1000 outside the sandbox
    assert_eq!(
        euid_without_sandbox(&root),
        0,
        "control: set-uid copy must work"
    );

    // The workspace and a volume that shares the root's device (a bind mount) keep theirs:
    // they are not the image's files.
    plant_suid_probe(&root, "workspace/tool");
    // the volume's source lies outside the rootfs, on the same filesystem
    let src = PathBuf::from(format!("{}-vol", root.path.display()));
    let _src_cleanup = RemoveOnDrop(src.clone());
    fs::create_dir_all(&src).unwrap();
    fs::copy(PROBE, src.join("tool")).unwrap();
    fs::set_permissions(src.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir_all(root.join("mnt/vol")).unwrap();
    let mut mounts = Mounts(vec![]);
    mounts.mount(
        &["--bind", &src.display().to_string()],
        &root.join("mnt/vol"),
    );
    assert_eq!(
        fs::metadata(root.join("mnt/vol")).unwrap().dev(),
        fs::metadata(&root.path).unwrap().dev(),
        "the bind mount shares the root's device: only the mount table tells them apart"
    );

    let cmd = format!("{SUID_PROBE} ids");
    let (r, rep) = run_probe(&root, &[&cmd]);
    assert_eq!(exec_euid(&rep, &cmd), 1000, "{}", r.stderr);
    assert_eq!(mode(&root, SUID_PROBE), 0o755, "{}", r.stderr);
    assert_eq!(mode(&root, "usr/local/bin/sgid-probe"), 0o755);
    assert_eq!(
        euid_without_sandbox(&root),
        1000,
        "the bit is gone for good"
    );
    assert_eq!(mode(&root, "workspace/tool"), 0o4755, "workspace touched");
    assert_eq!(mode(&root, "mnt/vol/tool"), 0o4755, "volume touched");
    assert!(
        r.stderr
            .contains("cleared set-user-ID/set-group-ID bits on 2 files"),
        "{}",
        r.stderr
    );
}

#[test]
fn with_strip_suid_off_the_bit_stays_and_no_new_privs_still_holds() {
    require_root();
    let root = Rootfs::new();
    root.write(
        "etc/sandbox-init/config.toml",
        "[lockdown]\nstrip_suid = false\n",
    );
    dev_null(&root);
    plant_suid_probe(&root, SUID_PROBE);
    let cmd = format!("{SUID_PROBE} ids");
    let (r, rep) = run_probe(&root, &[&cmd]);
    assert_eq!(
        mode(&root, SUID_PROBE),
        0o4755,
        "strip_suid = false ignored"
    );
    assert!(
        r.stderr.contains("lockdown.strip_suid = false"),
        "{}",
        r.stderr
    );
    // the bit is there and works outside, yet the command cannot use it
    assert_eq!(euid_without_sandbox(&root), 0, "control");
    assert_eq!(exec_euid(&rep, &cmd), 1000);
}

#[test]
fn a_read_only_root_is_fine() {
    require_root();
    let root = Rootfs::new();
    dev_null(&root);
    plant_suid_probe(&root, SUID_PROBE);
    let mut mounts = Mounts(vec![]);
    let p = root.path.display().to_string();
    mounts.mount(&["--bind", &p], &root.path);
    mounts.mount_only(&["-o", "remount,bind,ro"], &root.path);
    // the home is a writable volume, as with `docker run --read-only -v ...`
    mounts.mount(
        &["-t", "tmpfs", "-o", "mode=0755,uid=1000,gid=1000", "tmpfs"],
        &root.join("home/claude"),
    );
    let cmd = format!("{SUID_PROBE} ids");
    let mut args = vec![
        NO_FW,
        "--workdir",
        "/workspace",
        "--",
        PROBE_IN_ROOT,
        "report",
    ];
    args.extend_from_slice(&["--exec", &cmd]);
    let r = root.run(
        &args,
        &[("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-ro-test")],
    );
    r.assert_code(0);
    assert!(r.stderr.contains("read-only"), "{}", r.stderr);
    assert!(!r.stderr.contains("warning: cannot"), "{}", r.stderr);
    assert_eq!(mode(&root, SUID_PROBE), 0o4755);
    assert_eq!(exec_euid(&r.report(), &cmd), 1000);
    assert!(root.join("home/claude/.claude/.credentials.json").is_file());
}

// ---- a real Debian with sudo ----

fn debian_cache() -> PathBuf {
    std::env::var_os("SANDBOX_DEBIAN_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/debian-rootfs"))
}

/// A private copy of the cached Debian rootfs (built on first use), with the user claude
/// (1000, in group sudo, locked password), a NOPASSWD sudo rule for it, and our binaries.
fn debian_root() -> Rootfs {
    let cache = debian_cache();
    let done = PathBuf::from(format!("{}.done", cache.display()));
    if !done.exists() || !cache.join("usr/bin/sudo").exists() {
        assert!(
            which("debootstrap"),
            "the Debian rootfs is not built and debootstrap is missing: apt-get install -y \
             debootstrap (then scripts/debian-rootfs.sh builds it once into {})",
            cache.display()
        );
        let st = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/debian-rootfs.sh"
        ))
        .arg(&cache)
        .status()
        .expect("run scripts/debian-rootfs.sh");
        assert!(st.success(), "scripts/debian-rootfs.sh failed");
    }
    let base = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path = PathBuf::from(base).join(format!("debian-{}-{n}", std::process::id()));
    let st = Command::new("cp")
        .arg("-a")
        .arg(&cache)
        .arg(&path)
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {}", cache.display());
    let root = Rootfs { path };
    let append = |rel: &str, line: &str| {
        let mut text = fs::read_to_string(root.join(rel)).unwrap();
        text.push_str(line);
        fs::write(root.join(rel), text).unwrap();
    };
    append(
        "etc/passwd",
        "claude:x:1000:1000:Claude:/home/claude:/bin/bash\n",
    );
    append("etc/shadow", "claude:!:19000:0:99999:7:::\n");
    append("etc/group", "claude:x:1000:\n");
    let group = fs::read_to_string(root.join("etc/group"))
        .unwrap()
        .replace("\nsudo:x:27:\n", "\nsudo:x:27:claude\n");
    fs::write(root.join("etc/group"), group).unwrap();
    root.write(
        "etc/sudoers.d/claude",
        "claude ALL=(ALL:ALL) NOPASSWD: ALL\n",
    );
    fs::set_permissions(
        root.join("etc/sudoers.d/claude"),
        fs::Permissions::from_mode(0o440),
    )
    .unwrap();
    for d in ["home/claude", "workspace"] {
        fs::create_dir_all(root.join(d)).unwrap();
        std::os::unix::fs::chown(root.join(d), Some(1000), Some(1000)).unwrap();
    }
    fs::create_dir_all(root.join("etc/sandbox-init")).unwrap();
    root.install(INIT, INIT_IN_ROOT, 0o755);
    root.install(PROBE, PROBE_IN_ROOT, 0o755);
    root
}

fn sudo_works_without_sandbox(root: &Rootfs) -> (bool, String) {
    let out = as_user_without_sandbox(root, &["/usr/bin/sudo", "-n", "true"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sudo_with_a_nopasswd_rule_gives_nothing() {
    require_root();
    let root = debian_root();
    // Keep sudo's set-uid bit so that only the policy change can stop it.
    root.write(
        "etc/sandbox-init/config.toml",
        "[lockdown]\nstrip_suid = false\n",
    );
    let (ok, err) = sudo_works_without_sandbox(&root);
    assert!(
        ok,
        "control: the NOPASSWD rule must work before lockdown: {err}"
    );

    let cmd = "/usr/bin/sudo -n true";
    let (r, rep) = run_probe(&root, &[cmd]);
    let e = exec_result(&rep, cmd);
    assert_eq!(e["result"], "ran", "{e}");
    assert_ne!(
        e["code"], 0,
        "sudo worked in the sandbox: {e}\n{}",
        r.stderr
    );
    assert_eq!(mode(&root, "usr/bin/sudo"), 0o4755, "bit must stay here");

    // and the policy itself no longer grants anything, even without no_new_privs
    let (ok, err) = sudo_works_without_sandbox(&root);
    assert!(!ok, "sudo still works for the user after lockdown");
    assert!(err.contains("password is required"), "{err}");
    assert!(!root.join("etc/sudoers.d/claude").exists());
    assert!(r.stderr.contains("sudo rights removed"), "{}", r.stderr);
    // the user's sudo group membership is withheld from the session as well
    let groups: Vec<u64> = rep["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    assert!(!groups.contains(&27), "{groups:?}");
}

#[test]
fn debian_defaults_clear_every_set_uid_program_quickly() {
    require_root();
    let root = debian_root();
    let suid_before: Vec<String> = find_suid(&root);
    assert!(
        suid_before.iter().any(|p| p == "/usr/bin/sudo") && suid_before.len() >= 8,
        "{suid_before:?}"
    );
    let cmd = "/usr/bin/sudo -n true";
    let (r, rep) = run_probe(&root, &[cmd]);
    assert_ne!(exec_result(&rep, cmd)["code"], 0);
    assert_eq!(find_suid(&root), Vec::<String>::new(), "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("cleared set-user-ID"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        line.contains(&format!("on {} files", suid_before.len())),
        "{line}"
    );
    // "... in N ms": the walk of a whole Debian must not slow the start down
    let ms: f64 = line
        .split(" in ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    eprintln!("SUID walk of the Debian rootfs: {line}");
    assert!(ms < 1500.0, "{line}");
    let (ok, _) = sudo_works_without_sandbox(&root);
    assert!(!ok, "sudo still works after lockdown");
}

/// Set-user-ID/set-group-ID regular files of the rootfs, as paths inside it.
fn find_suid(root: &Rootfs) -> Vec<String> {
    let out = Command::new("find")
        .arg(&root.path)
        .args(["-xdev", "-type", "f", "-perm", "/6000"])
        .output()
        .expect("find");
    let prefix = root.path.display().to_string();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches(&prefix).to_string())
        .collect();
    v.sort();
    v
}
