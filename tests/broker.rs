//! Tier 2, the credential broker as a real process: started by `launch::spawn` as PID 1
//! would start it (fork, privilege drop, exec of sandbox-init as `sandbox-init-broker`),
//! then attacked from another unprivileged uid, and used end to end against the mock API
//! (tests/docker/mock_api.py) over plain HTTP and over TLS with a test CA.
//!
//! Needs root (it changes uids), python3 and openssl.

mod common;

use common::mock::{hex, real_secret, test_ca, Mock, LIVENESS};

use sandbox_init::runtime::broker::account::{self, Account};
use sandbox_init::runtime::broker::launch::{self, Launch, Running};
use sandbox_init::runtime::broker::secret::Secret;
use sandbox_init::runtime::broker::wire::{ApiKeyBinding, OAuthBinding, Spec};
use sandbox_init::runtime::broker::{placeholder, store};
use serde_json::{json, Value};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");
use common::PROBE;
/// The attacker: an unprivileged uid like the sandboxed user's.
const ATTACKER: u32 = 64_321;

fn require() {
    common::require_root();
    common::probe_built();
    for tool in ["python3", "openssl"] {
        assert!(
            common::which(tool),
            "{tool} is missing: apt-get install {tool}"
        );
    }
}

fn broker_account() -> Account {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    let group = fs::read_to_string("/etc/group").unwrap();
    account::choose(None, &passwd, &group, &[ATTACKER], "broker uid").unwrap()
}

/// A scratch directory everyone can traverse (the broker reads the CA file in it).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("broker-it-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn spawn(spec: &Spec, store: Option<OwnedFd>) -> Result<Running, String> {
    launch::spawn(
        Launch {
            program: Path::new(INIT),
            account: broker_account(),
            listen: "127.0.0.1:0".parse().unwrap(),
            store,
            timeout: LIVENESS,
        },
        spec,
    )
}

fn oauth_spec(upstream: String, real: &str, ph: &str) -> Spec {
    let mut spec = Spec::new(
        Some(OAuthBinding {
            real: placeholder::oauth_from_token(real),
            placeholder: ph.into(),
        }),
        None,
    );
    spec.upstream = upstream;
    spec
}

/// One request with `connection: close`; the whole answer.
fn http(addr: SocketAddr, head: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIVENESS)).unwrap();
    write!(
        s,
        "{head}\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

const MESSAGE: &str = r#"{"model":"claude-x","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#;

/// Waits until `pid` runs the probe (its uid, environment and argv are then the probe's).
fn wait_exec(pid: i32) {
    let start = Instant::now();
    loop {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.starts_with(PROBE.as_bytes()) || cmdline.starts_with(b"sandbox-probe") {
            return;
        }
        assert!(
            start.elapsed() < LIVENESS,
            "process {pid} never ran the probe"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status_of(pid: i32) -> Vec<(String, String)> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn field(status: &[(String, String)], key: &str) -> String {
    status
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key} in status"))
}

#[test]
fn the_broker_runs_confined_under_its_own_uid_with_nothing_in_argv_or_env() {
    require();
    let mock = Mock::start(&[], &[]);
    let real = real_secret("oat01");
    let ph = placeholder::oauth_token().unwrap();
    let running = spawn(
        &oauth_spec(format!("http://127.0.0.1:{}", mock.port), &real, &ph),
        None,
    )
    .unwrap();
    let pid = running.pid.as_raw();
    let acct = broker_account();
    let st = status_of(pid);
    let ids = |k: &str| {
        field(&st, k)
            .split_whitespace()
            .map(|x| x.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("Uid"), vec![acct.uid; 4]);
    assert_eq!(ids("Gid"), vec![acct.gid; 4]);
    assert_ne!(acct.uid, 0);
    assert_ne!(acct.uid, ATTACKER);
    assert_eq!(field(&st, "Groups"), "");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&st, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(field(&st, "NoNewPrivs"), "1");
    // Not dumpable: the kernel then gives its /proc entries to root. Control: an ordinary
    // process of the same uid owns its own.
    assert_eq!(
        fs::metadata(format!("/proc/{pid}/environ")).unwrap().uid(),
        0
    );
    let mut control = Command::new("setpriv")
        .args([
            "--reuid",
            &acct.uid.to_string(),
            "--regid",
            &acct.gid.to_string(),
            "--clear-groups",
            PROBE,
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    wait_exec(control.id() as i32);
    assert_eq!(
        fs::metadata(format!("/proc/{}/environ", control.id()))
            .unwrap()
            .uid(),
        acct.uid
    );
    let _ = control.kill();
    let _ = control.wait();
    // Its own session (not in the command's process group, off the terminal).
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let sid: i32 = after.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(sid, pid);
    // argv and the environment hold nothing (read as root, the strongest reader).
    assert_eq!(
        fs::read(format!("/proc/{pid}/cmdline")).unwrap(),
        b"sandbox-init-broker\0"
    );
    assert_eq!(fs::read(format!("/proc/{pid}/environ")).unwrap(), b"");
    // Only the broker's own descriptors: /dev/null on 0 and 1, PID 1's stderr on 2, the
    // listener, the runtime's (epoll, eventfd); the spec and status pipes are closed.
    let fds: Vec<(String, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read_link(e.path()).unwrap().display().to_string(),
            )
        })
        .collect();
    let stderr = fs::read_link("/proc/self/fd/2")
        .unwrap()
        .display()
        .to_string();
    for (n, target) in &fds {
        let expected = match n.as_str() {
            "0" | "1" => target == "/dev/null",
            "2" => *target == stderr,
            _ => target.starts_with("socket:") || target.starts_with("anon_inode:"),
        };
        assert!(expected, "unexpected descriptor {n} -> {target}: {fds:?}");
    }
    assert_eq!(
        fds.iter().filter(|(_, t)| t.starts_with("socket:")).count(),
        1,
        "{fds:?}"
    );
    running.stop();
}

/// What the attacker (uid ATTACKER) could do to `pid`, and to a control process of its own
/// uid (which it starts itself, so that even Yama's ptrace scope 1 would allow it).
fn attack(pid: i32, needle: &str) -> Value {
    let (mut r, w) = std::io::pipe().unwrap();
    let probe = std::ffi::CString::new(PROBE).unwrap();
    let argv = [
        c"sandbox-probe".as_ptr(),
        c"sleep".as_ptr(),
        c"30".as_ptr(),
        std::ptr::null(),
    ];
    let env = std::ffi::CString::new(format!("CONTROL_SECRET={needle}")).unwrap();
    let envp = [env.as_ptr(), std::ptr::null()];
    // SAFETY: the child drops to the attacker's uid, probes with system calls, writes one
    // JSON line and _exits (musl's fork leaves malloc usable in the child).
    match unsafe { libc::fork() } {
        0 => unsafe {
            drop(r);
            let mut w = w;
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(ATTACKER, ATTACKER, ATTACKER) != 0
                || libc::setresuid(ATTACKER, ATTACKER, ATTACKER) != 0
            {
                libc::_exit(3);
            }
            let victim = libc::fork();
            if victim == 0 {
                libc::execve(probe.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
            wait_exec(victim);
            let probe_one = |target: i32| {
                let err = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                let kill = if libc::kill(target, 0) == 0 { 0 } else { err() };
                let environ = match fs::read(format!("/proc/{target}/environ")) {
                    Ok(b) => json!(String::from_utf8_lossy(&b)),
                    Err(e) => json!(e.raw_os_error()),
                };
                let cmdline = fs::read(format!("/proc/{target}/cmdline"))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let mem = match fs::File::open(format!("/proc/{target}/mem")) {
                    Ok(_) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(0),
                };
                let ptrace = if libc::ptrace(libc::PTRACE_ATTACH, target, 0, 0) == 0 {
                    libc::ptrace(libc::PTRACE_DETACH, target, 0, 0);
                    0
                } else {
                    err()
                };
                json!({"kill": kill, "environ": environ, "cmdline": cmdline, "mem": mem, "ptrace": ptrace})
            };
            let report = json!({"broker": probe_one(pid), "control": probe_one(victim)});
            libc::kill(victim, libc::SIGKILL);
            let _ = writeln!(w, "{report}");
            libc::_exit(0)
        },
        child => {
            drop(w);
            let mut out = String::new();
            r.read_to_string(&mut out).unwrap();
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            serde_json::from_str(&out)
                .unwrap_or_else(|_| panic!("attacker said {out:?} (status {status})"))
        }
    }
}

#[test]
fn another_user_cannot_read_signal_or_trace_the_broker() {
    require();
    let mock = Mock::start(&[], &[]);
    let real = real_secret("oat01");
    let ph = placeholder::oauth_token().unwrap();
    let running = spawn(
        &oauth_spec(format!("http://127.0.0.1:{}", mock.port), &real, &ph),
        None,
    )
    .unwrap();
    let pid = running.pid.as_raw();
    let r = attack(pid, &real);

    // Control: the same attempts against a process of the attacker's own uid all work,
    // and its environment shows the secret placed there.
    let c = &r["control"];
    assert_eq!(c["kill"], 0, "{r}");
    assert_eq!(c["mem"], 0, "{r}");
    assert_eq!(c["ptrace"], 0, "{r}");
    assert!(c["environ"].as_str().unwrap().contains(&real), "{r}");

    let b = &r["broker"];
    assert_eq!(b["kill"], libc::EPERM, "{r}");
    assert_eq!(b["ptrace"], libc::EPERM, "{r}");
    assert_eq!(b["environ"], libc::EACCES, "{r}");
    assert_eq!(b["mem"], libc::EACCES, "{r}");
    // cmdline is readable by everyone, so it must hold nothing.
    assert_eq!(b["cmdline"], "sandbox-init-broker\0", "{r}");

    // The probe, as the attacker, searches every environ and cmdline it can open (and
    // its own environment) for the real secret: only the control's hit, never the broker.
    let empty = scratch("search");
    let mut control = Command::new("setpriv")
        .args([
            "--reuid",
            &ATTACKER.to_string(),
            "--regid",
            &ATTACKER.to_string(),
            "--clear-groups",
            PROBE,
            "sleep",
            "30",
        ])
        .env("CONTROL_SECRET", &real)
        .spawn()
        .unwrap();
    wait_exec(control.id() as i32);
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &ATTACKER.to_string(),
            "--regid",
            &ATTACKER.to_string(),
            "--clear-groups",
            PROBE,
            "search",
        ])
        .arg(hex(&real))
        .arg(&empty)
        .env_clear()
        .output()
        .unwrap();
    let _ = control.kill();
    let _ = control.wait();
    let found: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    let hits: Vec<String> = found["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["where"].as_str().unwrap().to_string())
        .collect();
    assert!(
        hits.iter().any(|h| h.contains(&control.id().to_string())),
        "search found not even the control: {found}"
    );
    assert!(
        !hits.iter().any(|h| h.contains(&format!("/proc/{pid}/"))),
        "{found}"
    );
    assert_eq!(hits.len(), 1, "{found}");

    // And the broker still works after all that.
    let answer = http(
        running.addr,
        "POST /v1/messages?beta=true HTTP/1.1\r\nauthorization: Bearer PH",
        MESSAGE,
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    running.stop();
    fs::remove_dir_all(empty).unwrap();
}

#[test]
fn forwards_the_real_secret_for_each_credential_and_refuses_the_rest() {
    require();
    let mock = Mock::start(&[], &[]);
    let real_token = real_secret("oat01");
    let real_key = real_secret("api03");
    let ph_token = placeholder::oauth_token().unwrap();
    let ph_key = placeholder::api_key().unwrap();
    let mut spec = oauth_spec(
        format!("http://127.0.0.1:{}", mock.port),
        &real_token,
        &ph_token,
    );
    spec.api_key = Some(ApiKeyBinding {
        real: Secret::new(real_key.clone()),
        placeholder: ph_key.clone(),
    });
    let running = spawn(&spec, None).unwrap();

    let answer = http(
        running.addr,
        &format!("POST /v1/messages?beta=true HTTP/1.1\r\nauthorization: Bearer {ph_token}"),
        MESSAGE,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("MOCK-ANSWER-42"), "{answer}");
    let answer = http(
        running.addr,
        &format!("POST /v1/messages HTTP/1.1\r\nx-api-key: {ph_key}"),
        MESSAGE,
    );
    assert!(answer.contains("MOCK-ANSWER-42"), "{answer}");
    for refused in [
        "POST /v1/messages HTTP/1.1".to_string(),
        "POST /v1/messages HTTP/1.1\r\nx-api-key: sk-ant-api03-the-agents-own".into(),
        format!(
            "POST http://127.0.0.2:{}/v1/messages HTTP/1.1\r\nx-api-key: {ph_key}",
            mock.port
        ),
    ] {
        let answer = http(running.addr, &refused, MESSAGE);
        assert!(
            answer.contains("sandbox-init broker: refused"),
            "{refused}: {answer}"
        );
    }
    // A fence: a request that is forwarded, sent after the refused ones; once the mock has
    // logged it, it has logged everything before it.
    let fence = http(
        running.addr,
        &format!("POST /v1/messages?fence=1 HTTP/1.1\r\nx-api-key: {ph_key}"),
        MESSAGE,
    );
    assert!(fence.contains("MOCK-ANSWER-42"), "{fence}");
    mock.wait_for("the fence", |v| v["path"] == "/v1/messages?fence=1");
    let log = mock.log();
    let auth: Vec<&Value> = log
        .iter()
        .filter(|v| {
            v["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/v1/messages"))
        })
        .collect();
    assert_eq!(auth.len(), 3, "{log:?}");
    assert_eq!(auth[0]["authorization"], format!("Bearer {real_token}"));
    assert_eq!(auth[1]["x-api-key"], real_key.as_str());
    let text = serde_json::to_string(&log).unwrap();
    assert!(
        !text.contains(&ph_token) && !text.contains(&ph_key),
        "a placeholder reached the API: {text}"
    );
    assert!(!text.contains("the-agents-own"));
    running.stop();
}

/// A test CA and a certificate for 127.0.0.1 signed by it.
#[test]
fn forwards_over_tls_trusting_the_given_ca_only() {
    require();
    let dir = scratch("tls");
    let (ca, cert, key) = test_ca(&dir, "127.0.0.1");
    let mock = Mock::start_tls(&cert, &key);
    let real = real_secret("oat01");
    let ph = placeholder::oauth_token().unwrap();
    let upstream = format!("https://127.0.0.1:{}", mock.port);

    // Control: without the test CA (the system's bundle only) the upstream is not trusted.
    let untrusted = spawn(&oauth_spec(upstream.clone(), &real, &ph), None).unwrap();
    let answer = http(
        untrusted.addr,
        &format!("POST /v1/messages HTTP/1.1\r\nauthorization: Bearer {ph}"),
        MESSAGE,
    );
    untrusted.stop();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.to_lowercase().contains("certificate"), "{answer}");
    assert!(
        mock.log().iter().all(|v| v["path"].is_null()),
        "a request passed an untrusted TLS upstream"
    );

    let mut spec = oauth_spec(upstream, &real, &ph);
    spec.ca_file = Some(ca);
    let running = spawn(&spec, None).unwrap();
    let answer = http(
        running.addr,
        &format!("POST /v1/messages?beta=true HTTP/1.1\r\nauthorization: Bearer {ph}"),
        MESSAGE,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("MOCK-ANSWER-42"), "{answer}");
    let seen = mock.wait_for("the request", |v| v["path"] == "/v1/messages?beta=true");
    assert_eq!(seen["authorization"], format!("Bearer {real}"));
    running.stop();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_keychain_login_is_refreshed_saved_root_only_and_used_at_the_next_start() {
    require();
    let mock = Mock::start(
        &["--token-endpoint"],
        &[("MOCK_REFRESH_TOKEN", "sk-ant-ort01-INPUT")],
    );
    let home = scratch("home");
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&home, Some(ATTACKER), Some(ATTACKER)).unwrap();
    let acct = broker_account();
    let ph = placeholder::oauth_token().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Expires in two minutes: inside the refresh margin, so the broker refreshes at once.
    let blob = json!({"claudeAiOauth": {"accessToken": "sk-ant-oat01-INPUT-ACCESS", "refreshToken": "sk-ant-ort01-INPUT",
        "expiresAt": now_ms + 120_000, "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}});
    let spec_for = || {
        let mut spec = Spec::new(
            Some(OAuthBinding {
                real: placeholder::oauth_from_keychain(&blob).unwrap(),
                placeholder: ph.clone(),
            }),
            None,
        );
        spec.upstream = format!("http://127.0.0.1:{}", mock.port);
        spec.token_url = format!("http://127.0.0.1:{}/v1/oauth/token", mock.port);
        spec.store = true;
        spec
    };
    let first = spawn(&spec_for(), Some(store::prepare(&home, acct).unwrap())).unwrap();
    let refresh = mock.wait_for("a refresh", |v| v["grant_type"] == "refresh_token");
    assert_eq!(refresh["refresh_token"], "sk-ant-ort01-INPUT");
    assert_eq!(
        refresh["client_id"],
        sandbox_init::runtime::broker::wire::DEFAULT_CLIENT_ID
    );
    assert_eq!(refresh["scope"], "user:inference user:profile");
    assert_eq!(refresh["answer"], 200);
    // Requests now carry the refreshed token.
    let start = Instant::now();
    for n in 0.. {
        let answer = http(
            first.addr,
            &format!("POST /v1/messages?n={n} HTTP/1.1\r\nauthorization: Bearer {ph}"),
            MESSAGE,
        );
        assert!(answer.contains("MOCK-ANSWER-42"), "{answer}");
        let path = format!("/v1/messages?n={n}");
        let last = mock.wait_for("the request", |v| v["path"] == path.as_str());
        if last["authorization"] == "Bearer mock-refreshed-access-1" {
            break;
        }
        assert!(start.elapsed() < LIVENESS, "still the old token: {last}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Saved where only the broker's uid (and root) can read it.
    let saved_file = home.join(store::DIR_NAME).join("oauth.json");
    let start = Instant::now();
    while !saved_file.exists() {
        assert!(start.elapsed() < LIVENESS);
        std::thread::sleep(Duration::from_millis(20));
    }
    first.stop();
    let dir_meta = fs::metadata(home.join(store::DIR_NAME)).unwrap();
    assert_eq!((dir_meta.uid(), dir_meta.mode() & 0o777), (acct.uid, 0o700));
    let file_meta = fs::metadata(&saved_file).unwrap();
    assert_eq!(
        (file_meta.uid(), file_meta.mode() & 0o777),
        (acct.uid, 0o600)
    );
    assert!(fs::read_to_string(&saved_file)
        .unwrap()
        .contains("mock-refreshed-refresh-1"));
    // The home's owner (the sandboxed user) cannot read it, though the home is its own.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &ATTACKER.to_string(),
            "--regid",
            &ATTACKER.to_string(),
            "--clear-groups",
            PROBE,
            "report",
            "--read",
        ])
        .arg(&saved_file)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["read"][0]["result"], "error", "{report}");
    assert_eq!(report["read"][0]["error"], "EACCES", "{report}");

    // The next start with the same input login (whose refresh token the mock has since
    // rotated away) uses the saved pair: no new refresh, the refreshed access token.
    let refreshes = mock
        .log()
        .iter()
        .filter(|v| v["grant_type"].is_string())
        .count();
    let second = spawn(&spec_for(), Some(store::prepare(&home, acct).unwrap())).unwrap();
    let answer = http(
        second.addr,
        &format!("POST /v1/messages?second=1 HTTP/1.1\r\nauthorization: Bearer {ph}"),
        MESSAGE,
    );
    assert!(answer.contains("MOCK-ANSWER-42"), "{answer}");
    let last = mock.wait_for("the request", |v| v["path"] == "/v1/messages?second=1");
    assert_eq!(last["authorization"], "Bearer mock-refreshed-access-1");
    assert_eq!(
        mock.log()
            .iter()
            .filter(|v| v["grant_type"].is_string())
            .count(),
        refreshes
    );
    second.stop();
    fs::remove_dir_all(home).unwrap();
}

#[test]
fn a_broker_that_cannot_start_says_why() {
    require();
    let mut spec = oauth_spec("ftp://nowhere".into(), "sk-ant-oat01-x", "PH");
    let err = spawn(&spec, None).unwrap_err();
    assert!(err.contains("the scheme must be http or https"), "{err}");
    spec.upstream = "https://127.0.0.1:9".into();
    spec.ca_file = Some("/nonexistent/ca.pem".into());
    let err = spawn(&spec, None).unwrap_err();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    // Run by hand (no descriptors from PID 1), the broker mode refuses.
    let out = Command::new("bash")
        .args(["-c", &format!("exec -a sandbox-init-broker {INIT}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("started by sandbox-init itself"));
}

/// The Claude Code CLI's native executable, fetched once into .cache (npm registry).
fn claude_cli() -> PathBuf {
    let version = std::env::var("BROKER_CLI_VERSION").unwrap_or_else(|_| "2.1.333".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-claude-cli.sh");
    let out = Command::new(script)
        .args([&version, "amd64"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot fetch Claude Code {version}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The sandboxed user of the real-CLI runs (not in /etc/passwd, like a remapped uid).
const CLI_USER: u32 = 64_322;

/// Runs `claude -p hello` as CLI_USER with a fresh home holding `files` (path, JSON),
/// against the broker at `base_url`. Returns (exit code, stdout, stderr).
fn run_cli(cli: &Path, base_url: &str, files: &[(&str, Value)]) -> (i32, String, String) {
    let home = scratch(&format!(
        "cli-home-{}",
        base_url.rsplit(':').next().unwrap()
    ));
    fs::create_dir_all(home.join(".claude")).unwrap();
    fs::create_dir_all(home.join("work")).unwrap();
    let mut state = json!({"hasCompletedOnboarding": true,
        "projects": {home.join("work").display().to_string(): {"hasTrustDialogAccepted": true}}});
    for (rel, doc) in files {
        if *rel == ".claude.json" {
            for (k, v) in doc.as_object().unwrap() {
                state[k] = v.clone();
            }
        } else {
            fs::write(home.join(rel), doc.to_string()).unwrap();
        }
    }
    fs::write(home.join(".claude.json"), state.to_string()).unwrap();
    fs::write(
        home.join(".claude/settings.json"),
        r#"{"skipDangerousModePermissionPrompt":true}"#,
    )
    .unwrap();
    Command::new("chown")
        .args(["-R", &format!("{CLI_USER}:{CLI_USER}")])
        .arg(&home)
        .status()
        .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &CLI_USER.to_string(),
            "--regid",
            &CLI_USER.to_string(),
            "--clear-groups",
        ])
        .arg(cli)
        .args(["-p", "hello"])
        .current_dir(home.join("work"))
        .env_clear()
        .env("HOME", &home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_INSTALLATION_CHECKS", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&home);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One credential input of the real-CLI run: the broker's spec, the files the CLI gets,
/// the real secret and its placeholder.
struct CliCase {
    input: &'static str,
    spec: Spec,
    files: Vec<(&'static str, Value)>,
    real: String,
    ph: String,
}

#[test]
fn the_real_cli_works_through_the_broker_with_every_input_and_never_sends_the_real_secret() {
    require();
    let cli = claude_cli();
    let dir = scratch("cli-tls");
    let (ca, cert, key) = test_ca(&dir, "127.0.0.1");
    for tls in [false, true] {
        let mock = if tls {
            Mock::start_tls(&cert, &key)
        } else {
            Mock::start(&[], &[])
        };
        let scheme = if tls { "https" } else { "http" };
        let upstream = format!("{scheme}://127.0.0.1:{}", mock.port);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let keychain = json!({"claudeAiOauth": {"accessToken": real_secret("oat01"), "refreshToken": real_secret("ort01"),
            "expiresAt": now_ms + 6 * 3_600_000, "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
            "subscriptionType": "max", "rateLimitTier": "default_claude_max_20x"}, "mcpOAuth": {}});
        let token = real_secret("oat01");
        let api_key = real_secret("api03");
        let inputs: Vec<CliCase> = {
            let mut v = Vec::new();
            for input in [
                "CLAUDE_CODE_OAUTH_TOKEN",
                "CLAUDE_CREDENTIALS",
                "ANTHROPIC_API_KEY",
            ] {
                let (spec, files, real, ph) = match input {
                    "ANTHROPIC_API_KEY" => {
                        let ph = placeholder::api_key().unwrap();
                        let spec = Spec::new(
                            None,
                            Some(ApiKeyBinding {
                                real: Secret::new(api_key.clone()),
                                placeholder: ph.clone(),
                            }),
                        );
                        (
                            spec,
                            vec![(".claude.json", json!({"primaryApiKey": ph}))],
                            api_key.clone(),
                            ph,
                        )
                    }
                    _ => {
                        let real = if input == "CLAUDE_CREDENTIALS" {
                            placeholder::oauth_from_keychain(&keychain).unwrap()
                        } else {
                            placeholder::oauth_from_token(&token)
                        };
                        let ph = placeholder::oauth_token().unwrap();
                        let doc = placeholder::credentials_document(&real, &ph);
                        let secret = real.access.expose().to_string();
                        let spec = Spec::new(
                            Some(OAuthBinding {
                                real,
                                placeholder: ph.clone(),
                            }),
                            None,
                        );
                        (spec, vec![(".claude/.credentials.json", doc)], secret, ph)
                    }
                };
                v.push(CliCase {
                    input,
                    spec,
                    files,
                    real,
                    ph,
                });
            }
            v
        };
        for CliCase {
            input,
            mut spec,
            files,
            real,
            ph,
        } in inputs
        {
            spec.upstream = upstream.clone();
            if tls {
                spec.ca_file = Some(ca.clone());
            }
            let before = mock.log().len();
            let running = spawn(&spec, None).unwrap();
            let (code, stdout, stderr) = run_cli(&cli, &running.base_url(), &files);
            // A fence through the broker: once the mock logged it, it logged all the CLI sent.
            let header = if input == "ANTHROPIC_API_KEY" {
                format!("x-api-key: {ph}")
            } else {
                format!("authorization: Bearer {ph}")
            };
            let fence_path = format!("/v1/messages/count_tokens?fence={input}-{scheme}");
            let fence = http(
                running.addr,
                &format!("POST {fence_path} HTTP/1.1\r\n{header}"),
                MESSAGE,
            );
            assert!(fence.contains("input_tokens"), "{fence}");
            mock.wait_for("the fence", |v| v["path"] == fence_path.as_str());
            running.stop();
            let seen: Vec<Value> = mock.log()[before..]
                .iter()
                .filter(|v| v["path"] != fence_path.as_str())
                .cloned()
                .collect();
            assert_eq!(code, 0, "{input} over {scheme}: claude -p failed\nstdout: {stdout}\nstderr: {stderr}\nmock: {seen:?}");
            assert!(
                stdout.contains("MOCK-ANSWER-42"),
                "{input} over {scheme}: {stdout}"
            );
            let messages: Vec<&Value> = seen
                .iter()
                .filter(|v| {
                    v["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("/v1/messages"))
                })
                .collect();
            assert!(
                !messages.is_empty(),
                "{input}: the mock saw no Messages API request: {seen:?}"
            );
            for m in &messages {
                let header = if input == "ANTHROPIC_API_KEY" {
                    &m["x-api-key"]
                } else {
                    &m["authorization"]
                };
                let want = if input == "ANTHROPIC_API_KEY" {
                    real.clone()
                } else {
                    format!("Bearer {real}")
                };
                assert_eq!(
                    header.as_str(),
                    Some(want.as_str()),
                    "{input} over {scheme}: {m}"
                );
            }
            let all = serde_json::to_string(&seen).unwrap();
            assert!(
                !all.contains(&ph),
                "{input} over {scheme}: the placeholder reached the API"
            );
            eprintln!("{input} over {scheme}: claude -p printed {:?}; the mock saw {} Messages API requests, each with the real secret", stdout.trim(), messages.len());
        }
    }
    fs::remove_dir_all(dir).unwrap();
}

/// A streamed answer, read as the CLI reads one: the status line, then every byte until
/// the broker ends the message. Returns (the raw answer, whether it ended cleanly: the
/// chunked body's last chunk, or a length that was met).
fn streamed(addr: SocketAddr, head: &str, body: &str) -> (String, bool) {
    let raw = http(addr, head, body);
    let (headers, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let lower = headers.to_ascii_lowercase();
    let clean = if lower.contains("transfer-encoding: chunked") {
        rest.ends_with("0\r\n\r\n")
    } else if let Some(n) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        rest.len() == n
    } else {
        false
    };
    (raw, clean)
}

/// The mock ends its streamed answers by closing the connection (no length, no chunks)
/// and, as Python's ssl module does, without TLS close_notify. The CLI must still get
/// every event up to message_stop and a message that ends cleanly.
#[test]
fn a_close_delimited_stream_over_tls_reaches_the_client_whole() {
    require();
    let dir = scratch("tls-stream");
    let (ca, cert, key) = test_ca(&dir, "127.0.0.1");
    let mock = Mock::start_tls(&cert, &key);
    let real = real_secret("api03");
    let ph = placeholder::api_key().unwrap();
    let mut spec = Spec::new(
        None,
        Some(ApiKeyBinding {
            real: Secret::new(real.clone()),
            placeholder: ph.clone(),
        }),
    );
    spec.upstream = format!("https://127.0.0.1:{}", mock.port);
    spec.ca_file = Some(ca);
    let running = spawn(&spec, None).unwrap();
    for n in 0..3 {
        let (answer, clean) = streamed(
            running.addr,
            &format!("POST /v1/messages?n={n} HTTP/1.1\r\nx-api-key: {ph}"),
            MESSAGE,
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("event: message_stop"), "cut: {answer}");
        assert!(clean, "the message did not end cleanly: {answer:?}");
    }
    running.stop();
    fs::remove_dir_all(dir).unwrap();
}
