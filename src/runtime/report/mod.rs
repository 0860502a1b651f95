//! Telling the user what the sandbox blocked and exactly how to allow it. People switch
//! firewalls off when they cannot see what was blocked, so every blocked destination and
//! every denied DNS name becomes one line on stderr with the setting that would allow it.
//!
//! The sandboxed command chooses the names in these lines (it sends the DNS queries), and
//! users paste our advice into a shell on the host: names are printed escaped
//! (`shown_name`), and advice is only ever an `allowlist::Suggestion`, an entry the parser
//! reads back as exactly itself.
//!
//! The reporter is shared by PID 1's duties (the NFLOG reader sees blocked packets, the DNS
//! filter sees denied names and learns which name an address came from); all of them run
//! on PID 1's one thread, hence `Rc<RefCell<_>>`.

pub mod audit;
pub mod events;
pub mod live;
pub mod nflog;
pub mod reader;
pub mod session;
pub mod status;
pub mod terminal;

use crate::policy::allowlist::Suggestion;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

pub type SharedReporter = Rc<RefCell<Reporter>>;

/// Transport of a blocked packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    /// Any other IP protocol, by number.
    Other(u8),
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::Tcp => f.write_str("tcp"),
            Proto::Udp => f.write_str("udp"),
            Proto::Icmp => f.write_str("icmp"),
            Proto::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// One thing the sandbox refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    Blocked {
        proto: Proto,
        addr: IpAddr,
        port: Option<u16>,
    },
    DeniedName {
        name: String,
    },
}

/// `ADDR:PORT` or `[V6]:PORT`, or the bare address without a port.
pub fn endpoint(addr: IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (IpAddr::V4(a), Some(p)) => format!("{a}:{p}"),
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, None) => a.to_string(),
    }
}

/// Text the sandboxed command chose (a DNS name) as we print it: the bytes of host names
/// (`a-z`, `0-9`, `.`, `-`, `_`) as they are, every other byte as `\xNN`. The forwarder
/// writes a byte that has no place in a label (a dot inside a label, a space, a control
/// byte, a backslash) as `\DDD`; that becomes `\xNN` as well, so a dot inside a label
/// never looks like a label boundary. The result holds no byte a terminal or a shell acts
/// on.
pub fn shown_name(name: &str) -> String {
    let b = name.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(u8::is_ascii_digit))
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u8>().ok());
        let (byte, len) = match escaped {
            Some(v) => (v, 4),
            None => (b[i], 1),
        };
        if len == 1 && matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("\\x{byte:02x}"));
        }
        i += len;
    }
    out
}

/// The allowlist entry that would let this through: by name when the address came from
/// one (addresses of names rotate) and that name is a host name the allowlist accepts,
/// else by address. `None` only when no entry can express it (port 0).
pub fn suggestion(
    proto: Proto,
    addr: IpAddr,
    port: Option<u16>,
    name: Option<&str>,
) -> Option<Suggestion> {
    use crate::policy::allowlist::{Entry, Port, Proto as P, Target};
    let port = match (proto, port) {
        (Proto::Tcp, Some(number)) => Some(Port {
            proto: P::Tcp,
            number,
        }),
        (Proto::Udp, Some(number)) => Some(Port {
            proto: P::Udp,
            number,
        }),
        // Other protocols have no port: only a bare entry (every port and protocol) allows them.
        _ => None,
    };
    let by_name = name.and_then(|n| {
        Suggestion::new(Entry {
            target: Target::Host(n.to_string()),
            port,
        })
    });
    by_name.or_else(|| {
        Suggestion::new(Entry {
            target: Target::Net(ipnet::IpNet::from(addr)),
            port,
        })
    })
}

/// "to allow it: SANDBOX_ALLOW=... (or --allow...)": the only place advice is worded.
/// `everything`: the packet had no port (ICMP and the like), so the bare entry we suggest
/// opens every port and protocol, which the user must know before pasting it.
fn advice(s: Option<&Suggestion>, everything: Option<Proto>, extra: &str) -> String {
    advice_in(s, everything, extra, live::live_target())
}

/// As `advice`; `live`: the running sandbox serves `sandbox-init allow` under a known
/// name, which the line then offers as the way to allow it without a restart.
fn advice_in(
    s: Option<&Suggestion>,
    everything: Option<Proto>,
    extra: &str,
    live: Option<&live::LiveTarget>,
) -> String {
    let now = s
        .zip(live)
        .and_then(|(s, t)| live::live_advice(s, t))
        .map_or(String::new(), |c| format!("; to allow it now: {c}"));
    let setting = match s {
        None => "; no allowlist entry can allow it".into(),
        Some(s) => {
            let wide = match everything {
                Some(p) if s.opens_every_port() => {
                    format!("; note: this opens every port and protocol to it, not only {p}")
                }
                _ => String::new(),
            };
            format!("; to allow it: SANDBOX_ALLOW={s} (or --allow{extra}{wide})")
        }
    };
    format!("{setting}{now}")
}

/// The one stderr line for an event.
pub fn line(event: &Event, name: Option<&str>) -> String {
    describe(event, name, false)
}

/// As `line`; `gateway`: the address is a blocked default gateway, which only its own
/// address (or `SANDBOX_ALLOW_GATEWAY=1`) opens, never a name resolving to it. Every
/// piece of text the command chose (a name) goes through `shown_name`, every entry
/// through `Suggestion`.
fn describe(event: &Event, name: Option<&str>, gateway: bool) -> String {
    match event {
        Event::Blocked { proto, addr, port } => {
            let name = name.filter(|_| !gateway);
            let s = suggestion(*proto, *addr, *port, name);
            let by_name = s.as_ref().is_some_and(|s| {
                matches!(s.entry().target, crate::policy::allowlist::Target::Host(_))
            });
            // (for a valid host name, `shown_name` changes nothing)
            let from = match name {
                _ if gateway => " (the default gateway)".to_string(),
                Some(n) if by_name => format!(" ({})", shown_name(n)),
                Some(n) => format!(" ({}: not a valid host name)", shown_name(n)),
                None => String::new(),
            };
            let everything = port.is_none().then_some(*proto);
            let extra = if gateway {
                "; SANDBOX_ALLOW_GATEWAY=1 opens the whole gateway"
            } else {
                ""
            };
            format!(
                "blocked {proto} {}{from}{}",
                endpoint(*addr, *port),
                advice(s.as_ref(), everything, extra)
            )
        }
        Event::DeniedName { name } => match Suggestion::for_name(name) {
            Some(s) => format!(
                "blocked dns name {} (not in the allowlist){}",
                shown_name(name),
                advice(Some(&s), None, "")
            ),
            None => format!(
                "blocked dns name {} (not in the allowlist): not a valid host name, so no \
                 allowlist entry can allow it",
                shown_name(name)
            ),
        },
    }
}

/// Lines shown at once before the rate limit applies, and the pace after that: a retry
/// loop or a scan over many destinations must not bury the command's own output.
pub const BURST: u32 = 10;
pub const REFILL: Duration = Duration::from_secs(2);
/// Distinct events remembered (dedup, counts): PID 1's memory stays bounded whatever the
/// command tries; beyond it events are still counted in total and logged.
pub const MAX_DISTINCT: usize = 4096;
/// Distinct recent events kept for `check`.
pub const RECENT: usize = 32;
/// Distinct denied names under one parent domain within `TUNNEL_WINDOW` that make it look
/// like DNS tunnelling (data hidden in the labels of names nobody resolves): reported as
/// one line for the domain, never one suggestion per random label.
pub const TUNNEL_NAMES: u64 = 20;
pub const TUNNEL_WINDOW: Duration = Duration::from_secs(60);
/// A denied name's line waits this long, so a fast flood under its domain is one line.
pub const NAME_HOLD: Duration = Duration::from_secs(1);

/// The domain a denied name is grouped under: the name without its first label.
pub fn parent_domain(name: &str) -> &str {
    match name.split_once('.') {
        Some((_, rest)) if !rest.is_empty() => rest,
        _ => name,
    }
}

/// What the tunnelling line, `check` and the audit summary say about a domain; `how_many`
/// says what was counted ("20 different names").
pub fn tunnelling_note(domain: &str, how_many: &str) -> String {
    format!(
        "{how_many} under {} look like DNS tunnelling (data hidden in the names); none was \
         resolved or left the container, and there is nothing to allow",
        shown_name(domain)
    )
}

/// Denied names under one parent domain, for the tunnelling check.
#[derive(Debug)]
struct NameGroup {
    /// Distinct names in the current window (at most TUNNEL_NAMES are kept).
    names: HashSet<String>,
    window_start: Instant,
    /// Names whose line waits for the hold to end.
    held: Vec<String>,
    tunnelling: bool,
    /// Every denied name under the domain, repeats included.
    events: u64,
}

/// A token bucket: `BURST` tokens, one more every `REFILL`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: u32,
    /// When the last token was added (or the bucket was last seen full).
    stamp: Instant,
}

impl Bucket {
    pub fn new(now: Instant) -> Bucket {
        Bucket {
            tokens: BURST,
            stamp: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= BURST {
            self.stamp = now;
            return;
        }
        let step = REFILL.as_millis().max(1);
        let n = now.saturating_duration_since(self.stamp).as_millis() / step;
        if n > 0 {
            self.tokens = (u128::from(self.tokens) + n).min(u128::from(BURST)) as u32;
            self.stamp = if self.tokens >= BURST {
                now
            } else {
                self.stamp + REFILL * n as u32
            };
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }

    /// When the next token arrives.
    pub fn next_at(&self) -> Instant {
        self.stamp + REFILL
    }
}

/// One distinct recent event, for `check`.
#[derive(Debug, Clone)]
struct Recent {
    event: Event,
    count: u64,
    last: SystemTime,
    /// Denied names under a domain that looks like tunnelling: one entry for the domain.
    tunnel: Option<String>,
}

/// Deduplicates and rate-limits the lines, remembers which name each address was resolved
/// from, writes every event to the audit log, keeps counts for the summary and `check`.
#[derive(Debug)]
pub struct Reporter {
    names: HashMap<IpAddr, String>,
    gateways: HashSet<IpAddr>,
    seen: HashSet<Event>,
    /// Every event, duplicates included, per distinct event (for the summary).
    counts: HashMap<Event, u64>,
    /// Events beyond MAX_DISTINCT distinct ones.
    uncounted: u64,
    total: u64,
    bucket: Bucket,
    /// New events not shown because of the rate limit, until the next note.
    suppressed: HashSet<Event>,
    suppressed_new: u64,
    suppressed_total: u64,
    recent: VecDeque<Recent>,
    audit: Option<audit::AuditLog>,
    audit_path: Option<String>,
    /// Denied names by parent domain, and the holds in the order they end.
    name_groups: HashMap<String, NameGroup>,
    holds: VecDeque<(Instant, String)>,
    /// Tunnelling lines waiting for the rate limit.
    tunnel_lines: VecDeque<String>,
    /// The recent distinct events, for the agent (see `events`).
    feed: events::Feed,
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter {
            names: HashMap::new(),
            gateways: HashSet::new(),
            seen: HashSet::new(),
            counts: HashMap::new(),
            uncounted: 0,
            total: 0,
            bucket: Bucket::new(Instant::now()),
            suppressed: HashSet::new(),
            suppressed_new: 0,
            suppressed_total: 0,
            recent: VecDeque::new(),
            audit: None,
            audit_path: None,
            name_groups: HashMap::new(),
            holds: VecDeque::new(),
            tunnel_lines: VecDeque::new(),
            feed: events::Feed::default(),
        }
    }
}

impl Reporter {
    pub fn shared() -> SharedReporter {
        Rc::new(RefCell::new(Reporter::default()))
    }

    /// An allowlisted name resolved to `addr` (at start, or through the DNS filter).
    pub fn learned(&mut self, addr: IpAddr, name: &str) {
        self.names.insert(addr, name.to_string());
    }

    pub fn name_of(&self, addr: IpAddr) -> Option<&str> {
        self.names.get(&addr).map(String::as_str)
    }

    /// The default gateways the firewall blocks (their suggestion is by address).
    pub fn set_gateways(&mut self, gateways: &[IpAddr]) {
        self.gateways = gateways.iter().copied().collect();
    }

    /// From now on every event is appended to `log`.
    pub fn set_audit(&mut self, log: audit::AuditLog, shown: &str) {
        self.audit = Some(log);
        self.audit_path = Some(shown.to_string());
    }

    /// Appends a line to the audit log, if there is one (changes of the live allowlist).
    pub fn audit_note(&mut self, v: &serde_json::Value) {
        if let Some(log) = self.audit.as_mut() {
            log.note(v);
        }
    }

    /// The name to show for an event (none for a gateway: names never open it).
    fn name_for<'a>(&'a self, event: &'a Event) -> Option<&'a str> {
        match event {
            Event::Blocked { addr, .. } if self.gateways.contains(addr) => None,
            Event::Blocked { addr, .. } => self.name_of(*addr),
            Event::DeniedName { name } => Some(name),
        }
    }

    /// Records an event; returns the line to print when it is new and the rate limit
    /// allows it (each distinct event is reported once: a retry loop must not flood the
    /// terminal). Every event goes to the audit log.
    pub fn record(&mut self, event: Event) -> Option<String> {
        self.record_at(event, Instant::now(), SystemTime::now())
    }

    pub fn record_at(&mut self, event: Event, now: Instant, wall: SystemTime) -> Option<String> {
        self.total += 1;
        if self.audit.is_some() {
            let name = self.name_for(&event).map(String::from);
            if let Some(log) = self.audit.as_mut() {
                log.record(&event, name.as_deref(), now, wall);
            }
        }
        let full = self.counts.len() >= MAX_DISTINCT;
        let mut first = false;
        match self.counts.get_mut(&event) {
            Some(n) => *n += 1,
            None if full => self.uncounted += 1,
            None => {
                self.counts.insert(event.clone(), 1);
                first = true;
            }
        }
        if let Event::DeniedName { name } = &event {
            let parent = parent_domain(name).to_string();
            let was = self.name_groups.get(&parent).is_some_and(|g| g.tunnelling);
            let line = self.denied_name(name, &parent, now);
            let tunnel = was || self.name_groups.get(&parent).is_some_and(|g| g.tunnelling);
            if tunnel && !was {
                // Its names seen before it looked like tunnelling fold into its entry.
                self.recent.retain(|r| {
                    !matches!(&r.event, Event::DeniedName { name } if parent_domain(name) == parent)
                });
                self.feed_tunnel(&parent, wall);
            } else if first && !tunnel {
                self.feed_event(&event, wall);
            }
            self.remember_recent(&event, wall, tunnel.then_some(parent));
            return line;
        }
        if first {
            self.feed_event(&event, wall);
        }
        self.remember_recent(&event, wall, None);
        self.show(event, now)
    }

    /// The line for a new event, deduplicated and within the rate limit.
    fn show(&mut self, event: Event, now: Instant) -> Option<String> {
        if self.seen.contains(&event) {
            return None;
        }
        if !self.bucket.take(now) {
            // Distinct new events not shown; past the cap every attempt counts (bounded
            // memory over an exact number).
            if self.suppressed.len() >= MAX_DISTINCT || self.suppressed.insert(event) {
                self.suppressed_new += 1;
            }
            self.suppressed_total += 1;
            return None;
        }
        self.suppressed.remove(&event);
        let gateway = matches!(&event, Event::Blocked { addr, .. } if self.gateways.contains(addr));
        let l = describe(&event, self.name_for(&event), gateway);
        if self.seen.len() < MAX_DISTINCT {
            self.seen.insert(event);
        }
        Some(l)
    }

    /// A denied name waits `NAME_HOLD` (see `due_lines`); once its parent domain has had
    /// `TUNNEL_NAMES` distinct names within `TUNNEL_WINDOW`, the domain gets one line
    /// saying it looks like tunnelling, and its names no line of their own.
    fn denied_name(&mut self, name: &str, parent: &str, now: Instant) -> Option<String> {
        if let Some(g) = self.name_groups.get_mut(parent) {
            g.events += 1;
            if g.tunnelling {
                return None;
            }
        } else if self.name_groups.len() >= MAX_DISTINCT {
            return self.show(Event::DeniedName { name: name.into() }, now);
        } else {
            self.name_groups.insert(
                parent.to_string(),
                NameGroup {
                    names: HashSet::new(),
                    window_start: now,
                    held: vec![],
                    tunnelling: false,
                    events: 1,
                },
            );
        }
        let event = Event::DeniedName { name: name.into() };
        let seen = self.seen.contains(&event);
        let g = self.name_groups.get_mut(parent)?;
        if now.saturating_duration_since(g.window_start) > TUNNEL_WINDOW {
            g.names.clear();
            g.window_start = now;
        }
        g.names.insert(name.to_string());
        if g.names.len() as u64 >= TUNNEL_NAMES {
            g.tunnelling = true;
            g.held.clear();
            g.names.clear();
            let line = format!(
                "blocked dns names: {}",
                tunnelling_note(parent, &format!("{TUNNEL_NAMES} different names"))
            );
            return self.tunnel_line(line, now);
        }
        if seen || g.held.iter().any(|h| h == name) {
            return None;
        }
        if g.held.is_empty() {
            self.holds.push_back((now + NAME_HOLD, parent.to_string()));
        }
        g.held.push(name.to_string());
        None
    }

    fn tunnel_line(&mut self, line: String, now: Instant) -> Option<String> {
        if self.tunnel_lines.is_empty() && self.bucket.take(now) {
            return Some(line);
        }
        if self.tunnel_lines.len() < RECENT {
            self.tunnel_lines.push_back(line);
        }
        None
    }

    /// Lines whose time has come: held denied names whose hold ended (all of them when
    /// `force`: the command has exited), and tunnelling lines the rate limit kept back.
    pub fn due_lines(&mut self, now: Instant, force: bool) -> Vec<String> {
        let mut out = vec![];
        while let Some((t, _)) = self.holds.front() {
            if !force && *t > now {
                break;
            }
            let Some((_, parent)) = self.holds.pop_front() else {
                break;
            };
            let held = self
                .name_groups
                .get_mut(&parent)
                .map(|g| std::mem::take(&mut g.held))
                .unwrap_or_default();
            for name in held {
                out.extend(self.show(Event::DeniedName { name }, now));
            }
        }
        while !self.tunnel_lines.is_empty() && (force || self.bucket.take(now)) {
            out.extend(self.tunnel_lines.pop_front());
        }
        out
    }

    fn remember_recent(&mut self, event: &Event, wall: SystemTime, tunnel: Option<String>) {
        let same = |r: &Recent| match (&tunnel, &r.tunnel) {
            (Some(a), Some(b)) => a == b,
            (None, None) => &r.event == event,
            _ => false,
        };
        if let Some(i) = self.recent.iter().position(same) {
            if let Some(mut r) = self.recent.remove(i) {
                r.count += 1;
                r.last = wall;
                self.recent.push_back(r);
            }
            return;
        }
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent {
            event: event.clone(),
            count: 1,
            last: wall,
            tunnel,
        });
    }

    /// The "N more not shown" line, once the rate limit lets a line through again.
    pub fn note_due(&mut self, now: Instant) -> Option<String> {
        if self.suppressed.is_empty() || !self.bucket.take(now) {
            return None;
        }
        self.note_final()
    }

    /// The pending note regardless of the rate limit (the command has exited).
    pub fn note_final(&mut self) -> Option<String> {
        if self.suppressed.is_empty() {
            return None;
        }
        let n = self.suppressed_new;
        self.suppressed.clear();
        self.suppressed_new = 0;
        let log = self
            .audit_path
            .as_ref()
            .map(|p| format!(" and the audit log {p}"))
            .unwrap_or_default();
        Some(format!(
            "blocked {n} more destination{} not shown (rate limit); `sandbox-init check` (docker \
             exec) lists the recent ones{log}",
            if n == 1 { "" } else { "s" }
        ))
    }

    /// When `note_due`, `due_lines` or the audit log's summary may have something to say.
    pub fn deadline(&self) -> Option<Instant> {
        let waiting = !self.suppressed.is_empty() || !self.tunnel_lines.is_empty();
        [
            waiting.then(|| self.bucket.next_at()),
            self.holds.front().map(|(t, _)| *t),
            self.audit.as_ref().and_then(|a| a.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Hands the audit lines of the last batch of events to the log's writer (and its
    /// summary, when one is due).
    pub fn flush(&mut self) {
        if let Some(log) = self.audit.as_mut() {
            log.flush(Instant::now(), SystemTime::now());
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Distinct events and how often each happened, most frequent first.
    pub fn summary(&self) -> Vec<(String, u64)> {
        let tunnelling = |name: &str| {
            self.name_groups
                .get(parent_domain(name))
                .is_some_and(|g| g.tunnelling)
        };
        let mut v: Vec<(String, u64)> = self
            .counts
            .iter()
            .filter(|(e, _)| !matches!(e, Event::DeniedName { name } if tunnelling(name)))
            .map(|(e, n)| {
                let what = match e {
                    Event::Blocked { proto, addr, port } => {
                        format!("{proto} {}", endpoint(*addr, *port))
                    }
                    Event::DeniedName { name } => format!("dns {}", shown_name(name)),
                };
                (what, *n)
            })
            .collect();
        // A domain that looks like tunnelling is one entry, whatever its random labels.
        for (d, g) in self.name_groups.iter().filter(|(_, g)| g.tunnelling) {
            v.push((
                format!("dns names under {} (tunnelling)", shown_name(d)),
                g.events,
            ));
        }
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// What `check` shows from a running sandbox: totals and the recent events, newest
    /// last, each with its count and the setting that would allow it.
    pub fn status(&self) -> serde_json::Value {
        let recent: Vec<serde_json::Value> = self
            .recent
            .iter()
            .map(|r| {
                if let Some(d) = &r.tunnel {
                    let n = self.name_groups.get(d).map_or(r.count, |g| g.events);
                    return serde_json::json!({
                        "time": audit::rfc3339(r.last), "event": "denied_names",
                        "proto": "dns", "addr": null, "port": null, "name": null,
                        "domain": d, "allow": null, "tunnelling": true, "count": n,
                        "line": format!(
                            "blocked dns names: {}",
                            tunnelling_note(d, &format!("{n} queries for names"))
                        ),
                    });
                }
                let mut v = audit::json(&r.event, self.name_for(&r.event), r.last);
                // All attempts when counted apart, else those since it became recent.
                v["count"] = self.counts.get(&r.event).copied().unwrap_or(r.count).into();
                let gateway =
                    matches!(&r.event, Event::Blocked { addr, .. } if self.gateways.contains(addr));
                v["line"] = describe(&r.event, self.name_for(&r.event), gateway).into();
                v
            })
            .collect();
        serde_json::json!({
            "events": self.total,
            "distinct": self.counts.len() as u64,
            // more distinct events than PID 1 keeps apart (MAX_DISTINCT)
            "distinct_capped": self.uncounted > 0,
            "not_shown": self.suppressed_total,
            "audit_log": self.audit_path,
            "audit_lines": self.audit.as_ref().map(|a| a.written),
            "audit_dropped": self.audit.as_ref().map(|a| a.dropped),
            "recent": recent,
        })
    }
}

/// What the reports need from the configuration, the user and the firewall.
pub struct Setup<'a> {
    /// The audit log asked for, if any.
    pub audit_log: Option<&'a std::path::Path>,
    /// The sandboxed user's uids (host and image) and groups: the audit log's directory
    /// should not be theirs to write.
    pub user_uids: [u32; 2],
    pub user_groups: &'a [u32],
    /// The gateways the firewall blocks; `None` when the firewall is off.
    pub blocked_gateways: Option<&'a [IpAddr]>,
    /// The NFLOG group, bound by [`listen`] before the firewall.
    pub nflog: Listening,
}

/// The socket bound to the reject rules' NFLOG group, or why there is none.
pub type Listening = Result<crate::sys::netlink::Socket, String>;

/// Binds the NFLOG group of the reject rules. Call it before the firewall: the kernel
/// discards the copy of a packet rejected while no socket is bound to the group, so a
/// connection blocked between the rules going live and a later bind (a `docker exec`
/// while PID 1 still starts) would be counted and never reported. Needs CAP_NET_ADMIN.
/// `firewall`: whether there will be reject rules at all.
pub fn listen(firewall: bool) -> Listening {
    if !firewall {
        return Err("the firewall is off".into());
    }
    nflog::bind(nflog::GROUP).inspect_err(|e| {
        log::warn!(
            "blocked destinations will not be reported (the firewall still blocks them): {e}"
        );
    })
}

/// Sets up reporting before the command starts (PID 1 is still root with its
/// capabilities): the audit log is opened, the blocked gateways noted. Returns the duty
/// that reads blocked packets from the NFLOG group bound before. Only a bad audit log path is an
/// error (the user asked for a log and would not get one); without NFLOG the firewall
/// still blocks and a warning says the reports are missing.
pub fn start(
    reporter: &SharedReporter,
    setup: Setup<'_>,
) -> audit::Result<Box<dyn crate::runtime::supervise::Duty>> {
    if let Some(path) = setup.audit_log {
        let log = audit::AuditLog::open(path)?;
        if audit::dir_writable_by(path, &setup.user_uids, setup.user_groups) {
            log::warn!(
                "the audit log {} lies in a directory the sandboxed user can write: the \
                 command cannot write the log, but it can remove or replace it; prefer a \
                 directory only root can write (e.g. a volume at /var/log/sandbox-init)",
                path.display()
            );
        }
        reporter
            .borrow_mut()
            .set_audit(log, &path.display().to_string());
    }
    if let Some(gateways) = setup.blocked_gateways {
        reporter.borrow_mut().set_gateways(gateways);
    }
    Ok(Box::new(reader::Reader::new(reporter.clone(), setup.nflog)))
}

/// Prints a report line on PID 1's stderr, unless the log level hides warnings (`-qq`).
/// Under an interactive TUI the terminal is in raw mode: a leading carriage return and a
/// CR LF keep the line from being drawn across the UI's own.
pub fn print(line: &str) {
    // While the command draws on the terminal, the session summary says it afterwards.
    if !log::log_enabled!(log::Level::Warn) || !terminal::reports_live() {
        return;
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = if tty {
        format!("\rsandbox-init: {line}\r\n")
    } else {
        format!("sandbox-init: {line}\n")
    };
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// After a session on a terminal: the log lines it held, then the summary of what was
/// blocked (`-qq` silences the summary as it does the report lines).
pub fn print_after_session(kept: &[String], summary: &[String]) {
    let mut text = String::new();
    for l in kept {
        text.push_str(l);
        text.push('\n');
    }
    if log::log_enabled!(log::Level::Warn) {
        for l in summary {
            text.push_str("sandbox-init: ");
            text.push_str(l);
            text.push('\n');
        }
    }
    // A command killed in raw mode leaves no line discipline to turn LF into CR LF.
    let text = text.replace('\n', "\r\n");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// How a log line of `level` starts after "sandbox-init: " (PID 1's and the broker's logs
/// read alike: info lines carry no word).
pub fn level_prefix(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error: ",
        log::Level::Warn => "warning: ",
        log::Level::Info => "",
        log::Level::Debug => "debug: ",
        log::Level::Trace => "trace: ",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_live_sandbox_offers_the_allow_command_too() {
        let live = |names| live::LiveTarget {
            container: "claude-p-1a2b3c4d".into(),
            names,
        };
        let s = suggestion(Proto::Tcp, ip("10.0.0.9"), Some(443), Some("reg.test"));
        assert_eq!(
            advice_in(s.as_ref(), None, "", Some(&live(true))),
            "; to allow it: SANDBOX_ALLOW=reg.test:443 (or --allow); to allow it now: \
             docker exec claude-p-1a2b3c4d sandbox-init allow reg.test:443"
        );
        // resolver mode: names only at the next start
        assert!(!advice_in(s.as_ref(), None, "", Some(&live(false))).contains("now"));
        let v6 = suggestion(Proto::Tcp, ip("2001:db8::5"), Some(22), None);
        assert!(advice_in(v6.as_ref(), None, "", Some(&live(false)))
            .ends_with("sandbox-init allow '[2001:db8::5]:22'"));
        // no suggestion, no command
        assert_eq!(
            advice_in(None, None, "", Some(&live(true))),
            "; no allowlist entry can allow it"
        );
    }

    #[test]
    fn lines_name_protocol_address_port_and_the_exact_setting() {
        let mut r = Reporter::default();
        r.learned(ip("104.16.1.1"), "registry.npmjs.org");
        let l = r
            .record(Event::Blocked {
                proto: Proto::Tcp,
                addr: ip("104.16.1.1"),
                port: Some(443),
            })
            .unwrap();
        assert_eq!(
            l,
            "blocked tcp 104.16.1.1:443 (registry.npmjs.org); to allow it: \
             SANDBOX_ALLOW=registry.npmjs.org:443 (or --allow)"
        );
        let l = r
            .record(Event::Blocked {
                proto: Proto::Tcp,
                addr: ip("2001:db8::5"),
                port: Some(22),
            })
            .unwrap();
        assert!(l.contains("blocked tcp [2001:db8::5]:22;"), "{l}");
        // brackets glob in a shell: quoted
        assert!(l.contains("SANDBOX_ALLOW='[2001:db8::5]:22' "), "{l}");
        let l = r
            .record(Event::Blocked {
                proto: Proto::Udp,
                addr: ip("10.0.0.9"),
                port: Some(123),
            })
            .unwrap();
        assert!(l.contains("blocked udp 10.0.0.9:123;"), "{l}");
        assert!(l.contains("SANDBOX_ALLOW=10.0.0.9:123/udp "), "{l}");
        // a denied name's line comes after its hold
        let t = Instant::now();
        let e = Event::DeniedName {
            name: "x.evil.test".into(),
        };
        assert_eq!(r.record_at(e, t, SystemTime::now()), None);
        assert!(r.due_lines(t, false).is_empty());
        let l = r.due_lines(t + NAME_HOLD, false).remove(0);
        assert!(l.starts_with("blocked dns name x.evil.test"), "{l}");
        assert!(l.contains("SANDBOX_ALLOW=x.evil.test "), "{l}");
    }

    #[test]
    fn every_suggestion_parses_as_an_allowlist_entry() {
        for (proto, addr, port, name) in [
            (Proto::Tcp, "1.2.3.4", Some(443), None),
            (Proto::Udp, "1.2.3.4", Some(53), None),
            (Proto::Tcp, "2001:db8::1", Some(443), None),
            (Proto::Udp, "2001:db8::1", Some(443), None),
            (Proto::Icmp, "2001:db8::1", None, None),
            (Proto::Tcp, "1.2.3.4", Some(443), Some("a.test")),
            (Proto::Udp, "2001:db8::1", Some(443), Some("a.test")),
            (Proto::Tcp, "1.2.3.4", Some(443), Some("a$(sh<x).a.test")),
        ] {
            let s = suggestion(proto, ip(addr), port, name).unwrap();
            let e = s
                .as_str()
                .parse::<crate::policy::allowlist::Entry>()
                .unwrap();
            assert_eq!(&e, s.entry());
        }
        assert!(suggestion(Proto::Tcp, ip("1.2.3.4"), Some(0), None).is_none());
    }

    /// Names the sandboxed command can send in a DNS query, in the forwarder's text form
    /// (a byte that has no place in a label is `\DDD`).
    const HOSTILE: &[&str] = &[
        "registry.example.org,0.0.0.0/0",
        "a$(sh<x)",
        "a`id`.test",
        "a'b\"c.test",
        "a\\032b.test",
        "a\\046allowed.test",
        "a\\027[31mred.test",
        "a\\092\\036.test",
        "x.test;rm",
        "x.test|sh",
        "x.test&&id",
        "x.test>f",
        "*.x.test",
        "x.test:443",
        "10.0.0.0/8",
        "x.test.",
        "X.TEST",
        "é.test",
    ];

    /// No byte a shell, a terminal or the `SANDBOX_ALLOW` split acts on.
    fn assert_inert(text: &str) {
        let bad: Vec<char> = text
            .chars()
            .filter(|c| ",$`'\"|&<>{}!#*?~\t\n\r".contains(*c) || c.is_control() || !c.is_ascii())
            .collect();
        assert!(bad.is_empty(), "{bad:?} in {text:?}");
    }

    /// The value after `SANDBOX_ALLOW=` as the shell gives it: one entry of the parser.
    fn pasted_entry(line: &str) -> Option<crate::policy::allowlist::Entry> {
        let rest = line.split("SANDBOX_ALLOW=").nth(1)?;
        let word = rest.split(' ').next()?;
        let value = match word.strip_prefix('\'') {
            Some(q) => q.strip_suffix('\'').expect("closed quote"),
            None => word,
        };
        assert!(!value.contains([',', ' ', '\'']), "{line}");
        Some(value.parse().unwrap_or_else(|e| panic!("{line}: {e}")))
    }

    #[test]
    fn hostile_names_are_shown_escaped_and_never_suggested() {
        let mut r = Reporter::default();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        // past the burst: one token per REFILL
        let mut tick = 0;
        let mut at = || {
            tick += 1;
            t0 + REFILL * tick
        };
        for (i, name) in HOSTILE.iter().enumerate() {
            let event = Event::DeniedName {
                name: name.to_string(),
            };
            // a denied name's line comes once its hold is over
            let t = at();
            assert_eq!(r.record_at(event, t, wall), None, "{name}: not held");
            let l = r
                .due_lines(t + NAME_HOLD, false)
                .pop()
                .unwrap_or_else(|| panic!("{name}: no line"));
            let head = l.split(" (not in the allowlist)").next().unwrap();
            assert_inert(head);
            assert!(
                l.contains("not a valid host name, so no allowlist entry"),
                "{l}"
            );
            assert!(!l.contains("SANDBOX_ALLOW"), "{l}");
            let j = audit::json(
                &Event::DeniedName {
                    name: name.to_string(),
                },
                None,
                SystemTime::now(),
            );
            assert_inert(j["name"].as_str().unwrap());
            assert!(j["allow"].is_null(), "{j}");

            // the same name learned from an answer under an allowed wildcard
            let addr = ip(&format!("10.1.0.{}", i + 1));
            r.learned(addr, name);
            let l = r.record_at(tcp(&addr.to_string(), 22), at(), wall).unwrap();
            let (head, advice) = l.split_once("; to allow it: ").unwrap();
            assert_inert(head.trim_end_matches(": not a valid host name)"));
            assert!(head.ends_with(": not a valid host name)"), "{l}");
            assert_eq!(
                pasted_entry(advice).unwrap().to_string(),
                format!("{addr}:22"),
                "{l}"
            );
        }
        let st = r.status().to_string();
        for name in HOSTILE.iter().filter(|n| n.contains(['$', ',', '`', '\''])) {
            assert!(!st.contains(name), "{name} in {st}");
        }
        for (what, _) in r.summary() {
            assert_inert(&what);
        }
    }

    #[test]
    fn names_are_escaped_byte_by_byte() {
        assert_eq!(shown_name("registry.npmjs.org"), "registry.npmjs.org");
        assert_eq!(
            shown_name("registry.example.org,0.0.0.0/0"),
            "registry.example.org\\x2c0.0.0.0\\x2f0"
        );
        assert_eq!(shown_name("a$(sh<x)"), "a\\x24\\x28sh\\x3cx\\x29");
        // a dot inside a label is not a label boundary
        assert_eq!(shown_name("a\\046b.test"), "a\\x2eb.test");
        assert_eq!(shown_name("a\\032\\000\\255"), "a\\x20\\x00\\xff");
        // a backslash that starts no escape is itself escaped
        assert_eq!(shown_name("a\\b\\99"), "a\\x5cb\\x5c99");
        assert_eq!(shown_name("A\u{e9}"), "\\x41\\xc3\\xa9");
    }

    #[test]
    fn icmp_advice_says_it_opens_every_port() {
        let mut r = Reporter::default();
        let l = r
            .record(Event::Blocked {
                proto: Proto::Icmp,
                addr: ip("10.0.0.9"),
                port: None,
            })
            .unwrap();
        assert_eq!(
            l,
            "blocked icmp 10.0.0.9; to allow it: SANDBOX_ALLOW=10.0.0.9 (or --allow; note: \
             this opens every port and protocol to it, not only icmp)"
        );
        r.learned(ip("10.0.0.8"), "ping.test");
        let l = r
            .record(Event::Blocked {
                proto: Proto::Other(47),
                addr: ip("10.0.0.8"),
                port: None,
            })
            .unwrap();
        assert!(l.contains("SANDBOX_ALLOW=ping.test (or --allow; note: this opens every port and protocol to it, not only proto-47)"), "{l}");
        // with a port, nothing to warn about
        let l = r.record(tcp("10.0.0.8", 443)).unwrap();
        assert!(
            l.ends_with("SANDBOX_ALLOW=ping.test:443 (or --allow)"),
            "{l}"
        );
    }

    #[test]
    fn duplicates_are_counted_not_repeated() {
        let mut r = Reporter::default();
        let e = Event::Blocked {
            proto: Proto::Tcp,
            addr: ip("10.1.1.1"),
            port: Some(80),
        };
        assert!(r.record(e.clone()).is_some());
        for _ in 0..9 {
            assert!(r.record(e.clone()).is_none());
        }
        assert_eq!(r.summary(), vec![("tcp 10.1.1.1:80".to_string(), 10)]);
    }

    fn tcp(addr: &str, port: u16) -> Event {
        Event::Blocked {
            proto: Proto::Tcp,
            addr: ip(addr),
            port: Some(port),
        }
    }

    #[test]
    fn a_flood_gives_a_burst_then_one_line_per_refill_and_a_note() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut r = Reporter {
            bucket: Bucket::new(t0),
            ..Default::default()
        };
        let mut shown = 0;
        // 10,000 distinct destinations within one second
        for i in 0..10_000u32 {
            let e = tcp("10.9.0.1", (i % 60_000) as u16 + 1);
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            if r.record_at(e, now, wall).is_some() {
                shown += 1;
            }
        }
        assert_eq!(shown, BURST as usize);
        assert_eq!(r.total(), 10_000);
        // the note waits for the next token, then says how many were not shown
        let due = r.deadline().expect("a note is pending");
        assert!(due > t0 && due <= t0 + REFILL + Duration::from_secs(1));
        assert_eq!(r.note_due(t0 + Duration::from_millis(1500)), None);
        let note = r.note_due(t0 + REFILL + Duration::from_secs(1)).unwrap();
        assert!(note.contains("9990 more destinations not shown"), "{note}");
        assert!(note.contains("sandbox-init check"), "{note}");
        assert_eq!(r.deadline(), None);
        // a destination that was suppressed is shown when it comes back later
        let later = t0 + Duration::from_secs(60);
        assert!(r.record_at(tcp("10.9.0.1", 9_000), later, wall).is_some());
        // one already shown never again
        assert!(r.record_at(tcp("10.9.0.1", 1), later, wall).is_none());
        // memory stays bounded
        assert!(r.counts.len() <= MAX_DISTINCT && r.seen.len() <= MAX_DISTINCT);
        assert!(r.summary().len() <= MAX_DISTINCT);
    }

    #[test]
    fn bucket_refills_one_token_per_interval_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        for _ in 0..BURST {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(!b.take(t0 + REFILL - Duration::from_millis(1)));
        assert!(b.take(t0 + REFILL));
        assert!(!b.take(t0 + REFILL));
        let much_later = t0 + REFILL * 1000;
        for _ in 0..BURST {
            assert!(b.take(much_later));
        }
        assert!(!b.take(much_later));
    }

    #[test]
    fn gateways_are_suggested_by_address_and_denied_names_by_name() {
        let mut r = Reporter::default();
        r.learned(ip("10.77.0.1"), "gateway.test");
        r.set_gateways(&[ip("10.77.0.1")]);
        let l = r.record(tcp("10.77.0.1", 3128)).unwrap();
        assert!(
            l.contains("blocked tcp 10.77.0.1:3128 (the default gateway)"),
            "{l}"
        );
        assert!(l.contains("SANDBOX_ALLOW=10.77.0.1:3128 "), "{l}");
        assert!(l.contains("SANDBOX_ALLOW_GATEWAY=1"), "{l}");
        let st = r.status();
        assert_eq!(st["events"], 1);
        assert_eq!(st["recent"][0]["allow"], "10.77.0.1:3128");
        assert_eq!(st["recent"][0]["count"], 1);
        assert!(st["recent"][0]["line"]
            .as_str()
            .unwrap()
            .contains("gateway"));
    }

    #[test]
    fn first_occurrences_reach_the_audit_log_and_repeats_are_counted() {
        let d = std::env::temp_dir().join(format!("sbx-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("audit.jsonl");
        let mut r = Reporter::default();
        r.set_audit(audit::AuditLog::open(&p).unwrap(), "x");
        r.learned(ip("10.77.0.11"), "other.test");
        for _ in 0..3 {
            r.record(tcp("10.77.0.11", 80));
        }
        r.record(Event::DeniedName {
            name: "evil.test".into(),
        });
        for i in 0..100 {
            r.record(tcp("10.77.0.12", i + 1));
        }
        r.flush();
        // the session ends: the last summary, the writer drained
        drop(r);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1 + 1 + 100 + 1, "{lines:#?}");
        assert_eq!(lines[0]["name"], "other.test");
        assert_eq!(lines[0]["addr"], "10.77.0.11");
        assert_eq!(lines[1]["event"], "denied_name");
        assert_eq!(lines[101]["port"], 100);
        assert_eq!(lines[102]["event"], "repeated");
        assert_eq!(lines[102]["addr"], "10.77.0.11");
        assert_eq!(lines[102]["count"], 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_flood_of_names_under_one_domain_is_one_tunnelling_line() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut r = Reporter {
            bucket: Bucket::new(t0),
            ..Default::default()
        };
        let mut lines = vec![];
        // a legitimate name elsewhere, then 10,000 random labels under one domain in 1 s
        lines.extend(r.record_at(
            Event::DeniedName {
                name: "cdn.other.test".into(),
            },
            t0,
            wall,
        ));
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            let e = Event::DeniedName {
                name: format!("q{i:05}zzx.exfil.evil.test"),
            };
            lines.extend(r.record_at(e, now, wall));
            lines.extend(r.due_lines(now, false));
        }
        lines.extend(r.due_lines(t0 + Duration::from_secs(5), true));
        let flood: Vec<&String> = lines.iter().filter(|l| l.contains("exfil")).collect();
        assert_eq!(flood.len(), 1, "{lines:#?}");
        assert!(flood[0].contains("exfil.evil.test"), "{}", flood[0]);
        assert!(flood[0].contains("tunnelling"), "{}", flood[0]);
        assert!(!flood[0].contains("SANDBOX_ALLOW"), "{}", flood[0]);
        assert!(
            !flood[0].contains("zzx"),
            "no random label shown: {}",
            flood[0]
        );
        // `check` and the session summary show the domain once, no label, no suggestion
        let st = r.status();
        let recent = st["recent"].as_array().unwrap();
        assert_eq!(recent.len(), 2, "{st:#}");
        assert_eq!(recent[1]["domain"], "exfil.evil.test");
        assert_eq!(recent[1]["allow"], serde_json::Value::Null);
        assert_eq!(recent[1]["count"], 10_000);
        assert!(!st.to_string().contains("zzx"), "{st}");
        let summary = r.summary();
        assert_eq!(summary.len(), 2, "{summary:?}");
        assert_eq!(
            summary[0],
            (
                "dns names under exfil.evil.test (tunnelling)".to_string(),
                10_000
            )
        );
        // the other name keeps its own line and suggestion
        assert!(
            lines
                .iter()
                .any(|l| l.contains("blocked dns name cdn.other.test")),
            "{lines:#?}"
        );
        // a few names under a domain are not a flood
        let mut r = Reporter::default();
        for n in ["a.example.test", "b.example.test", "c.example.test"] {
            r.record_at(Event::DeniedName { name: n.into() }, t0, wall);
        }
        let l = r.due_lines(t0 + NAME_HOLD, false);
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn names_in_our_words_escape_every_byte_but_host_name_ones() {
        assert_eq!(shown_name("evil.test"), "evil.test");
        assert_eq!(
            shown_name("a,0.0.0.0/0 $(x)"),
            "a\\x2c0.0.0.0\\x2f0\\x20\\x24\\x28x\\x29"
        );
        assert_eq!(parent_domain("a.b.test"), "b.test");
        assert_eq!(parent_domain("test"), "test");
        assert_eq!(parent_domain("x."), "x.");
    }

    #[test]
    fn recent_keeps_the_latest_distinct_events() {
        let mut r = Reporter::default();
        for i in 0..100 {
            r.record(tcp("10.0.0.1", i + 1));
        }
        r.record(tcp("10.0.0.1", 50));
        let st = r.status();
        let recent = st["recent"].as_array().unwrap();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[RECENT - 1]["port"], 50);
        assert_eq!(recent[RECENT - 1]["count"], 2);
        assert_eq!(recent[RECENT - 2]["port"], 100);
    }
}
