//! What is done once at start, in order: the firewall, the home directory, the
//! credentials, the lockdown, and the privilege drop.

pub mod credentials;
pub mod firewall;
pub mod home;
pub mod lockdown;
pub mod privileges;
pub mod workspace_guard;
