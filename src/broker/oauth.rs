//! Keeping the real OAuth login alive: the broker refreshes the access token a few minutes
//! before it expires (the CLI never does: its placeholder expires in 2100), keeps the new
//! pair in memory and saves it for the next start. A login that cannot be refreshed is
//! reported once on stderr, with what to do.
//!
//! The request is the one Claude Code itself sends: POST JSON `{grant_type:
//! "refresh_token", refresh_token, client_id, scope}` to the token endpoint; the answer
//! carries `access_token`, `expires_in` (seconds) and, when it rotates, `refresh_token`.
//!
//! Time comes from a `Clock`, so the schedule is tested without waiting.

use super::proxy::{Body, HttpClient};
use super::secret::Secret;
use super::store::{fingerprint, Saved, Store};
use super::wire::{OAuth, DEFAULT_CLIENT_ID};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::{header, Method, Request, StatusCode, Uri};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};

/// Refresh this long before the token expires.
pub const MARGIN_MS: u64 = 5 * 60 * 1000;
/// After a failed attempt that may succeed later: wait 15 s, doubling, at most 5 min.
const FIRST_RETRY_MS: u64 = 15_000;
const MAX_RETRY_MS: u64 = 5 * 60 * 1000;
/// An upstream 401 asks for a refresh at most this often.
const REJECTED_MIN_GAP_MS: u64 = 60_000;
const MAX_ANSWER: usize = 64 * 1024;

pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Where a login stands.
#[derive(Debug)]
pub struct State {
    pub access: Secret,
    pub refresh: Option<Secret>,
    pub expires_at_ms: Option<u64>,
    pub scopes: Vec<String>,
    /// The input login's fingerprint (what the saved file descends from).
    source: Option<String>,
    /// Failed attempts in a row.
    failures: u32,
    /// No attempt before this time (after a failure).
    retry_at_ms: Option<u64>,
    /// The refresh token was refused: no more attempts.
    dead: bool,
    last_attempt_ms: Option<u64>,
    reported: bool,
}

/// What the refresher does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing will ever be due (no refresh token, no expiry, or refused).
    Never,
    /// Sleep until this time, then look again.
    At(u64),
    Now,
}

impl State {
    pub fn new(real: &OAuth) -> State {
        State {
            access: real.access.clone(),
            refresh: real.refresh.clone(),
            expires_at_ms: real.expires_at_ms,
            scopes: real.scopes.clone(),
            source: real.refresh.as_ref().map(fingerprint),
            failures: 0,
            retry_at_ms: None,
            dead: false,
            last_attempt_ms: None,
            reported: false,
        }
    }

    /// Takes a saved pair that descends from this very login (a restart after a refresh);
    /// a saved pair of another login is ignored (the input is newer).
    pub fn adopt(&mut self, saved: Saved) -> bool {
        if self.source.as_deref() != Some(saved.source.as_str()) {
            return false;
        }
        self.access = saved.access;
        self.refresh = Some(saved.refresh);
        self.expires_at_ms = saved.expires_at_ms;
        if !saved.scopes.is_empty() {
            self.scopes = saved.scopes;
        }
        true
    }

    pub fn next(&self, now: u64) -> Next {
        let (Some(_), Some(expires)) = (&self.refresh, self.expires_at_ms) else {
            return Next::Never;
        };
        if self.dead {
            return Next::Never;
        }
        let due = self
            .retry_at_ms
            .unwrap_or_else(|| expires.saturating_sub(MARGIN_MS));
        if now >= due {
            Next::Now
        } else {
            Next::At(due)
        }
    }

    pub fn expired(&self, now: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| now >= e)
    }

    fn can_refresh(&self) -> bool {
        self.refresh.is_some() && !self.dead
    }
}

/// Why a refresh failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    /// The endpoint refused the refresh token itself: trying again cannot help.
    pub permanent: bool,
}

#[derive(Deserialize)]
struct Answer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    expires_in: u64,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// How a failure reaches the user: stderr in the broker, a list in tests.
pub type Reporter = Arc<dyn Fn(&str) + Send + Sync>;

pub struct Refresher {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    endpoint: Uri,
    client_id: String,
    client: HttpClient,
    store: Option<Store>,
    report: Reporter,
    wake: Notify,
}

impl Refresher {
    pub fn new(
        real: &OAuth,
        endpoint: Uri,
        client: HttpClient,
        store: Option<Store>,
        clock: Arc<dyn Clock>,
        report: Reporter,
    ) -> Refresher {
        let mut state = State::new(real);
        if let Some(store) = &store {
            match store.load() {
                Ok(Some(saved)) => {
                    if state.adopt(saved) {
                        log::info!("using the OAuth token this login was refreshed to earlier");
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!("{e}"),
            }
        }
        Refresher {
            state: Mutex::new(state),
            clock,
            endpoint,
            client_id: real
                .client_id
                .clone()
                .unwrap_or_else(|| DEFAULT_CLIENT_ID.into()),
            client,
            store,
            report,
            wake: Notify::new(),
        }
    }

    /// The access token for a request. An expired one is refreshed first (requests wait
    /// for that one refresh rather than all failing).
    pub async fn access_token(&self) -> Secret {
        let mut st = self.state.lock().await;
        let now = self.clock.now_ms();
        if st.expired(now) && st.next(now) == Next::Now {
            self.refresh_locked(&mut st).await;
        }
        st.access.clone()
    }

    /// The upstream answered 401 to our token: it may have been revoked early.
    pub fn rejected(&self) {
        self.wake.notify_one();
    }

    /// Runs forever: sleeps until the next refresh is due (or an upstream 401), refreshes.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = self.state.lock().await.next(self.clock.now_ms());
            let rejected = match next {
                Next::Now => false,
                Next::At(t) => {
                    let wait = t.saturating_sub(self.clock.now_ms());
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => false,
                        _ = self.wake.notified() => true,
                    }
                }
                Next::Never => {
                    self.wake.notified().await;
                    true
                }
            };
            self.tick(rejected).await;
        }
    }

    /// One step of `run`: refreshes when due, or when `rejected` and the last attempt is
    /// not too recent.
    pub async fn tick(&self, rejected: bool) {
        let mut st = self.state.lock().await;
        let now = self.clock.now_ms();
        let recent = st
            .last_attempt_ms
            .is_some_and(|t| now.saturating_sub(t) < REJECTED_MIN_GAP_MS);
        let due = st.next(now) == Next::Now;
        if due || (rejected && st.can_refresh() && !recent) {
            self.refresh_locked(&mut st).await;
        }
    }

    /// The current state (for tests and status).
    pub async fn snapshot(&self) -> (Secret, Option<u64>, Option<Secret>) {
        let st = self.state.lock().await;
        (st.access.clone(), st.expires_at_ms, st.refresh.clone())
    }

    async fn refresh_locked(&self, st: &mut State) {
        let Some(refresh) = st.refresh.clone() else {
            return;
        };
        let now = self.clock.now_ms();
        st.last_attempt_ms = Some(now);
        match self.exchange(&refresh, &st.scopes).await {
            Ok(answer) => {
                st.access = Secret::new(answer.access_token);
                if let Some(r) = answer.refresh_token.filter(|r| !r.is_empty()) {
                    st.refresh = Some(Secret::new(r));
                }
                st.expires_at_ms = Some(now + answer.expires_in.saturating_mul(1000));
                if let Some(scope) = answer.scope {
                    let scopes: Vec<String> = scope.split_whitespace().map(String::from).collect();
                    if !scopes.is_empty() {
                        st.scopes = scopes;
                    }
                }
                st.failures = 0;
                st.retry_at_ms = None;
                if st.reported {
                    (self.report)("the OAuth login was refreshed after all; nothing to do");
                    st.reported = false;
                }
                log::info!(
                    "OAuth token refreshed; the new one expires in {}",
                    in_words(answer.expires_in * 1000)
                );
                self.persist(st);
            }
            Err(f) => {
                st.failures += 1;
                if f.permanent {
                    st.dead = true;
                } else {
                    let backoff = (FIRST_RETRY_MS << (st.failures - 1).min(10)).min(MAX_RETRY_MS);
                    st.retry_at_ms = Some(now + backoff);
                }
                if !st.reported {
                    st.reported = true;
                    (self.report)(&failure_message(&f, st.expires_at_ms, now));
                } else {
                    log::debug!("OAuth refresh failed again: {}", f.reason);
                }
            }
        }
    }

    fn persist(&self, st: &State) {
        let (Some(store), Some(source), Some(refresh)) = (&self.store, &st.source, &st.refresh)
        else {
            return;
        };
        let saved = Saved {
            source: source.clone(),
            access: st.access.clone(),
            refresh: refresh.clone(),
            expires_at_ms: st.expires_at_ms,
            scopes: st.scopes.clone(),
        };
        if let Err(e) = store.save(&saved) {
            log::warn!("{e}; the next start will refresh again");
        }
    }

    async fn exchange(&self, refresh: &Secret, scopes: &[String]) -> Result<Answer, Failure> {
        let transient = |reason: String| Failure {
            reason,
            permanent: false,
        };
        let body = zeroize::Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({
                "grant_type": "refresh_token",
                "refresh_token": refresh.expose(),
                "client_id": self.client_id,
                "scope": scopes.join(" "),
            }))
            .map_err(|e| transient(format!("cannot encode the request: {e}")))?,
        );
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(boxed(Bytes::copy_from_slice(&body)))
            .map_err(|e| transient(format!("cannot build the request: {e}")))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| transient("the token endpoint did not answer within 30 s".into()))?
            .map_err(|e| {
                transient(format!(
                    "cannot reach the token endpoint: {}",
                    super::proxy::one_line(&e)
                ))
            })?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| transient(format!("the token endpoint's answer broke off: {e}")))?
            .to_bytes();
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes).map_err(|_| {
                transient("the token endpoint's answer has no access_token and expires_in".into())
            });
        }
        let detail = serde_json::from_slice::<ErrorAnswer>(&bytes)
            .ok()
            .map(|e| {
                [e.error, e.error_description]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ")
            })
            .filter(|d| !d.is_empty())
            .map(|d| format!(" ({})", printable(&d)))
            .unwrap_or_default();
        Err(Failure {
            reason: format!("the token endpoint answered {status}{detail}"),
            // 400/401/403: the refresh token (or client) is refused; 429 and 5xx may pass.
            permanent: matches!(status.as_u16(), 400 | 401 | 403),
        })
    }
}

fn boxed(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// At most 200 printable characters of text an endpoint sent.
fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn in_words(ms: u64) -> String {
    let min = ms / 60_000;
    match min {
        0 => "less than a minute".into(),
        1..=119 => format!("{min} min"),
        _ => format!("{} h", min / 60),
    }
}

/// The one message a failed refresh gives, with what to do.
pub fn failure_message(f: &Failure, expires_at_ms: Option<u64>, now: u64) -> String {
    let when = match expires_at_ms {
        Some(e) if e > now => format!(
            "Claude Code keeps working until the current token expires in {}",
            in_words(e - now)
        ),
        Some(_) => "the current token has expired, so Claude Code's requests fail".into(),
        None => "Claude Code keeps working while the current token is accepted".into(),
    };
    let retry = if f.permanent {
        "the refresh token was refused, so the broker stops trying"
    } else {
        "the broker keeps trying"
    };
    format!(
        "cannot refresh the OAuth login: {}; {when}, and {retry}. To fix it: log in again on \
         the host (run `claude`, then /login) and restart the container with the new keychain \
         item in CLAUDE_CREDENTIALS, or give a long-lived token from `claude setup-token` in \
         CLAUDE_CODE_OAUTH_TOKEN",
        f.reason
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn login(expires: Option<u64>, refresh: Option<&str>) -> OAuth {
        OAuth {
            access: Secret::new("A0"),
            refresh: refresh.map(Secret::new),
            expires_at_ms: expires,
            scopes: vec!["user:inference".into(), "user:profile".into()],
            client_id: None,
            subscription_type: Value::Null,
            rate_limit_tier: Value::Null,
        }
    }

    #[test]
    fn schedule_is_margin_before_expiry() {
        let st = State::new(&login(Some(1_000_000_000), Some("R0")));
        assert_eq!(st.next(0), Next::At(1_000_000_000 - MARGIN_MS));
        assert_eq!(st.next(1_000_000_000 - MARGIN_MS), Next::Now);
        assert_eq!(st.next(2_000_000_000), Next::Now);
        assert!(!st.expired(999_999_999) && st.expired(1_000_000_000));
        // A setup-token (no refresh, no expiry) never refreshes; neither does an expiry
        // without a refresh token.
        assert_eq!(State::new(&login(None, None)).next(0), Next::Never);
        assert_eq!(State::new(&login(Some(5), None)).next(10), Next::Never);
        assert_eq!(State::new(&login(None, Some("R"))).next(10), Next::Never);
    }

    #[test]
    fn a_saved_pair_is_taken_only_from_the_same_login() {
        let mut st = State::new(&login(Some(10), Some("R0")));
        let saved = |src: &str| Saved {
            source: fingerprint(&Secret::new(src)),
            access: Secret::new("A1"),
            refresh: Secret::new("R1"),
            expires_at_ms: Some(99),
            scopes: vec![],
        };
        assert!(!st.adopt(saved("another login")));
        assert_eq!(st.access.expose(), "A0");
        assert!(st.adopt(saved("R0")));
        assert_eq!(st.access.expose(), "A1");
        assert_eq!(st.refresh.as_ref().unwrap().expose(), "R1");
        assert_eq!(st.expires_at_ms, Some(99));
        assert_eq!(st.scopes.len(), 2, "empty saved scopes keep the login's");
    }

    #[test]
    fn the_message_says_what_to_do_and_holds_no_token() {
        let f = Failure {
            reason: "the token endpoint answered 400 Bad Request (invalid_grant)".into(),
            permanent: true,
        };
        let m = failure_message(&f, Some(10 * 60_000), 0);
        assert!(m.contains("10 min") && m.contains("stops trying"), "{m}");
        assert!(
            m.contains("CLAUDE_CREDENTIALS") && m.contains("setup-token"),
            "{m}"
        );
        let m = failure_message(
            &Failure {
                permanent: false,
                ..f
            },
            Some(0),
            5,
        );
        assert!(
            m.contains("has expired") && m.contains("keeps trying"),
            "{m}"
        );
    }
}
