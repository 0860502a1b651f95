//! The broker process (the exec'd side): checks that it runs confined, reads its spec from
//! the pipe, says `ready` and serves until it is killed. It never runs as root, never with
//! a capability, and never dumpable.

use super::oauth::{Refresher, Reporter, SystemClock};
use super::proxy::{self, Broker};
use super::store::Store;
use super::upstream::{self, Upstream};
use super::wire::{self, Spec};
use crate::sys::process::take_inherited;
use crate::sys::{CapState, Kernel, Real};
use std::io::{Read, Write};
use std::sync::Arc;

/// When this process was started as the broker (argv[0] is `sandbox-init-broker`), runs it
/// and returns its exit code; otherwise None and `main` goes on as sandbox-init.
pub fn main_if_invoked() -> Option<i32> {
    let argv0 = std::env::args_os().next()?;
    (argv0 == wire::ARGV0).then(main)
}

fn main() -> i32 {
    // exec made the process dumpable again: undo that before the secret is read.
    let _ = Real.set_dumpable(false);
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);

    let Some(status) = take_inherited(wire::STATUS_FD) else {
        eprintln!(
            "sandbox-init: {} is started by sandbox-init itself, not by hand",
            wire::ARGV0
        );
        return crate::policy::exit::USAGE;
    };
    let mut status = std::fs::File::from(status);
    match prepare() {
        Ok(started) => {
            let ready = started.run(move || {
                let _ = status.write_all(b"ready\n");
            });
            match ready {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("sandbox-init: broker: {e}");
                    crate::policy::exit::SOFTWARE
                }
            }
        }
        Err(e) => {
            let _ = writeln!(status, "{e}");
            crate::policy::exit::SANDBOX
        }
    }
}

/// Refuses to go on unless this process is as confined as PID 1 made it.
fn check_confined() -> Result<(), String> {
    let st: CapState = Real.cap_state().map_err(|e| e.to_string())?;
    let (uid, gid) = Real.ids();
    if uid == 0 || gid == 0 || !st.all_empty() || !st.no_new_privs {
        return Err(format!(
            "the broker must run confined (not root, no capabilities, no_new_privs); found \
             uid {uid} gid {gid}, {st:?}"
        ));
    }
    Ok(())
}

struct Started {
    spec: Spec,
    store: Option<Store>,
    listener: std::net::TcpListener,
    tls: rustls::ClientConfig,
}

fn prepare() -> Result<Started, String> {
    check_confined()?;
    if !super::cpu_supported() {
        return Err(
            "this CPU lacks instructions the broker's TLS library needs (x86_64: AES-NI, \
             PCLMULQDQ, AVX2, BMI, ADX; aarch64: AES, SHA2, PMULL); start without the broker \
             (--no-broker)"
                .into(),
        );
    }
    let mut raw = zeroize::Zeroizing::new(Vec::new());
    let spec_fd = take_inherited(wire::SPEC_FD).ok_or("no spec on descriptor 3")?;
    std::fs::File::from(spec_fd)
        .take(wire::MAX_SPEC as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read the spec: {e}"))?;
    let spec: Spec =
        serde_json::from_slice(&raw).map_err(|e| format!("the spec is not valid: {e}"))?;
    drop(raw);
    init_logging(&spec.log);

    let listener: std::net::TcpListener = take_inherited(wire::LISTEN_FD)
        .ok_or("no listening socket on descriptor 4")?
        .into();
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listening socket: {e}"))?;
    let store = if spec.store {
        let fd = take_inherited(wire::STORE_FD).ok_or("no token directory on descriptor 6")?;
        match Store::open(fd) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("{e}; refreshed tokens are not kept for the next start");
                None
            }
        }
    } else {
        None
    };

    // Checked before `ready`: a bad URL fails the start, not the first request.
    Upstream::parse(&spec.upstream, "the upstream (ANTHROPIC_BASE_URL)")?;
    Upstream::parse(&spec.token_url, "the OAuth token endpoint")?;
    let needs_tls = spec.needs_tls();
    let roots = match upstream::load_roots(spec.ca_file.as_deref()) {
        Ok((roots, path)) => {
            log::debug!("trusting the CA bundle {}", path.display());
            roots
        }
        Err(e) if needs_tls => return Err(e),
        Err(_) => rustls::RootCertStore::empty(),
    };
    let tls = upstream::client_config(roots)?;
    Ok(Started {
        spec,
        store,
        listener,
        tls,
    })
}

impl Started {
    /// Builds the runtime and serves; `ready` is called once the listener is live.
    fn run(self, ready: impl FnOnce()) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        rt.block_on(async move {
            let client = proxy::http_client(self.tls);
            let upstream = Upstream::parse(&self.spec.upstream, "the upstream")?;
            let report: Reporter = Arc::new(|m: &str| eprintln!("sandbox-init: broker: {m}"));
            let oauth = match self.spec.oauth {
                Some(b) => {
                    let endpoint = self
                        .spec
                        .token_url
                        .parse()
                        .map_err(|_| "the OAuth token endpoint is not a URL".to_string())?;
                    let r = Arc::new(Refresher::new(
                        &b.real,
                        endpoint,
                        client.clone(),
                        self.store,
                        Arc::new(SystemClock),
                        report,
                    ));
                    tokio::spawn(r.clone().run());
                    Some((b.placeholder, r))
                }
                None => None,
            };
            let api_key = self.spec.api_key.map(|k| (k.placeholder, k.real));
            let broker = Arc::new(Broker::new(upstream.clone(), client, oauth, api_key)?);
            let listener = tokio::net::TcpListener::from_std(self.listener)
                .map_err(|e| format!("listening socket: {e}"))?;
            log::info!("forwarding to {}", upstream.display());
            ready();
            proxy::serve(listener, broker).await;
            Err("the listening socket failed".to_string())
        })
    }
}

fn init_logging(filter: &str) {
    let _ = env_logger::Builder::new()
        .parse_filters(filter)
        .format(|buf, record| {
            let level = crate::runtime::report::level_prefix(record.level());
            writeln!(buf, "sandbox-init: broker: {level}{}", record.args())
        })
        .target(env_logger::Target::Stderr)
        .try_init();
}
