//! sandbox-init: PID 1 of a Claude Code container. All logic lives in the library; this
//! only turns its answer into the process's exit code.

fn main() {
    std::process::exit(sandbox_init::app::main());
}
