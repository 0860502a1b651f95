//! The running kernel behind the `Kernel` seam.

use super::{CapState, Kernel};
use std::io;

/// The running kernel.
pub struct Real;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Kernel for Real {
    fn set_groups(&self, gids: &[u32]) -> io::Result<()> {
        // SAFETY: the pointer and length describe a live slice of gid_t (u32).
        check(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) })
    }
    fn set_resgid(&self, gid: u32) -> io::Result<()> {
        // SAFETY: plain syscall wrapper; musl applies it to every thread.
        check(unsafe { libc::setresgid(gid, gid, gid) })
    }
    fn set_resuid(&self, uid: u32) -> io::Result<()> {
        // SAFETY: as above.
        check(unsafe { libc::setresuid(uid, uid, uid) })
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
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        match check(rc) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }
    fn clear_ambient(&self) -> io::Result<()> {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        match check(rc) {
            // Kernels before 4.3 have no ambient set: nothing to clear.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }
    fn set_caps(&self, keep: u64) -> io::Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const V3: u32 = 0x2008_0522;
        let mut hdr = Header {
            version: V3,
            pid: 0,
        };
        let lo = keep as u32;
        let hi = (keep >> 32) as u32;
        let data = [
            Data {
                effective: lo,
                permitted: lo,
                inheritable: 0,
            },
            Data {
                effective: hi,
                permitted: hi,
                inheritable: 0,
            },
        ];
        // SAFETY: capset(2) with a v3 header and two data structs, as the ABI requires.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
        check(rc as libc::c_int)
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
    }
    fn set_dumpable(&self, on: bool) -> io::Result<()> {
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, on as libc::c_ulong, 0, 0, 0) })
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
        // SAFETY: getters that cannot fail.
        unsafe { (libc::geteuid(), libc::getegid()) }
    }
}
