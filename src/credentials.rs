//! Credentials and first-run state (issue 4: being built).

use crate::config::Settings;
use crate::error::Result;
use crate::identity::Identity;
use std::collections::HashMap;
use std::path::Path;

/// Writes the credentials given in `env` and Claude's first-run state into the user's home.
pub fn install(
    _settings: &Settings,
    _identity: &Identity,
    _env: &HashMap<String, String>,
    _workdir: &Path,
) -> Result<()> {
    Ok(())
}
