//! What the pipeline and `check` share once preflight is done.

use crate::policy::config::Settings;
use crate::policy::identity::Identity;
use std::collections::HashMap;
use std::path::PathBuf;

/// Everything the stages share once preflight is done.
pub struct Context {
    pub settings: Settings,
    pub identity: Identity,
    pub workdir: PathBuf,
    /// PID 1's environment as it was given (secrets included: read by the credentials
    /// stage, never passed on).
    pub env: HashMap<String, String>,
}
