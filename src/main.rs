//! sandbox-init: PID 1 of a Claude Code container. All logic lives in the library; this
//! only turns its answer into the process's exit code.

fn main() {
    // The credential broker is this same binary, re-executed by PID 1 under its own uid.
    if let Some(code) = sandbox_init::broker::child::main_if_invoked() {
        std::process::exit(code);
    }
    std::process::exit(sandbox_init::run::main());
}
