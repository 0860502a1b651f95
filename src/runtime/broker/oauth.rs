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
            source: real
                .lineage
                .clone()
                .or_else(|| real.refresh.as_ref().map(fingerprint)),
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
    /// What is kept beside a refreshed pair so that a start with only the saved file can
    /// use it: the login's client as given and its plan fields (no secrets).
    given_client_id: Option<String>,
    plan: (serde_json::Value, serde_json::Value),
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
            given_client_id: real.client_id.clone(),
            plan: (real.subscription_type.clone(), real.rate_limit_tier.clone()),
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
                    log::info!("the OAuth login was refreshed after all; nothing to do");
                    st.reported = false;
                }
                log::info!(
                    "OAuth token refreshed; the new one expires in {}",
                    in_words(answer.expires_in.saturating_mul(1000))
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
            client_id: self.given_client_id.clone(),
            subscription_type: self.plan.0.clone(),
            rate_limit_tier: self.plan.1.clone(),
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
            lineage: None,
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
            client_id: None,
            subscription_type: serde_json::Value::Null,
            rate_limit_tier: serde_json::Value::Null,
        };
        assert!(!st.adopt(saved("another login")));
        assert_eq!(st.access.expose(), "A0");
        assert!(st.adopt(saved("R0")));
        assert_eq!(st.access.expose(), "A1");
        assert_eq!(st.refresh.as_ref().unwrap().expose(), "R1");
        assert_eq!(st.expires_at_ms, Some(99));
        assert_eq!(st.scopes.len(), 2, "empty saved scopes keep the login's");
    }

    use super::super::proxy::Body;
    use super::super::testkit::*;
    use hyper::body::Incoming;
    use hyper::http::Response;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex as StdMutex;

    type Requests = Arc<StdMutex<Vec<Value>>>;

    /// A token endpoint that records each request body and answers with the next of
    /// `answers` (status, JSON), repeating the last.
    async fn token_endpoint(answers: Vec<(u16, Value)>) -> (String, Requests) {
        let seen: Requests = Arc::default();
        let s = seen.clone();
        let answers = Arc::new(answers);
        let (addr, _) = server(move |req: Request<Incoming>| {
            let (s, answers) = (s.clone(), answers.clone());
            async move {
                let ct = req.headers()["content-type"].to_str().unwrap().to_string();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut v: Value = serde_json::from_slice(&body).unwrap();
                v["_content_type"] = Value::String(ct);
                let n = {
                    let mut s = s.lock().unwrap();
                    s.push(v);
                    s.len()
                };
                let (code, answer) = answers[(n - 1).min(answers.len() - 1)].clone();
                let mut r: Response<Body> = Response::new(full(answer.to_string()));
                *r.status_mut() = StatusCode::from_u16(code).unwrap();
                r
            }
        })
        .await;
        (format!("http://{addr}/v1/oauth/token"), seen)
    }

    fn refresher(
        login: &OAuth,
        url: &str,
        clock: Arc<FakeClock>,
        store: Option<Store>,
    ) -> (Refresher, Arc<StdMutex<Vec<String>>>) {
        let (report, got) = reporter();
        let r = Refresher::new(login, url.parse().unwrap(), client(), store, clock, report);
        (r, got)
    }

    const T0: u64 = 1_900_000_000_000;

    fn store_in(dir: &std::path::Path) -> Store {
        let me = super::super::account::Account {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        Store::open(super::super::store::prepare(dir, me).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn refreshes_before_expiry_keeps_and_saves_the_new_pair() {
        let (url, seen) = token_endpoint(vec![(
            200,
            serde_json::json!({"access_token": "A1", "refresh_token": "R1", "expires_in": 3600,
                               "scope": "user:inference user:profile"}),
        )])
        .await;
        let home = std::env::temp_dir().join(format!("broker-refresh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        let clock = Arc::new(FakeClock(AtomicU64::new(T0)));
        let login = oauth_login(Some(T0 + 10 * 60_000), Some("R0"));
        let (r, reports) = refresher(&login, &url, clock.clone(), Some(store_in(&home)));

        r.tick(false).await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "refreshed 10 min before expiry"
        );
        clock
            .0
            .store(T0 + 10 * 60_000 - MARGIN_MS, Ordering::SeqCst);
        r.tick(false).await;
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            let req = &seen[0];
            assert_eq!(req["grant_type"], "refresh_token");
            assert_eq!(req["refresh_token"], "R0");
            assert_eq!(req["client_id"], DEFAULT_CLIENT_ID);
            assert_eq!(req["scope"], "user:inference user:profile");
            assert_eq!(req["_content_type"], "application/json");
        }
        let now = clock.now_ms();
        let (access, expires, refresh) = r.snapshot().await;
        assert_eq!(access.expose(), "A1");
        assert_eq!(refresh.unwrap().expose(), "R1");
        assert_eq!(expires, Some(now + 3_600_000));
        assert_eq!(r.access_token().await.expose(), "A1");
        assert!(reports.lock().unwrap().is_empty());

        // The next start, with the same (now rotated) input login, uses the saved pair;
        // a new login given at that start wins over it.
        let (again, _) = refresher(&login, &url, clock.clone(), Some(store_in(&home)));
        assert_eq!(again.access_token().await.expose(), "A1");
        let new_login = oauth_login(Some(T0 + 99 * 60_000), Some("R-new"));
        let (fresh, _) = refresher(&new_login, &url, clock.clone(), Some(store_in(&home)));
        assert_eq!(fresh.access_token().await.expose(), REAL_TOKEN);
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[tokio::test]
    async fn an_expired_token_is_refreshed_before_the_request_uses_it() {
        let (url, seen) = token_endpoint(vec![(
            200,
            serde_json::json!({"access_token": "A2", "expires_in": 60}),
        )])
        .await;
        let clock = Arc::new(FakeClock(AtomicU64::new(T0)));
        let (r, _) = refresher(&oauth_login(Some(T0 - 1), Some("R0")), &url, clock, None);
        assert_eq!(r.access_token().await.expose(), "A2");
        assert_eq!(seen.lock().unwrap().len(), 1);
        // No rotation in the answer: the refresh token stays.
        assert_eq!(r.snapshot().await.2.unwrap().expose(), "R0");
    }

    #[tokio::test]
    async fn a_refused_refresh_token_is_reported_once_and_not_retried() {
        let (url, seen) = token_endpoint(vec![(
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": "Refresh token not found"}),
        )])
        .await;
        let clock = Arc::new(FakeClock(AtomicU64::new(T0)));
        let (r, reports) = refresher(
            &oauth_login(Some(T0 + 60_000), Some("R0")),
            &url,
            clock.clone(),
            None,
        );
        for step in 0..4 {
            clock.0.fetch_add(step * 120_000, Ordering::SeqCst);
            r.tick(false).await;
            r.tick(true).await;
            let _ = r.access_token().await;
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "a refused refresh token was sent again"
        );
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(
            reports[0].contains("invalid_grant") && reports[0].contains("/login"),
            "{}",
            reports[0]
        );
        assert!(!reports[0].contains("R0") && !reports[0].contains(REAL_TOKEN));
    }

    #[tokio::test]
    async fn a_passing_outage_is_retried_with_backoff_and_reported_once() {
        let (url, seen) = token_endpoint(vec![
            (503, serde_json::json!({})),
            (503, serde_json::json!({})),
            (
                200,
                serde_json::json!({"access_token": "A3", "expires_in": 3600}),
            ),
        ])
        .await;
        let clock = Arc::new(FakeClock(AtomicU64::new(T0)));
        let (r, reports) = refresher(
            &oauth_login(Some(T0 + 60_000), Some("R0")),
            &url,
            clock.clone(),
            None,
        );
        r.tick(false).await;
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Not before the backoff is over.
        clock.0.fetch_add(FIRST_RETRY_MS - 1, Ordering::SeqCst);
        r.tick(false).await;
        assert_eq!(seen.lock().unwrap().len(), 1);
        clock.0.fetch_add(1, Ordering::SeqCst);
        r.tick(false).await;
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(
            r.state.lock().await.next(clock.now_ms()),
            Next::At(clock.now_ms() + 2 * FIRST_RETRY_MS)
        );
        clock.0.fetch_add(2 * FIRST_RETRY_MS, Ordering::SeqCst);
        r.tick(false).await;
        assert_eq!(r.access_token().await.expose(), "A3");
        assert_eq!(
            reports.lock().unwrap().len(),
            1,
            "{:?}",
            reports.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn an_upstream_401_wakes_the_refresher() {
        let (url, seen) = token_endpoint(vec![(
            200,
            serde_json::json!({"access_token": "A4", "expires_in": 3600}),
        )])
        .await;
        let (up, _) = server(|_req| async {
            let mut r: Response<Body> = Response::new(full("{\"type\":\"error\"}"));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        })
        .await;
        // Far from expiry: only the 401 can cause a refresh.
        let far = SystemClock.now_ms() + 3_600_000 * 24;
        let (b, refresher) = broker(
            &format!("http://{up}"),
            oauth_login(Some(far), Some("R0")),
            &url,
        )
        .await;
        tokio::spawn(refresher.clone().run());
        let answer = raw(
            b,
            format!(
                "GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {OAUTH_PH}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        let start = std::time::Instant::now();
        while seen.lock().unwrap().is_empty() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no refresh after a 401"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        while refresher.snapshot().await.0.expose() != "A4" {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
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
