//! The credential broker: the agent never holds the real secret.
//!
//! A separate process, started by PID 1 before the command (and before PID 1's own
//! privilege drop), holds the real credential — an OAuth access token, a keychain login
//! with its refresh token, or an API key — in memory only, under a uid of its own that is
//! neither root nor the sandboxed user, with no capabilities, `no_new_privs`, not dumpable.
//! The sandboxed user can neither read its memory, environment or descriptors nor signal
//! it. The CLI gets a placeholder credential and `ANTHROPIC_BASE_URL` pointing at the
//! broker on loopback; the broker swaps the placeholder for the real value and forwards to
//! the real API (or the container's own ANTHROPIC_BASE_URL) over TLS, streaming.
//!
//! How PID 1 uses it, in order:
//! 1. `account::choose` — the broker's uid, checked against the image's users and groups;
//! 2. `placeholder::{oauth_token, api_key}` — this session's placeholders, and
//!    `placeholder::credentials_document` — what the credentials stage writes instead of
//!    the real `.credentials.json` (an API key placeholder goes to `primaryApiKey`);
//! 3. `store::prepare` — the token directory in the home, as root;
//! 4. `launch::spawn` with a `wire::Spec` — forks, confines, execs `/proc/self/exe` as
//!    `sandbox-init-broker`, waits for `ready`; `Running::base_url` is the CLI's
//!    ANTHROPIC_BASE_URL.
//!
//! `main` calls `child::main_if_invoked` first, which runs the broker side.

pub mod account;
pub mod child;
pub mod launch;
pub mod lookup;
pub mod oauth;
pub mod placeholder;
pub mod proxy;
pub mod secret;
pub mod store;
#[cfg(test)]
mod testkit;
pub mod upstream;
pub mod wire;

/// Whether this CPU has what the broker's TLS library needs (graviola: AES, carry-less
/// multiply and, on x86_64, AVX2, BMI and ADX). PID 1 asks before it plans placeholders,
/// so a broker that is on only by default can step aside instead of failing the start.
pub fn cpu_supported() -> bool {
    graviola::util::is_cpu_supported()
}
