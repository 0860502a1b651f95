//! The seam between the pipeline's logic and the kernel. Stages talk to a `Kernel`, so their
//! ordering and failure handling are unit-tested with a recording fake; the real kernel's
//! answers are checked by the privileged integration tiers. `process` is the one place
//! where children are forked and exec'd (the command, the broker, the as-user writer);
//! `netlink` is the one netfilter netlink socket and message walker; `fs` is the link-proof
//! file-system layer.

#[cfg(test)]
pub(crate) mod fake;
pub mod fs;
pub mod netlink;
pub mod process;
mod real;

/// Fills `buf` from the kernel's random source (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    getrandom::fill(buf).map_err(|e| io::Error::other(e.to_string()))
}

pub use real::Real;

use std::io;

/// The errno or I/O error underneath a failure.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// An operation the kernel refused: what was being done, and the errno or I/O error as the
/// `source` (the stages' errors carry it as their `Os` variant).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Failure {
    pub what: String,
    #[source]
    pub source: Cause,
}

impl Failure {
    pub fn new(what: String, source: impl Into<Cause>) -> Self {
        Failure {
            what,
            source: source.into(),
        }
    }
}

/// Capability sets and NoNewPrivs as the kernel reports them in /proc/self/status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapState {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl CapState {
    pub fn parse(status: &str) -> io::Result<CapState> {
        let mut st = CapState::default();
        let mut seen = 0;
        for line in status.lines() {
            let Some((key, val)) = line.split_once(':') else {
                continue;
            };
            let val = val.trim();
            let hex = || {
                u64::from_str_radix(val, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, line.to_string()))
            };
            match key {
                "CapInh" => st.inheritable = hex()?,
                "CapPrm" => st.permitted = hex()?,
                "CapEff" => st.effective = hex()?,
                "CapBnd" => st.bounding = hex()?,
                "CapAmb" => st.ambient = hex()?,
                "NoNewPrivs" => st.no_new_privs = val == "1",
                _ => continue,
            }
            seen += 1;
        }
        if seen < 6 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/self/status lacks the Cap*/NoNewPrivs lines",
            ));
        }
        Ok(st)
    }

    pub fn all_empty(&self) -> bool {
        self.inheritable == 0
            && self.permitted == 0
            && self.effective == 0
            && self.bounding == 0
            && self.ambient == 0
    }
}

/// The privileged operations the pipeline performs on its own process.
pub trait Kernel {
    fn set_groups(&self, gids: &[u32]) -> io::Result<()>;
    fn set_resgid(&self, gid: u32) -> io::Result<()>;
    fn set_resuid(&self, uid: u32) -> io::Result<()>;
    /// The highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap).
    fn last_cap(&self) -> u32;
    fn drop_bounding(&self, cap: u32) -> io::Result<()>;
    fn clear_ambient(&self) -> io::Result<()>;
    /// Sets inheritable to empty and permitted/effective to exactly `keep` (bit mask).
    fn set_caps(&self, keep: u64) -> io::Result<()>;
    fn set_no_new_privs(&self) -> io::Result<()>;
    fn set_dumpable(&self, on: bool) -> io::Result<()>;
    fn cap_state(&self) -> io::Result<CapState>;
    fn ids(&self) -> (u32, u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t00000000a80435fb\n\
                 CapEff:\t00000000a80435fb\nCapBnd:\t00000000a80435fb\nCapAmb:\t0000000000000000\n\
                 NoNewPrivs:\t1\n";
        let st = CapState::parse(s).unwrap();
        assert_eq!(st.permitted, 0xa80435fb);
        assert!(st.no_new_privs);
        assert!(!st.all_empty());
        assert!(CapState::parse("Name: x\n").is_err());
        assert!(CapState::parse(&s.replace("a80435fb\nCapEff", "zz\nCapEff")).is_err());
    }
}
