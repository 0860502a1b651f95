//! Allowlist entries: what a user may write after `--allow`, in `SANDBOX_ALLOW` or in
//! `firewall.allow`, parsed into a closed type so that the firewall never sees a string.
//!
//! Grammar (ports are optional; no port means every port and protocol):
//!   host             host:443          host:53/udp        *.host      *.host:443
//!   10.0.0.1         10.0.0.0/8        10.0.0.0/8:443     10.0.0.1:53/udp
//!   2001:db8::1      2001:db8::/32     [2001:db8::1]:443  [2001:db8::]/32:443

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A port restriction: `host:443` is TCP 443, `host:53/udp` is UDP 53.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    pub proto: Proto,
    pub number: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A DNS name, lower case, without trailing dot.
    Host(String),
    /// `*.name`: the name and every name under it (the DNS-aware mode matches subdomains;
    /// resolution at start can only cover the apex).
    Wildcard(String),
    /// An address or network; a bare address is a /32 or /128.
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    pub target: Target,
    pub port: Option<Port>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = matches!(&self.target, Target::Net(IpNet::V6(_)));
        let host = match &self.target {
            Target::Host(h) => h.clone(),
            Target::Wildcard(h) => format!("*.{h}"),
            Target::Net(n) if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
            Target::Net(n) => n.to_string(),
        };
        match self.port {
            None => f.write_str(&host),
            Some(p) => {
                if v6 {
                    write!(f, "[{host}]:{}", p.number)?;
                } else {
                    write!(f, "{host}:{}", p.number)?;
                }
                if p.proto == Proto::Udp {
                    f.write_str("/udp")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Entry {
    type Err = String;

    /// Parses one entry; the error says what is wrong and shows the accepted forms.
    fn from_str(raw: &str) -> Result<Self, String> {
        parse(raw.trim()).map_err(|why| {
            format!(
                "invalid allowlist entry '{raw}': {why} (forms: host, host:443, host:53/udp, \
                 *.host, 10.0.0.0/8, 2001:db8::/32, [2001:db8::1]:443)"
            )
        })
    }
}

/// Bytes an entry's text may hold when we print it as advice: the grammar needs no other.
fn is_entry_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b':' | b'/' | b'[' | b']' | b'*')
}

/// Bytes no common shell (sh, bash, zsh, fish, PowerShell) treats specially in a word:
/// `[`, `]` and `*` are glob characters, so a word holding one is quoted.
fn is_plain_word_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b':' | b'/')
}

/// An allowlist entry we may print as advice ("to allow it: SANDBOX_ALLOW=..."). The only
/// way to get one is from an entry that the parser reads back from its own text as exactly
/// that entry, and whose text holds only the bytes the grammar needs: a suggestion is
/// always one entry (no comma or space for `SANDBOX_ALLOW` to split on) and never carries
/// a quote, `$`, backtick, backslash or control byte into the shell it is pasted into,
/// whatever text (a denied DNS name, say) it was made from. Every report goes through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    entry: Entry,
    text: String,
}

impl Suggestion {
    /// `None` when `entry` is not one the parser would give back from its own text (a
    /// name with bytes no host name has, built by hand rather than parsed).
    pub fn new(entry: Entry) -> Option<Suggestion> {
        let text = entry.to_string();
        if !text.bytes().all(is_entry_byte) {
            return None;
        }
        match parse(&text) {
            Ok(back) if back == entry => Some(Suggestion { entry, text }),
            _ => None,
        }
    }

    /// The entry that allows the DNS name `name` exactly (every port): `None` unless
    /// `name` is a host name as the parser writes it (lower case, no trailing dot), so
    /// that what is suggested is the name that was asked for, not a neighbour of it.
    pub fn for_name(name: &str) -> Option<Suggestion> {
        let s = Suggestion::new(Entry {
            target: Target::Host(name.to_string()),
            port: None,
        })?;
        (s.text == name).then_some(s)
    }

    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The entry as the parser reads it (for JSON and other non-shell output).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the entry allows every port and protocol (no port given).
    pub fn opens_every_port(&self) -> bool {
        self.entry.port.is_none()
    }

    /// The entry as one shell word: bare when every byte is inert in common shells, else
    /// in single quotes (which every one of them takes literally; the text never holds a
    /// quote or backslash). `SANDBOX_ALLOW='[2001:db8::1]:443'` also keeps a file the agent
    /// planted in the current directory from turning the glob into another entry.
    pub fn shell_word(&self) -> String {
        if self.text.bytes().all(is_plain_word_byte) {
            self.text.clone()
        } else {
            format!("'{}'", self.text)
        }
    }
}

impl fmt::Display for Suggestion {
    /// The shell word: what a user copies.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shell_word())
    }
}

fn parse(s: &str) -> Result<Entry, String> {
    if s.is_empty() {
        return Err("empty entry".into());
    }
    if let Some((scheme, rest)) = s.split_once("://") {
        return Err(url_advice(scheme, rest));
    }
    // A protocol suffix only makes sense after a port: `host:53/udp`. A `/digits` suffix is
    // a prefix length instead, handled by the address forms below.
    let (body, proto) = match s.rsplit_once('/') {
        Some((b, "udp")) => (b, Some(Proto::Udp)),
        Some((b, "tcp")) => (b, Some(Proto::Tcp)),
        Some((_, p)) if p.chars().any(|c| c.is_ascii_alphabetic()) => {
            return Err(format!("unknown protocol '{p}' (use tcp or udp)"))
        }
        _ => (s, None),
    };

    let (host, port) = split_port(body)?;
    let port = match (port, proto) {
        (Some(n), p) => Some(Port {
            proto: p.unwrap_or(Proto::Tcp),
            number: n,
        }),
        (None, Some(_)) => return Err("a protocol needs a port, as in host:53/udp".into()),
        (None, None) => None,
    };
    Ok(Entry {
        target: parse_target(&host)?,
        port,
    })
}

/// What to write instead of a URL: its host, and the host with the URL's port (or the
/// scheme's usual one). Only a host that parses is suggested.
fn url_advice(scheme: &str, rest: &str) -> String {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        _ => None,
    };
    let parsed = split_port(hostport)
        .ok()
        .and_then(|(host, port)| Some((parse_target(&host).ok()?, port)));
    let Some((target, port)) = parsed else {
        return "that is a URL; use its host name instead, as in host or host:443".into();
    };
    let with_port = |number: u16| Entry {
        target: target.clone(),
        port: Some(Port {
            proto: Proto::Tcp,
            number,
        }),
    };
    let bare = Entry {
        target: target.clone(),
        port: None,
    };
    match port.or(default_port) {
        Some(n) => format!("that is a URL; use {bare} or {}", with_port(n)),
        None => format!("that is a URL; use {bare} or {bare}:PORT"),
    }
}

/// Splits `target[:port]`, understanding bracketed and bare IPv6. The target comes back
/// without brackets: `[v6]/n:443` -> (`v6/n`, 443).
fn split_port(s: &str) -> Result<(String, Option<u16>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after an IPv6 address".to_string())?;
        let (prefix, port) = match after.strip_prefix('/') {
            Some(p) => match p.split_once(':') {
                Some((n, port)) => (Some(n), Some(port)),
                None => (Some(p), None),
            },
            None if after.is_empty() => (None, None),
            None => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("unexpected '{after}' after ']'")),
            },
        };
        let target = match prefix {
            Some(n) => format!("{addr}/{n}"),
            None => addr.to_string(),
        };
        return Ok((target, port.map(parse_port).transpose()?));
    }
    // Two or more colons without brackets: a bare IPv6 address or network, never a port.
    if s.matches(':').count() >= 2 {
        return Ok((s.to_string(), None));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), Some(parse_port(p)?))),
        None => Ok((s.to_string(), None)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port '{p}' is not a number from 1 to 65535")),
        Ok(n) => Ok(n),
    }
}

fn parse_target(t: &str) -> Result<Target, String> {
    if let Ok(addr) = t.parse::<IpAddr>() {
        return Ok(Target::Net(IpNet::from(addr)));
    }
    if t.contains('/') {
        let net: IpNet = t
            .parse()
            .map_err(|_| format!("'{t}' is not an address/prefix"))?;
        if net.trunc() != net {
            return Err(format!(
                "'{t}' has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(Target::Net(net));
    }
    if let Some(apex) = t.strip_prefix("*.") {
        return Ok(Target::Wildcard(parse_hostname(apex)?));
    }
    if t.contains('*') {
        return Err("a wildcard is only allowed as the first label, as in *.example.com".into());
    }
    Ok(Target::Host(parse_hostname(t)?))
}

/// Validates a DNS name: labels of `a-z`, `0-9` and `-` (no `-` at either end; `_`
/// tolerated, as real names carry it: `_acme-challenge`, legacy bucket names), 1 to 63
/// bytes each, 253 in all, one trailing dot dropped, not all digits. Nothing else passes:
/// no comma, space, quote, `$`, backtick, backslash, control or non-ASCII byte, so a
/// parsed name is always safe to print as one shell word and one `SANDBOX_ALLOW` entry.
pub fn parse_hostname(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err("a host name must have 1 to 253 characters".into());
    }
    for label in name.split('.') {
        let ok_chars = label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if label.is_empty() || label.len() > 63 || !ok_chars {
            return Err(format!("'{name}' is not a valid host name"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "'{name}' is not a valid host name (a label starts or ends with '-')"
            ));
        }
    }
    if name
        .split('.')
        .all(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "'{name}' is neither an IPv4 address nor a host name"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Entry {
        s.parse().unwrap_or_else(|err| panic!("{s}: {err}"))
    }

    fn tcp(n: u16) -> Option<Port> {
        Some(Port {
            proto: Proto::Tcp,
            number: n,
        })
    }

    fn error(s: &str) -> String {
        s.parse::<Entry>().expect_err(s)
    }

    #[test]
    fn a_url_gets_the_entry_to_write_instead() {
        let want = "that is a URL; use registry.example.org or registry.example.org:443";
        assert!(error("https://registry.example.org").contains(want));
        assert!(error("https://registry.example.org/npm/?x=1").contains(want));
        assert!(error("http://h.test:8080/x").contains("use h.test or h.test:8080"));
        assert!(error("http://h.test").contains("use h.test or h.test:80"));
        assert!(error("htps://x").contains("that is a URL; use x or x:PORT"));
        assert!(
            error("https://[2001:db8::1]:8443/").contains("use 2001:db8::1 or [2001:db8::1]:8443")
        );
        assert!(error("https://user:secret@h.test/").contains("use h.test or h.test:443"));
        // A host that is not one is never suggested.
        let bad = error("https://a$(x)/");
        assert!(
            bad.contains("that is a URL; use its host name instead"),
            "{bad}"
        );
        assert!(!bad.contains("unknown protocol"), "{bad}");
    }

    #[test]
    fn hosts_and_ports() {
        assert_eq!(e("Example.COM.").target, Target::Host("example.com".into()));
        assert_eq!(e("example.com").port, None);
        assert_eq!(e("example.com:443").port, tcp(443));
        assert_eq!(
            e("dns.test:53/udp").port,
            Some(Port {
                proto: Proto::Udp,
                number: 53
            })
        );
        assert_eq!(e("h.test:80/tcp").port, tcp(80));
        assert_eq!(
            e("*.github.com").target,
            Target::Wildcard("github.com".into())
        );
        assert_eq!(e("*.github.com:443").port, tcp(443));
    }

    #[test]
    fn addresses_and_networks() {
        let net = |s: &str| Target::Net(s.parse().unwrap());
        assert_eq!(e("10.0.0.1").target, net("10.0.0.1/32"));
        assert_eq!(e("10.0.0.0/8").target, net("10.0.0.0/8"));
        assert_eq!(e("10.0.0.0/8:443").port, tcp(443));
        assert_eq!(e("10.0.0.1:53/udp").target, net("10.0.0.1/32"));
        assert_eq!(e("2001:db8::1").target, net("2001:db8::1/128"));
        assert_eq!(e("2001:db8::/32").target, net("2001:db8::/32"));
        assert_eq!(e("[2001:db8::1]:443").target, net("2001:db8::1/128"));
        assert_eq!(e("[2001:db8::1]:443").port, tcp(443));
        assert_eq!(e("[2001:db8::]/32").target, net("2001:db8::/32"));
        assert_eq!(e("[2001:db8::]/32:443").port, tcp(443));
        assert_eq!(e("[2607:6bc0::]/48").target, net("2607:6bc0::/48"));
        assert_eq!(e("[::1]").target, net("::1/128"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "example.com",
            "example.com:443",
            "dns.test:53/udp",
            "*.github.com",
            "10.0.0.1",
            "10.0.0.0/8:443",
            "2001:db8::1",
            "[2001:db8::1]:443",
            "2001:db8::/32",
        ] {
            assert_eq!(e(s).to_string(), s);
            assert_eq!(e(&e(s).to_string()), e(s));
        }
    }

    #[test]
    fn rejects_bad_entries_with_the_entry_named() {
        for bad in [
            "",
            "host:0",
            "host:65536",
            "host:http",
            "host/udp",
            "host:53/icmp",
            "10.0.0.5/8",
            "10.0.0.0/33",
            "a..b",
            "-a.com",
            "foo*.com",
            "a.*.com",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "bad name.com",
            "999.1.1.1",
        ] {
            let err = bad.parse::<Entry>().expect_err(bad);
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
        assert!("10.0.0.5/8"
            .parse::<Entry>()
            .unwrap_err()
            .contains("did you mean 10.0.0.0/8"));
    }

    /// What the sandboxed command can put into a DNS name (and so into a report) must
    /// never be a name the parser takes.
    const HOSTILE: &[&str] = &[
        "registry.example.org,0.0.0.0/0",
        "a,b",
        "a b",
        "a\tb",
        "a\nb",
        "a$(sh<x)",
        "a$(sh<x).example.org",
        "$HOME.test",
        "a`id`.test",
        "a'b.test",
        "a\"b.test",
        "a\\b.test",
        "a;b.test",
        "a|b.test",
        "a&b.test",
        "a>b.test",
        "a<b.test",
        "a(b).test",
        "a{b}.test",
        "a~b.test",
        "a!b.test",
        "a#b.test",
        "a%b.test",
        "a^b.test",
        "a=b.test",
        "a+b.test",
        "a@b.test",
        "a?b.test",
        "a\u{1b}[31mred.test",
        "a\u{0}b.test",
        "a\u{7f}.test",
        "\u{e9}t\u{e9}.test",
        "a\\046b.test",
        "*",
        "*.",
        "*.*.test",
        "a.*.test",
        "**.test",
        "*test",
        ".a.test",
        "a..test",
        "a.-b.test",
        "a-.test",
        "-",
        "123.456",
        "999.1.1.1",
    ];

    #[test]
    fn hostile_names_never_parse() {
        for bad in HOSTILE {
            assert!(bad.parse::<Entry>().is_err(), "{bad:?} parsed");
            assert!(parse_hostname(bad).is_err(), "{bad:?} is a host name?");
            assert!(Suggestion::for_name(bad).is_none(), "{bad:?} suggested");
            // also built by hand, bypassing the parser
            for target in [
                Target::Host(bad.to_string()),
                Target::Wildcard(bad.to_string()),
            ] {
                assert!(
                    Suggestion::new(Entry { target, port: None }).is_none(),
                    "{bad:?}"
                );
            }
        }
        // the limits: 63 bytes a label, 253 a name
        let label = "a".repeat(63);
        assert!(parse_hostname(&format!("{label}.test")).is_ok());
        assert!(parse_hostname(&format!("{label}a.test")).is_err());
        let long = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(long.len(), 253);
        assert!(parse_hostname(&long).is_ok());
        assert!(parse_hostname(&format!("{long}c")).is_err());
    }

    #[test]
    fn suggestions_are_one_entry_and_quoted_for_the_shell_when_they_glob() {
        let s = Suggestion::for_name("registry.npmjs.org").unwrap();
        assert_eq!(s.as_str(), "registry.npmjs.org");
        assert_eq!(s.shell_word(), "registry.npmjs.org");
        assert!(s.opens_every_port());
        // a name is suggested only in the form the parser writes
        assert!(Suggestion::for_name("Registry.npmjs.org").is_none());
        assert!(Suggestion::for_name("registry.npmjs.org.").is_none());
        assert!(Suggestion::for_name("registry.npmjs.org:443").is_none());
        assert!(Suggestion::for_name("10.0.0.1").is_none());
        let v6 = Suggestion::new(e("[2001:db8::1]:443")).unwrap();
        assert_eq!(v6.shell_word(), "'[2001:db8::1]:443'");
        assert_eq!(v6.to_string(), "'[2001:db8::1]:443'");
        assert_eq!(v6.as_str(), "[2001:db8::1]:443");
        assert!(!v6.opens_every_port());
        let wild = Suggestion::new(e("*.example.com")).unwrap();
        assert_eq!(wild.shell_word(), "'*.example.com'");
        for plain in ["10.0.0.1:53/udp", "2001:db8::/32", "h.test:80", "a_b.test"] {
            let s = Suggestion::new(e(plain)).unwrap();
            assert_eq!(s.shell_word(), plain);
        }
    }

    proptest::proptest! {
        /// Whatever string parses, its entry prints in the safe alphabet and parses back
        /// to itself, so it can always become a suggestion.
        #[test]
        fn every_parsed_entry_is_a_safe_suggestion(
            raw in "[ -~]{0,40}|(\\*\\.)?([a-z0-9_,$ '`.:/-]{1,6}\\.){0,3}[a-z0-9:-]{1,8}(/[0-9]{1,3})?(:[0-9]{1,5}(/(udp|tcp))?)?|\\[[0-9a-f:]{2,12}\\](/[0-9]{1,3})?:[0-9]{1,5}"
        ) {
            if let Ok(entry) = parse(&raw) {
                let s = Suggestion::new(entry.clone());
                proptest::prop_assert!(s.is_some(), "{raw:?} -> {entry}");
            }
        }

        /// Random names built from every printable byte: a name becomes a suggestion only
        /// when it holds nothing but the host-name alphabet.
        #[test]
        fn names_with_other_bytes_are_never_suggested(raw in "[a-z0-9._-]{1,20}|[\\x00-\\x7f]{1,30}|[a-z.]{1,8}[\\x00-\\x7f][a-z.]{1,8}") {
            let clean = raw.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'));
            if let Some(s) = Suggestion::for_name(&raw) {
                proptest::prop_assert!(clean, "{raw:?}");
                proptest::prop_assert_eq!(s.shell_word(), raw);
            }
        }
    }
}
