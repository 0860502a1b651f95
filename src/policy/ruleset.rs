//! The ruleset as data: what the kernel will be told, computed without touching it. Pure,
//! so every decision here (merging, ports, DNS, gateway) is unit-tested without root.

use super::hostnet::HostNet;
use crate::policy::allowlist::{Entry, Port, Target};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The one nftables table sandbox-init owns (`inet sandbox_init`); nothing else is touched.
pub const TABLE: &str = "sandbox_init";
/// The base chains of the table.
pub const OUTPUT_CHAIN: &str = "output";
pub const INPUT_CHAIN: &str = "input";
/// DNS `filter` mode: the child's port-53 traffic to PID 1's forwarder.
pub const DNS_REDIRECT_CHAIN: &str = "dns_redirect";
/// The conntrack mark bit of a flow a root process opened to port 53 (one bit, so other
/// users of the mark keep theirs).
pub const ROOT_DNS_MARK: u32 = 0x2000_0000;
/// Where the DNS filter listens, and the port the child's DNS is redirected to.
pub const DNS_PORT: u16 = 53;
pub const DNS_LISTEN_V4: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub const DNS_LISTEN_V6: Ipv6Addr = Ipv6Addr::LOCALHOST;
/// The timeout of every element of a dynamic set: PID 1 re-adds an address well within it
/// while the answer that allowed it is valid.
pub const SET_TIMEOUT: Duration = Duration::from_secs(10);
/// The NFLOG group of the firewall's reject rules (any fixed number works: a netns has its
/// own groups; this one is unlikely to collide with a logger an image ships).
pub const NFLOG_GROUP: u16 = 7041;
/// The log prefix the reject rules carry (shown by `nft list`; also in every message).
pub const NFLOG_PREFIX: &str = "sandbox-init blocked";

/// The name of a dynamic set (filled by the DNS filter) for one port group (`None`: every
/// port) and family.
pub fn set_name(group: Option<Port>, v6: bool) -> String {
    let fam = if v6 { "v6" } else { "v4" };
    match group {
        None => format!("dyn_any_{fam}"),
        Some(p) => format!("dyn_{}{}_{fam}", p.proto, p.number),
    }
}

/// Addresses allowed for one port (or for every port): single addresses go into kernel
/// sets, networks become one rule each (sets of rustables 0.9 cannot hold intervals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrGroup {
    pub v4: BTreeSet<Ipv4Addr>,
    pub v6: BTreeSet<Ipv6Addr>,
    /// Merged, non-overlapping networks (the kernel rejects a batch with overlaps).
    pub nets: Vec<IpNet>,
}

impl AddrGroup {
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty() && self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let in_set = match ip {
            IpAddr::V4(a) => self.v4.contains(&a),
            IpAddr::V6(a) => self.v6.contains(&a),
        };
        in_set || self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Networks are merged (adjacent single addresses are not: they stay set elements, one
    /// lookup, instead of becoming a rule each); whatever a network or `covered_by`
    /// already allows is left out.
    fn from_nets(nets: Vec<IpNet>, covered_by: Option<&AddrGroup>) -> AddrGroup {
        let (singles, wide): (Vec<IpNet>, Vec<IpNet>) = nets
            .into_iter()
            .partition(|n| n.prefix_len() == n.max_prefix_len());
        let covered = |net: &IpNet| {
            covered_by.is_some_and(|any| {
                any.nets.iter().any(|n| n.contains(net))
                    || (net.prefix_len() == net.max_prefix_len() && any.contains(net.addr()))
            })
        };
        let mut g = AddrGroup {
            nets: IpNet::aggregate(&wide)
                .into_iter()
                .filter(|n| !covered(n))
                .collect(),
            ..AddrGroup::default()
        };
        for n in singles {
            if covered(&n) || g.nets.iter().any(|w| w.contains(&n)) {
                continue;
            }
            match n.addr() {
                IpAddr::V4(a) => {
                    g.v4.insert(a);
                }
                IpAddr::V6(a) => {
                    g.v6.insert(a);
                }
            }
        }
        g
    }
}

/// Who may send DNS past the resolvers of /etc/resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootDns {
    /// Nobody: the resolvers are reachable directly.
    Off,
    /// Sockets owned by uid 0 (a loopback resolver such as Docker's 127.0.0.11 forwarding
    /// from inside this namespace), to these upstream servers only.
    To(Vec<IpAddr>),
    /// As above, to any server: the upstream is not known from inside the container.
    Any,
}

/// With the credential broker on: destinations only the broker's uid may reach (the API's
/// fixed ranges and the upstream's own address). Everyone else, the sandboxed user
/// included, is rejected there before the allowlist is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRoute {
    pub uid: u32,
    pub nets: Vec<IpNet>,
}

impl BrokerRoute {
    /// The networks of the `anthropic` preset when it is selected, and the upstream's host
    /// when `upstream` (the container's ANTHROPIC_BASE_URL) names an address. An upstream
    /// named by a host name keeps that name's allowlist treatment (the broker's own DNS
    /// goes through the same path as everyone's).
    pub fn new(uid: u32, presets: &[String], upstream: Option<&str>) -> BrokerRoute {
        let mut nets: Vec<IpNet> = vec![];
        if presets.iter().any(|p| p == "anthropic") {
            let preset = super::presets::lookup("anthropic").map(|p| p.entries);
            for e in preset.into_iter().flatten() {
                if let Ok(Entry {
                    target: Target::Net(n),
                    ..
                }) = e.parse::<Entry>()
                {
                    nets.push(n);
                }
            }
        }
        if let Some(ip) = upstream.and_then(url_address) {
            nets.push(IpNet::from(ip));
        }
        BrokerRoute {
            uid,
            nets: IpNet::aggregate(&nets),
        }
    }
}

/// The address in `scheme://[user@]HOST[:port][/path]` when HOST is one.
fn url_address(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    host.split(':').next()?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every port and protocol.
    pub any: AddrGroup,
    /// TCP or UDP to one port.
    pub ports: BTreeMap<Port, AddrGroup>,
    /// udp+tcp 53 for every user; loopback resolvers are covered by the loopback rule.
    pub dns: Vec<IpAddr>,
    pub root_dns: RootDns,
    /// Gateway addresses rejected before the allowlist is consulted.
    pub blocked_gateways: Vec<IpAddr>,
    /// One line each, for the log.
    pub warnings: Vec<String>,
    /// DNS `filter` mode: the child's DNS goes to PID 1's forwarder only, and addresses of
    /// names live in the dynamic sets below (with a timeout), not in the static ones.
    pub filter: bool,
    /// Per port group (None = every port), the dynamic sets and the addresses the names
    /// resolved to at start. Empty unless `filter`.
    pub dynamic: BTreeMap<Option<Port>, AddrGroup>,
    /// The resolvers of /etc/resolv.conf: the forwarder's upstream servers.
    pub upstreams: Vec<IpAddr>,
    /// Loopback resolvers (Docker's 127.0.0.11): closed to the child in `filter` mode.
    pub loopback_resolvers: Vec<IpAddr>,
    /// Every resolver a process of the container asks (those of /etc/resolv.conf and
    /// Docker's ExtServers) but 127.0.0.1 and ::1: in both modes no user but root may send
    /// from one of these addresses to a local socket, so nobody answers in their name.
    pub resolver_addrs: Vec<IpAddr>,
    /// The credential broker's own destinations, when it runs.
    pub broker: Option<BrokerRoute>,
}

impl Plan {
    /// Gives `route`'s destinations to the broker's uid alone: they leave every group of
    /// the allowlist, and the builder puts the broker's accept and everyone else's reject
    /// before it.
    pub fn with_broker(mut self, route: BrokerRoute) -> Plan {
        let mine = |ip: IpAddr| route.nets.iter().any(|n| n.contains(&ip));
        let covered = |net: &IpNet| route.nets.iter().any(|n| n.contains(net));
        for g in std::iter::once(&mut self.any).chain(self.ports.values_mut()) {
            g.v4.retain(|a| !mine(IpAddr::V4(*a)));
            g.v6.retain(|a| !mine(IpAddr::V6(*a)));
            g.nets.retain(|n| !covered(n));
        }
        self.broker = Some(route);
        self
    }
}

/// The inputs: validated entries, the addresses each name resolved to (failed names are
/// absent), and the host facts.
pub fn build(
    entries: &[Entry],
    resolved: &BTreeMap<String, Vec<IpAddr>>,
    host: &HostNet,
    allow_gateway: bool,
) -> Plan {
    build_mode(entries, resolved, host, allow_gateway, false)
}

/// As `build`; `filter` selects the DNS-aware mode.
pub fn build_mode(
    entries: &[Entry],
    resolved: &BTreeMap<String, Vec<IpAddr>>,
    host: &HostNet,
    allow_gateway: bool,
    filter: bool,
) -> Plan {
    let mut warnings = vec![];
    let mut dynamic: BTreeMap<Option<Port>, AddrGroup> = BTreeMap::new();
    let is_gw = |ip: &IpAddr| host.gateways.contains(ip);
    // Gateways named exactly by an entry are opened; a wider network only warns.
    let mut opened: BTreeSet<IpAddr> = BTreeSet::new();
    let mut wildcards = vec![];
    let mut nets_by_port: BTreeMap<Option<Port>, Vec<IpNet>> = BTreeMap::new();

    for e in entries {
        let nets = nets_by_port.entry(e.port).or_default();
        match &e.target {
            Target::Net(n) => {
                if n.prefix_len() == n.max_prefix_len() && is_gw(&n.addr()) {
                    opened.insert(n.addr());
                } else if !allow_gateway {
                    for gw in host.gateways.iter().filter(|g| n.contains(*g)) {
                        warnings.push(format!(
                            "{e} covers the default gateway {gw}, which stays blocked \
                             (allow it with --allow-gateway or by its own address)"
                        ));
                    }
                }
                nets.push(*n);
            }
            Target::Host(name) | Target::Wildcard(name) => {
                if matches!(e.target, Target::Wildcard(_)) {
                    wildcards.push(e.to_string());
                }
                let mut dynamic = filter.then(|| dynamic.entry(e.port).or_default());
                for ip in resolved.get(name).into_iter().flatten() {
                    if is_gw(ip) && !allow_gateway {
                        warnings.push(format!(
                            "{name} resolves to the default gateway {ip}; not allowed \
                             (use --allow-gateway or allow {ip} itself)"
                        ));
                        continue;
                    }
                    match (ip, dynamic.as_deref_mut()) {
                        (IpAddr::V4(a), Some(d)) => {
                            d.v4.insert(*a);
                        }
                        (IpAddr::V6(a), Some(d)) => {
                            d.v6.insert(*a);
                        }
                        (_, None) => nets.push(IpNet::from(*ip)),
                    }
                }
            }
        }
    }
    if !wildcards.is_empty() && !filter {
        warnings.push(format!(
            "{}: only the apex name is allowed in dns=resolver mode; subdomains need the \
             DNS-aware mode (dns = filter)",
            wildcards.join(", ")
        ));
    }
    if allow_gateway {
        let any = nets_by_port.entry(None).or_default();
        any.extend(host.gateways.iter().map(|g| IpNet::from(*g)));
        opened.extend(host.gateways.iter().copied());
    }

    let any = AddrGroup::from_nets(nets_by_port.remove(&None).unwrap_or_default(), None);
    let ports = nets_by_port
        .into_iter()
        .filter_map(|(p, nets)| Some((p?, AddrGroup::from_nets(nets, Some(&any)))))
        .filter(|(_, g)| !g.is_empty())
        .collect();

    let mut dns: Vec<IpAddr> = host
        .resolvers
        .iter()
        .filter(|r| !r.is_loopback())
        .copied()
        .collect();
    let loopback_resolvers: Vec<IpAddr> = host
        .resolvers
        .iter()
        .filter(|r| r.is_loopback())
        .copied()
        .collect();
    let mut root_dns = if !loopback_resolvers.is_empty() {
        match &host.ext_servers {
            Some(list) if !list.is_empty() => RootDns::To(list.clone()),
            _ => RootDns::Any,
        }
    } else {
        RootDns::Off
    };
    if filter {
        // Only PID 1's forwarder (root) talks to the resolvers; the child talks to it.
        let direct = std::mem::take(&mut dns);
        root_dns = match root_dns {
            RootDns::Any => RootDns::Any,
            RootDns::To(mut l) => {
                l.extend(
                    direct
                        .iter()
                        .filter(|d| !l.contains(d))
                        .copied()
                        .collect::<Vec<_>>(),
                );
                RootDns::To(l)
            }
            RootDns::Off if direct.is_empty() => RootDns::Off,
            RootDns::Off => RootDns::To(direct),
        };
    }
    // 127.0.0.1 and ::1 are the source of all the user's own loopback traffic: a resolver
    // there is guarded by its port (53) alone.
    let mut resolver_addrs: Vec<IpAddr> = vec![];
    for a in host
        .resolvers
        .iter()
        .chain(host.ext_servers.iter().flatten())
    {
        let own = *a == IpAddr::V4(Ipv4Addr::LOCALHOST) || *a == IpAddr::V6(Ipv6Addr::LOCALHOST);
        if !own && !resolver_addrs.contains(a) {
            resolver_addrs.push(*a);
        }
    }
    let blocked_gateways = host
        .gateways
        .iter()
        .filter(|g| !opened.contains(g))
        .copied()
        .collect();
    Plan {
        any,
        ports,
        dns,
        root_dns,
        blocked_gateways,
        warnings,
        filter,
        dynamic,
        upstreams: host.resolvers.clone(),
        loopback_resolvers: if filter { loopback_resolvers } else { vec![] },
        resolver_addrs,
        broker: None,
    }
}

impl fmt::Display for Plan {
    /// The plan as `check` prints it, in rule order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(" ")
            }
        };
        writeln!(f, "  table inet sandbox_init (replaced atomically)")?;
        if self.filter {
            writeln!(
                f,
                "  dns_redirect (nat output, before Docker's): udp+tcp 53 of every user but \
                 root -> PID 1's DNS filter on 127.0.0.1 / ::1 port 53"
            )?;
        }
        writeln!(f, "  output (policy drop):")?;
        // Answering for a resolver takes its address or port 53; riding a flow someone
        // else planted takes a root query in the reply direction: both are dropped.
        writeln!(
            f,
            "    drop    every user but root: from port 53, or to loopback from a resolver \
             address ({})",
            list(self.resolver_addrs.iter().map(|a| a.to_string()).collect())
        )?;
        writeln!(
            f,
            "    drop    root's udp+tcp 53 in a flow root did not open (conntrack mark)"
        )?;
        if self.filter {
            writeln!(
                f,
                "    accept  udp+tcp 53 to the DNS filter; reject other DNS of every user but root"
            )?;
            if !self.loopback_resolvers.is_empty() {
                writeln!(
                    f,
                    "    reject  every user but root to the loopback resolver {}",
                    list(
                        self.loopback_resolvers
                            .iter()
                            .map(|a| a.to_string())
                            .collect()
                    )
                )?;
            }
        }
        writeln!(
            f,
            "    accept  loopback; ct established,related; icmpv6 133-136"
        )?;
        writeln!(
            f,
            "    accept  udp+tcp 53 to {}",
            list(self.dns.iter().map(|a| a.to_string()).collect())
        )?;
        match &self.root_dns {
            RootDns::Off => {}
            RootDns::Any => writeln!(
                f,
                "    accept  udp+tcp 53 from uid 0 only (loopback resolver upstream), any server"
            )?,
            RootDns::To(l) => writeln!(
                f,
                "    accept  udp+tcp 53 from uid 0 only (loopback resolver upstream) to {}",
                list(l.iter().map(|a| a.to_string()).collect())
            )?,
        }
        if !self.blocked_gateways.is_empty() {
            writeln!(
                f,
                "    reject  gateway {}",
                list(
                    self.blocked_gateways
                        .iter()
                        .map(|a| a.to_string())
                        .collect()
                )
            )?;
        }
        if let Some(b) = &self.broker {
            let nets = list(b.nets.iter().map(|n| n.to_string()).collect());
            writeln!(
                f,
                "    accept  the credential broker (uid {}) to {nets}",
                b.uid
            )?;
            writeln!(
                f,
                "    reject  every other user to {nets} (the sandboxed user reaches the API \
                 through the broker only)"
            )?;
        }
        let group = |f: &mut fmt::Formatter<'_>, what: &str, g: &AddrGroup| {
            let mut items: Vec<String> = g.v4.iter().map(|a| a.to_string()).collect();
            items.extend(g.v6.iter().map(|a| a.to_string()));
            items.extend(g.nets.iter().map(|n| n.to_string()));
            writeln!(f, "    accept  {what}: {}", list(items))
        };
        group(f, "any port", &self.any)?;
        for (p, g) in &self.ports {
            group(f, &format!("{} {}", p.proto, p.number), g)?;
        }
        for (p, g) in &self.dynamic {
            let what = p.map_or("any port".to_string(), |p| {
                format!("{} {}", p.proto, p.number)
            });
            group(
                f,
                &format!("{what}, names (answers of the DNS filter, expiring)"),
                g,
            )?;
        }
        writeln!(
            f,
            "    reject  everything else (tcp reset / icmpx admin-prohibited, counted)"
        )?;
        writeln!(
            f,
            "  input (policy drop): accept loopback; ct established,related; icmpv6 133-136"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Proto;

    fn entries(list: &[&str]) -> Vec<Entry> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn resolved(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<IpAddr>> {
        list.iter()
            .map(|(n, a)| (n.to_string(), a.iter().map(|s| ip(s)).collect()))
            .collect()
    }
    fn host() -> HostNet {
        HostNet {
            resolvers: vec![ip("10.77.0.53")],
            ext_servers: None,
            gateways: vec![ip("10.77.0.1"), ip("fd77::1")],
        }
    }
    #[test]
    fn the_broker_alone_gets_the_api_ranges_and_the_upstream_address() {
        let presets = vec!["anthropic".to_string(), "npm".to_string()];
        let route = BrokerRoute::new(65432, &presets, Some("https://user@10.77.0.10:8443/v1"));
        let shown: Vec<String> = route.nets.iter().map(|n| n.to_string()).collect();
        assert!(shown.contains(&"160.79.104.0/23".to_string()), "{shown:?}");
        assert!(shown.contains(&"2607:6bc0::/48".to_string()), "{shown:?}");
        assert!(shown.contains(&"10.77.0.10/32".to_string()), "{shown:?}");
        assert_eq!(url_address("http://[fd77::10]:80"), Some(ip("fd77::10")));
        assert_eq!(url_address("https://api.example.test/x"), None);
        assert!(BrokerRoute::new(1, &[], Some("https://gw.test"))
            .nets
            .is_empty());

        let plan = build(
            &entries(&[
                "160.79.104.0/23",
                "10.77.0.10",
                "10.77.0.10:443",
                "10.9.9.9",
                "npmjs.org",
            ]),
            &resolved(&[("npmjs.org", &["160.79.104.7", "10.8.8.8"])]),
            &host(),
            false,
        )
        .with_broker(route);
        let all: Vec<IpAddr> = std::iter::once(&plan.any)
            .chain(plan.ports.values())
            .flat_map(|g| {
                g.v4.iter()
                    .map(|a| IpAddr::V4(*a))
                    .chain(g.v6.iter().map(|a| IpAddr::V6(*a)))
                    .chain(g.nets.iter().map(|n| n.addr()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for gone in ["160.79.104.0", "160.79.104.7", "10.77.0.10"] {
            assert!(
                !all.contains(&ip(gone)),
                "{gone} still in the allowlist: {all:?}"
            );
        }
        for kept in ["10.9.9.9", "10.8.8.8"] {
            assert!(all.contains(&ip(kept)), "{kept} lost: {all:?}");
        }
        let text = plan.to_string();
        assert!(text.contains("credential broker (uid 65432)"), "{text}");
        assert!(text.contains("reject  every other user to"), "{text}");
    }

    fn tcp(n: u16) -> Port {
        Port {
            proto: Proto::Tcp,
            number: n,
        }
    }

    #[test]
    fn names_fill_both_families_and_duplicates_are_harmless() {
        let p = build(
            &entries(&["a.test", "b.test", "a.test"]),
            &resolved(&[
                ("a.test", &["10.77.0.2", "fd77::2"]),
                ("b.test", &["10.77.0.2", "10.77.0.3"]),
            ]),
            &host(),
            false,
        );
        assert_eq!(
            p.any.v4.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["10.77.0.2", "10.77.0.3"]
        );
        assert_eq!(p.any.v6.len(), 1);
        assert!(p.any.nets.is_empty());
        assert!(p.ports.is_empty());
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn unresolved_names_contribute_nothing() {
        let p = build(&entries(&["gone.test"]), &BTreeMap::new(), &host(), false);
        assert!(p.any.is_empty());
    }

    #[test]
    fn networks_are_merged_and_never_overlap() {
        let p = build(
            &entries(&[
                "10.1.0.0/24",
                "10.1.1.0/24",
                "10.1.0.128/25",
                "10.9.9.9",
                "10.1.0.5",
                "2001:db8::/32",
                "2001:db8:1::/48",
            ]),
            &BTreeMap::new(),
            &host(),
            false,
        );
        let nets: Vec<String> = p.any.nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.1.0.0/23", "2001:db8::/32"]);
        assert!(p.any.v4.contains(&"10.9.9.9".parse().unwrap()));
        // inside a network: no separate element
        assert_eq!(p.any.v4.len(), 1);
    }

    #[test]
    fn ports_group_by_protocol_and_skip_what_any_port_covers() {
        let p = build(
            &entries(&[
                "web.test:443",
                "10.2.0.0/16:443",
                "dns.test:53/udp",
                "10.3.0.0/16",
                "10.3.4.5:22",
            ]),
            &resolved(&[("web.test", &["10.77.0.4"]), ("dns.test", &["fd77::53"])]),
            &host(),
            false,
        );
        let web = &p.ports[&tcp(443)];
        assert!(web.v4.contains(&"10.77.0.4".parse().unwrap()));
        assert_eq!(web.nets, vec!["10.2.0.0/16".parse::<IpNet>().unwrap()]);
        let udp53 = &p.ports[&Port {
            proto: Proto::Udp,
            number: 53,
        }];
        assert!(udp53.v6.contains(&"fd77::53".parse().unwrap()));
        // 10.3.4.5:22 is inside an any-port network: no separate rule
        assert!(!p.ports.contains_key(&tcp(22)));
        assert!(
            !p.any.contains(ip("10.77.0.4")),
            "a port entry must not open every port"
        );
    }

    #[test]
    fn gateway_blocked_unless_opened() {
        let h = host();
        // default: both gateways blocked; a wide network covering one only warns
        let p = build(&entries(&["10.0.0.0/8"]), &BTreeMap::new(), &h, false);
        assert_eq!(p.blocked_gateways, h.gateways);
        assert!(
            p.warnings.iter().any(|w| w.contains("10.77.0.1")),
            "{:?}",
            p.warnings
        );
        // a name resolving to the gateway does not open it
        let p = build(
            &entries(&["sneaky.test"]),
            &resolved(&[("sneaky.test", &["10.77.0.1", "10.77.0.9"])]),
            &h,
            false,
        );
        assert!(!p.any.contains(ip("10.77.0.1")));
        assert!(p.any.contains(ip("10.77.0.9")));
        assert_eq!(p.blocked_gateways.len(), 2);
        // the exact address opens that one only
        let p = build(&entries(&["10.77.0.1:8080"]), &BTreeMap::new(), &h, false);
        assert_eq!(p.blocked_gateways, vec![ip("fd77::1")]);
        assert!(p.ports[&tcp(8080)].contains(ip("10.77.0.1")));
        // allow_gateway opens the addresses, not their subnets
        let p = build(&[], &BTreeMap::new(), &h, true);
        assert!(p.blocked_gateways.is_empty());
        assert!(p.any.contains(ip("10.77.0.1")) && p.any.contains(ip("fd77::1")));
        assert!(!p.any.contains(ip("10.77.0.2")));
        assert!(p.any.nets.is_empty());
    }

    #[test]
    fn dns_only_to_resolvers_and_root_upstream_for_loopback_resolvers() {
        let mut h = host();
        let p = build(&[], &BTreeMap::new(), &h, false);
        assert_eq!(p.dns, vec![ip("10.77.0.53")]);
        assert_eq!(p.root_dns, RootDns::Off);
        // Docker's embedded DNS: loopback, forwarding upstream as root
        h.resolvers = vec![ip("127.0.0.11")];
        let p = build(&[], &BTreeMap::new(), &h, false);
        assert!(p.dns.is_empty());
        assert_eq!(p.root_dns, RootDns::Any);
        h.ext_servers = Some(vec![ip("192.168.65.7")]);
        let p = build(&[], &BTreeMap::new(), &h, false);
        assert_eq!(p.root_dns, RootDns::To(vec![ip("192.168.65.7")]));
        // no resolver at all: no DNS allowance
        h.resolvers.clear();
        let p = build(&[], &BTreeMap::new(), &h, false);
        assert!(p.dns.is_empty());
        assert_eq!(p.root_dns, RootDns::Off);
    }

    #[test]
    fn wildcards_allow_the_apex_and_warn_once() {
        let p = build(
            &entries(&["*.a.test", "*.b.test:443"]),
            &resolved(&[("a.test", &["10.77.0.5"]), ("b.test", &["10.77.0.6"])]),
            &host(),
            false,
        );
        assert!(p.any.contains(ip("10.77.0.5")));
        assert!(p.ports[&tcp(443)].contains(ip("10.77.0.6")));
        let w: Vec<_> = p
            .warnings
            .iter()
            .filter(|w| w.contains("subdomains"))
            .collect();
        assert_eq!(w.len(), 1, "{:?}", p.warnings);
        assert!(w[0].contains("*.a.test") && w[0].contains("*.b.test:443"));
    }

    #[test]
    fn filter_mode_moves_names_to_dynamic_sets_and_dns_to_root() {
        let mut h = host();
        let p = build_mode(
            &entries(&["a.test", "*.w.test:443", "10.5.0.0/16", "10.6.0.1"]),
            &resolved(&[
                ("a.test", &["10.77.0.5", "fd77::5"]),
                ("w.test", &["10.77.0.6"]),
            ]),
            &h,
            false,
            true,
        );
        assert!(p.filter);
        // names: in the dynamic sets only; addresses and networks: static
        assert!(!p.any.contains(ip("10.77.0.5")));
        assert!(p.any.contains(ip("10.6.0.1")));
        assert_eq!(p.any.nets.len(), 1);
        assert!(p.ports.is_empty());
        assert!(p.dynamic[&None].contains(ip("10.77.0.5")));
        assert!(p.dynamic[&None].contains(ip("fd77::5")));
        assert!(p.dynamic[&Some(tcp(443))].contains(ip("10.77.0.6")));
        // no apex-only warning: wildcards are real here
        assert!(
            p.warnings.iter().all(|w| !w.contains("subdomains")),
            "{:?}",
            p.warnings
        );
        // the child reaches no resolver; root (the forwarder) reaches them
        assert!(p.dns.is_empty());
        assert_eq!(p.root_dns, RootDns::To(vec![ip("10.77.0.53")]));
        assert_eq!(p.upstreams, vec![ip("10.77.0.53")]);
        assert!(p.loopback_resolvers.is_empty());
        // Docker's embedded DNS: root forwards through it, the child is kept off it
        h.resolvers = vec![ip("127.0.0.11")];
        h.ext_servers = Some(vec![ip("192.168.65.7")]);
        let p = build_mode(&[], &BTreeMap::new(), &h, false, true);
        assert_eq!(p.loopback_resolvers, vec![ip("127.0.0.11")]);
        assert_eq!(p.root_dns, RootDns::To(vec![ip("192.168.65.7")]));
        assert!(p.to_string().contains("loopback resolver 127.0.0.11"));
        // a name entry whose name did not resolve still gets its (empty) sets
        let p = build_mode(
            &entries(&["gone.test:80"]),
            &BTreeMap::new(),
            &host(),
            false,
            true,
        );
        assert!(p.dynamic[&Some(tcp(80))].is_empty());
    }

    #[test]
    fn nobody_but_root_sends_from_a_resolver_address_in_either_mode() {
        let mut h = host();
        h.resolvers = vec![
            ip("127.0.0.11"),
            ip("10.77.0.53"),
            ip("127.0.0.1"),
            ip("::1"),
        ];
        h.ext_servers = Some(vec![ip("192.168.65.7"), ip("10.77.0.53")]);
        for filter in [false, true] {
            let p = build_mode(&[], &BTreeMap::new(), &h, false, filter);
            // the user's own loopback traffic comes from 127.0.0.1 and ::1: never listed
            assert_eq!(
                p.resolver_addrs,
                vec![ip("127.0.0.11"), ip("10.77.0.53"), ip("192.168.65.7")]
            );
            let shown = p.to_string();
            assert!(
                shown.contains("from port 53, or to loopback from a resolver address"),
                "{shown}"
            );
            assert!(shown.contains("in a flow root did not open"), "{shown}");
            let pos = |needle: &str| shown.find(needle).unwrap();
            assert!(pos("from port 53") < pos("accept  loopback"));
        }
    }

    #[test]
    fn display_lists_rules_in_order() {
        let p = build(
            &entries(&["10.5.0.0/16", "x.test:443"]),
            &resolved(&[("x.test", &["10.77.0.7"])]),
            &host(),
            false,
        );
        let s = p.to_string();
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in {s}"));
        assert!(pos("loopback") < pos("udp+tcp 53 to 10.77.0.53"));
        assert!(pos("53 to") < pos("reject  gateway 10.77.0.1 fd77::1"));
        assert!(pos("gateway") < pos("any port: 10.5.0.0/16"));
        assert!(pos("tcp 443: 10.77.0.7") < pos("everything else"));
    }
}
