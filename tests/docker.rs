//! Tier 3: the product end to end in a real Docker engine, with the real Claude Code CLI.
//!
//! Images are built locally with no pull: a Debian base imported from a debootstrap rootfs
//! (scripts/debian-image.sh, cached), the images of images/ from the binaries cargo built
//! for this test run (scripts/build-images.sh), and a probe image (FROM the scratch image).
//! Fixtures live on an `--internal` network at fixed addresses:
//!
//! | address          | what                                                        |
//! |------------------|-------------------------------------------------------------|
//! | 10.213.0.1       | the gateway (this host): a listener the sandbox must not reach |
//! | 10.213.0.10:8080 | mock of the Messages API, `api.mock.test`, allowlisted       |
//! | 10.213.0.10:8443 | the same over HTTPS (a test CA), the broker's upstream        |
//! | 10.213.0.10:443  | that HTTPS server again as `platform.claude.com`: the OAuth  |
//! |                  | token endpoint the broker refreshes a login at               |
//! | 10.213.0.20:80   | an allowed host, `allowed.test`                              |
//! | 10.213.0.30:80   | a host that must stay unreachable, also a rogue DNS server   |
//! | 10.213.0.53      | dnsmasq: the upstream of Docker's embedded DNS (`--dns`)     |
//!
//! Traffic goes only to these containers and this host's address on the network. Every
//! container, network and volume is created under a fixed name and removed by that name,
//! failures included (Drop guard). Needs root and a running dockerd (.ci/run starts one);
//! without it the test fails with a message, it never passes silently.
//!
//! All cases share the fixtures, so they run in one test function, each in its own
//! `catch_unwind`: every case runs and every failure is listed at the end.

mod common;

use serde_json::Value;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");
use common::PROBE;
const REPO: &str = env!("CARGO_MANIFEST_DIR");

const NET: &str = "sandbox-init-test-net";
const SUBNET: &str = "10.213.0.0/24";
const GATEWAY: &str = "10.213.0.1";
const MOCK_IP: &str = "10.213.0.10";
const ALLOWED_IP: &str = "10.213.0.20";
const BLOCKED_IP: &str = "10.213.0.30";
const DNS_IP: &str = "10.213.0.53";
/// Claude Code's OAuth token host, which the broker refreshes a login at: the fixture's
/// dnsmasq answers it with the mock's address, the mock holds a certificate for it.
const TOKEN_HOST: &str = "platform.claude.com";

const BASE: &str = "sandbox-init-test/debian:bookworm";
const FIXTURE_IMG: &str = "sandbox-init-test/fixture";
const SCRATCH_IMG: &str = "sandbox-init-test/scratch";
const PROBE_IMG: &str = "sandbox-init-test/probe";
const CLAUDE_IMG: &str = "sandbox-init-test/claude";
const DEVCONTAINER_IMG: &str = "sandbox-init-test/devcontainer";

const C_DNS: &str = "sandbox-init-test-dns";
const C_MOCK: &str = "sandbox-init-test-mock";
const C_ALLOWED: &str = "sandbox-init-test-allowed";
const C_BLOCKED: &str = "sandbox-init-test-blocked";

// Invented credentials: never real, each unique so a leak is unambiguous.
const OAUTH_TOKEN: &str = "sk-ant-oat01-INVENTED-oauth-7f3a9c";
const API_KEY: &str = "sk-ant-api03-INVENTED-apikey-51d2e8";
const KEYCHAIN_TOKEN: &str = "sk-ant-oat01-INVENTED-keychain-c0ffee";
const GH_TOKEN: &str = "ghp_INVENTEDgithubtoken0123456789";

/// What the agent's Bash tool runs in the tool_use case: print its environment and PID 1's,
/// then try the blocked host and a name outside the allowlist, and try to forge or remove
/// the events file its hook reads. Markers make the tool_result unambiguous.
const TOOL_COMMAND: &str = "echo ENV-START; env; tr '\\0' '\\n' < /proc/1/environ; \
echo ENV-END; echo UID=$(id -u); \
if timeout 5 bash -c 'exec 3<>/dev/tcp/10.213.0.30/80' 2>/dev/null; \
then echo BLOCKED-HOST-REACHED; else echo BLOCKED-HOST-UNREACHABLE; fi; \
if getent hosts pkg.blocked.test >/dev/null; then echo DENIED-NAME-RESOLVED; \
else echo DENIED-NAME-NXDOMAIN; fi; \
if (echo forged > /run/sandbox-init-events/events.json) 2>/dev/null; \
then echo EVENTS-WRITTEN; else echo EVENTS-NOT-WRITTEN; fi; \
if rm -f /run/sandbox-init-events/events.json 2>/dev/null; \
then echo EVENTS-REMOVED; else echo EVENTS-NOT-REMOVED; fi; \
echo OWNERS $(stat -c %u:%a /run/sandbox-init-events /run/sandbox-init-events/events.json \
/etc/claude-code /etc/claude-code/managed-settings.json) END-OWNERS";

/// What the agent's Bash tool runs in the broker case. The mock puts in the secrets it is
/// to look for (@NEEDLES@: printf escapes, one a line; the plain text never reaches the
/// agent's transcript or any argv, only a pipe to grep). It searches its environment, every
/// /proc/*/environ and cmdline it can open, ~/.claude, ~/.claude.json, /tmp, /run and the
/// whole readable file system, then tries to signal the broker and open its environ and
/// mem. Each line is a marker and a count.
const SEARCH_COMMAND: &str = "s() { printf '%b\\n' '@NEEDLES@'; }; echo SEARCH-START; \
echo ENV-HITS $(env | grep -cF -f <(s)); \
echo PROC-HITS $(for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do \
tr '\\0' '\\n' < \"$f\" 2>/dev/null; echo; done | grep -cF -f <(s)); \
echo PROC-OPENED $(for f in /proc/[0-9]*/environ; do \
head -c0 \"$f\" 2>/dev/null && echo; done | wc -l); \
echo HOME-HITS $(grep -rlF -f <(s) ~/.claude ~/.claude.json 2>/dev/null | wc -l); \
echo TMP-RUN-HITS $(grep -rlF -f <(s) /tmp /run 2>/dev/null | wc -l); \
echo FS-FILES $(find / -xdev \\( -path /proc -o -path /sys \\) -prune -o -type f -readable -print \
2>/dev/null | wc -l); \
echo FS-HITS $(grep -rlF -D skip --exclude-dir=proc --exclude-dir=sys -f <(s) / 2>/dev/null | \
grep -v '^/proc/\\|^/sys/' | wc -l); \
b=$(for p in /proc/[0-9]*; do case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in \
sandbox-init-broker*) echo ${p#/proc/};; esac; done | head -1); echo BROKER-PID ${b:-none}; \
if [ -n \"$b\" ]; then \
if kill -0 $b 2>/dev/null; then echo SIGNAL-SENT; else echo SIGNAL-REFUSED; fi; \
if kill -TERM $b 2>/dev/null; then echo TERM-SENT; else echo TERM-REFUSED; fi; \
if head -c1 /proc/$b/environ >/dev/null 2>&1; then echo ENVIRON-READ; else echo ENVIRON-REFUSED; fi; \
if (exec 3</proc/$b/mem) 2>/dev/null; then echo MEM-OPENED; else echo MEM-REFUSED; fi; \
fi; echo SEARCH-END";

/// The test CA's files in the mock's container (its TLS server on 8443 uses them) and in
/// the sandbox's (the broker trusts the CA through SSL_CERT_FILE).
const TLS_IN_MOCK: &str = "/srv/tls";
const CA_IN_SANDBOX: &str = "/etc/ssl/test-ca.pem";
/// Where the test CA lives on this host for the whole run.
static TLS_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

// ---------------------------------------------------------------------------------------
// docker helpers

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs docker and panics with its output unless it succeeded; returns stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn require_docker() {
    // SAFETY: plain getter.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the Docker tier needs root (as CI runs it: sudo make test)"
    );
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the Docker tier needs a running dockerd, and `docker info` does not answer:\n{}\n\
             start one (.ci/run does: dockerd > /var/log/dockerd.log 2>&1 &)",
            text(&o.stderr)
        ),
        Err(e) => {
            panic!("the Docker tier needs the docker client: {e} (apt-get install docker.io)")
        }
    }
}

fn script(path: &str, args: &[&str]) -> String {
    let out = Command::new(Path::new(REPO).join(path))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    assert!(
        out.status.success(),
        "{path} {} failed\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn temp_dir(tag: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let base = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let p = PathBuf::from(base).join(format!("docker-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Everything this test creates in Docker, removed by name or ID on drop.
#[derive(Default)]
struct Cleanup {
    containers: std::sync::Mutex<Vec<String>>,
    volumes: std::sync::Mutex<Vec<String>>,
    network: std::sync::Mutex<bool>,
    dirs: std::sync::Mutex<Vec<PathBuf>>,
}

impl Cleanup {
    fn container(&self, id: &str) {
        self.containers.lock().unwrap().push(id.trim().to_string());
    }
    fn volume(&self, name: &str) {
        self.volumes.lock().unwrap().push(name.to_string());
    }
    fn dir(&self, p: &Path) {
        self.dirs.lock().unwrap().push(p.to_path_buf());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let containers = std::mem::take(&mut *self.containers.lock().unwrap());
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            let _ = docker(&args);
        }
        for v in std::mem::take(&mut *self.volumes.lock().unwrap()) {
            let _ = docker(&["volume", "rm", "-f", &v]);
        }
        if *self.network.lock().unwrap() {
            let _ = docker(&["network", "rm", NET]);
        }
        for d in std::mem::take(&mut *self.dirs.lock().unwrap()) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

// ---------------------------------------------------------------------------------------
// images and fixtures

fn build_images(clean: &Cleanup) {
    let t = Instant::now();
    common::probe_built();
    script("scripts/debian-image.sh", &[BASE]);
    // Fixture image: the Debian base with the mock (dnsmasq and python3 are in the base).
    let ctx = temp_dir("fixture-ctx");
    clean.dir(&ctx);
    std::fs::copy(
        Path::new(REPO).join("tests/docker/mock_api.py"),
        ctx.join("mock_api.py"),
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {BASE}\nCOPY mock_api.py /srv/mock_api.py\n"),
    )
    .unwrap();
    docker_ok(&["build", "-q", "-t", FIXTURE_IMG, ctx.to_str().unwrap()]);

    script(
        "scripts/build-images.sh",
        &["--bin", INIT, "--tag", SCRATCH_IMG, "scratch"],
    );
    // Probe image: the scratch image plus the probe and a passwd with the user.
    let ctx = temp_dir("probe-ctx");
    clean.dir(&ctx);
    std::fs::copy(PROBE, ctx.join("sandbox-probe")).unwrap();
    std::fs::create_dir_all(ctx.join("home/claude")).unwrap();
    std::fs::create_dir_all(ctx.join("workspace")).unwrap();
    std::fs::write(
        ctx.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nclaude:x:1000:1000::/home/claude:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        ctx.join("group"),
        "root:x:0:\nsudo:x:27:claude\nclaude:x:1000:\n",
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {SCRATCH_IMG}\n\
             COPY sandbox-probe /usr/local/bin/sandbox-probe\n\
             COPY passwd group /etc/\n\
             COPY --chown=1000:1000 home/claude /home/claude\n\
             COPY --chown=1000:1000 workspace /workspace\n\
             ENV PATH=/usr/local/bin:/usr/local/sbin\n\
             WORKDIR /workspace\n"
        ),
    )
    .unwrap();
    docker_ok(&["build", "-q", "-t", PROBE_IMG, ctx.to_str().unwrap()]);

    script(
        "scripts/build-images.sh",
        &["--bin", INIT, "--base", BASE, "--tag", CLAUDE_IMG, "claude"],
    );
    script(
        "scripts/build-images.sh",
        &[
            "--base",
            CLAUDE_IMG,
            "--tag",
            DEVCONTAINER_IMG,
            "devcontainer",
        ],
    );
    eprintln!("docker tier: images ready in {:?}", t.elapsed());
}

fn start_fixture(clean: &Cleanup, name: &str, ip: &str, args: &[&str]) {
    // A container left by a crashed earlier run of this test carries the same name.
    let _ = docker(&["rm", "-f", name]);
    let mut a = vec![
        "run",
        "-d",
        "--name",
        name,
        "--network",
        NET,
        "--ip",
        ip,
        FIXTURE_IMG,
    ];
    a.extend_from_slice(args);
    let id = docker_ok(&a);
    clean.container(&id);
}

fn wait_log(name: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = docker(&["logs", name]);
        let all = text(&out.stdout) + &text(&out.stderr);
        if all.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fixture {name} never logged {needle:?}:\n{all}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the agent's Bash tool runs in the retry case, twice: fetch from the blocked host
/// (its banner is the body), or say it could not.
const RETRY_COMMAND: &str = "timeout 5 bash -c 'exec 3<>/dev/tcp/10.213.0.30/80 && \
printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3' 2>/dev/null || echo FETCH-BLOCKED";

fn start_fixtures(clean: &Cleanup) {
    let _ = docker(&["network", "rm", NET]); // stale from a crashed earlier run, same name
    docker_ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        SUBNET,
        "--gateway",
        GATEWAY,
        NET,
    ]);
    *clean.network.lock().unwrap() = true;
    let dnsmasq = |extra: &str, listen: &str| {
        format!(
            "dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces \
             --listen-address={listen} {extra}"
        )
    };
    let records = format!(
        "--address=/allowed.test/{ALLOWED_IP} --address=/api.mock.test/{MOCK_IP} \
         --address=/blocked.test/{BLOCKED_IP} --address=/{TOKEN_HOST}/{MOCK_IP}"
    );
    start_fixture(
        clean,
        C_DNS,
        DNS_IP,
        &[
            "sh",
            "-c",
            &format!(
                "exec {} 2>&1",
                dnsmasq(&format!("{records} --log-queries"), DNS_IP)
            ),
        ],
    );
    // The Messages API mock: plain HTTP on 8080, and HTTPS with a test CA's certificate for
    // its address and for TOKEN_HOST on 8443 (the broker's upstream) and 443 (the token
    // endpoint, one process with 8443 so a turn can wait for a refresh); both log to the
    // container's stdout.
    let tls = TLS_DIR.get_or_init(|| temp_dir("tls"));
    clean.dir(tls);
    common::mock::test_ca_for(tls, MOCK_IP, &[TOKEN_HOST]);
    for f in ["server.pem", "server.key"] {
        std::fs::set_permissions(
            tls.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    let mock_tls = format!("{}:{TLS_IN_MOCK}:ro", tls.display());
    let _ = docker(&["rm", "-f", C_MOCK]);
    let id = docker_ok(&[
        "run",
        "-d",
        "--name",
        C_MOCK,
        "--network",
        NET,
        "--ip",
        MOCK_IP,
        "-v",
        &mock_tls,
        "-e",
        &format!("MOCK_TOOL_COMMAND={TOOL_COMMAND}"),
        "-e",
        &format!("MOCK_RETRY_COMMAND={RETRY_COMMAND}"),
        "-e",
        &format!("MOCK_SEARCH_COMMAND={SEARCH_COMMAND}"),
        "-e",
        &format!("MOCK_SEARCH_NEEDLES={BROKER_REFRESH}"),
        "-e",
        &format!("MOCK_REFRESH_COMMAND={REFRESH_READ_COMMAND}"),
        "-e",
        &format!("MOCK_REFRESH_TOKEN={REFRESH_CASE_REFRESH}"),
        FIXTURE_IMG,
        "sh",
        "-c",
        &format!(
            "python3 -u /srv/mock_api.py --port 8443 --also-port 443 --messages \
             --token-endpoint --tls-cert {TLS_IN_MOCK}/server.pem \
             --tls-key {TLS_IN_MOCK}/server.key & \
             exec python3 -u /srv/mock_api.py --port 8080 --messages"
        ),
    ]);
    clean.container(&id);
    start_fixture(
        clean,
        C_ALLOWED,
        ALLOWED_IP,
        &[
            "python3",
            "-u",
            "/srv/mock_api.py",
            "--port",
            "80",
            "--banner",
            "allowed-host",
        ],
    );
    // The blocked host also runs a rogue DNS server: it answers allowed.test with its own
    // address, so a reply proves the query got through.
    start_fixture(
        clean,
        C_BLOCKED,
        BLOCKED_IP,
        &[
            "sh",
            "-c",
            &format!(
                "{} & exec python3 -u /srv/mock_api.py --port 80 --banner blocked-host",
                dnsmasq(&format!("--address=/#/{BLOCKED_IP}"), BLOCKED_IP)
            ),
        ],
    );
    wait_log(C_DNS, "started");
    wait_log(C_MOCK, "{\"ready\": 8080}");
    wait_log(C_MOCK, "{\"ready\": 8443}");
    wait_log(C_MOCK, "{\"ready\": 443}");
    wait_log(C_ALLOWED, "\"ready\"");
    wait_log(C_BLOCKED, "\"ready\"");
}

// ---------------------------------------------------------------------------------------
// running the sandbox

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Ran {
    fn report(&self) -> Value {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .unwrap_or_else(|| panic!("no probe report\n{self}"))
    }
    fn assert_code(&self, want: i32) {
        assert_eq!(self.code, Some(want), "exit code\n{self}");
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// `docker run --rm` on the test network with its DNS, bounded in time.
fn run_in_net(opts: &[&str], image_and_cmd: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--rm", "--network", NET, "--dns", DNS_IP]);
    cmd.args(opts);
    for (k, v) in env {
        // By name: the value travels in docker's environment, not on its command line.
        cmd.env(k, v);
        cmd.args(["-e", k]);
    }
    cmd.args(image_and_cmd);
    run_bounded(cmd, Duration::from_secs(120))
}

/// `claude -p PROMPT --dangerously-skip-permissions` in the Claude image, on the test network.
fn claude_p_in_net(opts: &[&str], prompt: &str, env: &[(&str, &str)]) -> Ran {
    run_in_net(
        opts,
        &[
            CLAUDE_IMG,
            "claude",
            "-p",
            prompt,
            "--dangerously-skip-permissions",
        ],
        env,
    )
}

fn run_bounded(mut cmd: Command, limit: Duration) -> Ran {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start docker");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ran = Ran {
        code: status.and_then(|s| s.code()),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
    };
    assert!(status.is_some(), "timed out after {limit:?}\n{ran}");
    ran
}

/// A TCP listener on this host's address on the test network (the gateway), counting
/// connections: the sandbox must not reach it, the unfirewalled control must.
struct GatewayListener {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl GatewayListener {
    fn start() -> GatewayListener {
        let l = TcpListener::bind((GATEWAY, 0)).expect("bind a listener on the gateway address");
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        GatewayListener { port, accepted }
    }
}

fn tcp_result<'a>(report: &'a Value, target: &str) -> &'a Value {
    report["tcp"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["target"] == target))
        .unwrap_or_else(|| panic!("no tcp result for {target}: {report}"))
}

fn assert_rejected_fast(r: &Value) {
    assert_eq!(r["result"], "error", "must be blocked: {r}");
    let err = r["error"].as_str().unwrap_or_default();
    assert!(
        [
            "ECONNREFUSED",
            "EHOSTUNREACH",
            "ENETUNREACH",
            "EACCES",
            "EPERM"
        ]
        .contains(&err),
        "blocked must be rejected, not dropped to a timeout: {r}"
    );
}

// ---------------------------------------------------------------------------------------
// cases

fn probe_args(gw_port: u16) -> Vec<String> {
    [
        "sandbox-probe",
        "report",
        "--timeout-ms",
        "3000",
        "--tcp",
        &format!("{ALLOWED_IP}:80"),
        "--tcp",
        &format!("{BLOCKED_IP}:80"),
        "--tcp",
        &format!("{GATEWAY}:{gw_port}"),
        "--dns",
        "127.0.0.11:53",
        "allowed.test",
        "--dns",
        &format!("{BLOCKED_IP}:53"),
        "allowed.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn case_probe_firewalled() {
    let gw = GatewayListener::start();
    let args = probe_args(gw.port);
    let mut cmd: Vec<&str> = vec![PROBE_IMG];
    cmd.extend(args.iter().map(String::as_str));
    let r = run_in_net(
        &["--cap-add", "NET_ADMIN"],
        &cmd,
        &[
            ("SANDBOX_ALLOW", "allowed.test:80"),
            ("SANDBOX_PRESETS", ""),
            ("SANDBOX_DNS", "resolver"),
            ("CLAUDE_CODE_OAUTH_TOKEN", OAUTH_TOKEN),
            ("ANTHROPIC_API_KEY", API_KEY),
            ("GITHUB_TOKEN", GH_TOKEN),
        ],
    );
    r.assert_code(0);
    let rep = r.report();

    let allowed = tcp_result(&rep, &format!("{ALLOWED_IP}:80"));
    assert_eq!(
        allowed["result"], "connected",
        "allowlisted host: {allowed}"
    );
    assert!(
        allowed["body"]
            .as_str()
            .unwrap_or("")
            .contains("allowed-host"),
        "{allowed}"
    );
    assert_rejected_fast(tcp_result(&rep, &format!("{BLOCKED_IP}:80")));
    assert_rejected_fast(tcp_result(&rep, &format!("{GATEWAY}:{}", gw.port)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        gw.accepted.load(Ordering::SeqCst),
        0,
        "the gateway listener was reached"
    );

    let dns = rep["dns"].as_array().expect("dns results");
    assert_eq!(
        dns[0]["rcode"], "NOERROR",
        "Docker's embedded DNS must keep resolving: {}",
        dns[0]
    );
    assert!(
        dns[0]["addrs"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == ALLOWED_IP)),
        "{}",
        dns[0]
    );
    assert_eq!(
        dns[1]["result"], "error",
        "another DNS server must be unreachable: {}",
        dns[1]
    );

    assert_eq!(rep["uid"], 1000, "runs as the user");
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            rep["status"][key], "0000000000000000",
            "{key} must be empty: {}",
            rep["status"]
        );
    }
    assert_eq!(rep["status"]["NoNewPrivs"], "1");
    let env = rep["env"].as_object().expect("env");
    for name in [
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_API_KEY",
        "GITHUB_TOKEN",
        "SANDBOX_ALLOW",
        "SANDBOX_PRESETS",
        "SANDBOX_DNS",
    ] {
        assert!(!env.contains_key(name), "{name} reached the command");
    }
    let everything = rep.to_string();
    for secret in [OAUTH_TOKEN, API_KEY, GH_TOKEN] {
        assert!(
            !everything.contains(secret),
            "a secret is visible to the command (env or /proc/1/environ)"
        );
    }
}

/// Filter mode with Docker's embedded DNS as the upstream: allowed names resolve through
/// 127.0.0.11 (our forwarder asks Docker's resolver, which asks the fixture); a denied name
/// gets NXDOMAIN and never reaches the fixture (its query log proves it); a query aimed at
/// the rogue server is answered by us, not by it (its answer would carry its own address);
/// the address learned from the allowed name connects (nothing is resolved at start: the
/// answer opens it), the other host stays rejected.
fn case_probe_dns_filter() {
    let label = format!(
        "exfil{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    let leak = format!("{label}.blocked.test");
    let rogue = format!("{BLOCKED_IP}:53");
    let allowed_tcp = format!("{ALLOWED_IP}:80");
    let blocked_tcp = format!("{BLOCKED_IP}:80");
    let query = |proto: &'static str, server: &str, name: &str| {
        ["--query", proto, server, name, "A"].map(String::from)
    };
    let mut steps: Vec<String> = ["sandbox-probe", "dns"].map(String::from).to_vec();
    steps.extend(query("udp", "127.0.0.11:53", "allowed.test"));
    steps.extend(query("udp", "127.0.0.11:53", &leak));
    steps.extend(query("tcp", "127.0.0.11:53", &leak));
    steps.extend(query("udp", &rogue, "allowed.test"));
    steps.extend(["--connect", &allowed_tcp, "--connect", &blocked_tcp].map(String::from));
    let mut image_and_cmd = vec![PROBE_IMG];
    image_and_cmd.extend(steps.iter().map(String::as_str));
    let r = run_in_net(
        &["--cap-add", "NET_ADMIN"],
        &image_and_cmd,
        &[
            ("SANDBOX_ALLOW", "allowed.test:80"),
            ("SANDBOX_PRESETS", ""),
            ("SANDBOX_DNS", "filter"),
        ],
    );
    r.assert_code(0);
    let lines: Vec<Value> = r
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 6, "one line per step\n{r}");
    let (dns, connects) = lines.split_at(4);
    assert_eq!(connects[0]["result"], "connected", "{}\n{r}", connects[0]);
    assert_rejected_fast(&connects[1]);

    let has_addr = |v: &Value, ip: &str| {
        v["addrs"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == ip))
    };
    assert_eq!(
        dns[0]["rcode"], "NOERROR",
        "allowed name via 127.0.0.11: {}",
        dns[0]
    );
    assert!(has_addr(&dns[0], ALLOWED_IP), "{}", dns[0]);
    for d in &dns[1..3] {
        assert_eq!(
            d["rcode"], "NXDOMAIN",
            "denied name, the filter's answer: {d}"
        );
    }
    assert_eq!(dns[3]["rcode"], "NOERROR", "{}", dns[3]);
    assert!(
        has_addr(&dns[3], ALLOWED_IP) && !has_addr(&dns[3], BLOCKED_IP),
        "the rogue server answered: {}",
        dns[3]
    );
    assert!(
        r.stderr.contains(&format!("blocked dns name {leak}")),
        "the denied name is reported\n{r}"
    );

    // Lower-cased: PID 1 asks in random letter case.
    let log = {
        let out = docker(&["logs", C_DNS]);
        format!("{}{}", text(&out.stdout), text(&out.stderr)).to_ascii_lowercase()
    };
    assert!(
        log.contains("allowed.test"),
        "the fixture logs queries (allowed.test came through Docker's DNS): {log}"
    );
    assert!(
        !log.contains(&label),
        "the denied name reached the upstream: {log}"
    );
}

/// The sandboxed user tries to answer for PID 1's upstream, Docker's real embedded DNS:
/// flows planted from 127.0.0.11:53 (which any uid may bind in a container) to PID 1's
/// sockets, UDP and TCP, then a query for an allowed name and connections to the address
/// it tried to plant. Nothing is intercepted, the real answer arrives, the planted address
/// stays closed; with our two rules against it deleted, the same attack succeeds.
fn case_probe_dns_hijack(clean: &Cleanup) {
    // UDP: planted before PID 1's first query (a live flow of PID 1's would hold the
    // tuple; the netns tier covers waiting one out). TCP: after one, whose port shows
    // where the next lies; the probe asks 127.0.0.1, so that its own connections do not
    // draw from PID 1's source ports.
    for (method, prime, ask) in [
        ("plant", None, "127.0.0.11:53"),
        ("tcp-plant", Some("p.allowed.test"), "127.0.0.1:53"),
    ] {
        let mut cmd = vec![PROBE_IMG, "sandbox-probe", "hijack", "--method", method];
        if let Some(p) = prime {
            cmd.extend(["--prime", p]);
        }
        cmd.extend([
            "--resolver",
            "127.0.0.11:53",
            "--ask",
            ask,
            "--name",
            "x.allowed.test",
            "--answer",
            BLOCKED_IP,
            "--port",
            "80",
        ]);
        let r = run_in_net(
            &["--cap-add", "NET_ADMIN"],
            &cmd,
            &[
                ("SANDBOX_ALLOW", "*.allowed.test"),
                ("SANDBOX_PRESETS", ""),
                ("SANDBOX_DNS", "filter"),
            ],
        );
        r.assert_code(0);
        let rep = r.report();
        eprintln!("docker tier: hijack {method}: {rep}");
        assert_eq!(rep["bind"], "ok", "the probe binds 127.0.0.11:53: {rep}");
        assert_ne!(rep["intercepted"], true, "{rep}\n{r}");
        assert_eq!(rep["hijacked"], false, "{rep}\n{r}");
        assert!(
            rep["trigger"]["addrs"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == ALLOWED_IP)),
            "the real answer: {rep}"
        );
        assert_rejected_fast(&rep["connect"][0]);
        // Control: the same container and attack with our two rules against it deleted
        // from the live table takes PID 1's upstream query (UDP: the probe asks the
        // filter's own address, as its flows planted to every port would catch its own).
        let ask = if method == "plant" {
            "127.0.0.1:53"
        } else {
            ask
        };
        // (The TCP attack guesses the kernel's next source port: up to three tries, in
        // fresh containers; one hijack proves the attack works.)
        let mut rep = Value::Null;
        for _ in 0..3 {
            rep = hijack_without_the_guards(clean, method, prime, ask);
            if rep["hijacked"] == true {
                break;
            }
        }
        assert_eq!(rep["hijacked"], true, "control: {rep}");
    }
}

/// Runs the hijack case's container detached, with the probe waiting for /workspace/go;
/// deletes the output chain's rules against answering for a resolver (from the host, in
/// the container's network namespace) once PID 1 has built them; lets the probe go.
fn hijack_without_the_guards(
    clean: &Cleanup,
    method: &str,
    prime: Option<&str>,
    ask: &str,
) -> Value {
    #[rustfmt::skip]
    let mut a = vec![
        "run", "-d", "--network", NET, "--dns", DNS_IP, "--cap-add", "NET_ADMIN",
        "-e", "SANDBOX_ALLOW=*.allowed.test", "-e", "SANDBOX_PRESETS=",
        "-e", "SANDBOX_DNS=filter", PROBE_IMG, "sandbox-probe", "hijack",
        "--wait-file", "/workspace/go", "--method", method, "--resolver", "127.0.0.11:53",
        "--ask", ask, "--name", "x.allowed.test", "--answer", BLOCKED_IP, "--port", "80",
    ];
    if let Some(p) = prime {
        a.extend(["--prime", p]);
    }
    let id = docker_ok(&a).trim().to_string();
    clean.container(&id);
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let pid = pid.trim();
    common::delete_hijack_guards(|args| {
        let out = Command::new("nsenter")
            .args(["-t", pid, "-n", "nft"])
            .args(args)
            .output()
            .expect("nsenter");
        let said = if out.status.success() {
            &out.stdout
        } else {
            &out.stderr
        };
        (out.status.success(), text(said))
    });
    let go = temp_dir("hijack-go");
    clean.dir(&go);
    std::fs::write(go.join("go"), "").unwrap();
    docker_ok(&[
        "cp",
        go.join("go").to_str().unwrap(),
        &format!("{id}:/workspace/go"),
    ]);
    docker_ok(&["wait", &id]);
    let out = docker(&["logs", &id]);
    let line = text(&out.stdout);
    let line = line.lines().last().unwrap_or("");
    let rep: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}\n{}", text(&out.stderr)));
    eprintln!("docker tier: hijack {method} without the guards: {rep}");
    rep
}

/// The same probe without the firewall: each target the firewalled case found blocked is
/// really there, so the blocked results above mean something.
fn case_probe_control_without_firewall() {
    let gw = GatewayListener::start();
    let args = probe_args(gw.port);
    let mut cmd: Vec<&str> = vec![PROBE_IMG];
    cmd.extend(args.iter().map(String::as_str));
    let r = run_in_net(&[], &cmd, &[("SANDBOX_FIREWALL", "off")]);
    r.assert_code(0);
    assert!(
        r.stderr.contains("FIREWALL OFF"),
        "opting out is loud: {}",
        r.stderr
    );
    let rep = r.report();
    let blocked = tcp_result(&rep, &format!("{BLOCKED_IP}:80"));
    assert_eq!(blocked["result"], "connected", "{blocked}");
    assert!(blocked["body"]
        .as_str()
        .unwrap_or("")
        .contains("blocked-host"));
    let gwr = tcp_result(&rep, &format!("{GATEWAY}:{}", gw.port));
    assert_eq!(gwr["result"], "connected", "{gwr}");
    assert_eq!(rep["dns"][1]["rcode"], "NOERROR", "{}", rep["dns"][1]);
}

fn case_no_net_admin_fails_closed() {
    let r = run_in_net(&[], &[PROBE_IMG, "sandbox-probe", "report"], &[]);
    r.assert_code(70);
    assert!(
        r.stderr.contains("--cap-add NET_ADMIN"),
        "the message must say what to add:\n{r}"
    );
    assert!(
        !r.stdout.contains("\"uid\""),
        "the command must not run:\n{r}"
    );
}

fn case_docker_stop_is_fast(clean: &Cleanup) {
    let id = docker_ok(&[
        "run",
        "-d",
        "--network",
        NET,
        "--dns",
        DNS_IP,
        "--cap-add",
        "NET_ADMIN",
        "-e",
        "SANDBOX_PRESETS=",
        PROBE_IMG,
        "sandbox-probe",
        "sleep",
        "60",
    ]);
    let id = id.trim().to_string();
    clean.container(&id);
    // Running once the probe shows up under PID 1.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let top = docker(&["top", &id]);
        if text(&top.stdout).contains("sandbox-probe sleep") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the command never started: {}",
            text(&docker(&["logs", &id]).stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    docker_ok(&["stop", "-t", "10", &id]);
    let took = t.elapsed();
    let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    // 143 = 128 + SIGTERM, forwarded and taken; Docker's SIGKILL after -t 10 would be 137.
    assert_eq!(code.trim(), "143", "SIGTERM forwarded: exit 128+15");
    eprintln!("docker tier: docker stop took {took:?}");
}

fn case_terminal_ownership() {
    // `script` gives docker a pseudo-terminal, so `-it` behaves as in a user's terminal.
    let line = format!(
        "docker run --rm -it --network {NET} --dns {DNS_IP} --cap-add NET_ADMIN \
         -e SANDBOX_PRESETS= {PROBE_IMG} sandbox-probe tty"
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    let r = run_bounded(cmd, Duration::from_secs(60));
    // (A terminal session may carry a stray NUL or other control byte before the line.)
    let json: Value = r
        .stdout
        .lines()
        .find_map(|l| {
            serde_json::from_str(l.trim_matches(|c: char| c.is_control() || c == ' ')).ok()
        })
        .unwrap_or_else(|| panic!("no tty report\n{r}"));
    assert!(json["foreground"].as_i64().unwrap_or(0) > 0, "{json}");
    assert_eq!(json["pgid"], json["pid"], "the command leads its group");
    assert_eq!(
        json["foreground"], json["pgid"],
        "and owns the terminal: {json}"
    );
}

/// The mock's log: one JSON object per request the CLI sent.
fn mock_requests() -> Vec<Value> {
    let out = docker(&["logs", C_MOCK]);
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("path").is_some())
        .collect()
}

/// Common `docker run` options for the Claude image: read-only root with a tmpfs /tmp, a
/// fresh named volume for the home, the mock allowlisted by name.
fn claude_opts(clean: &Cleanup, case: &str) -> Vec<String> {
    let vol = format!("sandbox-init-test-home-{case}");
    let _ = docker(&["volume", "rm", "-f", &vol]);
    clean.volume(&vol);
    [
        "--cap-add",
        "NET_ADMIN",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/run",
        "-v",
        &format!("{vol}:/home/claude"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

const MOCK_URL: &str = "http://api.mock.test:8080";

fn claude_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("ANTHROPIC_BASE_URL", MOCK_URL),
        ("SANDBOX_ALLOW", "api.mock.test:8080"),
    ];
    env.extend_from_slice(extra);
    env
}

fn run_claude(clean: &Cleanup, case: &str, prompt: &str, env: &[(&str, &str)]) -> Ran {
    let opts = claude_opts(clean, case);
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    run_in_net(
        &opts,
        &[
            CLAUDE_IMG,
            "claude",
            "-p",
            prompt,
            "--dangerously-skip-permissions",
        ],
        &claude_env(env),
    )
}

/// The launcher with the test image on the test network; HOME is `home`, and the only
/// credentials are those in `env`.
fn launcher(home: &Path, dry: bool, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(Path::new(REPO).join("scripts/run-claude.sh"));
    c.env("HOME", home);
    for v in [
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_API_KEY",
        "CLAUDE_CREDENTIALS",
    ] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    if dry {
        c.arg("--dry-run");
    }
    c.args(["--image", CLAUDE_IMG, "--network", NET, "--docker-arg"])
        .arg(format!("--dns={DNS_IP}"));
    c
}

/// The home volume a launcher dry run mounts.
fn dry_run_volume(dry: &Ran) -> String {
    dry.stdout
        .split_whitespace()
        .find_map(|w| w.strip_suffix(":/home/claude"))
        .unwrap_or_else(|| panic!("no home volume in the dry run\n{dry}"))
        .to_string()
}

/// The request the CLI sent for `marker` (the prompt's unique word).
fn request_with(marker: &str) -> Value {
    mock_requests()
        .into_iter()
        .find(|r| r["messages"].to_string().contains(marker))
        .unwrap_or_else(|| panic!("the mock saw no request with {marker}"))
}

fn case_claude_oauth_token(clean: &Cleanup) {
    let r = run_claude(
        clean,
        "oauth",
        "hello CASE-OAUTH",
        &[("CLAUDE_CODE_OAUTH_TOKEN", OAUTH_TOKEN)],
    );
    r.assert_code(0);
    assert!(r.stdout.contains("MOCK-ANSWER-42"), "{r}");
    let req = request_with("CASE-OAUTH");
    assert_eq!(
        req["authorization"],
        format!("Bearer {OAUTH_TOKEN}"),
        "the CLI used the token sandbox-init wrote: {req}"
    );
    eprintln!("docker tier: claude -p (oauth) in {:?}", r.elapsed);
}

/// A "Claude Code-credentials" keychain item for KEYCHAIN_TOKEN, expiring in 2100.
fn keychain_blob(refresh: &str) -> String {
    serde_json::json!({
        "claudeAiOauth": {
            "accessToken": KEYCHAIN_TOKEN,
            "refreshToken": refresh,
            "expiresAt": 4_102_444_800_000u64,
            "scopes": ["user:inference"],
            "subscriptionType": "max"
        },
        "mcpOAuth": {}
    })
    .to_string()
}

fn case_claude_keychain_blob(clean: &Cleanup) {
    let blob = keychain_blob("sk-ant-ort01-INVENTED-refresh");
    let r = run_claude(
        clean,
        "keychain",
        "hello CASE-KEYCHAIN",
        &[("CLAUDE_CREDENTIALS", &blob)],
    );
    r.assert_code(0);
    assert!(r.stdout.contains("MOCK-ANSWER-42"), "{r}");
    let req = request_with("CASE-KEYCHAIN");
    assert_eq!(
        req["authorization"],
        format!("Bearer {KEYCHAIN_TOKEN}"),
        "{req}"
    );
}

/// The refresh token of the broker case's keychain login (the mock searches for it too).
const BROKER_REFRESH: &str = "sk-ant-ort01-INVENTED-broker-refresh-9d41";

/// The markers and counts of the search's tool_result, as (marker, rest of its line).
fn search_lines(out: &str) -> std::collections::BTreeMap<String, String> {
    // The tool_result arrives as JSON text: its newlines are escaped.
    let text = out.replace("\\n", "\n");
    text.lines()
        .filter_map(|l| {
            let l = l.trim_matches(|c: char| c == '"' || c.is_whitespace());
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            k.chars()
                .all(|c| c.is_ascii_uppercase() || c == '-')
                .then(|| (k.to_string(), v.trim().to_string()))
        })
        .filter(|(k, _)| k.len() > 3)
        .collect()
}

/// `claude -p` asking for the search, with `env`, `extra` docker options, and a bound
/// wide enough for a search of the whole file system.
fn run_search(
    clean: &Cleanup,
    case: &str,
    marker: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Ran {
    let mut opts = claude_opts(clean, case);
    opts.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--rm", "--network", NET, "--dns", DNS_IP]);
    cmd.args(&opts);
    for (k, v) in claude_env(env) {
        cmd.env(k, v);
        cmd.args(["-e", k]);
    }
    cmd.args([
        CLAUDE_IMG,
        "claude",
        "-p",
        &format!("please RUN-SEARCH for {marker}"),
        "--dangerously-skip-permissions",
    ]);
    run_bounded(cmd, Duration::from_secs(300))
}

/// The search's result for the run whose prompt held `marker`.
fn search_result(marker: &str) -> (std::collections::BTreeMap<String, String>, String) {
    tool_output(marker, "toolu_broker_search_01", "SEARCH")
}

/// What the agent's tool call `tool_use_id` printed in the session of `marker`, as the
/// mock received it in the tool_result, checked to run from `{WORD}-START` to `{WORD}-END`;
/// with its `KEY VALUE` lines.
fn tool_output(
    marker: &str,
    tool_use_id: &str,
    word: &str,
) -> (std::collections::BTreeMap<String, String>, String) {
    let out = mock_requests()
        .iter()
        .filter(|q| q["messages"].to_string().contains(marker))
        .flat_map(|q| q["messages"].as_array().cloned().unwrap_or_default())
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == tool_use_id)
        .map(|b| b["content"].to_string())
        .unwrap_or_else(|| {
            panic!("the mock never received the tool_result of {tool_use_id} for {marker}")
        });
    assert!(
        out.contains(&format!("{word}-START")) && out.contains(&format!("{word}-END")),
        "{tool_use_id} did not run to its end: {out}"
    );
    (search_lines(&out), out)
}

/// Asserts that the mock never saw a placeholder and that the agent's search in the session
/// of `marker` found the real secret nowhere; returns the search's lines and output.
fn nothing_found(marker: &str) -> (std::collections::BTreeMap<String, String>, String) {
    for seen in mock_requests() {
        assert!(
            !seen.to_string().contains("sandbox-init-placeholder"),
            "the mock saw a placeholder: {seen}"
        );
    }
    let (lines, out) = search_result(marker);
    eprintln!("docker tier: {marker}: the agent's search: {lines:?}");
    for key in [
        "ENV-HITS",
        "PROC-HITS",
        "HOME-HITS",
        "TMP-RUN-HITS",
        "FS-HITS",
    ] {
        assert_eq!(count(&lines, key, &out), 0, "{marker}: {key}: {out}");
    }
    (lines, out)
}

fn count(lines: &std::collections::BTreeMap<String, String>, key: &str, out: &str) -> u64 {
    lines
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count {key} in the search's result: {out}"))
}

/// The real CLI with the credential broker on, once per credential input, against the
/// mock over TLS with a test CA (the broker trusts it through SSL_CERT_FILE): `claude -p`
/// and a Bash tool round trip work, the mock sees the real secret and never a
/// placeholder, and the agent's own Bash tool, searching everything it can read for the
/// secret the mock saw, finds nothing and can neither signal the broker nor open its
/// environ or memory. Control: the same search without the broker finds the secret. The
/// home volume holds only the placeholder afterwards.
/// The mock over TLS: the `-v` mount of the test CA at CA_IN_SANDBOX, and its URL.
fn tls_upstream() -> (String, String) {
    let ca = TLS_DIR
        .get()
        .expect("the fixtures made the test CA")
        .join("ca.pem");
    (
        format!("{}:{CA_IN_SANDBOX}:ro", ca.display()),
        format!("https://{MOCK_IP}:8443"),
    )
}

fn case_claude_through_the_broker(clean: &Cleanup) {
    let blob = serde_json::json!({
        "claudeAiOauth": {
            "accessToken": KEYCHAIN_TOKEN,
            "refreshToken": BROKER_REFRESH,
            "expiresAt": 4_102_444_800_000u64,
            "scopes": ["user:inference"],
            "subscriptionType": "max"
        },
        "mcpOAuth": {}
    })
    .to_string();
    let (ca_mount, upstream) = tls_upstream();

    // Control: without the broker the search finds the real token in ~/.claude.
    let marker = "CASE-BROKER-CONTROL";
    let r = run_search(
        clean,
        "broker-control",
        marker,
        &[
            ("CLAUDE_CODE_OAUTH_TOKEN", OAUTH_TOKEN),
            ("SANDBOX_BROKER", "0"),
        ],
        &[],
    );
    r.assert_code(0);
    assert!(r.stdout.contains("MOCK-TOOL-DONE"), "{r}");
    let (lines, out) = search_result(marker);
    eprintln!("docker tier: broker-control: the agent's search: {lines:?}");
    assert!(
        count(&lines, "HOME-HITS", &out) >= 1,
        "the control search missed ~/.claude: {out}"
    );
    assert!(
        count(&lines, "FS-HITS", &out) >= 1,
        "the control search missed the home: {out}"
    );

    let inputs: [(&str, &str, &str, &str, String); 3] = [
        (
            "broker-oauth",
            "CLAUDE_CODE_OAUTH_TOKEN",
            OAUTH_TOKEN,
            "authorization",
            format!("Bearer {OAUTH_TOKEN}"),
        ),
        (
            "broker-keychain",
            "CLAUDE_CREDENTIALS",
            &blob,
            "authorization",
            format!("Bearer {KEYCHAIN_TOKEN}"),
        ),
        (
            "broker-apikey",
            "ANTHROPIC_API_KEY",
            API_KEY,
            "x-api-key",
            API_KEY.to_string(),
        ),
    ];
    for (case, var, value, header, want) in &inputs {
        let marker = format!("CASE-{}", case.to_uppercase());
        let r = run_search(
            clean,
            case,
            &marker,
            &[
                (var, value),
                ("SANDBOX_BROKER", "1"),
                ("ANTHROPIC_BASE_URL", &upstream),
                ("SSL_CERT_FILE", CA_IN_SANDBOX),
                ("SANDBOX_ALLOW", ""),
            ],
            &["-v", &ca_mount],
        );
        r.assert_code(0);
        assert!(
            r.stdout.contains("MOCK-TOOL-DONE"),
            "{case}: no tool round trip\n{r}"
        );
        assert!(r.stderr.contains("credential broker: pid"), "{r}");
        assert!(
            r.stderr.contains(&format!("forwarding to {upstream}")),
            "{r}"
        );
        // Every request of this run, the first turn and the one after the tool, carried
        // the real secret; none anywhere carried a placeholder.
        let runs: Vec<Value> = mock_requests()
            .into_iter()
            .filter(|q| q["messages"].to_string().contains(&marker))
            .collect();
        assert!(
            runs.len() >= 2,
            "{case}: the turn and the tool_result: {runs:?}"
        );
        for q in &runs {
            assert_eq!(q[*header].as_str(), Some(want.as_str()), "{case}: {q}");
        }
        let (lines, out) = nothing_found(&marker);
        assert!(
            count(&lines, "FS-FILES", &out) > 1000,
            "{case}: the search saw little: {out}"
        );
        assert!(count(&lines, "PROC-OPENED", &out) >= 2, "{case}: {out}");
        assert_ne!(
            lines.get("BROKER-PID").map(String::as_str),
            Some("none"),
            "{case}: {out}"
        );
        for refused in [
            "SIGNAL-REFUSED",
            "TERM-REFUSED",
            "ENVIRON-REFUSED",
            "MEM-REFUSED",
        ] {
            assert!(
                lines.contains_key(refused),
                "{case}: {refused} missing: {out}"
            );
        }
        // The tool's output reached the mock (and the transcript) without the secret.
        for secret in [OAUTH_TOKEN, KEYCHAIN_TOKEN, BROKER_REFRESH, API_KEY] {
            assert!(!out.contains(secret), "{case}: {out}");
        }
        let secret = if *var == "CLAUDE_CREDENTIALS" {
            KEYCHAIN_TOKEN
        } else {
            value
        };
        let vol = format!("sandbox-init-test-home-{case}:/home/claude");
        // The files holding `needle` in the home volume (grep: 0 found, 1 none).
        let grep_home = |needle: &str| {
            docker(&[
                "run",
                "--rm",
                "--network",
                "none",
                "-v",
                &vol,
                "--entrypoint",
                "grep",
                CLAUDE_IMG,
                "-rlF",
                needle,
                "/home/claude",
            ])
        };
        let found = grep_home(secret);
        assert_eq!(
            found.status.code(),
            Some(1),
            "the home volume holds the real secret: {}",
            text(&found.stdout)
        );
        let found = grep_home("sandbox-init-placeholder");
        assert_eq!(found.status.code(), Some(0), "no placeholder in the home");
        eprintln!(
            "docker tier: {case}: claude -p and the search through the broker in {:?}",
            r.elapsed
        );
    }

    // An upstream by name: the fixture's dnsmasq answers its AAAA query REFUSED, and the
    // broker's lookup still takes the A answer.
    let r = run_claude(
        clean,
        "broker-by-name",
        "hello CASE-BROKER-BY-NAME",
        &[("ANTHROPIC_API_KEY", API_KEY), ("SANDBOX_BROKER", "1")],
    );
    r.assert_code(0);
    assert!(r.stdout.contains("MOCK-ANSWER-42"), "{r}");
    assert!(
        r.stderr.contains(&format!("forwarding to {MOCK_URL}")),
        "{r}"
    );
    let req = request_with("CASE-BROKER-BY-NAME");
    assert_eq!(req["x-api-key"], API_KEY, "{req}");
}

/// The login the handover case leaves on the volume, as `/login` would (invented).
const HANDOVER_ACCESS: &str = "sk-ant-oat01-INVENTED-handover-access-91d3";
const HANDOVER_REFRESH: &str = "sk-ant-ort01-INVENTED-handover-refresh-4a07";

/// A login made with `/login` lives in the home volume, where the agent reads it. The next
/// start (the broker on by default, no credential given) hands it to the broker: the real
/// CLI works through the broker, the mock sees the real token, the agent's search finds
/// nothing, and the volume holds it only in the broker's own directory. A further start
/// uses the login the broker kept.
fn case_claude_login_handed_to_the_broker(clean: &Cleanup) {
    let (ca_mount, upstream) = tls_upstream();
    let case = "broker-handover";
    let vol = format!("sandbox-init-test-home-{case}");
    let mut opts = claude_opts(clean, case);
    opts.extend(["-v".to_string(), ca_mount]);
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let login = serde_json::json!({
        "claudeAiOauth": {
            "accessToken": HANDOVER_ACCESS,
            "refreshToken": HANDOVER_REFRESH,
            "expiresAt": 4_102_444_800_000u64,
            "scopes": ["user:inference"],
            "subscriptionType": "max"
        }
    })
    .to_string();
    // As the CLI leaves it: the user's own file, mode 0600, in the user's ~/.claude.
    let seed = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "-v"])
        .arg(format!("{vol}:/home/claude"))
        .args(["-e", "LOGIN", "--entrypoint", "sh", CLAUDE_IMG, "-c"])
        .arg(
            "set -e; mkdir -p /home/claude/.claude; umask 077; \
             printf %s \"$LOGIN\" > /home/claude/.claude/.credentials.json; \
             chown -R claude:claude /home/claude/.claude",
        )
        .env("LOGIN", &login)
        .output()
        .unwrap();
    assert!(seed.status.success(), "{}", text(&seed.stderr));
    // `claude -p` asking for the agent's search, on the case's volume.
    let start = |marker: &str, env: &[(&str, &str)]| {
        let prompt = format!("please RUN-SEARCH for {marker}");
        let r = claude_p_in_net(&opts, &prompt, env);
        r.assert_code(0);
        assert!(r.stdout.contains("MOCK-TOOL-DONE"), "{marker}: {r}");
        r
    };
    // The files of the home volume that hold `needle`, as root sees them.
    let holding = |needle: &str| {
        let out = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &format!("{vol}:/home/claude"),
            "--entrypoint",
            "sh",
            CLAUDE_IMG,
            "-c",
            &format!("grep -rlF -- '{needle}' /home/claude | xargs -r stat -c '%n %u %a'"),
        ]);
        text(&out.stdout)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };

    // Control: without the broker the CLI uses the login on the volume, and the agent's
    // search finds it in ~/.claude. (Over TLS the control needs the broker: the CLI
    // trusts no test CA, so it goes to the plain mock.)
    let marker = "CASE-HANDOVER-CONTROL";
    start(marker, &claude_env(&[("SANDBOX_BROKER", "0")]));
    assert_eq!(
        request_with(marker)["authorization"],
        format!("Bearer {HANDOVER_ACCESS}"),
        "the control did not use the login on the volume"
    );
    let (lines, out) = search_result(marker);
    assert!(
        count(&lines, "HOME-HITS", &out) >= 1,
        "the control search missed the login in ~/.claude: {out}"
    );

    // With the broker on by default: the start takes the login from ~/.claude.
    for (marker, said) in [
        (
            "CASE-HANDOVER-FIRST",
            "replaced the login (now the credential broker's)",
        ),
        (
            "CASE-HANDOVER-NEXT",
            "holds the login it kept at an earlier start",
        ),
    ] {
        let r = start(
            marker,
            &claude_env(&[
                ("ANTHROPIC_BASE_URL", &upstream),
                ("SSL_CERT_FILE", CA_IN_SANDBOX),
                ("SANDBOX_ALLOW", ""),
            ]),
        );
        assert!(r.stderr.contains("credential broker: pid"), "{r}");
        assert!(r.stderr.contains(said), "{marker}: {r}");
        let broker = broker_uid(&r);
        let runs: Vec<Value> = mock_requests()
            .into_iter()
            .filter(|q| q["messages"].to_string().contains(marker))
            .collect();
        assert!(runs.len() >= 2, "{marker}: the turn and the tool_result");
        for q in &runs {
            assert_eq!(
                q["authorization"],
                format!("Bearer {HANDOVER_ACCESS}"),
                "{marker}: {q}"
            );
        }
        nothing_found(marker);
        // On the volume only in the broker's directory, its uid's alone.
        let want = format!("/home/claude/.sandbox-init-broker/oauth.json {broker} 600");
        for secret in [HANDOVER_REFRESH, HANDOVER_ACCESS] {
            assert_eq!(holding(secret), std::slice::from_ref(&want), "{marker}");
        }
    }
}

/// The refresh case's keychain login (invented; the mock's token endpoint takes only this
/// refresh token, MOCK_REFRESH_TOKEN).
const REFRESH_CASE_ACCESS: &str = "sk-ant-oat01-INVENTED-refresh-case-access-5e21";
const REFRESH_CASE_REFRESH: &str = "sk-ant-ort01-INVENTED-refresh-case-refresh-77b0";
/// What the mock's token endpoint issues first.
const REFRESHED_ACCESS: &str = "mock-refreshed-access-1";
const REFRESHED_REFRESH: &str = "mock-refreshed-refresh-1";
/// Claude Code's own OAuth client id, which a refresh in its name must carry.
const CLAUDE_CODE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// The refresh falls due this long after the session starts: the CLI's first request
/// comes within a few seconds of `docker run`, and the mock holds its answer until the
/// refresh, so the case waits about this long, never the broker's whole margin.
const REFRESH_LEAD: Duration = Duration::from_secs(20);

/// What the agent's Bash tool runs in the refresh case: list and read the broker's token
/// directory in its own home, read its own ~/.claude file (the control: the same read
/// where it may read), and search the home for the refreshed tokens and, the search's
/// control, for the placeholder in ~/.claude (each needle is put together in the shell, so
/// the command in the transcript does not hold it).
const REFRESH_READ_COMMAND: &str = "d=~/.sandbox-init-broker; echo READ-START; \
echo AGENT-UID $(id -u); echo DIR-OWNER $(stat -c %u:%a $d 2>&1); \
if ls -A $d >/dev/null 2>&1; then echo LIST-READ; else echo LIST-REFUSED; fi; \
if cat $d/oauth.json >/dev/null 2>&1; then echo FILE-READ; else echo FILE-REFUSED; fi; \
echo FILE-ERROR $(cat $d/oauth.json 2>&1 >/dev/null | sed 's/.*: //'); \
if cat ~/.claude/.credentials.json >/dev/null 2>&1; then echo OWN-READ; \
else echo OWN-NOT-READ; fi; \
n=mock-; echo HOME-HITS $(grep -rlF ${n}refreshed- ~ 2>/dev/null | wc -l); \
p=sandbox-init-; echo PLACEHOLDER-HITS $(grep -rlF ${p}placeholder ~ 2>/dev/null | wc -l); \
echo READ-END";

/// The broker's uid, from PID 1's line about it.
fn broker_uid(r: &Ran) -> u32 {
    r.stderr
        .split("credential broker: pid ")
        .nth(1)
        .and_then(|rest| rest.split(", uid ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("no broker uid in the log\n{r}"))
}

/// Entries of the mock's log with their place in it.
type Logged = Vec<(usize, Value)>;

/// The requests of the session whose prompt held `marker`, with their place in the mock's
/// log (the TLS server logs its turns and its token endpoint in the order it served them),
/// and that log's token requests.
fn refresh_log(marker: &str) -> (Logged, Logged) {
    let log: Logged = mock_requests().into_iter().enumerate().collect();
    let turns = log
        .iter()
        .filter(|(_, q)| q["messages"].to_string().contains(marker))
        .cloned()
        .collect();
    let tokens = log
        .into_iter()
        .filter(|(_, q)| q["path"] == "/v1/oauth/token")
        .collect();
    (turns, tokens)
}

/// Each request's place in the log and credential, for messages (the bodies are long).
fn credentials_of(turns: &Logged) -> Vec<(usize, String)> {
    turns
        .iter()
        .map(|(i, q)| (*i, q["authorization"].to_string()))
        .collect()
}

fn holds_read_result(q: &Value) -> bool {
    q["messages"].to_string().contains("toolu_refresh_read_01")
        && q["messages"].to_string().contains("tool_result")
}

/// The agent's read of the broker's token directory in the session of `marker`.
fn refresh_read(marker: &str) -> (std::collections::BTreeMap<String, String>, String) {
    tool_output(marker, "toolu_refresh_read_01", "READ")
}

/// The agent, in the session of `marker`, could not list or read the broker's directory
/// (owned by `broker`, 0700) although it read its own ~/.claude, and found no refreshed
/// token anywhere in its home.
fn assert_agent_cannot_read(marker: &str, broker: u32) {
    let (lines, out) = refresh_read(marker);
    eprintln!("docker tier: {marker}: the agent's read: {lines:?}");
    let agent: u32 = lines
        .get("AGENT-UID")
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no AGENT-UID: {out}"));
    assert_ne!(agent, broker, "the agent runs as the broker's uid: {out}");
    assert_eq!(
        lines.get("DIR-OWNER").map(String::as_str),
        Some(format!("{broker}:700").as_str()),
        "{out}"
    );
    for key in ["LIST-REFUSED", "FILE-REFUSED", "OWN-READ"] {
        assert!(lines.contains_key(key), "{key} missing: {out}");
    }
    assert_eq!(
        lines.get("FILE-ERROR").map(String::as_str),
        Some("Permission denied"),
        "{out}"
    );
    assert_eq!(count(&lines, "HOME-HITS", &out), 0, "{out}");
    assert!(
        count(&lines, "PLACEHOLDER-HITS", &out) >= 1,
        "the search missed the placeholder in ~/.claude: {out}"
    );
}

/// The home volume `vol` as root sees it: the broker's token directory and file are the
/// broker's (0700, 0600, one link), and the file holds the refreshed pair.
fn assert_saved_pair(vol: &str, broker: u32) {
    let mount = format!("{vol}:/home/claude");
    let dir = "/home/claude/.sandbox-init-broker";
    let file = format!("{dir}/oauth.json");
    // One command as root in a throwaway container of the image with the volume mounted.
    let as_root = |entrypoint: &str, args: &[&str]| {
        let mut a = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &mount,
            "--entrypoint",
            entrypoint,
            CLAUDE_IMG,
        ];
        a.extend_from_slice(args);
        docker(&a)
    };
    let as_root_ok = |entrypoint: &str, args: &[&str]| {
        let out = as_root(entrypoint, args);
        assert!(
            out.status.success(),
            "{entrypoint} {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let modes = as_root_ok("stat", &["-c", "%u %a %h %F", dir, &file]);
    assert_eq!(
        modes.lines().collect::<Vec<_>>(),
        [
            format!("{broker} 700 2 directory"),
            format!("{broker} 600 1 regular file")
        ],
        "the token directory and file on the home volume"
    );
    let saved: Value = serde_json::from_str(&as_root_ok("cat", &[&file]))
        .unwrap_or_else(|e| panic!("the saved token file is not JSON: {e}"));
    assert_eq!(saved["access"], REFRESHED_ACCESS, "{saved}");
    assert_eq!(saved["refresh"], REFRESHED_REFRESH, "{saved}");
    // Neither secret of the input login is on the volume: the CLI had placeholders.
    for secret in [REFRESH_CASE_ACCESS, REFRESH_CASE_REFRESH] {
        let found = as_root("grep", &["-rlF", secret, "/home/claude"]);
        assert_eq!(
            found.status.code(),
            Some(1),
            "the home volume holds an input secret: {}",
            text(&found.stdout)
        );
    }
}

/// The real CLI through the broker with a keychain login whose access token falls due for
/// refresh during the session, at Claude Code's own token endpoint (https://platform.claude.com,
/// the product's default: the fixture's DNS and test CA make the mock that host). The
/// session's first turn carries the input token; the mock holds its answer until the broker
/// has refreshed, so the turn after the tool carries the refreshed one and the CLI ends
/// normally. The refresh carried the input refresh token and Claude Code's client id; the
/// refreshed pair is on the home volume, the broker's alone, and the agent cannot read it.
/// The next start with the same input login uses the refreshed token and refreshes nothing.
/// Control: without the broker the agent reads the refresh token in its own ~/.claude.
fn case_claude_broker_refreshes_mid_session(clean: &Cleanup) {
    use sandbox_init::runtime::broker::oauth::MARGIN_MS;
    let (ca_mount, upstream) = tls_upstream();
    let blob = |expires_at_ms: u64| {
        serde_json::json!({
            "claudeAiOauth": {
                "accessToken": REFRESH_CASE_ACCESS,
                "refreshToken": REFRESH_CASE_REFRESH,
                "expiresAt": expires_at_ms,
                "scopes": ["user:inference"],
                "subscriptionType": "max"
            },
            "mcpOAuth": {}
        })
        .to_string()
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };

    // Control: without the broker, the agent's own user reads the refresh token.
    let opts = claude_opts(clean, "refresh-control");
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let control_blob = blob(now_ms() + MARGIN_MS + REFRESH_LEAD.as_millis() as u64);
    let r = run_in_net(
        &opts,
        &[CLAUDE_IMG, "cat", "/home/claude/.claude/.credentials.json"],
        &[
            ("CLAUDE_CREDENTIALS", &control_blob),
            ("SANDBOX_BROKER", "0"),
        ],
    );
    r.assert_code(0);
    assert!(
        r.stdout.contains(REFRESH_CASE_REFRESH),
        "without the broker the user's ~/.claude holds the refresh token\n{r}"
    );

    let vol = "sandbox-init-test-home-refresh";
    let mut opts = claude_opts(clean, "refresh");
    opts.extend(["-v".to_string(), ca_mount]);
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    // Fixed for both starts: the second gets the very same input login.
    let input = blob(now_ms() + MARGIN_MS + REFRESH_LEAD.as_millis() as u64);
    let env = claude_env(&[
        ("CLAUDE_CREDENTIALS", &input),
        ("SANDBOX_BROKER", "1"),
        ("ANTHROPIC_BASE_URL", &upstream),
        ("SSL_CERT_FILE", CA_IN_SANDBOX),
        ("SANDBOX_ALLOW", ""),
    ]);
    let start = |marker: &str| {
        let prompt = format!("please RUN-AFTER-REFRESH for {marker}");
        let r = claude_p_in_net(&opts, &prompt, &env);
        r.assert_code(0);
        assert!(
            r.stdout.contains("MOCK-TOOL-DONE"),
            "{marker}: the CLI did not finish its tool round trip\n{r}"
        );
        r
    };

    // The first start: the refresh comes in the middle of the session.
    let marker = "CASE-REFRESH-FIRST";
    let first = start(marker);
    let broker = broker_uid(&first);
    assert!(first.stderr.contains("OAuth token refreshed"), "{first}");
    let (turns, tokens) = refresh_log(marker);
    assert_eq!(
        tokens.len(),
        1,
        "one refresh at the token endpoint: {tokens:?}"
    );
    let (at, refresh) = &tokens[0];
    assert_eq!(refresh["grant_type"], "refresh_token", "{refresh}");
    assert_eq!(refresh["refresh_token"], REFRESH_CASE_REFRESH, "{refresh}");
    assert_eq!(refresh["client_id"], CLAUDE_CODE_CLIENT_ID, "{refresh}");
    assert_eq!(refresh["scope"], "user:inference", "{refresh}");
    assert_eq!(refresh["answer"], 200, "{refresh}");
    let (before, after): (Vec<_>, Vec<_>) = turns.iter().partition(|(i, _)| i < at);
    assert!(
        !before.is_empty(),
        "the CLI's first turn came only after the refresh (at {at} in the mock's log), which \
         fell due {REFRESH_LEAD:?} after the start, so the refresh was not mid-session; the \
         start took {:?}; the session's requests: {:?}",
        first.elapsed,
        credentials_of(&turns)
    );
    for (_, q) in &before {
        assert_eq!(
            q["authorization"],
            format!("Bearer {REFRESH_CASE_ACCESS}"),
            "before the refresh: {q}"
        );
    }
    assert!(
        after.iter().any(|(_, q)| holds_read_result(q)),
        "no turn of the session after the refresh (at {at}): {:?}",
        credentials_of(&turns)
    );
    for (_, q) in &after {
        assert_eq!(
            q["authorization"],
            format!("Bearer {REFRESHED_ACCESS}"),
            "after the refresh: {q}"
        );
    }
    eprintln!(
        "docker tier: refresh: {} request(s) of the session with the input token, then the \
         refresh, then {} with the refreshed one",
        before.len(),
        after.len()
    );
    // The token host was looked up by its name, the product's default endpoint (lower-cased:
    // PID 1 asks in random letter case).
    let dns = docker(&["logs", C_DNS]);
    let dns = format!("{}{}", text(&dns.stdout), text(&dns.stderr)).to_ascii_lowercase();
    assert!(
        dns.contains(&format!("query[a] {TOKEN_HOST}")),
        "nobody asked the fixture's DNS for {TOKEN_HOST}: {dns}"
    );
    assert_saved_pair(vol, broker);
    assert_agent_cannot_read(marker, broker);

    // The second start, same input login: it uses the refreshed pair, no new refresh.
    let marker = "CASE-REFRESH-SECOND";
    let second = start(marker);
    assert_eq!(broker_uid(&second), broker, "{second}");
    assert!(
        second
            .stderr
            .contains("using the OAuth token this login was refreshed to earlier"),
        "{second}"
    );
    let (turns, tokens) = refresh_log(marker);
    assert_eq!(
        tokens.len(),
        1,
        "the second start refreshed again: {tokens:?}"
    );
    assert!(
        turns.len() >= 2,
        "the turn and the tool_result: {:?}",
        credentials_of(&turns)
    );
    for (_, q) in &turns {
        assert_eq!(
            q["authorization"],
            format!("Bearer {REFRESHED_ACCESS}"),
            "the second start: {q}"
        );
    }
    assert_saved_pair(vol, broker);
    assert_agent_cannot_read(marker, broker);
    for seen in mock_requests() {
        assert!(
            !seen.to_string().contains("sandbox-init-placeholder"),
            "the mock saw a placeholder: {seen}"
        );
    }
    eprintln!(
        "docker tier: refresh: first start {:?}, second {:?}",
        first.elapsed, second.elapsed
    );
}

/// ANTHROPIC_API_KEY through the launcher itself: its exact capability set, no-new-privileges,
/// read-only root, limits, a per-project volume and host ids (1234:1234, re-owned home).
fn case_claude_api_key_via_launcher(clean: &Cleanup) {
    let project = temp_dir("project");
    clean.dir(&project);
    let home = temp_dir("host-home");
    clean.dir(&home);
    std::fs::write(home.join(".gitconfig"), "[user]\n\tname = Test User\n").unwrap();
    let common = |dry: bool| {
        let env = [
            ("ANTHROPIC_API_KEY", API_KEY),
            ("ANTHROPIC_BASE_URL", MOCK_URL),
        ];
        let mut c = launcher(&home, dry, &env);
        c.args([
            "--allow",
            "api.mock.test:8080",
            "--env",
            "ANTHROPIC_BASE_URL",
            "--uid",
            "1234:1234",
        ]);
        c.arg(&project);
        c.args([
            "--",
            "claude",
            "-p",
            "hello CASE-LAUNCHER",
            "--dangerously-skip-permissions",
        ]);
        c
    };
    let dry = run_bounded(common(true), Duration::from_secs(30));
    dry.assert_code(0);
    let volume = dry_run_volume(&dry);
    clean.volume(&volume);
    let r = run_bounded(common(false), Duration::from_secs(120));
    r.assert_code(0);
    assert!(r.stdout.contains("MOCK-ANSWER-42"), "{r}");
    let req = request_with("CASE-LAUNCHER");
    assert_eq!(req["x-api-key"], API_KEY, "{req}");
    // The home on the volume now belongs to the host ids.
    let owner = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "stat",
        "-v",
        &format!("{volume}:/h"),
        CLAUDE_IMG,
        "-c",
        "%u:%g",
        "/h",
        "/h/.claude",
    ]);
    assert_eq!(
        owner.split_whitespace().collect::<Vec<_>>(),
        ["1234:1234"; 2]
    );
}

/// The real agent runs a Bash tool_use inside the sandbox: it tries the blocked host and
/// prints every environment it can see; the tool_result the mock receives must show both
/// failed. ANTHROPIC_API_KEY is the credential here because the CLI itself would pass it on
/// to the tool's environment; only sandbox-init's scrubbing keeps it out.
fn case_claude_tool_use_is_sandboxed(clean: &Cleanup) {
    let r = run_claude(
        clean,
        "tool",
        "please RUN-TOOL for CASE-TOOL",
        &[("ANTHROPIC_API_KEY", API_KEY), ("GITHUB_TOKEN", GH_TOKEN)],
    );
    r.assert_code(0);
    assert!(r.stdout.contains("MOCK-TOOL-DONE"), "{r}");
    let reqs = mock_requests();
    let result = reqs
        .iter()
        .flat_map(|q| q["messages"].as_array().cloned().unwrap_or_default())
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == "toolu_sandbox_probe_01")
        .unwrap_or_else(|| panic!("the mock never received the tool_result"));
    let out = result["content"].to_string();
    assert!(
        out.contains("ENV-START") && out.contains("ENV-END"),
        "the tool ran: {out}"
    );
    assert!(
        out.contains("HOME=/home/claude") && out.contains("UID=1000"),
        "as the user: {out}"
    );
    assert!(out.contains("BLOCKED-HOST-UNREACHABLE"), "{out}");
    assert!(!out.contains("BLOCKED-HOST-REACHED"), "{out}");
    for secret in [API_KEY, GH_TOKEN] {
        assert!(
            !out.contains(secret),
            "a secret reached the agent's tool: {out}"
        );
    }
    assert!(out.contains("DENIED-NAME-NXDOMAIN"), "{out}");
    // The file the hook believes is root's and out of the agent's reach.
    assert!(
        out.contains("EVENTS-NOT-WRITTEN") && out.contains("EVENTS-NOT-REMOVED"),
        "{out}"
    );
    assert!(
        out.contains("OWNERS 0:755 0:644 0:755 0:644 END-OWNERS"),
        "{out}"
    );
    // The request after the tool call carries the hook's context: what was blocked and
    // the exact entry that allows it.
    let after = reqs
        .iter()
        .map(|q| q["messages"].to_string())
        .find(|m| m.contains("CASE-TOOL") && m.contains("toolu_sandbox_probe_01"))
        .unwrap_or_else(|| panic!("no request after the tool call"));
    for want in [
        "PostToolUse:Bash hook additional context",
        "blocked tcp 10.213.0.30:80; to allow it: SANDBOX_ALLOW=10.213.0.30:80 (or --allow)",
        "blocked dns name pkg.blocked.test (not in the allowlist); to allow it: \
         SANDBOX_ALLOW=pkg.blocked.test (or --allow)",
        "run-claude.sh --allow ENTRY",
    ] {
        assert!(after.contains(want), "{want:?} not in {after}");
    }
    // Without a terminal the lines are on stderr as they happen.
    assert!(
        r.stderr
            .contains("sandbox-init: blocked tcp 10.213.0.30:80; to allow it"),
        "{r}"
    );
}

/// The tool_result the mock received for `tool_id`, and the messages of that request.
fn tool_result_for(tool_id: &str) -> Option<(String, String)> {
    mock_requests().iter().find_map(|q| {
        let result = q["messages"]
            .as_array()?
            .iter()
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == tool_id)?;
        Some((result["content"].to_string(), q["messages"].to_string()))
    })
}

/// The real CLI's Bash tool call is blocked; while the CLI waits for the model's next turn,
/// root allows the host live (`docker exec C sandbox-init allow`); the mock's next turn asks
/// for the same command, and it now gets the host's real answer. One `claude -p` process.
fn case_claude_retry_after_live_allow(clean: &Cleanup) {
    let name = "sandbox-init-test-retry";
    let _ = docker(&["rm", "-f", name]);
    clean.container(name);
    docker_ok(&["exec", C_MOCK, "rm", "-f", "/tmp/retry-gate"]);
    let mut opts = claude_opts(clean, "retry");
    opts.extend(["--name".to_string(), name.to_string()]);
    let session = std::thread::spawn(move || {
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let prompt = "please RETRY-LIVE for CASE-RETRY";
        let argv = [
            CLAUDE_IMG,
            "claude",
            "-p",
            prompt,
            "--dangerously-skip-permissions",
        ];
        run_in_net(&opts, &argv, &claude_env(&[("ANTHROPIC_API_KEY", API_KEY)]))
    });

    // The first attempt: blocked (the mock now holds its next turn until the gate opens).
    let deadline = Instant::now() + Duration::from_secs(90);
    let (first, _) = loop {
        if let Some(r) = tool_result_for("toolu_retry_01") {
            break r;
        }
        assert!(
            Instant::now() < deadline && !session.is_finished(),
            "the mock never received the first tool_result: {:?}",
            mock_requests()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(first.contains("FETCH-BLOCKED"), "{first}");
    assert!(
        !first.contains("blocked-host"),
        "control: reached at first: {first}"
    );

    let allow = docker(&[
        "exec",
        name,
        "sandbox-init",
        "allow",
        &format!("{BLOCKED_IP}:80"),
    ]);
    assert_eq!(allow.status.code(), Some(0), "{}", text(&allow.stderr));
    assert!(
        text(&allow.stdout).contains(&format!("{BLOCKED_IP}:80: allowed")),
        "{}",
        text(&allow.stdout)
    );
    docker_ok(&["exec", C_MOCK, "touch", "/tmp/retry-gate"]);
    let r = session.join().unwrap();
    r.assert_code(0);
    assert!(r.stdout.contains("MOCK-RETRY-DONE"), "{r}");
    let (second, history) = tool_result_for("toolu_retry_02")
        .unwrap_or_else(|| panic!("the mock never received the retry's tool_result\n{r}"));
    assert!(
        second.contains("blocked-host") && !second.contains("FETCH-BLOCKED"),
        "the retry got the host's answer: {second}"
    );
    // the same conversation: the blocked attempt is in the history of the retry's request
    assert!(
        history.contains("toolu_retry_01") && history.contains("CASE-RETRY"),
        "{history}"
    );
    assert!(
        r.stderr.contains("live allowlist: allow by uid 0 pid "),
        "the change is logged: {r}"
    );
}

/// The dev container: sandbox-init stays PID 1, and an editor-style `docker exec` session as
/// the remote user is firewalled, unprivileged, and has no sudo.
fn case_devcontainer(clean: &Cleanup) {
    let vol = "sandbox-init-test-devcontainer-home";
    let _ = docker(&["volume", "rm", "-f", vol]);
    clean.volume(vol);
    let id = start_devcontainer(clean, &["-v", &format!("{vol}:/home/claude")]);
    let out = docker(&[
        "exec",
        "-u",
        "claude",
        &id,
        "bash",
        "-c",
        "id; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; \
         command -v sudo || echo NO-SUDO; \
         timeout 5 bash -c 'exec 3<>/dev/tcp/10.213.0.20/80' && echo ALLOWED-OK; \
         timeout 5 bash -c 'exec 3<>/dev/tcp/10.213.0.30/80' 2>/dev/null && echo BLOCKED-REACHED || echo BLOCKED-OK",
    ]);
    let o = text(&out.stdout);
    assert!(o.contains("uid=1000(claude)"), "{o}");
    assert!(!o.contains("(sudo)"), "{o}");
    assert!(o.contains("CapEff:\t0000000000000000"), "{o}");
    assert!(o.contains("NoNewPrivs:\t1"), "{o}");
    assert!(o.contains("NO-SUDO"), "{o}");
    assert!(o.contains("ALLOWED-OK"), "{o}\n{}", text(&out.stderr));
    assert!(
        o.contains("BLOCKED-OK") && !o.contains("BLOCKED-REACHED"),
        "{o}"
    );
}

/// --backup-volume as a user who may use Docker: the archive holds the credentials, so it is
/// that user's file, mode 0600, in ~/sandbox-init-backups, and a directory inside the project
/// (which the agent can read) is refused.
fn case_launcher_backup(clean: &Cleanup) {
    use std::os::unix::fs::MetadataExt;
    let base = temp_dir("backup");
    clean.dir(&base);
    let (home, project) = (base.join("home"), base.join("project"));
    for d in [&home, &project] {
        std::fs::create_dir_all(d).unwrap();
        std::os::unix::fs::chown(d, Some(4321), Some(4321)).unwrap();
    }
    let docker_gid = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("docker:x:"))
        .and_then(|rest| rest.split(':').next())
        .expect("a docker group (docker.io creates it)")
        .to_string();
    let as_user = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=4321",
            "--regid=4321",
            &format!("--groups={docker_gid}"),
            "--",
        ])
        .arg(Path::new(REPO).join("scripts/run-claude.sh"))
        .args(["--image", CLAUDE_IMG])
        .args(args)
        .env("HOME", &home)
        .current_dir(&project);
        run_bounded(c, Duration::from_secs(60))
    };
    let dry = as_user(&["--dry-run", "--", "true"]);
    dry.assert_code(0);
    let volume = dry_run_volume(&dry);
    clean.volume(&volume);
    docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        "-v",
        &format!("{volume}:/h"),
        CLAUDE_IMG,
        "-c",
        "echo BACKUP-MARKER > /h/.credentials-marker",
    ]);

    let r = as_user(&["--backup-volume"]);
    r.assert_code(0);
    let dir = home.join("sandbox-init-backups");
    let archives: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}\n{r}");
    let archive = &archives[0];
    assert!(
        archive.to_string_lossy().ends_with(".tar.gz")
            && archive
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&volume),
        "{archive:?}"
    );
    let meta = std::fs::metadata(archive).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "{archive:?}");
    assert_eq!((meta.uid(), meta.gid()), (4321, 4321), "{archive:?}");
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(
        text(&listing.stdout).contains("./.credentials-marker"),
        "{}",
        text(&listing.stdout)
    );

    let inside = project.join("backups");
    let r = as_user(&["--backup-volume", "--backup-dir", inside.to_str().unwrap()]);
    r.assert_code(64);
    assert!(r.stderr.contains("inside the project"), "{r}");
    let written = std::fs::read_dir(&inside).map_or(0, |d| d.count());
    assert_eq!(written, 0, "nothing may be written inside the project");
}

/// Text of a terminal capture without escape sequences and spaces (the CLI's screen
/// moves the cursor instead of writing spaces).
fn screen_text(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final; OSC: ESC ] ... BEL; others: ESC + one char.
            match chars.next() {
                Some('[') => {
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    for d in chars.by_ref() {
                        if d == '\x07' {
                            break;
                        }
                    }
                }
                _ => {}
            }
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// The interactive CLI of the image under a terminal, for up to `limit` or until `until`
/// shows on its screen; returns the screen text and when `until` appeared.
fn claude_tui(
    clean: &Cleanup,
    case: &str,
    cli: &str,
    extra: &str,
    until: &str,
    limit: Duration,
) -> (String, Option<Duration>) {
    let vol = format!("sandbox-init-test-home-tui-{case}");
    let name = format!("sandbox-init-test-tui-{case}");
    let _ = docker(&["rm", "-f", &name]);
    let _ = docker(&["volume", "rm", "-f", &vol]);
    clean.volume(&vol);
    clean.container(&name);
    let capture = temp_dir(&format!("tui-{case}")).join("screen");
    let line = format!(
        "docker run --rm -it --name {name} --network none --cap-add NET_ADMIN --read-only \
         --tmpfs /tmp -v {vol}:/home/claude -v {cli}:/usr/local/bin/claude:ro \
         -e SANDBOX_PRESETS= -e ANTHROPIC_API_KEY {extra} {CLAUDE_IMG}"
    );
    let mut child = Command::new("script")
        .args(["-qfec", &line])
        .arg(&capture)
        .env("ANTHROPIC_API_KEY", API_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start script");
    let t = Instant::now();
    let mut seen = None;
    while t.elapsed() < limit {
        let screen = screen_text(&std::fs::read(&capture).unwrap_or_default());
        if seen.is_none() && screen.contains(until) {
            seen = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = docker(&["rm", "-f", &name]);
    let screen = screen_text(&std::fs::read(&capture).unwrap_or_default());
    let _ = std::fs::remove_dir_all(capture.parent().unwrap());
    (screen, seen)
}

/// Releases of Claude Code that check the native installer's layout warn at every start
/// ("claude command at ~/.local/bin/claude missing or broken"); the image turns that check
/// off. Shown with such a release (2.1.197) put into the image: it warns when the image's
/// setting is cleared (the control), and stays silent with it 5 s longer than the warning
/// took to appear.
fn case_claude_no_installation_warning(clean: &Cleanup) {
    let cli = script("scripts/fetch-claude-cli.sh", &["2.1.197", "amd64"]);
    let cli = cli.trim();
    let warning = "missingorbroken";
    let (control, warned_after) = claude_tui(
        clean,
        "control",
        cli,
        "-e DISABLE_INSTALLATION_CHECKS=",
        warning,
        Duration::from_secs(60),
    );
    let warned_after =
        warned_after.unwrap_or_else(|| panic!("the control run never warned:\n{control}"));
    let (screen, _) = claude_tui(
        clean,
        "image",
        cli,
        "",
        "never-on-screen",
        warned_after + Duration::from_secs(5),
    );
    assert!(
        screen.contains("bypasspermissionson"),
        "the CLI started its UI:\n{screen}"
    );
    assert!(!screen.contains(warning), "{screen}");
}

/// `check` in a session the launcher started (read-only root, only the capabilities it
/// needs): as root it reads PID 1's status and the kernel's counters; as the sandboxed user
/// it shows what that user can see (the events file) and no capability "problems".
fn case_launcher_check(clean: &Cleanup) {
    let project = temp_dir("check-project");
    clean.dir(&project);
    let home = temp_dir("check-home");
    clean.dir(&home);
    let session = "timeout 3 bash -c 'exec 3<>/dev/tcp/10.213.0.30/80'; \
                   getent hosts pkg.check.test; echo SESSION-READY; exec sleep 120";
    let launch = |dry: bool| {
        let mut c = launcher(&home, dry, &[]);
        c.arg(&project).args(["--", "bash", "-c", session]);
        c
    };
    let dry = run_bounded(launch(true), Duration::from_secs(30));
    dry.assert_code(0);
    clean.volume(&dry_run_volume(&dry));
    assert!(
        dry.stdout
            .replace("\\,", ",")
            .contains("--tmpfs /run:rw,nosuid,nodev,noexec,mode=0755"),
        "{dry}"
    );
    let name = dry
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "--name")
        .nth(1)
        .unwrap_or_else(|| panic!("no --name in the dry run\n{dry}"))
        .to_string();
    clean.container(&name);
    let mut child = launch(false)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let check = |user: &[&str]| {
        let mut a = vec!["exec"];
        a.extend_from_slice(user);
        a.extend_from_slice(&[&name, "sandbox-init", "check"]);
        let out = docker(&a);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let want = "blocked tcp 10.213.0.30:80; to allow it: SANDBOX_ALLOW=10.213.0.30:80";
    let deadline = Instant::now() + Duration::from_secs(60);
    let root = loop {
        let r = check(&[]);
        if r.1.contains(want) && r.1.contains("pkg.check.test") {
            break r;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "check never showed the blocked destination: {r:?}\nlauncher: {}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(root.0, Some(0), "{root:?}");
    assert!(root.1.contains("reported by PID 1"), "{root:?}");
    assert!(!root.1.contains("run check as root"), "{root:?}");
    let user = check(&["-u", "1000"]);
    assert_eq!(user.0, Some(0), "{user:?}");
    assert!(!user.1.contains("missing capability"), "{user:?}");
    assert!(user.1.contains("not root"), "{user:?}");
    assert!(user.1.contains(want), "{user:?}");
    assert!(
        user.1
            .contains("blocked dns name pkg.check.test (not in the allowlist); to allow it"),
        "{user:?}"
    );
    let _ = docker(&["rm", "-f", &name]);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    // The start said nothing about a status it could not write.
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("will not show what was blocked"),
        "{stderr}"
    );
    assert!(!stderr.contains("will not be told"), "{stderr}");
}

/// A tmux session of its own (own server socket, so it has this process's environment).
struct Tmux {
    socket: String,
}

impl Tmux {
    /// The server starts with this command, so the session gets `env` (values never on
    /// a command line).
    fn start(tag: &str, command: &str, env: &[(&str, &str)]) -> Tmux {
        let t = Tmux {
            socket: format!("sbx-test-{tag}-{}", std::process::id()),
        };
        let out = Command::new("tmux")
            .args([
                "-L",
                &t.socket,
                "new-session",
                "-d",
                "-s",
                "s",
                "-x",
                "200",
                "-y",
                "50",
            ])
            .arg(command)
            .envs(env.iter().copied())
            .output()
            .expect("run tmux (apt-get install tmux)");
        assert!(out.status.success(), "tmux: {}", text(&out.stderr));
        t
    }
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux (apt-get install tmux)")
    }
    /// The screen as drawn, wrapped lines joined, with its scrollback.
    fn screen(&self) -> String {
        text(
            &self
                .cmd(&["capture-pane", "-p", "-J", "-S", "-1000", "-t", "s"])
                .stdout,
        )
    }
    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "s"];
        a.extend_from_slice(keys);
        self.cmd(&a);
    }
    /// Waits until the screen holds `needle`; every screen seen on the way goes to `seen`.
    fn wait_for(&self, needle: &str, limit: Duration, seen: &mut Vec<String>) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            seen.push(s.clone());
            let flat = |x: &str| x.split_whitespace().collect::<String>();
            if flat(&s).contains(&flat(needle)) {
                return s;
            }
            assert!(
                t.elapsed() < limit,
                "{needle:?} never appeared on the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Never panics (a drop during a failed case's unwinding would abort the tier).
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The interactive CLI under `docker run -it` in tmux, the agent's Bash call blocked during
/// the session: while the TUI runs no `sandbox-init:` line is on its screen; after /exit
/// the summary is, with the exact entry to allow it.
fn case_claude_tui_screen_stays_clean(clean: &Cleanup) {
    let vol = "sandbox-init-test-home-tui-screen";
    let name = "sandbox-init-test-tui-screen";
    let _ = docker(&["rm", "-f", name]);
    let _ = docker(&["volume", "rm", "-f", vol]);
    clean.volume(vol);
    clean.container(name);
    let line = format!(
        "docker run --rm -it --name {name} --network {NET} --dns {DNS_IP} --cap-add NET_ADMIN \
         --read-only --tmpfs /tmp --tmpfs /run -v {vol}:/home/claude -e ANTHROPIC_API_KEY \
         -e ANTHROPIC_BASE_URL={MOCK_URL} -e SANDBOX_ALLOW=api.mock.test:8080 {CLAUDE_IMG}; \
         echo SESSION-OVER; sleep 600"
    );
    let tmux = Tmux::start("tui", &line, &[("ANTHROPIC_API_KEY", API_KEY)]);
    let mut during = vec![];
    tmux.wait_for(
        "bypass permissions on",
        Duration::from_secs(60),
        &mut during,
    );
    // PID 1's start lines come before the TUI takes the terminal; no report line may follow.
    tmux.keys(&["-l", "please RUN-TOOL for CASE-TUI"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["Enter"]);
    tmux.wait_for("MOCK-TOOL-DONE", Duration::from_secs(60), &mut during);
    // A moment more for anything late to land on the screen.
    std::thread::sleep(Duration::from_secs(2));
    during.push(tmux.screen());
    for s in &during {
        assert!(
            !s.contains("sandbox-init: blocked")
                && !s.contains("sandbox-init: the sandbox blocked"),
            "a line of PID 1 on the TUI:\n{s}"
        );
    }
    tmux.keys(&["-l", "/exit"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["Enter"]);
    let mut after = vec![];
    let end = tmux.wait_for("SESSION-OVER", Duration::from_secs(30), &mut after);
    for want in [
        "sandbox-init: the sandbox blocked",
        "blocked tcp 10.213.0.30:80; to allow it: SANDBOX_ALLOW=10.213.0.30:80 (or --allow)",
        "blocked dns name pkg.blocked.test (not in the allowlist); to allow it: \
         SANDBOX_ALLOW=pkg.blocked.test (or --allow)",
    ] {
        let flat = |x: &str| x.split_whitespace().collect::<String>();
        assert!(
            flat(&end).contains(&flat(want)),
            "{want:?} not in the summary:\n{end}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// the names the CLI asks for

/// Names the real CLI asks for that the `anthropic` preset deliberately leaves out, each
/// with the preset or setting that covers it. The `telemetry` preset's names are left out
/// as well (opt-in by design); they are taken from that preset, not repeated here.
const NOT_IN_ANTHROPIC_PRESET: &[(&str, &str)] = &[
    // The official plugin marketplace, looked up at every interactive start: the `github`
    // preset, or CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL=1 to skip it.
    ("github.com", "the github preset"),
    // The changelog (anthropics/claude-code's CHANGELOG.md), fetched only with the
    // non-essential traffic the image switches off: the host serves any GitHub user's
    // files, too wide for the default; the `github` preset has it.
    ("raw.githubusercontent.com", "the github preset"),
];

/// What PID 1's audit log (SANDBOX_AUDIT_LOG) recorded: the denied names and the blocked
/// addresses, each once. Fails when the log says it held destinations back (they would be
/// missing from the lists).
fn audit_destinations(log: &Path) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let body = std::fs::read_to_string(log)
        .unwrap_or_else(|e| panic!("PID 1 wrote no audit log {}: {e}", log.display()));
    let (mut names, mut addrs) = (vec![], vec![]);
    for line in body.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("audit log line {line:?}: {e}"));
        match v["event"].as_str() {
            Some("denied_name") => names.push(v["name"].as_str().unwrap().to_string()),
            Some("blocked") => addrs.push(v["addr"].as_str().unwrap().parse().unwrap()),
            Some("summary") => assert!(
                v["new_not_listed"].as_u64().unwrap_or(0) == 0 && v["of"] != "others",
                "the audit log held destinations back, so the list is incomplete: {line}"
            ),
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    addrs.sort();
    addrs.dedup();
    (names, addrs)
}

/// One first start of the real CLI (a fresh home volume) with nothing allowed but the mock:
/// every other name it asks for is denied, so PID 1's audit log lists them all.
struct FirstStart {
    tag: &'static str,
    credential: (&'static str, &'static str),
    /// The image's command under `docker run -it` in tmux, else `claude -p`.
    interactive: bool,
    /// ANTHROPIC_BASE_URL is the mock (a turn is answered); else the CLI talks to
    /// api.anthropic.com as a user's would, and gets no answer.
    mock: bool,
    /// The image's quiet defaults (DISABLE_AUTOUPDATER, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC)
    /// cleared, as a user may: the updater and the non-essential calls run.
    chatty: bool,
}

impl FirstStart {
    fn destinations(&self, clean: &Cleanup) -> (Vec<String>, Vec<std::net::IpAddr>) {
        let tag = self.tag;
        let dir = temp_dir(&format!("first-start-{tag}"));
        clean.dir(&dir);
        let vol = format!("sandbox-init-test-home-first-{tag}");
        let name = format!("sandbox-init-test-first-{tag}");
        let _ = docker(&["rm", "-f", &name]);
        let _ = docker(&["volume", "rm", "-f", &vol]);
        clean.volume(&vol);
        clean.container(&name);
        let (cred, secret) = self.credential;
        let prompt = format!("hello CASE-FIRST-{tag}");
        let api = if self.mock {
            format!("-e ANTHROPIC_BASE_URL={MOCK_URL}")
        } else {
            // Offline, the API's retries would only repeat the same name.
            "-e CLAUDE_CODE_MAX_RETRIES=0".to_string()
        };
        let defaults = if self.chatty {
            "-e DISABLE_AUTOUPDATER= -e CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="
        } else {
            ""
        };
        let cli = if self.interactive {
            String::new()
        } else {
            format!("claude -p '{prompt}' --dangerously-skip-permissions")
        };
        // The image's preset is cleared: only the mock is allowed, by name and port.
        let line = format!(
            "docker run --rm {tty} --name {name} --network {NET} --dns {DNS_IP} \
             --cap-add NET_ADMIN --read-only --tmpfs /tmp --tmpfs /run -v {vol}:/home/claude \
             -v {dir}:/audit -e {cred} -e SANDBOX_PRESETS= -e SANDBOX_ALLOW=api.mock.test:8080 \
             -e SANDBOX_AUDIT_LOG=/audit/audit.jsonl {api} {defaults} {CLAUDE_IMG} {cli}",
            tty = if self.interactive { "-it" } else { "" },
            dir = dir.display(),
        );
        if self.interactive {
            let tmux = Tmux::start(
                &format!("first-{tag}"),
                &format!("{line}; echo SESSION-OVER; sleep 600"),
                &[(cred, secret)],
            );
            let mut seen = vec![];
            tmux.wait_for("bypass permissions on", Duration::from_secs(60), &mut seen);
            if self.mock {
                tmux.keys(&["-l", &prompt]);
                std::thread::sleep(Duration::from_millis(300));
                tmux.keys(&["Enter"]);
                tmux.wait_for("MOCK-ANSWER-42", Duration::from_secs(60), &mut seen);
            }
            // The start's background lookups (settings, plugins, marketplace, updater)
            // run while the UI is up: a capture window, not a timing assertion.
            std::thread::sleep(Duration::from_secs(10));
            tmux.keys(&["-l", "/exit"]);
            std::thread::sleep(Duration::from_millis(300));
            tmux.keys(&["Enter"]);
            tmux.wait_for("SESSION-OVER", Duration::from_secs(30), &mut seen);
        } else {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", &line]).env(cred, secret);
            let r = run_bounded(cmd, Duration::from_secs(120));
            if self.mock {
                r.assert_code(0);
                assert!(r.stdout.contains("MOCK-ANSWER-42"), "{r}");
            } else {
                // It ends by itself, with the CLI's own error, not PID 1's.
                assert!(r.code.is_some_and(|c| c != 0 && c < 64), "{r}");
            }
        }
        audit_destinations(&dir.join("audit.jsonl"))
    }
}

/// Every DNS name (and address without a name) the real CLI asks for at its first start:
/// `claude -p` and the interactive UI, with an API key and with an OAuth token, each once
/// against the mock and once as a user's would (ANTHROPIC_BASE_URL unset, the API denied).
/// Each name must be covered by the `anthropic` preset, the `telemetry` preset, or the
/// deliberate list above. A release that starts asking for a new host fails here, naming it.
fn case_claude_first_start_names(clean: &Cleanup) {
    use sandbox_init::policy::allowlist::{Entry, Target};
    use sandbox_init::policy::{names::Policy, presets};
    let version = docker_ok(&[
        "image",
        "inspect",
        CLAUDE_IMG,
        "--format",
        "{{index .Config.Labels \"dev.sandbox-init.claude-code.version\"}}",
    ]);
    let version = version.trim();
    let entries = |preset: &str| -> Vec<Entry> {
        presets::lookup(preset)
            .unwrap()
            .entries
            .iter()
            .map(|e| e.parse().unwrap())
            .collect()
    };
    let anthropic = entries("anthropic");
    let allowed = Policy::new(&anthropic);
    let telemetry = Policy::new(&entries("telemetry"));
    let (key, oauth) = (
        ("ANTHROPIC_API_KEY", API_KEY),
        ("CLAUDE_CODE_OAUTH_TOKEN", OAUTH_TOKEN),
    );
    let run = |tag, credential, interactive, mock, chatty| FirstStart {
        tag,
        credential,
        interactive,
        mock,
        chatty,
    };
    // Each credential once in each mode; the mock (a gateway) once, for the interactive
    // start (`-p` against it asks for nothing but the mock's name); the OAuth runs with the
    // image's quiet defaults cleared, which asks for a superset of what the quiet runs
    // ask for. Four starts keep the suite's time in check.
    let runs = [
        run("p-key", key, false, false, false),
        run("p-oauth-chatty", oauth, false, false, true),
        run("tui-key-mock", key, true, true, false),
        run("tui-oauth-chatty", oauth, true, false, true),
    ];
    // Each name and address with the runs that asked for it.
    let mut names = std::collections::BTreeMap::<String, Vec<&str>>::new();
    let mut addrs = std::collections::BTreeMap::<std::net::IpAddr, Vec<&str>>::new();
    for start in &runs {
        let (n, a) = start.destinations(clean);
        eprintln!(
            "docker tier: Claude Code {version}, first start {}: names {n:?}, addresses \
             without a name {a:?} (and api.mock.test, the mock, allowed)",
            start.tag
        );
        for n in n {
            names.entry(n).or_default().push(start.tag);
        }
        for a in a {
            addrs.entry(a).or_default().push(start.tag);
        }
    }
    let mut uncovered = vec![];
    let mut all_names = vec![];
    for (n, runs) in &names {
        let why = if allowed.allows(n) {
            "anthropic preset".to_string()
        } else if telemetry.allows(n) {
            "telemetry preset (opt-in)".to_string()
        } else if let Some((_, w)) = NOT_IN_ANTHROPIC_PRESET.iter().find(|(x, _)| x == n) {
            format!("left out: {w}")
        } else {
            uncovered.push(format!(
                "{n} (runs {runs:?}): add it to the anthropic preset in src/policy/presets.rs \
                 when the CLI needs it, or to NOT_IN_ANTHROPIC_PRESET in tests/docker.rs \
                 with the reason"
            ));
            "NOT COVERED".to_string()
        };
        all_names.push(format!("{n} ({why}; runs {runs:?})"));
    }
    for (a, runs) in &addrs {
        let covered = anthropic
            .iter()
            .any(|e| matches!(&e.target, Target::Net(net) if net.contains(a)));
        if !covered {
            uncovered.push(format!(
                "address {a} without a DNS name (runs {runs:?}): add its published range \
                 to the anthropic preset in src/policy/presets.rs"
            ));
        }
    }
    eprintln!("docker tier: every name Claude Code {version} asked for at first start:");
    for n in &all_names {
        eprintln!("  {n}");
    }
    // A capture that saw nothing would make the checks above vacuous: the interactive
    // start looks up at least its plugin downloads.
    assert!(
        !all_names.is_empty(),
        "the audit log recorded no name at all: the capture is broken"
    );
    assert!(
        uncovered.is_empty(),
        "Claude Code {version} asked at first start for what the anthropic preset does not \
         cover:\n  {}",
        uncovered.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// `docker exec` sessions and the lockdown

const SUDO_BASE: &str = "sandbox-init-test/debian-sudo:bookworm";
const EXEC_IMG: &str = "sandbox-init-test/exec-lockdown";
const CAP_NET_ADMIN: u64 = 1 << 12;

/// Debian with sudo (the privileged tier's cached debootstrap rootfs, imported once), the
/// user claude in group sudo with a NOPASSWD rule, a set-uid root copy of the probe, and a
/// copy carrying CAP_NET_ADMIN as file capability. The latter comes in through `ADD` of a
/// tar made with --xattrs: the builder's COPY drops the attribute, ADD's unpacking keeps it.
fn build_exec_image(clean: &Cleanup) {
    if !docker(&["image", "inspect", SUDO_BASE]).status.success() {
        let dir = script("scripts/debian-rootfs.sh", &[]);
        let st = Command::new("sh")
            .args([
                "-c",
                "tar -C \"$1\" -c . | docker import -c \"ENV PATH=$2\" - \"$3\" >/dev/null",
                "sh",
                dir.trim(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                SUDO_BASE,
            ])
            .status()
            .expect("sh");
        assert!(st.success(), "importing {} as {SUDO_BASE}", dir.trim());
    }
    let ctx = temp_dir("exec-ctx");
    clean.dir(&ctx);
    std::fs::copy(INIT, ctx.join("sandbox-init")).unwrap();
    std::fs::copy(PROBE, ctx.join("sandbox-probe")).unwrap();
    let caps = ctx.join("caps/usr/local/bin");
    std::fs::create_dir_all(&caps).unwrap();
    std::fs::copy(PROBE, caps.join("capprobe")).unwrap();
    common::set_file_caps(&caps.join("capprobe"), CAP_NET_ADMIN);
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=security.capability", "-C"])
        .arg(ctx.join("caps"))
        .arg("-cf")
        .arg(ctx.join("caps.tar"))
        .arg("usr")
        .status()
        .expect("tar");
    assert!(st.success(), "tar --xattrs");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {SUDO_BASE}\n\
             COPY sandbox-init /usr/local/sbin/sandbox-init\n\
             COPY sandbox-probe /usr/local/bin/sandbox-probe\n\
             COPY sandbox-probe /usr/local/bin/suid-probe\n\
             ADD caps.tar /\n\
             RUN useradd -m -u 1000 -G sudo -s /bin/bash claude \\\n\
             && echo 'claude ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/claude \\\n\
             && chmod 0440 /etc/sudoers.d/claude && chmod 4755 /usr/local/bin/suid-probe \\\n\
             && mkdir /workspace && chown claude:claude /workspace\n\
             WORKDIR /workspace\n\
             ENTRYPOINT [\"/usr/local/sbin/sandbox-init\"]\n"
        ),
    )
    .unwrap();
    docker_ok(&["build", "-q", "-t", EXEC_IMG, ctx.to_str().unwrap()]);
}

/// What `docker exec -u claude` sessions get from sudo, the set-uid root probe and the
/// file-capability probe: (sudo made them root, the set-uid probe's euid, the capabilities
/// the capability probe ran with), and the sessions' NoNewPrivs.
fn exec_gains(id: &str) -> ((bool, u64, u64), String) {
    let exec = |argv: &[&str]| {
        let mut a = vec!["exec", "-u", "claude", id];
        a.extend_from_slice(argv);
        docker(&a)
    };
    let sudo = exec(&["/usr/bin/sudo", "-n", "/usr/bin/id", "-u"]);
    let sudo_root = sudo.status.success() && text(&sudo.stdout).trim() == "0";
    let suid = exec(&["/usr/local/bin/suid-probe", "ids"]);
    let suid: Value = serde_json::from_slice(&suid.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&suid.stderr)));
    let caps = exec(&["/usr/local/bin/capprobe", "report"]);
    let (file_caps, nnp) = match serde_json::from_slice::<Value>(&caps.stdout) {
        Ok(r) => (
            u64::from_str_radix(r["status"]["CapEff"].as_str().unwrap(), 16).unwrap(),
            r["status"]["NoNewPrivs"].as_str().unwrap().to_string(),
        ),
        // The kernel may refuse to exec a file whose capabilities it will not grant.
        Err(_) => {
            let err = text(&caps.stderr);
            assert!(err.contains("not permitted"), "{err}");
            let st = exec(&["/usr/bin/grep", "NoNewPrivs", "/proc/self/status"]);
            let line = text(&st.stdout);
            (0, line.split_whitespace().last().unwrap_or("").to_string())
        }
    };
    ((sudo_root, suid["euid"].as_u64().unwrap(), file_caps), nnp)
}

fn start_detached(clean: &Cleanup, args: &[&str]) -> String {
    let mut a = vec!["run", "-d", "--network", "none", "--cap-add", "NET_ADMIN"];
    a.extend_from_slice(args);
    let id = docker_ok(&a).trim().to_string();
    clean.container(&id);
    wait_running(&id, "sandbox-probe sleep");
    id
}

/// Waits until the container's processes include `command` (sandbox-init started it).
fn wait_running(id: &str, command: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text(&docker(&["top", id]).stdout).contains(command) {
        assert!(
            Instant::now() < deadline,
            "the container never ran {command}:\n{}",
            text(&docker(&["logs", id]).stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `docker exec` session as the user cannot gain privileges through sudo, a set-uid root
/// program or a file with capabilities, with container-wide no_new_privs (set-uid bits and
/// sudo are inert and stay, the file capability goes) and without it (all of them go).
/// The controls: the same image without sandbox-init gives the session root and
/// CAP_NET_ADMIN, and with no_new_privs still CAP_NET_ADMIN (runc starts the session
/// holding the container's capabilities, and no_new_privs lets the file keep them).
fn case_exec_sessions_gain_nothing(clean: &Cleanup) {
    build_exec_image(clean);
    let sleep = ["/usr/local/bin/sandbox-probe", "sleep", "120"];
    for (no_new_privs, want) in [
        (false, (true, 0, CAP_NET_ADMIN)),
        (true, (false, 1000, CAP_NET_ADMIN)),
    ] {
        let mut control = vec!["--entrypoint", sleep[0]];
        if no_new_privs {
            control.extend(["--security-opt", "no-new-privileges"]);
        }
        control.push(EXEC_IMG);
        control.extend_from_slice(&sleep[1..]);
        let id = start_detached(clean, &control);
        let (got, _) = exec_gains(&id);
        assert_eq!(got, want, "control, no_new_privs {no_new_privs}");
    }

    for no_new_privs in [false, true] {
        let mut args = vec!["-e", "SANDBOX_PRESETS=", "-e", "SANDBOX_LOG=debug"];
        if no_new_privs {
            args.extend(["--security-opt", "no-new-privileges"]);
        }
        args.extend([EXEC_IMG, "--"]);
        args.extend(sleep);
        let id = start_detached(clean, &args);
        // docker's log copy may trail the container by a moment
        let deadline = Instant::now() + Duration::from_secs(10);
        let log = loop {
            let log = text(&docker(&["logs", &id]).stderr);
            if log.contains("sandbox built in") || Instant::now() > deadline {
                break log;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (got, nnp) = exec_gains(&id);
        assert_eq!(got, (false, 1000, 0), "no_new_privs {no_new_privs}\n{log}");
        assert_eq!(nnp, if no_new_privs { "1" } else { "0" }, "{log}");
        assert!(
            log.contains("removed file capabilities from 1 files"),
            "{log}"
        );
        // with no_new_privs the set-uid bit stays (inert) and gives nothing all the same
        let mode = docker_ok(&["exec", &id, "stat", "-c", "%a", "/usr/local/bin/suid-probe"]);
        let skipped = log.contains("the set-user-ID strip and the sudo reset are skipped");
        let want = if no_new_privs { "4755" } else { "755" };
        assert!(
            skipped == no_new_privs && mode.trim() == want,
            "{mode}\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn docker_end_to_end() {
    require_docker();
    let t0 = Instant::now();
    let clean = Cleanup::default();
    build_images(&clean);
    start_fixtures(&clean);
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let cases: Vec<Case> = vec![
        ("probe: firewalled", Box::new(case_probe_firewalled)),
        (
            "probe: DNS filter, Docker's DNS upstream",
            Box::new(case_probe_dns_filter),
        ),
        (
            "probe: the user cannot answer for PID 1's upstream DNS",
            Box::new(|| case_probe_dns_hijack(&clean)),
        ),
        (
            "probe: control without the firewall",
            Box::new(case_probe_control_without_firewall),
        ),
        (
            "no NET_ADMIN fails closed",
            Box::new(case_no_net_admin_fails_closed),
        ),
        ("docker stop", Box::new(|| case_docker_stop_is_fast(&clean))),
        ("terminal ownership", Box::new(case_terminal_ownership)),
        (
            "claude: CLAUDE_CODE_OAUTH_TOKEN",
            Box::new(|| case_claude_oauth_token(&clean)),
        ),
        (
            "claude: keychain blob",
            Box::new(|| case_claude_keychain_blob(&clean)),
        ),
        (
            "claude: ANTHROPIC_API_KEY via run-claude.sh",
            Box::new(|| case_claude_api_key_via_launcher(&clean)),
        ),
        (
            "claude: through the credential broker over TLS, every input, tool and search",
            Box::new(|| case_claude_through_the_broker(&clean)),
        ),
        (
            "claude: a login made with /login goes to the broker at the next start, and stays",
            Box::new(|| case_claude_login_handed_to_the_broker(&clean)),
        ),
        (
            "claude: the broker refreshes a keychain login mid-session, the next start uses it",
            Box::new(|| case_claude_broker_refreshes_mid_session(&clean)),
        ),
        (
            "claude: tool_use inside the sandbox",
            Box::new(|| case_claude_tool_use_is_sandboxed(&clean)),
        ),
        ("devcontainer", Box::new(|| case_devcontainer(&clean))),
        (
            "live allow and exec in a running session",
            Box::new(|| case_live_allow_and_exec(&clean)),
        ),
        (
            "claude: blocked, allowed live, the retry succeeds in the same session",
            Box::new(|| case_claude_retry_after_live_allow(&clean)),
        ),
        (
            "docker exec sessions gain nothing",
            Box::new(|| case_exec_sessions_gain_nothing(&clean)),
        ),
        (
            "launcher: --backup-volume",
            Box::new(|| case_launcher_backup(&clean)),
        ),
        (
            "claude: no installation warning",
            Box::new(|| case_claude_no_installation_warning(&clean)),
        ),
        (
            "claude image: no set-user-ID file, no file capability",
            Box::new(case_claude_image_has_no_privileged_files),
        ),
        (
            "launcher: check as root and as the user",
            Box::new(|| case_launcher_check(&clean)),
        ),
        (
            "claude: the TUI's screen stays clean, the summary comes after",
            Box::new(|| case_claude_tui_screen_stays_clean(&clean)),
        ),
        (
            "claude: the names the CLI asks for at first start",
            Box::new(|| case_claude_first_start_names(&clean)),
        ),
    ];
    // SANDBOX_DOCKER_CASES=word,word runs only the cases whose names hold one of the words
    // (while working on one of them; the suite runs them all).
    let only = std::env::var("SANDBOX_DOCKER_CASES").unwrap_or_default();
    let only: Vec<&str> = only.split(',').filter(|w| !w.is_empty()).collect();
    let mut failed = vec![];
    for (name, case) in &cases {
        if !only.is_empty() && !only.iter().any(|w| name.contains(w)) {
            continue;
        }
        let t = Instant::now();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(case));
        let verdict = if res.is_ok() { "ok" } else { "FAILED" };
        eprintln!("docker tier: {name} ... {verdict} ({:?})", t.elapsed());
        if res.is_err() {
            failed.push(*name);
        }
    }
    eprintln!("docker tier: {} cases in {:?}", cases.len(), t0.elapsed());
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

/// Every set-user-ID/set-group-ID file and every file with a capability attribute in an
/// image, read from `docker export` (the tar carries the mode bits and, as a PAX record,
/// security.capability), so the scan sees what the image really ships.
fn privileged_files(image: &str) -> Vec<String> {
    let id = docker_ok(&["create", image, "true"]);
    let id = id.trim();
    let scan = "import sys, tarfile\n\
                for m in tarfile.open(fileobj=sys.stdin.buffer, mode='r|'):\n\
                \x20   caps = 'SCHILY.xattr.security.capability' in m.pax_headers\n\
                \x20   if m.isfile() and (m.mode & 0o6000 or caps):\n\
                \x20       print(m.name, oct(m.mode), 'caps' if caps else '')\n";
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("docker export {id} | python3 -c \"$0\""),
            scan,
        ])
        .output()
        .unwrap();
    docker(&["rm", "-f", id]);
    assert!(out.status.success(), "scan failed: {}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// The Claude image ships no set-user-ID/set-group-ID file and no file capability; the
/// Debian base it is built from does (the scan's control: it finds them there).
fn case_claude_image_has_no_privileged_files() {
    let base = privileged_files(BASE);
    assert!(
        base.iter().any(|l| l.starts_with("usr/bin/su ")),
        "the control scan of the base found no su: {base:?}"
    );
    let claude = privileged_files(CLAUDE_IMG);
    assert!(claude.is_empty(), "the Claude image ships {claude:?}");
}

/// The launcher's dry run: secrets by name only, the capability set, and the flags.
#[test]
fn launcher_dry_run_passes_secrets_by_name_only() {
    let project = temp_dir("dry-project");
    let home = temp_dir("dry-home");
    let out = Command::new(Path::new(REPO).join("scripts/run-claude.sh"))
        .env("HOME", &home)
        .env("CLAUDE_CODE_OAUTH_TOKEN", OAUTH_TOKEN)
        .env("ANTHROPIC_API_KEY", API_KEY)
        .args([
            "--dry-run",
            "--allow",
            "registry.npmjs.org",
            "--allow",
            "10.0.0.0/8",
            "--preset",
            "anthropic",
            "--preset",
            "npm",
            "--fresh-creds",
            "--uid",
            "501:20",
            "--shell",
        ])
        .arg(&project)
        .stdin(Stdio::null())
        .output()
        .expect("run the launcher");
    let _ = std::fs::remove_dir_all(&project);
    let _ = std::fs::remove_dir_all(&home);
    let o = text(&out.stdout);
    assert!(out.status.success(), "{o}\n{}", text(&out.stderr));
    let words: Vec<&str> = o.split_whitespace().collect();
    let pair = |a: &str, b: &str| words.windows(2).any(|w| w[0] == a && w[1] == b);
    assert!(!o.contains(OAUTH_TOKEN) && !o.contains(API_KEY), "{o}");
    assert!(pair("-e", "CLAUDE_CODE_OAUTH_TOKEN"), "{o}");
    assert!(pair("-e", "ANTHROPIC_API_KEY"), "{o}");
    assert!(pair("--cap-drop", "ALL"), "{o}");
    let caps: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "--cap-add")
        .map(|w| w[1])
        .collect();
    assert_eq!(
        caps,
        [
            "NET_ADMIN",
            "SETUID",
            "SETGID",
            "SETPCAP",
            "KILL",
            "CHOWN",
            "DAC_READ_SEARCH"
        ]
    );
    assert!(pair("--security-opt", "no-new-privileges"), "{o}");
    assert!(words.contains(&"--read-only"), "{o}");
    assert!(
        pair("--pids-limit", "1024") && pair("--memory", "8g"),
        "{o}"
    );
    assert!(
        pair("-e", "SANDBOX_UID=501") && pair("-e", "SANDBOX_GID=20"),
        "{o}"
    );
    assert!(pair("-e", "SANDBOX_FORCE_CREDENTIALS=1"), "{o}");
    assert!(
        o.contains("SANDBOX_ALLOW=registry.npmjs.org\\,10.0.0.0/8"),
        "{o}"
    );
    assert!(o.contains("SANDBOX_PRESETS=anthropic\\,npm"), "{o}");
    let project_name = project.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        words
            .iter()
            .any(|w| w.starts_with(&format!("claude-config-{project_name}-"))
                && w.ends_with(":/home/claude")),
        "{o}"
    );
    assert!(words.iter().any(|w| w.ends_with(":/workspace")), "{o}");
    assert_eq!(words.last(), Some(&"bash"), "--shell runs bash: {o}");
}

// ---------------------------------------------------------------------------------------
// The launcher on its own, against a stand-in for the docker client that records every
// call: what it refuses runs nothing, and what it runs is named after the project.

/// Answers like an engine that has the image, the volumes in $FAKE_VOLUMES and the
/// containers in $FAKE_NAMES; appends each call to $FAKE_LOG.
const FAKE_DOCKER: &str = r#"#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$1 $2" in
    "volume inspect") for v in $FAKE_VOLUMES; do [ "$v" = "$3" ] && exit 0; done; exit 1 ;;
    "ps -a") for n in $FAKE_NAMES; do echo "$n"; done ;;
    "ps --filter") for n in $FAKE_NAMES; do echo "$n"; done ;;
    "image inspect") echo 9.9.9 ;;
    "info "*) echo '{"runc":{}}' ;;
esac
exit 0
"#;

struct FakeEngine {
    dir: PathBuf,
    project: PathBuf,
}

impl FakeEngine {
    fn new(tag: &str) -> FakeEngine {
        let dir = temp_dir(&format!("fake-{tag}"));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let docker = dir.join("bin/docker");
        std::fs::write(&docker, FAKE_DOCKER).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let project = dir.join(format!("proj-{tag}"));
        std::fs::create_dir_all(&project).unwrap();
        FakeEngine { dir, project }
    }

    /// The launcher with `args` (and the project directory last, before any `--`), the
    /// debug sandbox-init of this build as its parser. Returns what it printed and the
    /// docker calls it made.
    fn launch(&self, args: &[&str], volumes: &[&str], names: &[&str]) -> (Ran, Vec<String>) {
        self.launch_with(args, volumes, names, None)
    }

    fn launch_with(
        &self,
        args: &[&str],
        volumes: &[&str],
        names: &[&str],
        terminal_input: Option<&str>,
    ) -> (Ran, Vec<String>) {
        let log = self.dir.join("calls.log");
        let _ = std::fs::remove_file(&log);
        let launcher = Path::new(REPO).join("scripts/run-claude.sh");
        let mut cmd = match terminal_input {
            None => {
                let mut c = Command::new(&launcher);
                c.args(args);
                c
            }
            Some(_) => {
                // script(1) gives the launcher a terminal; its input comes from our stdin.
                let line: Vec<String> = std::iter::once(launcher.display().to_string())
                    .chain(args.iter().map(|a| format!("'{a}'")))
                    .collect();
                let mut c = Command::new("script");
                c.args(["-qec", &line.join(" "), "/dev/null"]);
                c
            }
        };
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path)
            .env("HOME", self.dir.join("home"))
            .env("FAKE_LOG", &log)
            .env("FAKE_VOLUMES", volumes.join(" "))
            .env("FAKE_NAMES", names.join(" "))
            .env("CLAUDE_SANDBOX_BIN", INIT)
            .env_remove("CLAUDE_SANDBOX_IMAGE")
            .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
            .env_remove("ANTHROPIC_API_KEY")
            .current_dir(&self.project);
        let ran = match terminal_input {
            None => run_bounded(cmd, Duration::from_secs(30)),
            Some(input) => {
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start script");
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                let t = Instant::now();
                let out = child.wait_with_output().unwrap();
                Ran {
                    code: out.status.code(),
                    stdout: text(&out.stdout),
                    stderr: text(&out.stderr),
                    elapsed: t.elapsed(),
                }
            }
        };
        let calls = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        (ran, calls)
    }

    /// The names the launcher derives from the project path: the SHA-256 one and the
    /// CRC32 one of older launchers.
    fn names(&self) -> (String, String, String) {
        let path = self.project.display().to_string();
        let piped = |tool: &str| {
            let mut c = Command::new(tool)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            c.stdin.take().unwrap().write_all(path.as_bytes()).unwrap();
            let out = text(&c.wait_with_output().unwrap().stdout);
            out.split_whitespace().next().unwrap().to_string()
        };
        let sha = piped("sha256sum");
        let dir = self
            .project
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        (
            format!("claude-config-{dir}-{}", &sha[..16]),
            format!("claude-config-{dir}-{}", piped("cksum")),
            format!("claude-{dir}-{}", &sha[..8]),
        )
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every value the launcher or sandbox-init's parser rejects is a usage error (64) before
/// any docker call; the control run shows the stand-in records the calls of a valid start.
#[test]
fn launcher_refuses_bad_values_before_anything_runs() {
    let engine = FakeEngine::new("refuse");
    let (ok, calls) = engine.launch(&["--allow", "registry.npmjs.org", "--", "true"], &[], &[]);
    ok.assert_code(0);
    assert!(
        calls.iter().any(|c| c.starts_with("run --rm")),
        "the control start ran the container: {calls:?}\n{ok}"
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["--allow", "https://registry.example.org"],
            "that is a URL; use registry.example.org or registry.example.org:443",
        ),
        (&["--allow", "htps://x"], "that is a URL; use x or x:PORT"),
        (&["--allow", "a.test,0.0.0.0/0"], "one entry"),
        (&["--allow", "a.test 0.0.0.0/0"], "one entry"),
        (&["--allow", "a$(id)"], "invalid allowlist entry"),
        (&["--allow", "10.0.0.1/8"], "host bits"),
        (&["--preset", ""], "--preset needs a value"),
        (&["--preset="], "--preset needs a value"),
        (&["--preset", "nope"], "unknown preset 'nope'"),
        (&["--allow"], "--allow needs a value"),
        (&["--pids", "many"], "--pids takes a number"),
        (&["--bogus"], "unknown option --bogus"),
    ];
    for (args, message) in cases {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--", "true"]);
        let (r, calls) = engine.launch(&a, &[], &[]);
        r.assert_code(64);
        assert!(r.stderr.contains(message), "{args:?}: {r}");
        assert!(
            calls.is_empty(),
            "{args:?}: docker ran before the refusal: {calls:?}"
        );
    }
}

#[test]
fn launcher_help_is_a_usage_text() {
    let engine = FakeEngine::new("help");
    let (r, calls) = engine.launch(&["--help"], &[], &[]);
    r.assert_code(0);
    assert!(r.stdout.starts_with("Usage: run-claude.sh"), "{r}");
    for option in [
        "--allow",
        "--reset-volume",
        "--backup-volume",
        "--yes",
        "--rebuild",
    ] {
        assert!(r.stdout.contains(option), "{option} is documented: {r}");
    }
    assert!(
        !r.stdout.contains("set -euo") && !r.stdout.contains("repo="),
        "{r}"
    );
    assert!(calls.is_empty(), "{calls:?}");
}

/// The container is named after the project (a number added when that name is taken), the
/// home volume after a SHA-256 of its path; a project with only an old CRC32-named volume
/// keeps it.
#[test]
fn launcher_names_the_container_and_the_volume_after_the_project() {
    let engine = FakeEngine::new("names");
    let (volume, old_volume, name) = engine.names();
    let run_line = |calls: &[String]| {
        calls
            .iter()
            .find(|c| c.starts_with("run --rm"))
            .cloned()
            .unwrap_or_else(|| panic!("no docker run: {calls:?}"))
    };

    let (r, calls) = engine.launch(&["--", "true"], &[], &[]);
    r.assert_code(0);
    let run = run_line(&calls);
    assert!(run.contains(&format!("--name {name} ")), "{run}");
    assert!(run.contains(&format!("-v {volume}:/home/claude")), "{run}");
    assert!(r.stderr.contains(&format!("container {name}")), "{r}");

    let (_, calls) = engine.launch(&["--", "true"], &[], &[&name, "other"]);
    assert!(
        run_line(&calls).contains(&format!("--name {name}-2 ")),
        "{calls:?}"
    );

    let (r, calls) = engine.launch(&["--", "true"], &[&old_volume], &[]);
    assert!(
        run_line(&calls).contains(&format!("-v {old_volume}:/home/claude")),
        "{calls:?}"
    );
    assert!(r.stderr.contains("older name"), "{r}");
    // Once the new one exists, it wins.
    let (_, calls) = engine.launch(&["--", "true"], &[&old_volume, &volume], &[]);
    assert!(
        run_line(&calls).contains(&format!("-v {volume}:/home/claude")),
        "{calls:?}"
    );
}

/// --reset-volume deletes only after a yes: from a terminal, or --yes; without a terminal
/// and without --yes it refuses.
#[test]
fn launcher_reset_volume_asks_first() {
    let engine = FakeEngine::new("reset");
    let (volume, _, _) = engine.names();
    let removed = |calls: &[String]| calls.iter().any(|c| c == &format!("volume rm {volume}"));

    let (r, calls) = engine.launch(&["--reset-volume"], &[&volume], &[]);
    r.assert_code(64);
    assert!(r.stderr.contains("--yes"), "{r}");
    assert!(!removed(&calls), "{calls:?}");

    let (r, calls) = engine.launch_with(&["--reset-volume"], &[&volume], &[], Some("n\n"));
    assert_eq!(r.code, Some(1), "{r}");
    assert!(
        r.stdout.contains("delete") && r.stdout.contains("[y/N]"),
        "{r}"
    );
    assert!(!removed(&calls), "{calls:?}");

    let (r, calls) = engine.launch_with(&["--reset-volume"], &[&volume], &[], Some("y\n"));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(removed(&calls), "{calls:?}");

    let (r, calls) = engine.launch(&["--reset-volume", "--yes"], &[&volume], &[]);
    r.assert_code(0);
    assert!(removed(&calls), "{calls:?}");
}

// ---------------------------------------------------------------------------------------
// What the host runs from the project (git hooks and config, .devcontainer, .vscode):
// mounted read-only by the launcher, never through a symbolic link.

fn git_in(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
}

/// The `-v SOURCE:TARGET:ro` mounts of the launcher's docker run, as (source, target).
fn read_only_mounts(calls: &[String]) -> Vec<(String, String)> {
    let run = calls
        .iter()
        .find(|c| c.starts_with("run --rm"))
        .unwrap_or_else(|| panic!("no docker run: {calls:?}"));
    let words: Vec<&str> = run.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "-v" && w[1].ends_with(":ro"))
        .map(|w| {
            let spec = w[1].trim_end_matches(":ro");
            let (source, target) = spec.rsplit_once(':').unwrap();
            (source.to_string(), target.to_string())
        })
        .collect()
}

#[test]
fn launcher_mounts_what_the_host_runs_read_only() {
    let engine = FakeEngine::new("guard");
    let p = &engine.project;
    git_in(p, &["init", "-q", "."]);
    std::fs::remove_dir_all(p.join(".git/hooks")).unwrap();
    std::fs::create_dir_all(p.join(".devcontainer")).unwrap();
    std::fs::create_dir_all(p.join(".vscode")).unwrap();
    // A committed hooks directory (husky and the like) named by core.hooksPath.
    std::fs::create_dir_all(p.join(".husky")).unwrap();
    git_in(p, &["config", "core.hooksPath", ".husky"]);
    let real = p.canonicalize().unwrap().display().to_string();

    let (r, calls) = engine.launch(&["--", "true"], &[], &[]);
    r.assert_code(0);
    assert!(
        p.join(".git/hooks").is_dir(),
        "a missing hooks directory is created empty, so the agent cannot create one"
    );
    let want: Vec<(String, String)> = [
        ".git/hooks",
        ".git/config",
        ".husky",
        ".devcontainer",
        ".vscode",
    ]
    .iter()
    .map(|rel| (format!("{real}/{rel}"), format!("/workspace/{rel}")))
    .collect();
    assert_eq!(read_only_mounts(&calls), want, "{calls:?}");
    assert!(
        r.stderr.contains(
            "read-only for the agent: .git/hooks .git/config .husky .devcontainer .vscode"
        ),
        "{r}"
    );

    let (r, calls) = engine.launch(&["--writable-git-config", "--", "true"], &[], &[]);
    r.assert_code(0);
    let mounts = read_only_mounts(&calls);
    assert!(
        !mounts.iter().any(|(_, t)| t == "/workspace/.git/config"),
        "{mounts:?}"
    );
    assert!(
        mounts.iter().any(|(_, t)| t == "/workspace/.git/hooks"),
        "hooks stay read-only: {mounts:?}"
    );
    assert!(r.stderr.contains("--writable-git-config"), "{r}");

    let (help, _) = engine.launch(&["--help"], &[], &[]);
    assert!(help.stdout.contains("--writable-git-config"), "{help}");
}

/// Links planted in the project (by an earlier session's agent) never make the launcher
/// mount a host path into the container: each one is refused with a warning. The control
/// run shows the same directories, without links, are mounted.
#[test]
fn launcher_mounts_nothing_through_a_symbolic_link() {
    use std::os::unix::fs::symlink;
    let engine = FakeEngine::new("links");
    let p = &engine.project;
    let outside = engine.dir.join("host-secrets");
    std::fs::create_dir_all(outside.join("hooks")).unwrap();
    std::fs::write(outside.join("config"), "[core]\n").unwrap();
    git_in(p, &["init", "-q", "."]);
    std::fs::create_dir_all(p.join(".vscode")).unwrap();
    std::fs::create_dir_all(p.join("inside")).unwrap();
    let (_, control) = engine.launch(&["--", "true"], &[], &[]);
    let control = read_only_mounts(&control);
    assert_eq!(
        control.len(),
        3,
        "control: hooks, config, .vscode: {control:?}"
    );

    std::fs::remove_dir_all(p.join(".git/hooks")).unwrap();
    symlink(outside.join("hooks"), p.join(".git/hooks")).unwrap();
    std::fs::remove_file(p.join(".git/config")).unwrap();
    symlink(outside.join("config"), p.join(".git/config")).unwrap();
    std::fs::remove_dir_all(p.join(".vscode")).unwrap();
    symlink(&outside, p.join(".vscode")).unwrap();
    // Even a link that stays inside the project: the agent could repoint it.
    symlink("inside", p.join(".devcontainer")).unwrap();
    let (r, calls) = engine.launch(&["--", "true"], &[], &[]);
    r.assert_code(0);
    assert_eq!(read_only_mounts(&calls), vec![], "{calls:?}");
    let run = calls.iter().find(|c| c.starts_with("run --rm")).unwrap();
    assert!(!run.contains("host-secrets"), "{run}");
    for rel in [".git/hooks", ".git/config", ".vscode", ".devcontainer"] {
        assert!(
            r.stderr
                .contains(&format!("warning: {rel} is or passes a symbolic link")),
            "{rel}: {r}"
        );
    }

    // `.git` itself a link, and a `.git` file naming a directory outside the project.
    std::fs::rename(p.join(".git"), engine.dir.join("moved.git")).unwrap();
    symlink(engine.dir.join("moved.git"), p.join(".git")).unwrap();
    let (r, calls) = engine.launch(&["--", "true"], &[], &[]);
    assert!(!calls.iter().any(|c| c.contains("moved.git")), "{calls:?}");
    assert!(r.stderr.contains(".git is a symbolic link"), "{r}");
    std::fs::remove_file(p.join(".git")).unwrap();
    std::fs::write(p.join(".git"), format!("gitdir: {}\n", outside.display())).unwrap();
    let (r, calls) = engine.launch(&["--", "true"], &[], &[]);
    let real = p.canonicalize().unwrap().display().to_string();
    assert_eq!(
        read_only_mounts(&calls),
        vec![(format!("{real}/.git"), "/workspace/.git".to_string())],
        "only the .git file itself: {calls:?}"
    );
    assert!(r.stderr.contains("is outside the project"), "{r}");
}

/// A `.git` file whose git directory (and common directory) lie inside the project: the
/// file and both directories' hooks and config are mounted read-only.
#[test]
fn launcher_follows_a_git_file_inside_the_project() {
    let engine = FakeEngine::new("gitfile");
    let p = &engine.project;
    git_in(p, &["init", "-q", "main"]);
    std::fs::create_dir_all(p.join("main/.git/worktrees/wt")).unwrap();
    std::fs::write(p.join("main/.git/worktrees/wt/commondir"), "../..\n").unwrap();
    std::fs::write(p.join("main/.git/worktrees/wt/config"), "").unwrap();
    std::fs::write(p.join(".git"), "gitdir: main/.git/worktrees/wt\n").unwrap();
    let (r, calls) = engine.launch(&["--", "true"], &[], &[]);
    r.assert_code(0);
    let targets: Vec<String> = read_only_mounts(&calls).into_iter().map(|m| m.1).collect();
    assert_eq!(
        targets,
        [
            "/workspace/.git",
            "/workspace/main/.git/worktrees/wt/hooks",
            "/workspace/main/.git/worktrees/wt/config",
            "/workspace/main/.git/hooks",
            "/workspace/main/.git/config",
        ],
        "{r}"
    );
}

/// What the mounts cannot stop is looked at when the session ends: a `.git/commondir` the
/// session created (it would send host-side git to another directory's config and hooks) is
/// moved aside, and a replaced `.git` is named. The stand-in's `run` plays the agent.
#[test]
fn launcher_catches_a_redirected_git_dir_after_the_session() {
    let engine = FakeEngine::new("after");
    let p = &engine.project;
    git_in(p, &["init", "-q", "."]);
    let agent = |action: &str| {
        let script = FAKE_DOCKER.replace(
            "    \"info \"*)",
            &format!("    \"run --rm\") {action} ;;\n    \"info \"*)"),
        );
        assert_ne!(script, FAKE_DOCKER);
        std::fs::write(engine.dir.join("bin/docker"), script).unwrap();
    };
    agent("true");
    let (r, _) = engine.launch(&["--", "true"], &[], &[]);
    r.assert_code(0);
    assert!(!r.stderr.contains("WARNING"), "control: {r}");

    agent("echo ../elsewhere > .git/commondir");
    let (r, _) = engine.launch(&["--", "true"], &[], &[]);
    r.assert_code(0);
    assert!(
        r.stderr
            .contains("WARNING: the session created .git/commondir"),
        "{r}"
    );
    assert!(!p.join(".git/commondir").exists());
    let aside: Vec<_> = std::fs::read_dir(p.join(".git"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("commondir.from-session-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "moved aside, not deleted");

    agent("mv .git .git-old; mkdir .git");
    let (r, _) = engine.launch(&["--", "true"], &[], &[]);
    r.assert_code(0);
    assert!(
        p.join(".git-old").is_dir(),
        "the stand-in renamed .git: {r}"
    );
    assert!(r.stderr.contains("WARNING: the session replaced"), "{r}");
}

// Changing a running sandbox

/// The dev container as the editor starts it (its image and runArgs: the launcher's
/// capability set) on the test network, `extra` docker arguments added, running
/// `sleep infinity`; the container's id once sandbox-init started the command.
fn start_devcontainer(clean: &Cleanup, extra: &[&str]) -> String {
    let json =
        std::fs::read_to_string(Path::new(REPO).join("images/devcontainer/devcontainer.json"))
            .unwrap();
    // runArgs as the editor passes them (the file is JSON with comments).
    let run_args: Vec<String> = json
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("\"--"))
        .map(|l| l.trim_end_matches(',').trim_matches('"').to_string())
        .collect();
    assert!(
        run_args.iter().any(|a| a == "--cap-drop=ALL"),
        "{run_args:?}"
    );
    let allow = format!("SANDBOX_ALLOW={ALLOWED_IP}:80");
    let mut args = vec![
        "run",
        "-d",
        "--network",
        NET,
        "--dns",
        DNS_IP,
        "-e",
        &allow,
        "-e",
        "SANDBOX_PRESETS=",
    ];
    args.extend_from_slice(extra);
    args.extend(run_args.iter().map(String::as_str));
    args.push(DEVCONTAINER_IMG);
    let id = docker_ok(&args).trim().to_string();
    clean.container(&id);
    wait_running(&id, "sleep infinity");
    id
}

/// `docker exec C sandbox-init allow` opens a blocked destination for the running session,
/// the blocked line says exactly that command, `sandbox-init exec` is a sandboxed session,
/// and neither the user nor a second entrypoint/`apply` can change the sandbox. The control:
/// the same destination is blocked before the `allow`.
fn case_live_allow_and_exec(clean: &Cleanup) {
    let id = start_devcontainer(clean, &["-e", "SANDBOX_DNS=filter"]);
    let connect = format!(
        "timeout 5 bash -c 'exec 3<>/dev/tcp/{BLOCKED_IP}/80' 2>/dev/null && echo REACHED \
         || echo BLOCKED"
    );
    let as_user =
        |cmd: &str| text(&docker(&["exec", "-u", "claude", &id, "bash", "-c", cmd]).stdout);
    assert_eq!(
        as_user(&connect).trim(),
        "BLOCKED",
        "control: blocked at first"
    );

    // The blocked line names this container (its hostname: docker's short id).
    let hostname = docker_ok(&["exec", &id, "cat", "/etc/hostname"]);
    assert!(id.starts_with(hostname.trim()), "{id} {hostname}");
    let want = format!(
        "to allow it now: docker exec {} sandbox-init allow {BLOCKED_IP}:80",
        hostname.trim()
    );
    // The one blocked attempt above must be reported, even when it came while PID 1 was
    // still starting (PID 1 listens before its reject rules go live).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&docker(&["logs", &id]).stderr).contains(&want) {
        assert!(
            Instant::now() < deadline,
            "no live advice for the blocked attempt: {}",
            text(&docker(&["logs", &id]).stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The user can neither use the socket nor rebuild the sandbox.
    let user_allow = docker(&[
        "exec",
        "-u",
        "claude",
        &id,
        "sandbox-init",
        "allow",
        &format!("{BLOCKED_IP}:80"),
    ]);
    assert_eq!(
        user_allow.status.code(),
        Some(64),
        "{}",
        text(&user_allow.stderr)
    );
    for args in [&["apply"][..], &["--", "true"]] {
        let mut a = vec!["exec", &id, "sandbox-init"];
        a.extend_from_slice(args);
        let out = docker(&a);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("sandbox-init allow ENTRY"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        as_user(&connect).trim(),
        "BLOCKED",
        "nothing above opened it"
    );

    let allow = docker(&[
        "exec",
        &id,
        "sandbox-init",
        "allow",
        &format!("{BLOCKED_IP}:80"),
    ]);
    assert!(allow.status.success(), "{}", text(&allow.stderr));
    assert_eq!(
        as_user(&connect).trim(),
        "REACHED",
        "allowed without a restart"
    );
    let status = docker_ok(&["exec", &id, "sandbox-init", "status"]);
    assert!(
        status.contains(&format!("{BLOCKED_IP}:80 <- live (uid 0")),
        "{status}"
    );
    let log = text(&docker(&["logs", &id]).stderr);
    assert!(log.contains("live allowlist: allow by uid 0 pid "), "{log}");

    // `sandbox-init exec` from a root `docker exec`: the agent's user and nothing more.
    let exec = docker_ok(&[
        "exec",
        &id,
        "sandbox-init",
        "exec",
        "--",
        "bash",
        "-c",
        "id -u; id -G; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status",
    ]);
    let lines: Vec<&str> = exec.lines().collect();
    assert_eq!(lines[0], "1000", "{exec}");
    assert!(
        !lines[1].split_whitespace().any(|g| g == "0" || g == "27"),
        "{exec}"
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            exec.contains(&format!("{cap}:\t0000000000000000")),
            "{exec}"
        );
    }
    assert!(exec.contains("NoNewPrivs:\t1"), "{exec}");
}

/// `--allow-live` and `--shell` find the project's running session among the containers
/// (a numbered second session included, another project's never) and act in it with
/// `docker exec`; without one, `--allow-live` fails and runs nothing, `--shell` starts a
/// new session running bash.
#[test]
fn launcher_allow_live_and_shell_join_the_running_session() {
    let engine = FakeEngine::new("live");
    let (_, _, name) = engine.names();
    let other = "claude-other-12345678";
    let execs = |calls: &[String]| -> Vec<String> {
        calls
            .iter()
            .filter(|c| c.starts_with("exec ") || c.starts_with("run "))
            .cloned()
            .collect()
    };
    let second = format!("{name}-2");
    let (r, calls) = engine.launch(
        &[
            "--allow-live",
            "registry.example.org:443",
            "--allow-live",
            "10.0.0.0/8",
        ],
        &[],
        &[other, &second],
    );
    r.assert_code(0);
    assert_eq!(
        execs(&calls),
        [format!(
            "exec {second} /usr/local/sbin/sandbox-init allow registry.example.org:443 10.0.0.0/8"
        )],
        "{calls:?}"
    );

    let (r, calls) = engine.launch(&["--allow-live", "x.test"], &[], &[other]);
    r.assert_code(1);
    assert!(r.stderr.contains("no running session"), "{r}");
    assert!(execs(&calls).is_empty(), "{calls:?}");
    let (r, calls) = engine.launch(&["--allow-live", "a.test,b.test"], &[], &[&name]);
    r.assert_code(64);
    assert!(execs(&calls).is_empty(), "{calls:?}");

    let (r, calls) = engine.launch(&["--shell"], &[], &[&name]);
    r.assert_code(0);
    assert_eq!(
        execs(&calls),
        [format!(
            "exec -i {name} /usr/local/sbin/sandbox-init exec bash"
        )],
        "{calls:?}"
    );
    let (r, calls) = engine.launch(&["--shell"], &[], &[other]);
    r.assert_code(0);
    let started = execs(&calls);
    assert!(
        started.len() == 1 && started[0].starts_with("run --rm") && started[0].ends_with(" bash"),
        "{calls:?}"
    );
    assert!(
        started[0].contains(&format!("--hostname {name} ")),
        "{calls:?}"
    );
}
