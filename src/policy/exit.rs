//! Exit codes fixed by the interface contract (scripts depend on them). Which error gets
//! which code is decided in one place, `app::exit`.

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
