//! The credential broker in the pipeline. With `credentials.broker` on (the default) and a credential
//! given, the credentials stage writes placeholders instead of the real values, PID 1
//! starts the broker (its own uid, confined) with the real ones before the command, and
//! the command gets `ANTHROPIC_BASE_URL` pointing at the broker; the container's own
//! `ANTHROPIC_BASE_URL` becomes the broker's upstream.

use super::context::Context;
use super::exit::{Error, Result};
use crate::policy::ruleset::BrokerRoute;
use crate::runtime::broker::account::{self, Account};
use crate::runtime::broker::launch::{self, Launch, Running};
use crate::runtime::broker::wire::{ApiKeyBinding, OAuth, OAuthBinding, Spec};
use crate::runtime::broker::{placeholder, secret::Secret, store, upstream};
use crate::stages::credentials::{self, doc, RefreshToken, Replace};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The variable the CLI reads for the API's address.
pub const BASE_URL: &str = "ANTHROPIC_BASE_URL";
/// A CA bundle to trust instead of the system's (the broker reads it; tests use it).
const CA_FILE: &str = "SSL_CERT_FILE";
/// How long the broker may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run without the broker, with the flag of either tool the user may have used.
pub const OFF_HOW: &str = "--no-broker or SANDBOX_BROKER=0 (run-claude.sh: SANDBOX_BROKER=0 \
                           with --env SANDBOX_BROKER)";

/// What PID 1 starts the broker with.
pub struct Planned {
    pub account: Account,
    spec: Spec,
}

/// What the credentials stage writes, what that replaces on the volume, and the broker to
/// start when it is on and has something to hold.
pub struct Credentials {
    pub plan: doc::Plan,
    pub replace: Replace,
    pub broker: Option<Planned>,
}

fn given<'a>(cx: &'a Context, name: &str) -> Option<&'a str> {
    cx.env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// What the volume's `.credentials.json` holds, looked at when no OAuth login is given.
enum Kept {
    Nothing,
    /// A placeholder of an earlier broker session: the broker's directory may hold the
    /// login it stands for.
    Placeholder,
    /// A real login with a refresh token: made with `/login`, or kept from a start
    /// without the broker. The agent can read it.
    Login(serde_json::Value),
}

fn read_kept(cx: &Context) -> Kept {
    match credentials::read_kept(&cx.settings, &cx.identity, &cx.env) {
        Ok(Some(bytes)) if doc::holds_placeholder(&bytes) => Kept::Placeholder,
        Ok(Some(bytes)) if doc::holds_refreshable_login(&bytes) => {
            serde_json::from_slice(&bytes).map_or(Kept::Nothing, Kept::Login)
        }
        Ok(_) => Kept::Nothing,
        // The file is there (root saw it) but the user could not read it: a home still
        // owned by the image's uid before its re-own, say. The credentials stage reads it
        // again and says what is wrong.
        Err(e) => {
            log::warn!(
                "credential broker: ~/.claude/.credentials.json not read as {} ({e}): a login \
                 there is not handed to the broker at this start",
                cx.identity.name
            );
            Kept::Nothing
        }
    }
}

/// The login the broker kept at an earlier start: read by root, once per start, and only
/// where the volume holds something it could matter for.
type Stored = std::result::Result<Option<store::Saved>, String>;

fn read_stored(
    cx: &Context,
    kept: &Kept,
    account: &std::result::Result<Account, String>,
) -> Stored {
    if matches!(kept, Kept::Nothing) {
        return Ok(None);
    }
    let account = account.as_ref().map_err(Clone::clone)?;
    store::load_as_root(&cx.identity.home, *account)
}

/// A login for the broker when no OAuth login is given.
enum Held {
    /// The volume's login, new to the broker: kept for it before anything else is written.
    HandOver(OAuth, RefreshToken),
    /// The volume holds a copy of a login the broker keeps (an older one of the same
    /// lineage, written back): the broker's own is used, the copy replaced.
    Copy(OAuth, RefreshToken),
    /// The login the broker kept, which the volume's placeholder stands for.
    Stored(OAuth),
}

fn held_login(kept: &Kept, stored: &Stored) -> Option<Held> {
    match kept {
        Kept::Login(v) => {
            let real = match placeholder::oauth_from_keychain(v) {
                Ok(real) => real,
                Err(why) => {
                    log::warn!(
                        "credential broker: the login kept in ~/.claude is not handed to it \
                         ({why}); it stays there, where the agent can read it"
                    );
                    return None;
                }
            };
            let refresh = real.refresh.as_ref()?;
            let on_volume = RefreshToken(zeroize::Zeroizing::new(refresh.expose().to_string()));
            // Of the broker's lineage: the first login it was given, or the pair it holds
            // now (given back by an earlier `--no-broker` and not refreshed since).
            let ours = |saved: &store::Saved| {
                saved.source == store::fingerprint(refresh)
                    || saved.refresh.expose() == refresh.expose()
            };
            match stored {
                Ok(Some(saved)) if ours(saved) => Some(Held::Copy(saved.login(), on_volume)),
                _ => Some(Held::HandOver(real, on_volume)),
            }
        }
        Kept::Placeholder => match stored {
            Ok(Some(saved)) => Some(Held::Stored(saved.login())),
            _ => None,
        },
        Kept::Nothing => None,
    }
}

/// A placeholder on the volume with no login behind it: Claude Code will say it is not
/// logged in, so the user hears why and what to do.
fn warn_placeholder_alone(stored: &Stored, why_no_broker: &str) {
    let behind = match stored {
        Ok(Some(_)) => "the login the broker kept for it stays in ~/.sandbox-init-broker; \
                        --no-broker (SANDBOX_BROKER=0) puts it back into ~/.claude"
            .to_string(),
        Ok(None) => "the broker kept no login for it".to_string(),
        Err(e) => format!("the login the broker kept for it cannot be read: {e}"),
    };
    log::warn!(
        "~/.claude/.credentials.json holds a placeholder of the credential broker, which \
         does not run ({why_no_broker}); {behind}. Until then Claude Code says it is not \
         logged in: log in with /login, or give a credential ({}, {}, {})",
        doc::OAUTH_TOKEN,
        doc::KEYCHAIN,
        doc::API_KEY
    );
}

/// With the broker off (`--no-broker`, or `apply`): a placeholder on the volume is
/// worthless now, and the login the broker kept for it goes back in its place.
fn without_broker(mut plan: doc::Plan, kept: &Kept, stored: &Stored) -> Credentials {
    if matches!(kept, Kept::Placeholder) {
        match stored {
            Ok(Some(saved)) => {
                plan.credentials = Some((
                    placeholder::login_document(&saved.login()),
                    "the login the credential broker kept (the broker is off)",
                ));
            }
            _ => warn_placeholder_alone(stored, "it is off"),
        }
    }
    Credentials {
        plan,
        replace: Replace::Nothing,
        broker: None,
    }
}

/// The broker does not run at this start although it is on: what was given or kept is
/// written as it would be without it, but a login the broker keeps stays the broker's
/// (only an explicit `--no-broker` gives it back).
fn not_started(plan: doc::Plan, kept: &Kept, stored: &Stored, why: &str) -> Credentials {
    if matches!(kept, Kept::Placeholder) {
        warn_placeholder_alone(stored, why);
    }
    Credentials {
        plan,
        replace: Replace::Nothing,
        broker: None,
    }
}

/// Reads the credential inputs; with the broker on, swaps each for its placeholder. With
/// no OAuth login given, the broker takes a login kept on the volume (made with `/login`)
/// or the one it kept itself at an earlier start.
pub fn plan(cx: &Context) -> Result<Credentials> {
    let mut plan = doc::plan(&cx.env).map_err(credentials::Error::Input)?;
    // An OAuth login given at start wins over one kept on the volume.
    let kept = if plan.credentials.is_none() {
        read_kept(cx)
    } else {
        Kept::Nothing
    };
    let account = choose_account(cx);
    let stored = read_stored(cx, &kept, &account);
    if !cx.settings.broker.value {
        return Ok(without_broker(plan, &kept, &stored));
    }
    // On by default, the broker steps aside where it cannot run; asked for, it is
    // required, and a start it cannot serve fails (exit 70).
    let asked = cx.settings.broker.is_chosen();
    let held = held_login(&kept, &stored);
    if plan.is_empty() && held.is_none() {
        let level = if asked {
            log::Level::Warn
        } else {
            log::Level::Debug
        };
        let next = if matches!(kept, Kept::Nothing) {
            "; a login made with /login is handed to it at the next start"
        } else {
            ""
        };
        log::log!(
            level,
            "credential broker on ({}), but no credential given ({}, {}, {}) and no login \
             kept for it: nothing to hold, not started{next}",
            cx.settings.broker.source,
            doc::OAUTH_TOKEN,
            doc::KEYCHAIN,
            doc::API_KEY
        );
        return Ok(not_started(plan, &kept, &stored, "nothing for it to hold"));
    }
    // Kept only where the broker may still step aside and the real values be written.
    let given_plan = (!asked).then(|| plan.clone());
    let broken = |e: String| Error::Broker(format!("{e}; to run without it: {OFF_HOW}"));
    // `hand_over`: the login is new to the broker's directory and goes there first.
    let hand_over = matches!(held, Some(Held::HandOver(..)));
    let (oauth, oauth_from, replace) = match held {
        Some(Held::HandOver(real, on_volume)) => (
            Some(real),
            "a placeholder (the credential broker holds the login that was kept there)",
            Replace::HandedOver(on_volume),
        ),
        Some(Held::Copy(real, on_volume)) => (
            Some(real),
            "a placeholder (the credential broker holds the login it kept, of which this was \
             an older copy)",
            Replace::HandedOver(on_volume),
        ),
        Some(Held::Stored(real)) => (
            Some(real),
            "a placeholder (the credential broker holds the login it kept at an earlier start)",
            Replace::All,
        ),
        None => match &plan.credentials {
            Some((blob, from)) if *from == doc::KEYCHAIN => (
                Some(placeholder::oauth_from_keychain(blob).map_err(credentials::Error::Input)?),
                HOLDS_LOGIN,
                Replace::All,
            ),
            Some(_) => (
                given(cx, doc::OAUTH_TOKEN).map(placeholder::oauth_from_token),
                HOLDS_LOGIN,
                Replace::All,
            ),
            None => (None, HOLDS_LOGIN, Replace::All),
        },
    };
    let oauth = match oauth {
        Some(real) => {
            let ph = placeholder::oauth_token().map_err(broken)?;
            plan.credentials = Some((placeholder::credentials_document(&real, &ph), oauth_from));
            Some(OAuthBinding {
                real,
                placeholder: ph,
            })
        }
        None => None,
    };
    let api_key = match plan.api_key.take() {
        Some(real) => {
            let ph = placeholder::api_key().map_err(broken)?;
            plan.api_key = Some(ph.clone());
            plan.api_key_from = "a placeholder (the credential broker holds the real key)";
            Some(ApiKeyBinding {
                real: Secret::new(real.trim()),
                placeholder: ph,
            })
        }
        None => None,
    };
    let mut spec = Spec::new(oauth, api_key);
    if let Some(url) = given(cx, BASE_URL) {
        spec.upstream = url.to_string();
    }
    spec.ca_file = given(cx, CA_FILE).map(PathBuf::from);
    spec.store = spec
        .oauth
        .as_ref()
        .is_some_and(|o| o.real.refresh.is_some());
    spec.log = cx.settings.log.value.clone();
    let step_aside = |given: doc::Plan, why: &str| {
        log::warn!(
            "credential broker (on by default) not started: {why}. The real credential \
             goes into ~/.claude (or stays there), where the agent can read it; to require \
             the broker instead (the start then fails here): --broker or SANDBOX_BROKER=1"
        );
        not_started(given, &kept, &stored, "it stepped aside")
    };
    // Before anything is written or moved: a start the broker cannot serve leaves the
    // volume as it found it.
    if let Some(why) = cannot_run(&spec, account.as_ref().err()) {
        return match given_plan {
            Some(given) => Ok(step_aside(given, &why)),
            None => Err(broken(format!("the credential broker cannot start: {why}"))),
        };
    }
    let account = account.map_err(broken)?;
    if hand_over {
        // Kept for the broker before the volume's copy is replaced: a start that ends
        // early must not lose the login.
        let saved = spec.oauth.as_ref().and_then(|o| store::Saved::of(&o.real));
        let kept_for_broker = match saved {
            Some(saved) => store::hand_over(&cx.identity.home, account, &saved),
            None => Err("internal: the login has no refresh token".into()),
        };
        if let Err(e) = kept_for_broker {
            let why = format!("the login kept in ~/.claude cannot be kept for it: {e}");
            return match given_plan {
                Some(given) => Ok(step_aside(given, &why)),
                None => Err(broken(why)),
            };
        }
    }
    Ok(Credentials {
        plan,
        replace,
        broker: Some(Planned { account, spec }),
    })
}

const HOLDS_LOGIN: &str = "a placeholder (the credential broker holds the real login)";

/// Why the broker could not run on this machine, found before anything is written: a CPU
/// its TLS library does not support, no CA bundle while it must speak TLS, no free uid.
fn cannot_run(spec: &Spec, no_account: Option<&String>) -> Option<String> {
    if !crate::runtime::broker::cpu_supported() {
        return Some(
            "this CPU lacks instructions its TLS library needs (x86_64: AES-NI, PCLMULQDQ, \
             AVX2, BMI, ADX; aarch64: AES, SHA2, PMULL)"
                .into(),
        );
    }
    if spec.needs_tls() {
        if let Err(e) = upstream::bundle_path(spec.ca_file.as_deref()) {
            return Some(e);
        }
    }
    no_account.cloned()
}

/// Starts the broker, as root, before the command and before PID 1's own privilege drop.
pub fn start(cx: &Context, planned: Planned) -> Result<Running> {
    let Planned { account, mut spec } = planned;
    let store = if spec.store {
        match store::prepare(&cx.identity.home, account) {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::warn!(
                    "credential broker: {e}; a refreshed login is not kept for the next start"
                );
                spec.store = false;
                None
            }
        }
    } else {
        None
    };
    let running = launch::spawn(
        Launch {
            program: Path::new("/proc/self/exe"),
            account,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            store,
            timeout: READY_TIMEOUT,
        },
        &spec,
    )
    .map_err(|e| Error::Broker(format!("{e}; to run without it: {OFF_HOW}")))?;
    log::info!(
        "credential broker: pid {}, uid {}, listening on {}, forwarding to {} (the command \
         sees only placeholders)",
        running.pid,
        account.uid,
        running.addr,
        spec.upstream
    );
    Ok(running)
}

/// The broker's uid: none of root, the sandboxed user, or a user or group of the image.
fn choose_account(cx: &Context) -> std::result::Result<Account, String> {
    let id = &cx.identity;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    account::choose(
        None,
        &read("/etc/passwd"),
        &read("/etc/group"),
        &[id.uid, id.gid, id.image_uid, id.image_gid],
        "the broker's uid",
    )
}

/// What the firewall gives the broker's uid alone.
pub fn route(cx: &Context, planned: &Planned) -> BrokerRoute {
    BrokerRoute::new(
        planned.account.uid,
        &cx.settings.presets.value,
        Some(&planned.spec.upstream),
        Some(&planned.spec.token_url),
    )
}

/// For `check`: the route the broker would get when it is on (whether a credential is
/// given or not; `check` shows the plan of a start with one).
pub fn route_for_check(cx: &Context) -> Option<BrokerRoute> {
    if !cx.settings.broker.value {
        return None;
    }
    let account = choose_account(cx).ok()?;
    let upstream = given(cx, BASE_URL).unwrap_or(crate::runtime::broker::wire::DEFAULT_UPSTREAM);
    Some(BrokerRoute::new(
        account.uid,
        &cx.settings.presets.value,
        Some(upstream),
        Some(crate::runtime::broker::wire::DEFAULT_TOKEN_URL),
    ))
}

/// For `check`: whether the broker is on, whether it runs in this session (inside a
/// running container), and what would keep it from starting (a problem when it was asked
/// for: that start fails; a note when it is on only by default: it steps aside).
pub fn check_status(cx: &Context) -> (Vec<String>, Option<(String, String)>) {
    let source = &cx.settings.broker.source;
    if !cx.settings.broker.value {
        return (
            vec![format!(
                "credential broker: off ({source}): a credential given at start is written \
                 into ~/.claude, where the agent can read it"
            )],
            None,
        );
    }
    let mut lines = vec![format!(
        "credential broker: on ({source}): started when a credential is given at start, or \
         for a login made with /login (taken from ~/.claude at the next start)"
    )];
    if let Some(url) = published() {
        lines.push(format!(
            "  running in this session: the command's {BASE_URL} is {url}"
        ));
    }
    let mut spec = Spec::new(None, None);
    if let Some(url) = given(cx, BASE_URL) {
        spec.upstream = url.to_string();
    }
    spec.ca_file = given(cx, CA_FILE).map(PathBuf::from);
    let Some(why) = cannot_run(&spec, choose_account(cx).err().as_ref()) else {
        return (lines, None);
    };
    if !cx.settings.broker.is_chosen() {
        lines.push(format!(
            "  would step aside at start: {why}; the real credential would go into ~/.claude"
        ));
        return (lines, None);
    }
    (
        lines,
        Some((
            format!("the credential broker ({source}) cannot start: {why}"),
            format!("fix that, or run without it: {OFF_HOW}"),
        )),
    )
}

/// Where PID 1 tells `sandbox-init exec` sessions (root, through `docker exec`, with the
/// container's environment) the broker's address: a file in its root-only status
/// directory, next to status.json.
const SESSION_FILE: &str = "broker.json";
const SESSION_PATH: &str = "/run/sandbox-init/broker.json";

/// PID 1, once the command's environment is settled: writes the running broker's base
/// URL for exec sessions, or removes what an earlier start of this container left
/// (/run survives `docker restart`) when no broker runs. Failing is a warning: the
/// session runs, only exec sessions cannot reach the broker.
pub fn publish(running: Option<&Running>) {
    use crate::sys::fs as files;
    use std::os::fd::AsFd;
    let dir = match crate::runtime::report::status::open_dir() {
        Ok(d) => d,
        Err(e) if running.is_some() => {
            log::warn!(
                "`sandbox-init exec` sessions will not get the credential broker's {BASE_URL} \
                 (no {SESSION_PATH}: {e}); on a read-only root file system add --tmpfs /run"
            );
            return;
        }
        Err(_) => return,
    };
    let Some(b) = running else {
        match nix::unistd::unlinkat(
            dir.as_fd(),
            SESSION_FILE,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => log::warn!(
                "cannot remove {SESSION_PATH} left by an earlier start: {e}; `sandbox-init \
                 exec` sessions may be given a broker that no longer runs (remove the file)"
            ),
        }
        return;
    };
    let mut doc = serde_json::json!({ "base_url": b.base_url(), "pid": b.pid.as_raw() })
        .to_string()
        .into_bytes();
    doc.push(b'\n');
    if let Err(e) = files::write_atomic(
        dir.as_fd(),
        std::ffi::OsStr::new(SESSION_FILE),
        &doc,
        0o600,
        Path::new(SESSION_PATH),
    ) {
        log::warn!(
            "{e}: `sandbox-init exec` sessions will not get the credential broker's {BASE_URL}"
        );
    }
}

/// `sandbox-init exec` (as root): the base URL of the broker PID 1 runs, if it runs one.
/// Read only from a root-owned file that is no link, in the root-only directory: the
/// sandboxed user cannot point exec sessions anywhere.
pub fn published() -> Option<String> {
    use crate::sys::fs as files;
    use std::os::fd::AsFd;
    let dir =
        crate::sys::fs::open_owned_dir(Path::new(crate::runtime::report::status::DIR), 0).ok()?;
    let files::Found::File(bytes, fd) = files::read_existing(
        dir.as_fd(),
        std::ffi::OsStr::new(SESSION_FILE),
        Path::new(SESSION_PATH),
    )
    .ok()?
    else {
        return None;
    };
    let st = nix::sys::stat::fstat(&fd).ok()?;
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        log::warn!("{SESSION_PATH} is not root's alone: ignored");
        return None;
    }
    let doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let url = doc["base_url"].as_str()?;
    // Only ever a loopback address: this is where the placeholder goes.
    url.strip_prefix("http://127.0.0.1:")
        .filter(|port| port.parse::<u16>().is_ok())
        .map(|_| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn login(refresh: &str, scopes: &[&str]) -> Kept {
        Kept::Login(json!({"claudeAiOauth": {
            "accessToken": "sk-ant-oat01-A", "refreshToken": refresh, "scopes": scopes}}))
    }

    fn saved(first_refresh: &str, refresh_now: &str) -> store::Saved {
        store::Saved {
            source: store::fingerprint(&Secret::new(first_refresh)),
            access: Secret::new("sk-ant-oat01-NOW"),
            refresh: Secret::new(refresh_now),
            expires_at_ms: None,
            scopes: vec!["user:inference".into()],
            client_id: None,
            subscription_type: serde_json::Value::Null,
            rate_limit_tier: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_volumes_login_is_handed_over_unless_it_is_an_old_copy_of_the_brokers() {
        let inference = ["user:inference"];
        // New to the broker (nothing kept, or a login of another lineage): handed over.
        for stored in [Ok(None), Ok(Some(saved("R-other", "R-other2")))] {
            let held = held_login(&login("R1", &inference), &stored);
            assert!(
                matches!(held, Some(Held::HandOver(ref o, _)) if o.access.expose() == "sk-ant-oat01-A")
            );
        }
        // An old copy (R1) of the login the broker has since refreshed (to R2): the
        // broker's own pair is used, and keeps naming its first login.
        let held = held_login(&login("R1", &inference), &Ok(Some(saved("R1", "R2"))));
        let Some(Held::Copy(o, RefreshToken(on_volume))) = held else {
            panic!("not taken as a copy");
        };
        assert_eq!(o.refresh.as_ref().map(Secret::expose), Some("R2"));
        assert_eq!(on_volume.as_str(), "R1");
        // The pair it holds now, given back and not refreshed since: the same login.
        let held = held_login(&login("R2", &inference), &Ok(Some(saved("R1", "R2"))));
        assert!(matches!(held, Some(Held::Copy(..))));
        assert_eq!(
            o.lineage,
            Some(store::fingerprint(&Secret::new("R1"))),
            "the chain would drift"
        );
        // A placeholder stands for the kept login; with none kept, nothing to hold.
        let stored = Ok(Some(saved("R1", "R2")));
        assert!(matches!(
            held_login(&Kept::Placeholder, &stored),
            Some(Held::Stored(_))
        ));
        assert!(held_login(&Kept::Placeholder, &Ok(None)).is_none());
        assert!(held_login(&Kept::Placeholder, &Err("unreadable".into())).is_none());
        // A login the CLI could not use anyway is left alone.
        assert!(held_login(&login("R1", &["user:profile"]), &Ok(None)).is_none());
    }
}
