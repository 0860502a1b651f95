//! The fake kernel of the unit tests: records every call, can be told to fail one, and
//! enforces the capability rules the real kernel does, so that a wrong order of the
//! privilege drop fails its test.

use super::{CapState, Kernel};
use std::cell::RefCell;
use std::io;

/// Records every call; can be told to fail one of them; models the kernel's rule that
/// changing all uids away from 0 empties permitted and effective.
#[derive(Default)]
pub struct FakeKernel {
    pub calls: RefCell<Vec<String>>,
    pub fail: Option<&'static str>,
    pub state: RefCell<CapState>,
    pub uid: RefCell<u32>,
    pub gid: RefCell<u32>,
    /// Simulate a kernel that leaves something behind.
    pub leave_bounding: bool,
}

impl FakeKernel {
    pub fn root() -> Self {
        let k = FakeKernel::default();
        *k.state.borrow_mut() = CapState {
            inheritable: 0,
            permitted: 0xa80435fb,
            effective: 0xa80435fb,
            bounding: 0xa80435fb,
            ambient: 0,
            no_new_privs: false,
        };
        k
    }
    fn call(&self, name: &str) -> io::Result<()> {
        self.calls.borrow_mut().push(name.to_string());
        if self.fail.is_some_and(|f| name.starts_with(f)) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
    /// As the kernel does: a privileged call needs its capability in the effective set.
    fn need(&self, cap: u32) -> io::Result<()> {
        if self.state.borrow().effective & (1u64 << cap) == 0 {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

impl Kernel for FakeKernel {
    fn set_groups(&self, g: &[u32]) -> io::Result<()> {
        self.call(&format!("setgroups {g:?}"))?;
        self.need(6)
    }
    fn set_resgid(&self, gid: u32) -> io::Result<()> {
        self.call(&format!("setresgid {gid}"))?;
        self.need(6)?;
        *self.gid.borrow_mut() = gid;
        Ok(())
    }
    fn set_resuid(&self, uid: u32) -> io::Result<()> {
        self.call(&format!("setresuid {uid}"))?;
        self.need(7)?;
        *self.uid.borrow_mut() = uid;
        let mut st = self.state.borrow_mut();
        st.permitted = 0;
        st.effective = 0;
        Ok(())
    }
    fn last_cap(&self) -> u32 {
        40
    }
    fn drop_bounding(&self, cap: u32) -> io::Result<()> {
        self.call(&format!("capbset_drop {cap}"))?;
        self.need(8)?;
        if !self.leave_bounding {
            self.state.borrow_mut().bounding &= !(1u64 << cap);
        }
        Ok(())
    }
    fn clear_ambient(&self) -> io::Result<()> {
        self.call("ambient_clear")?;
        self.state.borrow_mut().ambient = 0;
        Ok(())
    }
    fn set_caps(&self, keep: u64) -> io::Result<()> {
        self.call(&format!("capset {keep:#x}"))?;
        let mut st = self.state.borrow_mut();
        st.inheritable = 0;
        st.permitted &= keep;
        st.effective &= keep;
        Ok(())
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        self.call("no_new_privs")?;
        self.state.borrow_mut().no_new_privs = true;
        Ok(())
    }
    fn set_dumpable(&self, on: bool) -> io::Result<()> {
        self.call(&format!("dumpable {on}"))
    }
    fn cap_state(&self) -> io::Result<CapState> {
        self.call("read_caps")?;
        Ok(*self.state.borrow())
    }
    fn ids(&self) -> (u32, u32) {
        (*self.uid.borrow(), *self.gid.borrow())
    }
}
