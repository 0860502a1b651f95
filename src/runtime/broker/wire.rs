//! What PID 1 hands the broker, and how: never in argv or the environment (which other
//! users may read), but as JSON through a pipe on a fixed descriptor, read once at start.
//!
//! Descriptors of the broker process at exec:
//!   3  the spec (this JSON), read to EOF then closed
//!   4  the listening socket on loopback, bound by PID 1 (so its address is known before
//!      the broker runs, and the CLI's first connection waits in the backlog)
//!   5  status: the broker writes `ready\n` or one line saying why it cannot start
//!   6  the directory for refreshed tokens, when `store` is true

use super::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// argv[0] of the broker process; `main` dispatches on it.
pub const ARGV0: &str = "sandbox-init-broker";
pub const SPEC_FD: i32 = 3;
pub const LISTEN_FD: i32 = 4;
pub const STATUS_FD: i32 = 5;
pub const STORE_FD: i32 = 6;
/// A spec is a few KiB; anything larger is not ours.
pub const MAX_SPEC: usize = 1 << 20;

/// Where requests go when the container sets no ANTHROPIC_BASE_URL.
pub const DEFAULT_UPSTREAM: &str = "https://api.anthropic.com";
/// Claude Code's OAuth token endpoint (the CLI's TOKEN_URL).
pub const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";
/// Claude Code's OAuth client id, sent with a refresh when the login names none.
pub const DEFAULT_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The real API (or the container's ANTHROPIC_BASE_URL): http or https, optional path.
    pub upstream: String,
    /// Where refresh tokens are exchanged.
    pub token_url: String,
    /// A PEM bundle to trust instead of the system's (SSL_CERT_FILE given to PID 1).
    pub ca_file: Option<PathBuf>,
    pub oauth: Option<OAuthBinding>,
    pub api_key: Option<ApiKeyBinding>,
    /// Descriptor 6 holds the token directory.
    pub store: bool,
    /// env_logger filter, e.g. "info".
    pub log: String,
}

/// An OAuth login and the placeholder the CLI sends instead of its access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthBinding {
    pub real: OAuth,
    pub placeholder: String,
}

/// An API key and the placeholder the CLI sends instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyBinding {
    pub real: Secret,
    pub placeholder: String,
}

/// The real OAuth credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuth {
    pub access: Secret,
    pub refresh: Option<Secret>,
    /// Milliseconds since the epoch, as the CLI stores it; None = does not expire.
    pub expires_at_ms: Option<u64>,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    /// Plan fields copied into the placeholder document (no secret).
    pub subscription_type: Value,
    pub rate_limit_tier: Value,
    /// For a login the broker kept at an earlier start: the fingerprint of the login it
    /// was refreshed from, so a refreshed pair keeps naming its first login (a copy of that
    /// one, written back to the volume, is then known as old).
    #[serde(default)]
    pub lineage: Option<String>,
}

impl Spec {
    /// A spec with the defaults for everything but the credentials.
    pub fn new(oauth: Option<OAuthBinding>, api_key: Option<ApiKeyBinding>) -> Spec {
        Spec {
            upstream: DEFAULT_UPSTREAM.into(),
            token_url: DEFAULT_TOKEN_URL.into(),
            ca_file: None,
            oauth,
            api_key,
            store: false,
            log: "info".into(),
        }
    }

    /// Whether the broker will speak TLS: to an https upstream, or to an https token
    /// endpoint when it holds a login it can refresh.
    pub fn needs_tls(&self) -> bool {
        let tls = |url: &str| {
            url.get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        };
        let refreshes = self
            .oauth
            .as_ref()
            .is_some_and(|o| o.real.refresh.is_some());
        tls(&self.upstream) || (refreshes && tls(&self.token_url))
    }
}
