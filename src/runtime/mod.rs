//! What runs while the command runs: PID 1's supervision, the spawn of the command, the DNS
//! filter, the reports of what was blocked, and the credential broker.

pub mod broker;
pub mod control;
pub mod dns;
pub mod report;
pub mod spawn;
pub mod supervise;
