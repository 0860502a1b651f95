//! The control socket's wire format: one JSON object per line, one request per connection,
//! then one response line. Versioned (`"v": 1`) so an older PID 1 and a newer client say
//! so instead of misreading each other. Pure: every check is unit-tested without a socket.
//!
//! Request:  {"v":1,"op":"allow","entries":["registry.example.org:443"]}
//!           {"v":1,"op":"deny","entries":[...],"kill":true}   ("kill" optional, false)
//!           {"v":1,"op":"status"}            {"v":1,"op":"blocked"}
//! Response: {"v":1,"ok":true,"lines":["..."],"data":{...}}
//!           {"v":1,"ok":false,"error":"..."}

use crate::policy::allowlist::Entry;
use serde_json::{json, Value};

pub const VERSION: u64 = 1;
/// A request larger than this is refused unread: entries are short, and PID 1 must not
/// buffer what a caller chooses.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Entries one request may name.
pub const MAX_ENTRIES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Allow(Vec<Entry>),
    /// `kill`: also close the established connections to the entries' addresses.
    Deny {
        entries: Vec<Entry>,
        kill: bool,
    },
    Status,
    Blocked,
}

impl Request {
    /// The line a client sends (newline included).
    pub fn encode(&self) -> String {
        let strings = |e: &[Entry]| e.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let v = match self {
            Request::Allow(e) => json!({"v": VERSION, "op": "allow", "entries": strings(e)}),
            Request::Deny { entries, kill } => {
                json!({"v": VERSION, "op": "deny", "entries": strings(entries), "kill": kill})
            }
            Request::Status => json!({"v": VERSION, "op": "status"}),
            Request::Blocked => json!({"v": VERSION, "op": "blocked"}),
        };
        format!("{v}\n")
    }

    /// Parses one request line (without or with its newline). Entries go through the
    /// allowlist parser, so nothing PID 1 acts on is ever a raw string.
    pub fn decode(line: &[u8]) -> Result<Request, String> {
        if line.len() > MAX_REQUEST {
            return Err(format!("request larger than {MAX_REQUEST} bytes"));
        }
        let v: Value =
            serde_json::from_slice(line).map_err(|e| format!("not a JSON request line: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| "a request is a JSON object".to_string())?;
        match obj.get("v").and_then(Value::as_u64) {
            Some(VERSION) => {}
            Some(other) => {
                return Err(format!(
                    "protocol version {other} is not spoken here (this sandbox-init speaks \
                     {VERSION}); use the sandbox-init binary of this container"
                ))
            }
            None => return Err("missing protocol version \"v\"".into()),
        }
        let entries = || -> Result<Vec<Entry>, String> {
            let list = obj
                .get("entries")
                .and_then(Value::as_array)
                .ok_or_else(|| "missing \"entries\" (a list of allowlist entries)".to_string())?;
            if list.is_empty() {
                return Err("no entries given".into());
            }
            if list.len() > MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} entries in one request"));
            }
            list.iter()
                .map(|e| {
                    e.as_str()
                        .ok_or_else(|| "an entry is a string".to_string())?
                        .parse::<Entry>()
                })
                .collect()
        };
        match obj.get("op").and_then(Value::as_str) {
            Some("allow") => Ok(Request::Allow(entries()?)),
            Some("deny") => Ok(Request::Deny {
                entries: entries()?,
                kill: match obj.get("kill") {
                    None => false,
                    Some(k) => k
                        .as_bool()
                        .ok_or_else(|| "\"kill\" is true or false".to_string())?,
                },
            }),
            Some("status") => Ok(Request::Status),
            Some("blocked") => Ok(Request::Blocked),
            Some(op) => Err(format!(
                "unknown operation '{}' (allow, deny, status, blocked)",
                op.escape_debug()
            )),
            None => Err("missing \"op\"".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Ok { lines: Vec<String>, data: Value },
    Err(String),
}

impl Response {
    pub fn encode(&self) -> String {
        let v = match self {
            Response::Ok { lines, data } => {
                json!({"v": VERSION, "ok": true, "lines": lines, "data": data})
            }
            Response::Err(e) => json!({"v": VERSION, "ok": false, "error": e}),
        };
        format!("{v}\n")
    }

    pub fn decode(line: &[u8]) -> Result<Response, String> {
        let v: Value = serde_json::from_slice(line)
            .map_err(|e| format!("PID 1 answered something that is not JSON: {e}"))?;
        if v["v"].as_u64() != Some(VERSION) {
            return Err(format!(
                "PID 1 speaks another protocol version ({}); use the sandbox-init binary of \
                 this container",
                v["v"]
            ));
        }
        if v["ok"].as_bool() == Some(true) {
            let lines = v["lines"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Response::Ok {
                lines,
                data: v["data"].clone(),
            })
        } else {
            Ok(Response::Err(
                v["error"].as_str().unwrap_or("unknown error").to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[&str]) -> Vec<Entry> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Allow(entries(&["a.test:443", "10.0.0.0/8", "[2001:db8::1]:22"])),
            Request::Deny {
                entries: entries(&["*.b.test"]),
                kill: false,
            },
            Request::Deny {
                entries: entries(&["10.0.0.0/8:443"]),
                kill: true,
            },
            Request::Status,
            Request::Blocked,
        ] {
            let line = r.encode();
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert_eq!(Request::decode(line.as_bytes()), Ok(r));
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        let bad: &[(&[u8], &str)] = &[
            (b"", "not a JSON"),
            (b"allow x.test\n", "not a JSON"),
            (b"[1,2]", "JSON object"),
            (br#"{"op":"status"}"#, "missing protocol version"),
            (br#"{"v":2,"op":"status"}"#, "version 2"),
            (br#"{"v":1}"#, "missing \"op\""),
            (br#"{"v":1,"op":"rm -rf"}"#, "unknown operation"),
            (br#"{"v":1,"op":"allow"}"#, "missing \"entries\""),
            (br#"{"v":1,"op":"allow","entries":[]}"#, "no entries"),
            (br#"{"v":1,"op":"allow","entries":[5]}"#, "a string"),
            (
                br#"{"v":1,"op":"deny","entries":["a.test"],"kill":"yes"}"#,
                "true or false",
            ),
            (
                br#"{"v":1,"op":"allow","entries":["a.test,b.test"]}"#,
                "invalid allowlist entry",
            ),
            (
                br#"{"v":1,"op":"allow","entries":["$(id).test"]}"#,
                "invalid allowlist entry",
            ),
        ];
        for (line, why) in bad {
            let e = Request::decode(line).unwrap_err();
            assert!(e.contains(why), "{:?}: {e}", String::from_utf8_lossy(line));
        }
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("h{i}.test")).collect();
        let line = json!({"v": 1, "op": "allow", "entries": many}).to_string();
        assert!(Request::decode(line.as_bytes())
            .unwrap_err()
            .contains("more than"));
        let huge = vec![b' '; MAX_REQUEST + 1];
        assert!(Request::decode(&huge).unwrap_err().contains("larger"));
    }

    #[test]
    fn responses_round_trip() {
        let ok = Response::Ok {
            lines: vec!["allowed a.test".into()],
            data: json!({"n": 1}),
        };
        assert_eq!(Response::decode(ok.encode().as_bytes()), Ok(ok));
        let err = Response::Err("no".into());
        assert_eq!(Response::decode(err.encode().as_bytes()), Ok(err));
        assert!(Response::decode(br#"{"v":9,"ok":true}"#)
            .unwrap_err()
            .contains("version"));
    }
}
