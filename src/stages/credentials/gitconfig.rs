//! The host's `~/.gitconfig`, reduced to what the agent may have: the identity and a short
//! list of settings that only change how git formats, merges or names things. A real
//! `.gitconfig` often holds credentials (`url."https://x-access-token:TOKEN@host/".insteadOf`,
//! `http.extraHeader = Authorization: Bearer ...`, `credential.*`, `include.path` to other
//! files), and the agent can read everything in its home.
//!
//! Written by hand rather than with `gix-config`: that crate brings about 45 others (refs,
//! object hashing, lock files, dates) into a static PID 1 to read ten keys. The grammar is
//! small and this follows git's own reader (config.c) rule for rule: sections with quoted
//! subsections (`\"` and `\\` escapes) or the old `[section.sub]` form, keys starting with
//! a letter, values with `"` quoting, the `\t \n \b \" \\` escapes, `\` at the end of a line
//! continuing it, `#`/`;` comments, unquoted whitespace trimmed at both ends; section and
//! key names case-insensitive, quoted subsections not. Whatever git would refuse, this
//! refuses, and then nothing of the file is copied. No message here holds a value.

use std::collections::BTreeSet;

/// One `section[.subsection].key = value` of the file, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Lower case; empty before any section header (and in `[ "sub"]`).
    pub section: String,
    /// As written when quoted; lower case in the old dotted form.
    pub subsection: Option<String>,
    /// Lower case.
    pub key: String,
    /// `None` for a key without `=` (git reads it as true).
    pub value: Option<String>,
}

/// What may be copied: (section, key) in lower case, and the spelling we write.
/// Each is a boolean or a word that changes formatting, merging or naming only: none
/// names a program to run, a file of the host, a URL or a credential.
const KEEP: &[(&str, &str, &str)] = &[
    ("user", "name", "name"),
    ("user", "email", "email"),
    ("user", "signingkey", "signingKey"),
    ("author", "name", "name"),
    ("author", "email", "email"),
    ("committer", "name", "name"),
    ("committer", "email", "email"),
    ("init", "defaultbranch", "defaultBranch"),
    ("core", "autocrlf", "autocrlf"),
    ("core", "eol", "eol"),
    ("core", "safecrlf", "safecrlf"),
    ("core", "quotepath", "quotePath"),
    ("pull", "rebase", "rebase"),
    ("pull", "ff", "ff"),
    ("push", "default", "default"),
    ("push", "autosetupremote", "autoSetupRemote"),
    ("fetch", "prune", "prune"),
    ("rebase", "autostash", "autoStash"),
    ("rebase", "autosquash", "autoSquash"),
    ("merge", "conflictstyle", "conflictStyle"),
    ("diff", "algorithm", "algorithm"),
    ("rerere", "enabled", "enabled"),
    ("color", "ui", "ui"),
];

/// Sections that name who commits: a key there without a value means nothing useful.
const IDENTITY: &[&str] = &["user", "author", "committer"];

/// The reduced file and what went into it (names only, for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reduced {
    pub text: String,
    /// `section.key` of every setting copied, in the order written.
    pub copied: Vec<String>,
    /// How many settings were left out, and the sections they were in (never a
    /// subsection: that is where `url."https://user:TOKEN@host/"` keeps its token).
    pub left_out: usize,
    pub left_out_sections: BTreeSet<String>,
}

/// Why a line is wrong, by number only.
fn bad(line: usize) -> String {
    format!("bad config line {line} (git would refuse the file too)")
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
}

impl Reader<'_> {
    /// The next byte; CR LF reads as LF; the end of input reads as LF (`None` after it).
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        let c = if c == b'\r' && self.b.get(self.i) == Some(&b'\n') {
            self.i += 1;
            b'\n'
        } else {
            c
        };
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn next_or_newline(&mut self) -> u8 {
        self.next().unwrap_or(b'\n')
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

/// `[section]`, `[section "sub"]` or `[section.sub]`, after the `[`.
fn section_header(r: &mut Reader) -> Result<(String, Option<String>), String> {
    let mut name = Vec::new();
    loop {
        let line = r.line;
        let c = r.next().ok_or_else(|| bad(line))?;
        match c {
            b']' => break,
            c if is_space(c) => {
                // extended form: spaces, then a quoted subsection, then `]`
                let mut c = c;
                while is_space(c) {
                    if c == b'\n' {
                        return Err(bad(line));
                    }
                    c = r.next_or_newline();
                }
                if c != b'"' {
                    return Err(bad(line));
                }
                let mut sub = Vec::new();
                loop {
                    match r.next_or_newline() {
                        b'\n' => return Err(bad(line)),
                        b'"' => break,
                        b'\\' => match r.next_or_newline() {
                            b'\n' => return Err(bad(line)),
                            c => sub.push(c),
                        },
                        c => sub.push(c),
                    }
                }
                if r.next_or_newline() != b']' {
                    return Err(bad(line));
                }
                let sub = String::from_utf8(sub).map_err(|_| bad(line))?;
                return Ok((ascii(name), Some(sub)));
            }
            c if is_key_char(c) || c == b'.' => name.push(c.to_ascii_lowercase()),
            _ => return Err(bad(line)),
        }
    }
    if name.is_empty() {
        return Err(bad(r.line));
    }
    let name = ascii(name);
    // The old `[section.sub]` form: the subsection is case-insensitive there.
    Ok(match name.split_once('.') {
        Some((s, sub)) => (s.to_string(), Some(sub.to_string())),
        None => (name, None),
    })
}

fn ascii(bytes: Vec<u8>) -> String {
    bytes.into_iter().map(char::from).collect()
}

/// A value after `=`, up to the end of its (possibly continued) line.
fn value(r: &mut Reader) -> Result<String, String> {
    let start_line = r.line;
    let mut v: Vec<u8> = Vec::new();
    let (mut quote, mut comment) = (false, false);
    // Length to cut back to when only unquoted whitespace followed; 0 = nothing to trim.
    let mut trim_len = 0;
    loop {
        let c = r.next_or_newline();
        if c == b'\n' {
            if quote {
                return Err(bad(start_line));
            }
            if trim_len > 0 {
                v.truncate(trim_len);
            }
            return String::from_utf8(v).map_err(|_| bad(start_line));
        }
        if comment {
            continue;
        }
        if is_space(c) && !quote {
            if trim_len == 0 {
                trim_len = v.len();
            }
            if !v.is_empty() {
                v.push(c);
            }
            continue;
        }
        if !quote && (c == b';' || c == b'#') {
            comment = true;
            continue;
        }
        trim_len = 0;
        match c {
            b'\\' => match r.next_or_newline() {
                b'\n' => continue,
                b't' => v.push(b'\t'),
                b'b' => v.push(0x08),
                b'n' => v.push(b'\n'),
                c @ (b'\\' | b'"') => v.push(c),
                _ => return Err(bad(start_line)),
            },
            b'"' => quote = !quote,
            c => v.push(c),
        }
    }
}

/// Parses git's config format into its settings, in order.
pub fn parse(text: &str) -> Result<Vec<Setting>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut r = Reader {
        b: text.as_bytes(),
        i: 0,
        line: 1,
    };
    let mut out = vec![];
    // Keys before any header belong to no section (git lists them by key alone).
    let mut section: (String, Option<String>) = (String::new(), None);
    while let Some(c) = r.next() {
        match c {
            c if is_space(c) => {}
            b'#' | b';' => while !matches!(r.next(), None | Some(b'\n')) {},
            b'[' => section = section_header(&mut r)?,
            c if c.is_ascii_alphabetic() => {
                let line = r.line;
                let (sec, sub) = section.clone();
                let mut key = vec![c.to_ascii_lowercase()];
                let mut c = r.next_or_newline();
                while is_key_char(c) {
                    key.push(c.to_ascii_lowercase());
                    c = r.next_or_newline();
                }
                while c == b' ' || c == b'\t' {
                    c = r.next_or_newline();
                }
                let value = match c {
                    b'\n' => None,
                    b'=' => Some(value(&mut r)?),
                    _ => return Err(bad(line)),
                };
                out.push(Setting {
                    section: sec,
                    subsection: sub,
                    key: ascii(key),
                    value,
                });
            }
            _ => return Err(bad(r.line)),
        }
    }
    Ok(out)
}

/// A value carrying `scheme://user[:password]@`: a credential in a URL.
fn has_userinfo(v: &str) -> bool {
    v.match_indices("://").any(|(i, _)| {
        let authority = v[i + 3..].split(['/', '?', '#']).next().unwrap_or_default();
        authority.contains('@')
    })
}

/// A signing key given as the key itself (`key::ssh-ed25519 AAAA...`, a literal public
/// key, an armored block) rather than by an id, a fingerprint, an email or a path.
fn is_key_material(v: &str) -> bool {
    v.contains("::") || v.contains(char::is_whitespace) || v.contains("-----") || v.len() > 128
}

/// The canonical spelling to write, when this setting may be copied as it is.
fn keep(s: &Setting) -> Option<(&'static str, &'static str)> {
    if s.subsection.is_some() {
        return None;
    }
    let (section, _, spelled) = KEEP
        .iter()
        .find(|(sec, key, _)| *sec == s.section && *key == s.key)?;
    let value_ok = match &s.value {
        None => !IDENTITY.contains(section),
        Some(v) => {
            let control = v.contains(|c: char| c.is_control() && c != '\t');
            let key_material = s.key == "signingkey" && is_key_material(v);
            !(control || has_userinfo(v) || key_material)
        }
    };
    value_ok.then_some((section, spelled))
}

fn quoted(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The copy for the home: the settings `KEEP` allows (the last value of each, as git
/// reads it), then the workspace as `safe.directory` (it belongs to the host's uid, which
/// git would otherwise refuse as "dubious ownership"). A host file git would not read
/// gives an error; the caller then writes only the `safe.directory`.
pub fn reduce(host: &str, workdir: &str) -> Result<Reduced, String> {
    if workdir.contains(['\n', '\0']) {
        return Err(
            "the working directory name holds a newline; not added to safe.directory".into(),
        );
    }
    let settings = parse(host)?;
    // (section, spelled key) -> value, in first-seen order; the last value wins
    let mut chosen: Vec<(&str, &str, Option<String>)> = vec![];
    let mut left_out = 0;
    let mut left_out_sections = BTreeSet::new();
    for s in &settings {
        match keep(s) {
            Some((section, key)) => {
                match chosen.iter_mut().find(|c| c.0 == section && c.1 == key) {
                    Some(c) => c.2 = s.value.clone(),
                    None => chosen.push((section, key, s.value.clone())),
                }
            }
            None => {
                left_out += 1;
                left_out_sections.insert(s.section.clone());
            }
        }
    }
    let mut text = String::from(
        "# Copied by sandbox-init from the host's git configuration: the identity and a\n\
                                 # few harmless settings only.\n",
    );
    let mut copied = vec![];
    let mut sections: Vec<&str> = vec![];
    for (section, _, _) in &chosen {
        if !sections.contains(section) {
            sections.push(section);
        }
    }
    for section in sections {
        text.push_str(&format!("[{section}]\n"));
        for (_, key, value) in chosen.iter().filter(|c| c.0 == section) {
            match value {
                Some(v) => text.push_str(&format!("\t{key} = {}\n", quoted(v))),
                None => text.push_str(&format!("\t{key} = true\n")),
            }
            copied.push(format!("{section}.{key}"));
        }
    }
    text.push_str("# The workspace is mounted from the host.\n");
    text.push_str(&format!("[safe]\n\tdirectory = {}\n", quoted(workdir)));
    Ok(Reduced {
        text,
        copied,
        left_out,
        left_out_sections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Setting {
        let v = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(v.len(), 1, "{v:?}");
        v.into_iter().next().unwrap()
    }

    fn val(text: &str) -> Option<String> {
        one(text).value
    }

    #[test]
    fn sections_subsections_and_case() {
        let s = one("[User]\n\tNAME = x\n");
        assert_eq!((s.section.as_str(), s.key.as_str()), ("user", "name"));
        assert_eq!(s.subsection, None);
        let s = one("[url \"https://Tok@X/\"] insteadOf = y");
        assert_eq!(s.section, "url");
        assert_eq!(s.subsection.as_deref(), Some("https://Tok@X/"));
        assert_eq!(s.key, "insteadof");
        let s = one("[remote \"a\\\"b\\\\c\\d\"]\nurl=1");
        assert_eq!(s.subsection.as_deref(), Some("a\"b\\cd"));
        let s = one("[Branch.Main]\nremote = o");
        assert_eq!(
            (s.section.as_str(), s.subsection.as_deref()),
            ("branch", Some("main"))
        );
        // several on a line, comments, CR LF, a BOM
        let v = parse("\u{feff}# c\r\n; c\r\n[a] k = 1 # c\r\n[b]k2=2;c\r\n").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].section, "b");
        assert_eq!(v[1].value.as_deref(), Some("2"));
    }

    #[test]
    fn values_follow_gits_rules() {
        assert_eq!(val("[a]k"), None);
        assert_eq!(val("[a]\n\tk\n"), None);
        assert_eq!(val("[a]k="), Some(String::new()));
        assert_eq!(val("[a]k =   x  y \t "), Some("x  y".into()));
        assert_eq!(val("[a]k = \" x \" "), Some(" x ".into()));
        assert_eq!(val("[a]k = a\"#;\"b # c"), Some("a#;b".into()));
        assert_eq!(
            val("[a]k = a\\tb\\nc\\\\d\\\"e\\bf"),
            Some("a\tb\nc\\d\"e\u{8}f".into())
        );
        assert_eq!(val("[a]k = one \\\n  two"), Some("one   two".into()));
        assert_eq!(val("[a]k = \"one \\\ntwo\""), Some("one two".into()));
        // a comment does not continue
        assert_eq!(
            parse("[a]k = x # c \\\nj = y").unwrap().len(),
            2,
            "the continuation belongs to the comment"
        );
    }

    #[test]
    fn what_git_refuses_is_refused() {
        for bad in [
            "[a\n]",         // newline in a header
            "[a \"b]",       // unclosed subsection
            "[a \"b\" ]",    // space before ]
            "[a]k = \"open", // unclosed quote
            "[a]k = \\q",    // unknown escape
            "[a]k v",        // no '='
            "[a]1k = v",     // key starts with a digit
            "[a_b]k = v",    // bad section character
            "[]k = v",       // empty section
            "[a]k = v\n%",   // stray character
        ] {
            let r = parse(bad);
            assert!(r.is_err(), "{bad:?} parsed as {r:?}");
            assert!(r.unwrap_err().starts_with("bad config line "));
        }
    }

    const HOST: &str = "\
[user]
\tname = Host User
\temail = host@example.test
\tsigningkey = 0xDEADBEEF12345678
[url \"https://x-access-token:ghp_SECRET1@github.com/\"]
\tinsteadOf = https://github.com/
[http]
\textraHeader = Authorization: Bearer SECRET2
[http \"https://example.test/\"]
\textraheader = AUTHORIZATION: basic SECRET3
[credential]
\thelper = store --file /secret/creds
[include]
\tpath = /secret/other.gitconfig
[includeIf \"gitdir:/w/\"]
\tpath = x
[core]
\tautocrlf = input
\tsshCommand = ssh -i /secret/key
\twhitespace = https://u:SECRET4@x/
[Init]
\tdefaultBranch = main
[remote \"origin\"]
\turl = https://user:SECRET5@example.test/repo.git
[alias]
\tst = status
[pull]
\trebase
[user]
\temail = \"later@example.test\" ; the last one wins
[user \"work\"]
\tname = Sub Section
[core]
\teol = \"https://u:SECRET6@x/\"
";

    #[test]
    fn only_the_identity_and_harmless_settings_are_copied() {
        let r = reduce(HOST, "/workspace").unwrap();
        for secret in ["SECRET", "x-access-token", "/secret/", "Bearer", "ssh -i"] {
            assert!(!r.text.contains(secret), "{secret} in\n{}", r.text);
        }
        assert_eq!(
            r.copied,
            [
                "user.name",
                "user.email",
                "user.signingKey",
                "core.autocrlf",
                "init.defaultBranch",
                "pull.rebase"
            ]
        );
        assert_eq!(
            r.text,
            "# Copied by sandbox-init from the host's git configuration: the identity and a\n\
             # few harmless settings only.\n\
             [user]\n\tname = \"Host User\"\n\temail = \"later@example.test\"\n\
             \tsigningKey = \"0xDEADBEEF12345678\"\n\
             [core]\n\tautocrlf = \"input\"\n\
             [init]\n\tdefaultBranch = \"main\"\n\
             [pull]\n\trebase = true\n\
             # The workspace is mounted from the host.\n\
             [safe]\n\tdirectory = \"/workspace\"\n"
        );
        assert_eq!(r.left_out, 12);
        let sections: Vec<&str> = r.left_out_sections.iter().map(String::as_str).collect();
        assert_eq!(
            sections,
            [
                "alias",
                "core",
                "credential",
                "http",
                "include",
                "includeif",
                "remote",
                "url",
                "user"
            ]
        );
        // what we write, git's rules read back as we meant it
        let back = parse(&r.text).unwrap();
        assert_eq!(back[1].value.as_deref(), Some("later@example.test"));
        assert_eq!(back.last().unwrap().value.as_deref(), Some("/workspace"));
    }

    #[test]
    fn signing_keys_are_copied_by_reference_only() {
        for (key, copied) in [
            ("0xDEADBEEF12345678", true),
            ("ABCDEF0123456789ABCDEF0123456789ABCDEF01", true),
            ("me@example.test", true),
            ("~/.ssh/id_ed25519.pub", true),
            ("key::ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ", false),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ me@host", false),
        ] {
            let r = reduce(&format!("[user]\n\tsigningkey = {key}\n"), "/w").unwrap();
            assert_eq!(r.copied == ["user.signingKey"], copied, "{key}: {r:?}");
        }
    }

    #[test]
    fn odd_workdirs_are_quoted_or_refused() {
        let r = reduce("", "/w \"q\"\\x").unwrap();
        assert!(
            r.text.ends_with("directory = \"/w \\\"q\\\"\\\\x\"\n"),
            "{}",
            r.text
        );
        assert_eq!(
            parse(&r.text).unwrap()[0].value.as_deref(),
            Some("/w \"q\"\\x")
        );
        assert!(reduce("", "/a\nb").is_err());
        // a file git would refuse: an error, never a partial copy
        assert!(reduce("[user]\n\tname = \"x\n", "/w").is_err());
    }
}
