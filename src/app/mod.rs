//! The application: the pipeline (`run`) and `sandbox-init check`.

pub mod broker;
pub mod check;
pub mod context;
pub mod exit;
pub mod hook;
pub mod run;

/// The process's exit code: the credential broker when this binary was re-executed as one
/// (by PID 1, under its own uid), otherwise the pipeline or one of its modes.
pub fn main() -> i32 {
    if let Some(code) = crate::runtime::broker::child::main_if_invoked() {
        return code;
    }
    run::main()
}
