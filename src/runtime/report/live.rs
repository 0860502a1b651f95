//! The live half of a blocked line's advice: how root allows a destination in this running
//! sandbox (`docker exec CONTAINER sandbox-init allow ENTRY`). The control socket sets the
//! target when it serves; the reporter only reads it, so the advice stays with the reporter.

use crate::policy::allowlist::Suggestion;

/// How a running sandbox is changed from outside, for the advice of its blocked lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTarget {
    /// The container's name as `docker exec` takes it.
    pub container: String,
    /// Names can be allowed live (DNS `filter` mode); otherwise only addresses.
    pub names: bool,
}

/// Set once, when PID 1 serves the control socket (see `set_target`).
static LIVE_TARGET: std::sync::OnceLock<LiveTarget> = std::sync::OnceLock::new();

/// Where this process serves `sandbox-init allow`, if it does.
pub fn live_target() -> Option<&'static LiveTarget> {
    LIVE_TARGET.get()
}

/// The command that allows `s` in the running sandbox `t`, when `allow` can take it.
pub fn live_advice(s: &Suggestion, t: &LiveTarget) -> Option<String> {
    let by_name = !matches!(s.entry().target, crate::policy::allowlist::Target::Net(_));
    (t.names || !by_name).then(|| allow_command(s, Some(&t.container)))
}

/// Records where this process serves `sandbox-init allow` (once; later calls change nothing).
pub fn set_target(t: LiveTarget) {
    let _ = LIVE_TARGET.set(t);
}

/// The command that allows `s` in this running sandbox.
pub fn allow_command(s: &Suggestion, container: Option<&str>) -> String {
    match container {
        Some(c) => format!("docker exec {c} sandbox-init allow {s}"),
        None => format!("docker exec CONTAINER sandbox-init allow {s}"),
    }
}
