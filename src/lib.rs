//! sandbox-init as a library: one module per stage of the pipeline (see DESIGN.md), and
//! `run` to drive them in order.

pub mod allowlist;
pub mod broker;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod credentials;
pub mod dns;
pub mod environment;
pub mod error;
pub mod firewall;
pub mod home;
pub mod hook;
pub mod identity;
pub mod lockdown;
pub mod presets;
pub mod privileges;
pub mod report;
pub mod run;
pub mod spawn;
pub mod supervise;
pub mod sys;
#[cfg(test)]
mod test_util;
pub mod workspace_guard;
