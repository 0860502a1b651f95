//! Tier 2, lockdown: set-user-ID programs, files with capabilities and sudo rules of the
//! image give nothing to the command, nor to a `docker exec` session as the user (entered
//! here from outside into the running sandbox's namespaces and root, with and without
//! container-wide no_new_privs). Each check has a control run that shows the same program
//! *does* give root or the capability where nothing stops it, so the test can fail.
//!
//! The sudo tests need a real Debian root filesystem with sudo: scripts/debian-rootfs.sh
//! builds it once into .cache/ (debootstrap required); every test works on a copy, or on an
//! overlayfs with the cache as its read-only lower layer.

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
        .args(argv);
    output_of(cmd)
}

/// Runs `cmd` with a clean environment and no input, bounded; its output.
fn output_of(mut cmd: Command) -> std::process::Output {
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let turn = spawn_guard();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
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

/// The cached Debian rootfs (built on first use), never written by any test.
fn debian_cache_built() -> PathBuf {
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
    cache
}

fn scratch_path(tag: &str) -> PathBuf {
    let base = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    PathBuf::from(base).join(format!("{tag}-{}-{n}", std::process::id()))
}

/// Writes into `dst` what the image adds to Debian (`base`): the user claude (1000, in group
/// sudo, locked password), a NOPASSWD sudo rule for it, the home, the workspace and our
/// binaries.
fn add_user_layer(base: &Path, layer: &Rootfs) {
    let dst = layer.path.as_path();
    let extend = |rel: &str, edit: &dyn Fn(String) -> String, line: &str| {
        let mut text = edit(fs::read_to_string(base.join(rel)).unwrap());
        text.push_str(line);
        fs::write(dst.join(rel), text).unwrap();
    };
    fs::create_dir_all(dst.join("etc/sudoers.d")).unwrap();
    let same = |t: String| t;
    extend(
        "etc/passwd",
        &same,
        "claude:x:1000:1000:Claude:/home/claude:/bin/bash\n",
    );
    extend("etc/shadow", &same, "claude:!:19000:0:99999:7:::\n");
    extend(
        "etc/group",
        &|t: String| t.replace("\nsudo:x:27:\n", "\nsudo:x:27:claude\n"),
        "claude:x:1000:\n",
    );
    fs::set_permissions(dst.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(
        dst.join("etc/sudoers.d/claude"),
        "claude ALL=(ALL:ALL) NOPASSWD: ALL\n",
    )
    .unwrap();
    fs::set_permissions(
        dst.join("etc/sudoers.d/claude"),
        fs::Permissions::from_mode(0o440),
    )
    .unwrap();
    for d in ["home/claude", "workspace"] {
        fs::create_dir_all(dst.join(d)).unwrap();
        std::os::unix::fs::chown(dst.join(d), Some(1000), Some(1000)).unwrap();
    }
    fs::create_dir_all(dst.join("etc/sandbox-init")).unwrap();
    for d in ["usr/local/sbin", "usr/local/bin"] {
        fs::create_dir_all(dst.join(d)).unwrap();
    }
    layer.install(INIT, INIT_IN_ROOT, 0o755);
    layer.install(PROBE, PROBE_IN_ROOT, 0o755);
}

/// A private copy of the cached Debian rootfs with the user layer.
fn debian_root() -> Rootfs {
    let cache = debian_cache_built();
    let path = scratch_path("debian");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&cache)
        .arg(&path)
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {}", cache.display());
    let root = Rootfs { path };
    add_user_layer(&root.path, &root);
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
fn debian_defaults_clear_every_set_uid_program() {
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
    // (how long the walk takes is measured by `make bench`, not here)
    eprintln!("set-uid walk of the Debian rootfs: {line}");
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

// ---- `docker exec` sessions: processes that do not descend from the sandboxed command ----

const CAP_PROBE: &str = "/usr/local/bin/capprobe";
const CAP_NET_ADMIN: u64 = 1 << 12;
/// Docker's default set plus NET_ADMIN, without SETFCAP: removing a file's capability
/// attribute is then refused, and the lockdown must still get rid of it.
const DOCKER_CAPS_NO_SETFCAP: &str = "-all,+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,\
+setuid,+setpcap,+net_bind_service,+net_raw,+sys_chroot,+mknod,+audit_write,+net_admin";

/// A container's root: an overlayfs whose lower layers are the image (the cached Debian,
/// never written, under a layer with the user, the NOPASSWD rule, our binaries, a set-uid
/// root copy of the probe and a copy with CAP_NET_ADMIN as file capability) and whose upper
/// layer is a tmpfs, as a container's writable layer. The layers sit on different
/// filesystems: files then report their layer's device, not the overlay's.
struct Overlay {
    // Dropped in this order: unmount, then remove the layer and the scratch directory.
    _mounts: Mounts,
    root: Rootfs,
    _layer: Rootfs,
}

fn debian_overlay() -> Overlay {
    let cache = debian_cache_built();
    let base = scratch_path("overlay");
    let layer = Rootfs {
        path: base.join("layer"),
    };
    fs::create_dir_all(&layer.path).unwrap();
    add_user_layer(&cache, &layer);
    layer.install(PROBE, SUID_PROBE, 0o4755);
    layer.install(PROBE, CAP_PROBE, 0o755);
    set_file_caps(&layer.join(CAP_PROBE), CAP_NET_ADMIN);
    let root = Rootfs {
        path: base.join("root"),
    };
    let rw = base.join("rw");
    fs::create_dir_all(&root.path).unwrap();
    fs::create_dir_all(&rw).unwrap();
    let mut mounts = Mounts(vec![]);
    mounts.mount(&["-t", "tmpfs", "tmpfs"], &rw);
    fs::create_dir_all(rw.join("upper")).unwrap();
    fs::create_dir_all(rw.join("work")).unwrap();
    let opts = format!(
        "lowerdir={}:{},upperdir={}/upper,workdir={}/work",
        layer.path.display(),
        cache.display(),
        rw.display(),
        rw.display()
    );
    mounts.mount(&["-t", "overlay", "overlay", "-o", &opts], &root.path);
    assert_ne!(
        fs::metadata(root.join(SUID_PROBE)).unwrap().dev(),
        fs::metadata(&root.path).unwrap().dev(),
        "the fixture must have files whose device is not the root's"
    );
    Overlay {
        _mounts: mounts,
        root,
        _layer: layer,
    }
}

fn has_file_caps(path: &Path) -> bool {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings; a zero size asks for the length only.
    let rc = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    rc > 0
}

/// What a session got out of each way up.
#[derive(Debug, PartialEq)]
struct Gains {
    /// `sudo -n id -u` printed 0.
    sudo_root: bool,
    /// The set-uid root probe's effective uid.
    suid_euid: u64,
    /// The effective capabilities the file-capability probe ran with (0 when the kernel
    /// refused to exec it).
    file_caps: u64,
}

const NOTHING: Gains = Gains {
    sudo_root: false,
    suid_euid: 1000,
    file_caps: 0,
};

/// Every way up works: what a session gets from the planted files with nothing in its way.
const EVERYTHING: Gains = Gains {
    sudo_root: true,
    suid_euid: 0,
    file_caps: CAP_NET_ADMIN,
};

/// Runs the three attacks in sessions started by `session` (each given the attack's argv).
fn attacks(session: &dyn Fn(&[&str]) -> std::process::Output) -> Gains {
    let sudo = session(&["/usr/bin/sudo", "-n", "/usr/bin/id", "-u"]);
    let suid = session(&[SUID_PROBE, "ids"]);
    let suid: Value = serde_json::from_slice(&suid.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&suid.stderr)));
    let caps = session(&[CAP_PROBE, "report"]);
    let file_caps = match serde_json::from_slice::<Value>(&caps.stdout) {
        Ok(r) => {
            assert_eq!(r["uid"], 1000, "{r}");
            cap(&r, "CapEff")
        }
        // A file marked effective whose capabilities cannot all be granted: EPERM.
        Err(_) => {
            let err = String::from_utf8_lossy(&caps.stderr);
            assert!(err.contains("Operation not permitted"), "{err}");
            0
        }
    };
    Gains {
        sudo_root: sudo.status.success() && String::from_utf8_lossy(&sudo.stdout).trim() == "0",
        suid_euid: suid["euid"].as_u64().unwrap(),
        file_caps,
    }
}

/// What `docker exec -u claude` starts: a process in the container's namespaces and root,
/// with its capability bounding set, as uid/gid 1000 with claude's groups from the
/// container's /etc/group, holding the container's capabilities until it execs the command
/// (none after an exec of a plain file), and no_new_privs only when the container has it.
/// Not a descendant of the sandboxed command.
fn exec_session(
    target_pid: i32,
    bounding: &str,
    no_new_privs: bool,
    argv: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--target={target_pid}"))
        .args(["--mount", "--pid", "--net", "--root", "--wd", "--"])
        .arg("/usr/bin/setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .args([
            "--inh-caps=-all",
            "--reuid=1000",
            "--regid=1000",
            "--init-groups",
        ]);
    if no_new_privs {
        cmd.arg("--no-new-privs");
    }
    // setpriv keeps its permitted capabilities (the bounding set) across the uid change
    // until it execs the attack, as runc does for an exec session as any user
    cmd.arg("--").args(argv);
    output_of(cmd)
}

/// A container of this root whose PID 1 is a sleeping probe: no sandbox-init at all.
fn plain_container(root: &Rootfs) -> Running {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount", "--kill-child"])
        .arg(format!("--mount-proc={}", root.join("proc").display()))
        .arg("chroot")
        .arg(&root.path)
        .args([PROBE_IN_ROOT, "sleep", "60"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let running = Running::start(&mut cmd);
    // unshare's child exists before it has chrooted and exec'd the probe: a session entered
    // into it earlier would land in the host's root. Wait until it is the probe, in `root`.
    let pid = running.init_pid();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let in_root = fs::read_link(format!("/proc/{pid}/root")).ok() == Some(root.path.clone());
        if in_root && exe.ends_with(PROBE_IN_ROOT.trim_start_matches('/')) {
            return running;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the control container's PID 1 never became the probe in {}",
            root.path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// sandbox-init as PID 1 of this root; returns once the command (a probe waiting for a
/// signal) runs, so the lockdown is done.
fn sandbox(root: &Rootfs, bounding: &str, no_new_privs: bool) -> Running {
    let mut cmd = root.command_full(
        &[
            NO_FW,
            "--workdir",
            "/workspace",
            "--",
            PROBE_IN_ROOT,
            "signals",
            "1",
        ],
        &[("SANDBOX_LOG", "debug")],
        None,
        bounding,
        no_new_privs,
    );
    let run = Running::start(&mut cmd);
    assert_eq!(run.line(std::time::Duration::from_secs(30)), "ready");
    run
}

#[test]
fn a_docker_exec_session_without_no_new_privs_gains_nothing() {
    require_root();
    for bounding in [DOCKER_CAPS, DOCKER_CAPS_NO_SETFCAP] {
        let o = debian_overlay();
        let root = &o.root;
        // control: in a container of the same image without sandbox-init, the session
        // becomes root through sudo and the set-uid probe, and gets CAP_NET_ADMIN (enough
        // to flush any firewall) from the file capability
        let plain = plain_container(root);
        let pid = plain.init_pid();
        let got = attacks(&|argv| exec_session(pid, bounding, false, argv));
        assert_eq!(got, EVERYTHING, "control ({bounding})");
        drop(plain);

        let running = sandbox(root, bounding, false);
        let pid = running.init_pid();
        let got = attacks(&|argv| exec_session(pid, bounding, false, argv));
        let log = running.stderr_until(std::time::Duration::from_secs(10), |log| {
            log.contains("cleared set-user-ID/set-group-ID bits on")
                && log.contains("removed file capabilities from 1 files")
        });
        assert_eq!(got, NOTHING, "{bounding}\n{log}");
        assert_eq!(mode(root, SUID_PROBE), 0o755);
        assert!(!has_file_caps(&root.join(CAP_PROBE)));
        assert!(!root.join("etc/sudoers.d/claude").exists());
    }
    // the image itself (the overlay's lower layer) is never written
    let cache = debian_cache();
    assert_eq!(
        fs::metadata(cache.join("usr/bin/sudo")).unwrap().mode() & 0o7777,
        0o4755
    );
}

#[test]
fn with_container_no_new_privs_set_uid_bits_stay_inert_and_file_capabilities_still_go() {
    require_root();
    // control: no_new_privs does not stop a file capability. An exec session holds the
    // container's capabilities until its exec, and the file keeps those: with the strip
    // off, a session that has no_new_privs still gets CAP_NET_ADMIN.
    let o = debian_overlay();
    let root = &o.root;
    root.write(
        "etc/sandbox-init/config.toml",
        "[lockdown]\nstrip_suid = false\n",
    );
    let running = sandbox(root, DOCKER_CAPS, true);
    let pid = running.init_pid();
    let got = attacks(&|argv| exec_session(pid, DOCKER_CAPS, true, argv));
    assert_eq!(
        got,
        Gains {
            file_caps: CAP_NET_ADMIN,
            ..NOTHING
        },
        "control"
    );
    drop(running);
    drop(o);

    let o = debian_overlay();
    let root = &o.root;
    let running = sandbox(root, DOCKER_CAPS, true);
    let pid = running.init_pid();
    let log = running.stderr_until(std::time::Duration::from_secs(10), |log| {
        log.contains("PID 1 started with no_new_privs")
            && log.contains("the set-user-ID strip and the sudo reset are skipped")
            && log.contains("removed file capabilities from 1 files")
    });
    // the set-uid bits and the sudo rule are still on disk, the file capability is not ...
    assert_eq!(mode(root, SUID_PROBE), 0o4755);
    assert_eq!(mode(root, "usr/bin/sudo"), 0o4755);
    assert!(root.join("etc/sudoers.d/claude").exists());
    assert!(!has_file_caps(&root.join(CAP_PROBE)));
    // ... and a session of this container, which has no_new_privs too, gains nothing
    let got = attacks(&|argv| exec_session(pid, DOCKER_CAPS, true, argv));
    assert_eq!(got, NOTHING, "{log}");
    // control: what holds the set-uid bits and sudo is no_new_privs. A session without it
    // (which neither the runtime nor the agent can start here: a host root entering the
    // namespaces) still gets root from the very same files.
    let got = attacks(&|argv| exec_session(pid, DOCKER_CAPS, false, argv));
    assert_eq!(
        got,
        Gains {
            file_caps: 0,
            ..EVERYTHING
        },
        "control"
    );
}
