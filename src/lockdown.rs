//! Lockdown before exec: SUID/SGID bits and sudo rights (issue 4: being built).

use crate::config::Settings;
use crate::error::Result;
use crate::identity::Identity;

pub fn apply(_settings: &Settings, _identity: &Identity) -> Result<()> {
    Ok(())
}
