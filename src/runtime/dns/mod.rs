//! DNS `filter` mode: PID 1 answers the child's DNS itself. Only allowlisted names are
//! resolved (upstream, through the resolvers of /etc/resolv.conf); their addresses enter the
//! firewall's dynamic sets before the answer is released and expire after it; every other
//! name gets NXDOMAIN at once and never leaves the container.

mod events;
pub mod forwarder;
mod framing;
mod retry;
mod server;
pub mod sets;
pub mod upstream;
pub mod wire;

use crate::policy::names as policy;
use crate::runtime::report::SharedReporter;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

/// The forwarder for the names the firewall was built from (`policy`), asking `upstreams`
/// and seeded with the names `resolved` at start. Runs before the command starts (binding
/// port 53 needs PID 1's privileges).
pub fn filter(
    policy: policy::Policy,
    upstreams: &[IpAddr],
    resolved: &BTreeMap<String, Vec<IpAddr>>,
    reporter: SharedReporter,
) -> Result<forwarder::Forwarder, String> {
    let writer = match sets::SetWriter::open(crate::policy::ruleset::TABLE) {
        Ok(w) => Some(w),
        Err(e) => return Err(format!("DNS filter: cannot open a netlink socket: {e}")),
    };
    let mut f = forwarder::Forwarder::bind(policy, upstreams, writer, reporter)?;
    let now = Instant::now();
    for (name, addrs) in resolved {
        f.seed_learned(name, addrs, now);
    }
    Ok(f)
}
