//! The running kernel behind the `Kernel` seam.

use super::{CapState, Kernel};
use caps::{CapSet, CapsHashSet};
use nix::sys::prctl;
use nix::unistd::{self, Gid, Uid};
use std::io;

/// The running kernel.
pub struct Real;

fn caps_error(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(e.to_string())
}

impl Kernel for Real {
    fn set_groups(&self, gids: &[u32]) -> io::Result<()> {
        let gids: Vec<Gid> = gids.iter().copied().map(Gid::from_raw).collect();
        Ok(unistd::setgroups(&gids)?)
    }
    fn set_resgid(&self, gid: u32) -> io::Result<()> {
        // musl applies it to every thread of the process.
        let gid = Gid::from_raw(gid);
        Ok(unistd::setresgid(gid, gid, gid)?)
    }
    fn set_resuid(&self, uid: u32) -> io::Result<()> {
        let uid = Uid::from_raw(uid);
        Ok(unistd::setresuid(uid, uid, uid)?)
    }
    fn last_cap(&self) -> u32 {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            // 63 covers every kernel: dropping a number the kernel does not know is EINVAL,
            // which drop_bounding tolerates.
            .unwrap_or(63)
    }
    fn drop_bounding(&self, cap: u32) -> io::Result<()> {
        // By number, not through the `caps` crate: its enum names only the capabilities it
        // was written for, and a newer kernel's must go from the bounding set too. rustix's
        // set keeps bits it has no name for.
        if cap >= u64::BITS {
            // No kernel has that many; it would say EINVAL, tolerated below.
            return Ok(());
        }
        let one = rustix::thread::CapabilitySet::from_bits_retain(1u64 << cap);
        match rustix::thread::remove_capability_from_bounding_set(one) {
            Err(e) if e == rustix::io::Errno::INVAL => Ok(()),
            other => other.map_err(io::Error::from),
        }
    }
    fn clear_ambient(&self) -> io::Result<()> {
        caps::clear(None, CapSet::Ambient).map_err(caps_error)
    }
    fn set_caps(&self, keep: u64) -> io::Result<()> {
        let keep: CapsHashSet = caps::all()
            .into_iter()
            .filter(|c| keep & c.bitmask() != 0)
            .collect();
        // Effective first (a subset of the permitted set as it is), then permitted: each
        // step keeps effective within permitted, as capset(2) requires.
        caps::set(None, CapSet::Effective, &keep).map_err(caps_error)?;
        caps::set(None, CapSet::Permitted, &keep).map_err(caps_error)?;
        caps::clear(None, CapSet::Inheritable).map_err(caps_error)
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        Ok(prctl::set_no_new_privs()?)
    }
    fn set_dumpable(&self, on: bool) -> io::Result<()> {
        Ok(prctl::set_dumpable(on)?)
    }
    fn cap_state(&self) -> io::Result<CapState> {
        let status = std::fs::read_to_string("/proc/self/status").map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("/proc/self/status: {e} (is /proc mounted in the container?)"),
            )
        })?;
        CapState::parse(&status)
    }
    fn ids(&self) -> (u32, u32) {
        (unistd::geteuid().as_raw(), unistd::getegid().as_raw())
    }
}
