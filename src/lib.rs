//! sandbox-init as a library, in layers that import only downward: `sys` (the kernel seam),
//! `policy` (pure decisions and inputs), `stages` (done once at start), `runtime` (what runs
//! while the command runs), `app` (the pipeline and `check`).

pub mod app;
pub mod policy;
pub mod runtime;
pub mod stages;
pub mod sys;
