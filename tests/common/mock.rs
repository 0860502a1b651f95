//! The mock Messages API (tests/docker/mock_api.py) as a child process, a test CA for it,
//! and fake secrets: shared by the broker's tiers.

use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound for anything that must happen (never a performance claim).
pub const LIVENESS: Duration = Duration::from_secs(15);

/// A fake secret, new at every call, that no file or environment holds by chance.
pub fn real_secret(tag: &str) -> String {
    let mut b = [0u8; 8];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("sk-ant-{tag}-REAL-{hex}")
}

/// Hex, as `sandbox-probe search` takes its needles (argv must not hold them).
pub fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The mock API as a child process; its JSON log lines are collected.
pub struct Mock {
    child: Child,
    pub port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Mock {
    /// On 127.0.0.1 of this network namespace.
    pub fn start(extra: &[&str], env: &[(&str, &str)]) -> Mock {
        Mock::start_in(None, "127.0.0.1", extra, env)
    }

    /// On loopback, serving HTTPS with `cert` and `key` (from `test_ca`).
    pub fn start_tls(cert: &Path, key: &Path) -> Mock {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        Mock::start(&["--tls-cert", &cert, "--tls-key", &key], &[])
    }

    /// On `bind` inside the network namespace `netns` (`ip netns exec`), or this one.
    pub fn start_in(netns: Option<&str>, bind: &str, extra: &[&str], env: &[(&str, &str)]) -> Mock {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/docker/mock_api.py");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3"]);
                c
            }
            None => Command::new("python3"),
        };
        let mut child = cmd
            .arg(script)
            .args(["--messages", "--bind", bind, "--port", "0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let ready: Value =
            serde_json::from_str(&first).unwrap_or_else(|_| panic!("mock: {first:?}"));
        let port = ready["ready"].as_u64().unwrap() as u16;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Mock { child, port, lines }
    }

    pub fn log(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.log().into_iter().find(|v| pred(v)) {
                return v;
            }
            assert!(
                start.elapsed() < LIVENESS,
                "the mock never saw {what}: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate for the IP address `ip` signed by it, in `dir`:
/// (ca.pem, server.pem, server.key); the CA file is readable by everyone.
pub fn test_ca(dir: &Path, ip: &str) -> (PathBuf, PathBuf, PathBuf) {
    test_ca_for(dir, ip, &[])
}

/// As `test_ca`, the certificate also valid for the DNS `names`.
pub fn test_ca_for(dir: &Path, ip: &str, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sandbox-init test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &format!("/CN={ip}"),
    ]);
    fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=IP:{ip}{}\nbasicConstraints=CA:FALSE\n",
            names
                .iter()
                .map(|n| format!(",DNS:{n}"))
                .collect::<String>()
        ),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    fs::set_permissions(dir.join("ca.pem"), fs::Permissions::from_mode(0o644)).unwrap();
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}
