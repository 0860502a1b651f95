//! One error type for the whole pipeline. Each variant maps to one of the exit codes in the
//! interface contract, so `main` never has to guess what a failure means to the caller.

use std::fmt;

/// Exit codes fixed by the interface contract (scripts depend on them).
pub mod exit {
    /// Bad command line.
    pub const USAGE: i32 = 64;
    /// Internal failure of sandbox-init itself (a bug or an unexpected kernel answer).
    pub const SOFTWARE: i32 = 70;
    /// The sandbox could not be built (firewall, capability drop): fail closed.
    pub const SANDBOX: i32 = 70;
    /// Bad configuration or credential input.
    pub const CONFIG: i32 = 78;
    /// The command exists but cannot be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
}

#[derive(Debug)]
pub enum Error {
    /// Command-line usage problem (exit 64).
    Usage(String),
    /// Configuration or credential-input problem (exit 78).
    Config(String),
    /// The sandbox could not be built; the command must not run (exit 70).
    Sandbox(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Config(_) => exit::CONFIG,
            Error::Sandbox(_) => exit::SANDBOX,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Config(m) | Error::Sandbox(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthands that read well at the call site: `config_err!("...")`.
#[macro_export]
macro_rules! config_err {
    ($($arg:tt)*) => { $crate::sys::error::Error::Config(format!($($arg)*)) };
}

#[macro_export]
macro_rules! sandbox_err {
    ($($arg:tt)*) => { $crate::sys::error::Error::Sandbox(format!($($arg)*)) };
}
