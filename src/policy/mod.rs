//! Pure decisions and their inputs: configuration, the allowlist, the identity to run as,
//! the child's environment, and the firewall's ruleset plan.

pub mod allowlist;
pub mod cli;
pub mod config;
pub mod environment;
pub mod exit;
pub mod hostnet;
pub mod identity;
pub mod names;
pub mod presets;
pub mod ruleset;
#[cfg(test)]
pub(crate) mod test_util;
