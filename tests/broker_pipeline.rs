//! Tier 2, the credential broker in the pipeline: sandbox-init as PID 1 with `--broker` in
//! the Docker-exact network fixture (tests/common/netns.rs), the probe as the child, and
//! the mock Messages API served over TLS with a test CA on a "world" address, as the
//! container's ANTHROPIC_BASE_URL. Everything the child could use is searched for from the
//! inside, as the child; each search has a control run without the broker that finds the
//! secret.
//!
//! Needs root, python3 and openssl.

mod common;

use common::mock::{hex, real_secret, test_ca, Mock, LIVENESS};
use common::netns::*;
use common::*;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

const CA_IN_ROOT: &str = "/etc/ssl/test-ca.pem";
const NO_PRESETS: (&str, &str) = ("SANDBOX_PRESETS", "");
const MESSAGE: &str = r#"{"model":"claude-x","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#;

struct Fixture {
    net: Net,
    root: Rootfs,
    mock: Mock,
    dir: PathBuf,
    upstream: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> Fixture {
    require_root();
    for tool in ["python3", "openssl"] {
        assert!(which(tool), "{tool} is missing: apt-get install {tool}");
    }
    let net = Net::new();
    let root = Rootfs::new();
    root.write("etc/resolv.conf", &format!("nameserver {DNS1}\n"));
    let base = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let dir = PathBuf::from(base).join(format!("broker-pipe-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = test_ca(&dir, ALLOWED4);
    root.write(CA_IN_ROOT, &fs::read_to_string(ca).unwrap());
    fs::set_permissions(root.join(CA_IN_ROOT), fs::Permissions::from_mode(0o644)).unwrap();
    let mock = Mock::start_in(
        Some(&net.world_ns),
        ALLOWED4,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let upstream = format!("https://{ALLOWED4}:{}", mock.port);
    Fixture {
        net,
        root,
        mock,
        dir,
        upstream,
    }
}

impl Fixture {
    /// sandbox-init as PID 1 in the box, with the mock as the container's upstream.
    fn command(
        &self,
        flags: &[&str],
        creds: &[(&str, &str)],
        child: &[&str],
    ) -> std::process::Command {
        let mut args: Vec<&str> = flags.to_vec();
        args.push("--");
        args.push(PROBE_IN_ROOT);
        args.extend_from_slice(child);
        let mut env = vec![
            NO_PRESETS,
            ("ANTHROPIC_BASE_URL", self.upstream.as_str()),
            ("SSL_CERT_FILE", CA_IN_ROOT),
        ];
        env.extend_from_slice(creds);
        self.root.command(&args, &env, Some(&self.net.box_ns))
    }

    /// A POST from inside the box (as root, like any local client): (status, body).
    fn post(&self, addr: &str, header: (&str, &str)) -> (u16, String) {
        let script = "import http.client, sys\n\
            c = http.client.HTTPConnection(sys.argv[1], timeout=15)\n\
            c.request('POST', '/v1/messages', body=sys.argv[4],\n\
                      headers={sys.argv[2]: sys.argv[3], 'content-type': 'application/json'})\n\
            r = c.getresponse()\n\
            print(r.status)\n\
            try:\n\
            \x20   body = r.read()\n\
            except http.client.IncompleteRead as e:\n\
            \x20   body = e.partial\n\
            print(body.decode(errors='replace'))\n";
        let run = std::process::Command::new("ip")
            .args(["netns", "exec", &self.net.box_ns, "python3", "-c", script])
            .args([addr, header.0, header.1, MESSAGE])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&run.stdout).to_string();
        assert!(
            run.status.success(),
            "client failed: {out}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
        (status.trim().parse().unwrap(), body.to_string())
    }

    fn home_file(&self, rel: &str) -> String {
        fs::read_to_string(self.root.join(&format!("home/claude/{rel}"))).unwrap_or_default()
    }
}

/// The broker's address from PID 1's log line.
fn broker_addr(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("credential broker: pid"))
        .unwrap_or_else(|| panic!("no broker line:\n{stderr}"));
    let rest = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
    rest.split(',').next().unwrap().to_string()
}

/// Each probe `dns` step prints one JSON line.
fn steps(out: &str) -> Vec<Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn keychain(access: &str, refresh: &str) -> String {
    let day_ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 86_400_000;
    json!({"claudeAiOauth": {
        "accessToken": access, "refreshToken": refresh, "expiresAt": day_ahead,
        "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}})
    .to_string()
}

#[test]
fn the_mock_gets_the_real_secret_the_child_only_the_placeholder_and_other_requests_are_refused() {
    let f = fixture("swap");
    let real = real_secret("oat01");
    let go = "/tmp/requests-done";
    let mock_addr = format!("{ALLOWED4}:{}", f.mock.port);

    // Control: without the broker, the allowlisted upstream is reachable by the child.
    let control = run_bounded(
        &mut f.command(
            &["--no-broker", "--allow", ALLOWED4],
            &[("CLAUDE_CODE_OAUTH_TOKEN", &real)],
            &["dns", "--connect", &mock_addr],
        ),
        Duration::from_secs(60),
    );
    control.assert_code(0);
    let direct = steps(&control.stdout);
    assert_eq!(direct[0]["result"], "connected", "{direct:?}");

    // With it, the same allowlist entry no longer opens the upstream to the child.
    let mut cmd = f.command(
        &["--broker", "--allow", ALLOWED4],
        &[("CLAUDE_CODE_OAUTH_TOKEN", &real)],
        &["dns", "--connect", &mock_addr, "--wait-file", go],
    );
    let run = Running::start(&mut cmd);
    let direct: Value = serde_json::from_str(&run.line(LIVENESS)).unwrap();
    assert_eq!(direct["result"], "error", "{direct}");
    assert_eq!(
        direct["error"], "ECONNREFUSED",
        "not a fast reject: {direct}"
    );
    let log = run.stderr_until(LIVENESS, |l| l.contains("credential broker: pid"));
    let broker = broker_addr(&log);

    // What the CLI would read: a placeholder, never the real token.
    let creds: Value = serde_json::from_str(&f.home_file(".claude/.credentials.json")).unwrap();
    let ph = creds["claudeAiOauth"]["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ph.contains("placeholder"), "{creds}");
    assert!(!creds.to_string().contains(&real));

    let (status, body) = f.post(&broker, ("authorization", &format!("Bearer {ph}")));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("MOCK-ANSWER-42"), "{body}");
    let seen = f
        .mock
        .wait_for("the request", |v| v["path"] == "/v1/messages");
    assert_eq!(seen["authorization"], format!("Bearer {real}"));

    // Without the placeholder the broker refuses, and the mock never sees the request.
    let before = f.mock.log().len();
    let (status, body) = f.post(&broker, ("authorization", "Bearer sk-ant-oat01-guessed"));
    assert_eq!(status, 403, "{body}");
    let (status, _) = f.post(&broker, ("x-api-key", "sk-ant-api03-guessed"));
    assert_eq!(status, 403);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(f.mock.log().len(), before, "{:?}", f.mock.log());
    for v in f.mock.log() {
        let auth = v["authorization"].as_str().unwrap_or_default();
        assert!(
            !auth.contains("placeholder"),
            "the mock saw a placeholder: {v}"
        );
    }

    fs::write(f.root.join(go), "").unwrap();
    let (code, _) = run.wait(LIVENESS);
    assert_eq!(code, Some(0));
}

/// One start with `creds`; the child searches everything it can read for `needles`.
fn search(f: &Fixture, broker: &str, creds: &[(&str, &str)], needles: &[&str]) -> Value {
    let hexed: Vec<String> = needles.iter().map(|n| hex(n)).collect();
    let joined = hexed.join(",");
    let run = run_bounded(
        &mut f.command(
            &[broker, "--allow", ALLOWED4],
            creds,
            &["search", &joined, "/"],
        ),
        Duration::from_secs(60),
    );
    run.assert_code(0);
    let report = run.report();
    assert!(report["files"].as_u64().unwrap() >= 5, "{report}");
    report
}

/// Credential variables given to a start.
type Inputs<'a> = Vec<(&'a str, &'a str)>;

#[test]
fn the_child_finds_no_trace_of_the_real_secret_anywhere_it_can_read() {
    let token = real_secret("oat01");
    let access = real_secret("oat01");
    let refresh = real_secret("ort01");
    let api_key = real_secret("api03");
    let blob = keychain(&access, &refresh);
    let inputs: [(Inputs, Vec<&str>); 2] = [
        (vec![("CLAUDE_CODE_OAUTH_TOKEN", &token)], vec![&token]),
        (
            vec![
                ("CLAUDE_CREDENTIALS", &blob),
                ("ANTHROPIC_API_KEY", &api_key),
            ],
            vec![&access, &refresh, &api_key],
        ),
    ];
    for (i, (creds, needles)) in inputs.iter().enumerate() {
        let f = fixture(&format!("search{i}"));
        // Control: without the broker the secret is in ~/.claude, and the search finds it.
        let found = search(&f, "--no-broker", creds, needles);
        let hits = found["hits"].as_array().unwrap();
        for n in needles {
            assert!(
                hits.iter().any(|h| h["needle"] == *n),
                "the control search missed a secret: {found}"
            );
        }
        // The same home: the real login the control left on the volume is replaced too.
        let clean = search(&f, "--broker", creds, needles);
        assert_eq!(clean["hits"], json!([]), "{clean}");
    }
}

#[test]
fn a_broker_that_cannot_start_ends_the_start_with_70_and_says_how_to_go_without() {
    let f = fixture("fail");
    let real = real_secret("api03");
    let mut cmd = f.command(
        &["--broker", "--allow", ALLOWED4],
        &[
            ("ANTHROPIC_API_KEY", &real),
            ("SSL_CERT_FILE", "/etc/ssl/missing.pem"),
        ],
        &["report"],
    );
    let run = run_bounded(&mut cmd, Duration::from_secs(60));
    run.assert_code(70);
    assert!(
        run.stdout.trim().is_empty(),
        "the command ran: {}",
        run.stdout
    );
    assert!(run.stderr.contains("--no-broker"), "{}", run.stderr);
    assert!(run.stderr.contains("SANDBOX_BROKER=0"), "{}", run.stderr);
    assert!(!run.stderr.contains(&real));
}

#[test]
fn apply_refuses_the_broker() {
    let f = fixture("apply");
    let run = run_bounded(
        &mut f
            .root
            .command(&["apply", "--broker"], &[NO_PRESETS], Some(&f.net.box_ns)),
        Duration::from_secs(60),
    );
    run.assert_code(64);
    assert!(run.stderr.contains("--no-broker"), "{}", run.stderr);
    let (_, table) = f
        .net
        .in_box(&["nft", "list", "table", "inet", "sandbox_init"]);
    assert!(!table.contains("chain"), "apply built a firewall: {table}");

    // On only by default, `apply` goes without it: the real credential is written (nobody
    // would hold it otherwise) and the firewall is built.
    let token = real_secret("oat01");
    let run = run_bounded(
        &mut f.root.command(
            &["apply", "-v"],
            &[NO_PRESETS, ("CLAUDE_CODE_OAUTH_TOKEN", &token)],
            Some(&f.net.box_ns),
        ),
        Duration::from_secs(60),
    );
    run.assert_code(0);
    assert!(run.stderr.contains("applying without it"), "{}", run.stderr);
    assert!(f.home_file(".claude/.credentials.json").contains(&token));
    let (_, table) = f
        .net
        .in_box(&["nft", "list", "table", "inet", "sandbox_init"]);
    assert!(table.contains("chain"), "no firewall: {table}");
}

#[test]
fn the_child_sees_only_the_broker_as_its_base_url() {
    let f = fixture("env");
    let real = real_secret("api03");
    let run = run_bounded(
        &mut f.command(&["--broker"], &[("ANTHROPIC_API_KEY", &real)], &["report"]),
        Duration::from_secs(60),
    );
    run.assert_code(0);
    let env = env_map(&run.report());
    let base = env.get("ANTHROPIC_BASE_URL").cloned().unwrap_or_default();
    assert!(base.starts_with("http://127.0.0.1:"), "{env:?}");
    assert!(run
        .stderr
        .contains(&format!("listening on {}", &base["http://".len()..])));
    for (k, v) in &env {
        assert!(
            !v.contains(&f.upstream),
            "{k} shows the container's upstream"
        );
        assert!(!v.contains(&real), "{k} holds the real secret");
    }
    assert!(!env.contains_key("ANTHROPIC_API_KEY"), "{env:?}");
    // Control: without the broker the child keeps the container's own value.
    let run = run_bounded(
        &mut f.command(
            &["--no-broker"],
            &[("ANTHROPIC_API_KEY", &real)],
            &["report"],
        ),
        Duration::from_secs(60),
    );
    run.assert_code(0);
    assert_eq!(env_map(&run.report())["ANTHROPIC_BASE_URL"], f.upstream);
}

#[test]
fn the_broker_resolves_an_upstream_name_through_the_dns_filter() {
    broker_resolves_a_name(false);
}

#[test]
fn the_broker_resolves_an_upstream_name_through_dockers_embedded_dns() {
    broker_resolves_a_name(true);
}

fn broker_resolves_a_name(docker_dns: bool) {
    let mut f = fixture(if docker_dns { "names-docker" } else { "names" });
    let _docker = docker_dns.then(|| {
        f.root.write(
            "etc/resolv.conf",
            "nameserver 127.0.0.11\noptions ndots:0\n",
        );
        f.net.docker_dns()
    });
    // Plain HTTP: the test certificate names an address, and this upstream is a name.
    let plain = Mock::start_in(Some(&f.net.world_ns), ALLOWED4, &[], &[]);
    let upstream = format!("http://allowed.test:{}", plain.port);
    let real = real_secret("api03");
    let go = "/tmp/requests-done";
    let mut cmd = f.root.command(
        &[
            "--broker",
            "--allow",
            "allowed.test",
            "--",
            PROBE_IN_ROOT,
            "dns",
            "--wait-file",
            go,
        ],
        &[
            NO_PRESETS,
            ("ANTHROPIC_BASE_URL", &upstream),
            ("ANTHROPIC_API_KEY", &real),
        ],
        Some(&f.net.box_ns),
    );
    let run = Running::start(&mut cmd);
    let log = run.stderr_until(LIVENESS, |l| l.contains("credential broker: pid"));
    let state: Value = serde_json::from_str(&f.home_file(".claude.json")).unwrap();
    let ph = state["primaryApiKey"].as_str().unwrap().to_string();
    let (status, body) = f.post(&broker_addr(&log), ("x-api-key", &ph));
    fs::write(f.root.join(go), "").unwrap();
    let stderr = run.stderr.clone();
    let _ = run.wait(LIVENESS);
    assert_eq!(status, 200, "{body}\n{}", stderr.lock().unwrap());
    let seen = plain.wait_for("the request", |v| v["path"] == "/v1/messages");
    assert_eq!(seen["x-api-key"], real);
}

#[test]
fn check_shows_what_the_broker_alone_may_reach() {
    let f = fixture("check");
    let upstream = f.upstream.clone();
    let show_with = |args: &[&str]| {
        let run = run_bounded(
            &mut f.root.command(
                args,
                &[
                    ("ANTHROPIC_BASE_URL", &upstream),
                    ("SANDBOX_PRESETS", "anthropic"),
                ],
                Some(&f.net.box_ns),
            ),
            Duration::from_secs(60),
        );
        run.stdout
    };
    let show = |flag: &str| show_with(&["check", flag]);
    let on = show("--broker");
    assert!(on.contains("accept  the credential broker (uid"), "{on}");
    assert!(
        on.contains("160.79.104.0/23") && on.contains(&format!("{ALLOWED4}/32")),
        "{on}"
    );
    assert!(
        on.contains("credentials.broker") && on.contains("--broker"),
        "{on}"
    );
    // The login and token hosts leave the child's allowlist; the upstream's host and the
    // token host are the broker's names.
    assert!(
        on.contains(
            "claude.ai claude.com platform.claude.com console.anthropic.com: left the \
             sandboxed user's allowlist"
        ),
        "{on}"
    );
    assert!(
        on.contains("to the addresses of its names platform.claude.com"),
        "{on}"
    );
    // Explicit wins: an allowed login host stays the child's.
    let kept = show_with(&["check", "--broker", "--allow", "claude.ai"]);
    assert!(
        kept.contains("claude.ai: kept in the sandboxed user's allowlist"),
        "{kept}"
    );
    let off = show("--no-broker");
    assert!(!off.contains("credential broker (uid"), "{off}");
    assert!(
        !off.contains("left the sandboxed user's allowlist"),
        "{off}"
    );
}

#[test]
fn a_broker_that_dies_is_reported_once_and_the_session_goes_on() {
    let f = fixture("dies");
    let real = real_secret("api03");
    let go = "/tmp/broker-killed";
    let mut cmd = f.command(
        &["--broker"],
        &[("ANTHROPIC_API_KEY", &real)],
        &["dns", "--wait-file", go, "--sleep", "300"],
    );
    let run = Running::start(&mut cmd);
    let log = run.stderr_until(LIVENESS, |l| l.contains("credential broker: pid"));
    let brokers = broker_children(run.init_pid());
    assert_eq!(brokers.len(), 1, "{log}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &brokers[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    run.stderr_until(LIVENESS, |l| l.contains("credential broker (pid"));
    // Reaped, not left a zombie: its pid is gone.
    let start = std::time::Instant::now();
    while fs::metadata(format!("/proc/{}", brokers[0])).is_ok() {
        assert!(start.elapsed() < LIVENESS, "the broker was not reaped");
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::write(f.root.join(go), "").unwrap();
    let stderr = run.stderr.clone();
    let (code, _) = run.wait(LIVENESS);
    let log = stderr.lock().unwrap().clone();
    assert_eq!(code, Some(0), "the session did not go on:\n{log}");
    assert_eq!(log.matches("credential broker (pid").count(), 1, "{log}");
}

/// Host pids of the broker processes (zombies included) whose parent is `init`.
fn broker_children(init: i32) -> Vec<i32> {
    let mut found = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ppid: i32 = after
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == init && cmdline.starts_with(b"sandbox-init-broker") {
            found.push(pid);
        }
    }
    found
}

/// A command inside the running sandbox as `docker exec` starts one: root in PID 1's pid,
/// mount and network namespaces, its root and working directory, environment `env` only
/// (Docker gives exec sessions the container's environment).
fn exec_in(sbx: &Running, argv: &[&str], env: &[(&str, &str)]) -> Run {
    let pid = sbx.init_pid().to_string();
    let mut cmd = std::process::Command::new("nsenter");
    cmd.args(["-t", &pid, "-p", "-m", "-n", "-r", "-w"])
        .args(argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(&mut cmd, Duration::from_secs(30))
}

/// Waits until PID 1's note for exec sessions says `done`.
fn wait_for_note(f: &Fixture, done: impl Fn(Option<&str>) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let text = fs::read_to_string(f.root.join("run/sandbox-init/broker.json")).ok();
        if done(text.as_deref()) {
            return;
        }
        assert!(start.elapsed() < LIVENESS, "broker.json stayed {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exec_sessions_get_the_brokers_base_url_while_it_runs_and_nothing_else() {
    let f = fixture("exec");
    let real = real_secret("api03");
    let go = "/tmp/exec-done";
    // What an earlier start of this container left in /run (it survives a restart), for
    // a broker that no longer runs.
    let stale = r#"{"base_url":"http://127.0.0.1:9","pid":77}"#;
    let plant = || {
        f.root.write("run/sandbox-init/broker.json", stale);
        fs::set_permissions(
            f.root.join("run/sandbox-init"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        fs::set_permissions(
            f.root.join("run/sandbox-init/broker.json"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    };
    // The container's environment, as docker exec hands it to every session.
    let container_env = [
        NO_PRESETS,
        ("ANTHROPIC_BASE_URL", f.upstream.as_str()),
        ("SSL_CERT_FILE", CA_IN_ROOT),
        ("ANTHROPIC_API_KEY", real.as_str()),
    ];
    let exec_report = |sbx: &Running| {
        let run = exec_in(
            sbx,
            &[INIT_IN_ROOT, "exec", "--", PROBE_IN_ROOT, "report"],
            &container_env,
        );
        run.assert_code(0);
        assert!(!run.stdout.contains(&real) && !run.stderr.contains(&real));
        env_map(&run.report())
    };

    // Control, without the broker: the session keeps the container's own value, and the
    // stale note is gone before the command starts (never handed on).
    plant();
    let mut cmd = f.command(
        &["--no-broker"],
        &[("ANTHROPIC_API_KEY", &real)],
        &["dns", "--wait-file", go],
    );
    let sbx = Running::start(&mut cmd);
    wait_for_note(&f, |t| t.is_none());
    let env = exec_report(&sbx);
    assert_eq!(env["ANTHROPIC_BASE_URL"], f.upstream, "{env:?}");
    fs::write(f.root.join(go), "").unwrap();
    assert_eq!(sbx.wait(LIVENESS).0, Some(0));
    fs::remove_file(f.root.join(go)).unwrap();

    // With it: the same session gets the broker's address, as the entrypoint's child does,
    // and through it reaches the broker.
    plant();
    let mut cmd = f.command(
        &["--broker"],
        &[("ANTHROPIC_API_KEY", &real)],
        &["dns", "--wait-file", go],
    );
    let sbx = Running::start(&mut cmd);
    let log = sbx.stderr_until(LIVENESS, |l| l.contains("credential broker: pid"));
    let broker = broker_addr(&log);
    wait_for_note(&f, |t| t.is_some_and(|t| t.contains(&broker)));
    let env = exec_report(&sbx);
    assert_eq!(
        env.get("ANTHROPIC_BASE_URL"),
        Some(&format!("http://{broker}")),
        "{env:?}"
    );
    assert!(!env.contains_key("ANTHROPIC_API_KEY"), "{env:?}");
    let run = exec_in(
        &sbx,
        &[
            INIT_IN_ROOT,
            "exec",
            "--",
            PROBE_IN_ROOT,
            "dns",
            "--connect",
            &broker,
        ],
        &container_env,
    );
    run.assert_code(0);
    assert_eq!(
        steps(&run.stdout)[0]["result"],
        "connected",
        "{}",
        run.stdout
    );
    fs::write(f.root.join(go), "").unwrap();
    assert_eq!(sbx.wait(LIVENESS).0, Some(0));
}

#[test]
fn the_child_resolves_the_upstreams_name_but_only_the_broker_connects_there_in_filter_mode() {
    upstream_name_is_the_brokers("filter");
}

#[test]
fn the_child_resolves_the_upstreams_name_but_only_the_broker_connects_there_in_resolver_mode() {
    upstream_name_is_the_brokers("resolver");
}

/// The attack: the agent resolves the broker's upstream by name (through the same
/// resolver as the broker) and connects to the answer itself, with a session or key of its
/// own. Even an explicit `--allow` of the name does not open it while the broker runs.
fn upstream_name_is_the_brokers(dns: &str) {
    let f = fixture(&format!("upstream-name-{dns}"));
    let plain = Mock::start_in(Some(&f.net.world_ns), ALLOWED4, &[], &[]);
    let port = plain.port.to_string();
    let upstream = format!("http://allowed.test:{port}");
    let real = real_secret("api03");
    let go = "/tmp/requests-done";
    let resolver = format!("{DNS1}:53");
    let env = |broker: &'static str| {
        vec![
            NO_PRESETS,
            ("SANDBOX_DNS", dns),
            ("ANTHROPIC_BASE_URL", upstream.as_str()),
            ("ANTHROPIC_API_KEY", real.as_str()),
            ("SANDBOX_BROKER", broker),
        ]
    };
    let mut argv = vec![
        "--allow",
        "allowed.test",
        "--",
        PROBE_IN_ROOT,
        "dns",
        "--resolve-connect",
        &resolver,
        "allowed.test",
        &port,
    ];

    // Control: without the broker the allowed name is the child's to reach.
    let run = run_bounded(
        &mut f.root.command(&argv, &env("0"), Some(&f.net.box_ns)),
        Duration::from_secs(60),
    );
    run.assert_code(0);
    let step = &steps(&run.stdout)[0];
    assert_eq!(step["addrs"], json!([ALLOWED4]), "{step}");
    assert_eq!(step["connect"]["result"], "connected", "{step}");

    // With the broker: the name still resolves for the child, the connect to its answer
    // is refused at once whether the name is allowed or not, and the broker's own
    // forwarding there works (without an allow entry too: the name is the broker's).
    argv.extend(["--wait-file", go]);
    for allowed in [true, false] {
        let argv = if allowed { &argv[..] } else { &argv[2..] };
        let run = Running::start(&mut f.root.command(argv, &env("1"), Some(&f.net.box_ns)));
        let step: Value = serde_json::from_str(&run.line(LIVENESS)).unwrap();
        assert_eq!(
            step["addrs"],
            json!([ALLOWED4]),
            "the name did not resolve: {step}"
        );
        assert_eq!(step["connect"]["result"], "error", "{step}");
        assert_eq!(
            step["connect"]["error"], "ECONNREFUSED",
            "not a fast reject: {step}"
        );
        let log = run.stderr_until(LIVENESS, |l| l.contains("credential broker: pid"));
        let state: Value = serde_json::from_str(&f.home_file(".claude.json")).unwrap();
        let ph = state["primaryApiKey"].as_str().unwrap().to_string();
        let before = plain.log().len();
        let (status, body) = f.post(&broker_addr(&log), ("x-api-key", &ph));
        fs::write(f.root.join(go), "").unwrap();
        let stderr = run.stderr.clone();
        let _ = run.wait(LIVENESS);
        fs::remove_file(f.root.join(go)).unwrap();
        assert_eq!(status, 200, "{body}\n{}", stderr.lock().unwrap());
        assert!(plain.log().len() > before, "{:?}", plain.log());
    }
    let seen = plain.wait_for("the request", |v| v["path"] == "/v1/messages");
    assert_eq!(seen["x-api-key"], real);
}

/// The attack: the agent reaches a login host of the `anthropic` preset (with a session of
/// its own, data goes out there). While the broker runs, the preset's login hosts leave
/// the child's allowlist; an explicit entry keeps one. Control: without the broker the
/// preset opens it.
#[test]
fn the_presets_login_hosts_leave_the_childs_allowlist_while_the_broker_runs() {
    let f = fixture("login-hosts");
    let login = Mock::start_in(Some(&f.net.world_ns), OTHER4, &[], &[]);
    let api = Mock::start_in(Some(&f.net.world_ns), ALLOWED4, &[], &[]);
    let port = login.port.to_string();
    let upstream = format!("http://{ALLOWED4}:{}", api.port);
    let real = real_secret("api03");
    let resolver = format!("{DNS1}:53");
    let reach = |broker: &str, extra: &[&str]| -> Value {
        let mut argv: Vec<&str> = extra.to_vec();
        argv.extend([
            "--",
            PROBE_IN_ROOT,
            "dns",
            "--resolve-connect",
            &resolver,
            "claude.ai",
            &port,
        ]);
        let env = [
            ("SANDBOX_PRESETS", "anthropic"),
            ("ANTHROPIC_BASE_URL", upstream.as_str()),
            ("ANTHROPIC_API_KEY", real.as_str()),
            ("SANDBOX_BROKER", broker),
        ];
        let run = run_bounded(
            &mut f.root.command(&argv, &env, Some(&f.net.box_ns)),
            Duration::from_secs(60),
        );
        run.assert_code(0);
        assert_eq!(
            run.stderr.contains("credential broker: pid"),
            broker == "1",
            "{}",
            run.stderr
        );
        steps(&run.stdout)[0].clone()
    };
    let connected = |step: &Value| step["connect"]["result"] == "connected";
    let control = reach("0", &[]);
    assert!(
        connected(&control),
        "control: the preset opens it: {control}"
    );
    let attack = reach("1", &[]);
    assert!(!connected(&attack), "the child reached claude.ai: {attack}");
    let kept = reach("1", &["--allow", "claude.ai"]);
    assert!(connected(&kept), "an explicit entry keeps it: {kept}");
}

/// The same attack through a live change: root's `sandbox-init allow` of the upstream's
/// name (what an agent might talk a user into) does not open it to the child while the
/// broker runs. Control: without the broker the same live allow opens it.
#[test]
fn a_live_allow_does_not_give_the_child_the_brokers_upstream() {
    let f = fixture("live-upstream");
    let plain = Mock::start_in(Some(&f.net.world_ns), ALLOWED4, &[], &[]);
    let port = plain.port.to_string();
    let upstream = format!("http://allowed.test:{port}");
    let real = real_secret("api03");
    let resolver = format!("{DNS1}:53");
    let (allowed, go) = ("/tmp/allowed", "/tmp/live-done");
    #[rustfmt::skip]
    let argv = [
        "--", PROBE_IN_ROOT, "dns",
        "--resolve-connect", &resolver, "allowed.test", &port, // 0: before the allow
        "--wait-file", allowed,                                 // 1
        "--resolve-connect", &resolver, "allowed.test", &port, // 2: after it
        "--wait-file", go,
    ];
    for broker in ["0", "1"] {
        let env = [
            NO_PRESETS,
            ("SANDBOX_DNS", "filter"),
            ("ANTHROPIC_BASE_URL", upstream.as_str()),
            ("ANTHROPIC_API_KEY", real.as_str()),
            ("SANDBOX_BROKER", broker),
        ];
        let sbx = Running::start(&mut f.root.command(&argv, &env, Some(&f.net.box_ns)));
        let before: Value = serde_json::from_str(&sbx.line(LIVENESS)).unwrap();
        assert_ne!(before["connect"]["result"], "connected", "{before}");
        let run = exec_in(&sbx, &[INIT_IN_ROOT, "allow", "allowed.test"], &[]);
        run.assert_code(0);
        fs::write(f.root.join(allowed), "").unwrap();
        let _wait = sbx.line(LIVENESS);
        let after: Value = serde_json::from_str(&sbx.line(LIVENESS)).unwrap();
        fs::write(f.root.join(go), "").unwrap();
        assert_eq!(sbx.wait(LIVENESS).0, Some(0));
        for p in [allowed, go] {
            fs::remove_file(f.root.join(p)).unwrap();
        }
        assert_eq!(after["addrs"], json!([ALLOWED4]), "{after}");
        if broker == "0" {
            assert!(
                run.stdout.contains("allowed.test: allowed"),
                "{}",
                run.stdout
            );
            assert_eq!(after["connect"]["result"], "connected", "{after}");
        } else {
            assert_eq!(before["addrs"], json!([ALLOWED4]), "{before}");
            assert_eq!(after["connect"]["error"], "ECONNREFUSED", "{after}");
            assert!(
                run.stdout.contains("only the broker may reach"),
                "{}{}",
                run.stdout,
                run.stderr
            );
        }
    }
}

/// Strict mode fails a start on a name of the allowlist that does not resolve; the
/// broker's own token host (unresolvable here) is needed by the broker alone, and only
/// when it refreshes: with the broker on and no entry naming it, the start goes on.
#[test]
fn strict_mode_does_not_fail_a_start_on_a_name_only_the_broker_asks_for() {
    let f = fixture("strict");
    let real = real_secret("api03");
    let creds = [("ANTHROPIC_API_KEY", real.as_str())];
    // Control: the same name as an allowlist entry fails the strict start.
    let run = run_bounded(
        &mut f.command(
            &["--no-broker", "--strict", "--allow", "platform.claude.com"],
            &creds,
            &["report"],
        ),
        Duration::from_secs(60),
    );
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot resolve platform.claude.com"),
        "{}",
        run.stderr
    );
    let run = run_bounded(
        &mut f.command(&["--broker", "--strict"], &creds, &["report"]),
        Duration::from_secs(60),
    );
    run.assert_code(0);
    assert!(
        run.stderr.contains("cannot resolve platform.claude.com"),
        "warned, not fatal: {}",
        run.stderr
    );
}

#[test]
fn a_login_made_with_login_goes_to_the_broker_stays_for_the_next_start_and_comes_back_without_it() {
    use std::os::unix::fs::{chown, MetadataExt};
    let f = fixture("handover");
    let access = real_secret("oat01");
    let refresh = real_secret("ort01");
    let needles = [access.as_str(), refresh.as_str()];
    // What `/login` leaves on the volume: the CLI's own file, the user's, mode 0600.
    let config = f.root.join("home/claude/.claude");
    fs::create_dir_all(&config).unwrap();
    chown(&config, Some(1000), Some(1000)).unwrap();
    let file = config.join(".credentials.json");
    let mut login: Value = serde_json::from_str(&keychain(&access, &refresh)).unwrap();
    // What the CLI saved there for an MCP server: the user's, kept through every start.
    login["mcpOAuth"] = json!({"server|1": {"accessToken": "MCP-KEPT"}});
    fs::write(&file, login.to_string()).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    chown(&file, Some(1000), Some(1000)).unwrap();

    // Control: without the broker, the agent reads the login where the CLI left it.
    let found = search(&f, "--no-broker", &[], &needles);
    for n in needles {
        assert!(
            found["hits"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["needle"] == n),
            "the control search missed the login: {found}"
        );
    }

    // With the broker, no credential given: the start hands the login to the broker, and
    // nothing the agent can read holds it any more.
    let clean = search(&f, "--broker", &[], &needles);
    assert_eq!(clean["hits"], json!([]), "{clean}");
    let on_volume = f.home_file(".claude/.credentials.json");
    assert!(doc_is_placeholder(&on_volume), "{on_volume}");
    assert!(on_volume.contains("MCP-KEPT"), "{on_volume}");
    // Kept in the broker's directory: its uid's alone (neither root's nor the user's).
    let kept = f.root.join("home/claude/.sandbox-init-broker/oauth.json");
    let meta = fs::symlink_metadata(&kept).expect("the login is kept for the broker");
    assert!(meta.is_file() && meta.mode() & 0o077 == 0, "{meta:?}");
    assert!(
        meta.uid() != 0 && meta.uid() != 1000,
        "owner {}",
        meta.uid()
    );
    assert!(fs::read_to_string(&kept).unwrap().contains(&refresh));

    // The next start (the broker on by default) uses the login it kept: the mock sees the
    // real token behind this start's placeholder.
    let go = "/tmp/requests-done";
    let mut cmd = f.command(
        &["--allow", ALLOWED4],
        &[],
        &["dns", "--connect", "127.0.0.1:9", "--wait-file", go],
    );
    let run = Running::start(&mut cmd);
    let _ = run.line(LIVENESS);
    let log = run.stderr_until(LIVENESS, |l| l.contains("credential broker: pid"));
    assert!(
        log.contains("holds the login it kept at an earlier start"),
        "{log}"
    );
    let creds: Value = serde_json::from_str(&f.home_file(".claude/.credentials.json")).unwrap();
    let ph = creds["claudeAiOauth"]["accessToken"].as_str().unwrap();
    assert!(ph.contains("placeholder"), "{creds}");
    let (status, body) = f.post(
        &broker_addr(&log),
        ("authorization", &format!("Bearer {ph}")),
    );
    assert_eq!(status, 200, "{body}");
    let seen = f
        .mock
        .wait_for("the request", |v| v["path"] == "/v1/messages");
    assert_eq!(seen["authorization"], format!("Bearer {access}"));
    fs::write(f.root.join(go), "").unwrap();
    let (code, _) = run.wait(LIVENESS);
    assert_eq!(code, Some(0));

    // The agent writes back the copy of the login it read before the handover: the
    // broker keeps its own (the same lineage), nothing is set aside, the copy is replaced.
    let stored_before = fs::read_to_string(&kept).unwrap();
    fs::write(&file, login.to_string()).unwrap();
    let r = run_bounded(
        &mut f.command(&["--allow", ALLOWED4], &[], &["report"]),
        Duration::from_secs(60),
    );
    r.assert_code(0);
    assert!(r.stderr.contains("an older copy"), "{}", r.stderr);
    assert_eq!(fs::read_to_string(&kept).unwrap(), stored_before);
    assert!(!kept.with_file_name("oauth.previous.json").exists());
    assert!(doc_is_placeholder(
        &f.home_file(".claude/.credentials.json")
    ));

    // The broker steps aside at a start (no CA bundle): the login stays the broker's, and
    // the user hears how to get it back.
    let r = run_bounded(
        &mut f.command(
            &[],
            &[("SSL_CERT_FILE", "/etc/ssl/missing.pem")],
            &["report"],
        ),
        Duration::from_secs(60),
    );
    r.assert_code(0);
    assert!(
        r.stderr
            .contains("--no-broker (SANDBOX_BROKER=0) puts it back"),
        "{}",
        r.stderr
    );
    assert!(doc_is_placeholder(
        &f.home_file(".claude/.credentials.json")
    ));

    // Without the broker, the login it kept goes back where Claude Code reads it.
    let off = run_bounded(
        &mut f.command(&["--no-broker"], &[], &["report"]),
        Duration::from_secs(60),
    );
    off.assert_code(0);
    let back: Value = serde_json::from_str(&f.home_file(".claude/.credentials.json")).unwrap();
    assert_eq!(back["claudeAiOauth"]["accessToken"], access.as_str());
    assert_eq!(back["claudeAiOauth"]["refreshToken"], refresh.as_str());
    assert_eq!(back["claudeAiOauth"]["subscriptionType"], "max");
    assert_eq!(back["mcpOAuth"]["server|1"]["accessToken"], "MCP-KEPT");
    assert!(
        off.stderr
            .contains("replaced the credential broker's placeholder"),
        "{}",
        off.stderr
    );
}

/// `~/.claude/.credentials.json` as `/login` leaves it, the user's own, mode 0600.
fn leave_login(f: &Fixture, document: &str) {
    use std::os::unix::fs::chown;
    let config = f.root.join("home/claude/.claude");
    fs::create_dir_all(&config).unwrap();
    chown(&config, Some(1000), Some(1000)).unwrap();
    let file = config.join(".credentials.json");
    fs::write(&file, document).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    chown(&file, Some(1000), Some(1000)).unwrap();
}

#[test]
fn a_login_left_by_login_stays_untouched_where_the_broker_cannot_take_it() {
    let f = fixture("kept-login");
    let login = keychain(&real_secret("oat01"), &real_secret("ort01"));
    leave_login(&f, &login);
    let store = f.root.join("home/claude/.sandbox-init-broker");
    let no_ca = ("SSL_CERT_FILE", "/etc/ssl/missing.pem");
    // On by default, the broker steps aside (no CA bundle): the login stays as it was.
    let r = run_bounded(
        &mut f.command(&[], &[no_ca], &["report"]),
        Duration::from_secs(60),
    );
    r.assert_code(0);
    assert!(r.stderr.contains("not started"), "{}", r.stderr);
    assert_eq!(f.home_file(".claude/.credentials.json"), login);
    assert!(
        !store.exists(),
        "nothing kept for a broker that did not run"
    );
    // Asked for, the start fails (70) and still changes nothing.
    let r = run_bounded(
        &mut f.command(&["--broker"], &[no_ca], &["report"]),
        Duration::from_secs(60),
    );
    r.assert_code(70);
    assert!(
        r.stderr.contains("credential broker cannot start") && r.stderr.contains("SSL_CERT_FILE"),
        "{}",
        r.stderr
    );
    assert_eq!(f.home_file(".claude/.credentials.json"), login);
    assert!(!store.exists());

    // A placeholder with no login kept for it, and no broker: the user hears what to do.
    let ph = json!({"claudeAiOauth": {
        "accessToken": "sk-ant-oat01-sandbox-init-placeholder-00", "refreshToken": null,
        "scopes": ["user:inference"]}})
    .to_string();
    leave_login(&f, &ph);
    let r = run_bounded(
        &mut f.command(&["--no-broker"], &[], &["report"]),
        Duration::from_secs(60),
    );
    r.assert_code(0);
    assert!(
        r.stderr
            .contains("holds a placeholder of the credential broker")
            && r.stderr.contains("/login"),
        "{}",
        r.stderr
    );
}

fn doc_is_placeholder(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|d| {
        d["claudeAiOauth"]["accessToken"]
            .as_str()
            .is_some_and(|t| t.contains("sandbox-init-placeholder"))
            && d["claudeAiOauth"]["refreshToken"].is_null()
    })
}
