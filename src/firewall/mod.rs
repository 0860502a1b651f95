//! Egress firewall (issue 3: being built).

use crate::config::Settings;
use crate::error::{Error, Result};
use std::collections::HashMap;

/// Programs the firewall, or fails closed.
pub fn setup(settings: &Settings, _env: &HashMap<String, String>) -> Result<()> {
    if !settings.firewall.value {
        log::warn!(
            "FIREWALL OFF ({}): the command can reach any address; remove it to enforce the allowlist",
            settings.firewall.source
        );
        return Ok(());
    }
    Err(Error::Sandbox(
        "the firewall is not built yet; run with --no-firewall".into(),
    ))
}

/// Problems `sandbox-init check` should report about the firewall, each with its fix.
pub fn diagnose(
    _settings: &Settings,
    _env: &HashMap<String, String>,
) -> Vec<crate::check::Problem> {
    vec![]
}
