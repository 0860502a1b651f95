//! The documents Claude Code reads, built and merged as plain values (no I/O), so every
//! rule about their shape is unit-tested without root.
//!
//! No message built here contains a secret: parse errors report a position only.

use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub const OAUTH_TOKEN: &str = "CLAUDE_CODE_OAUTH_TOKEN";
pub const KEYCHAIN: &str = "CLAUDE_CREDENTIALS";
pub const API_KEY: &str = "ANTHROPIC_API_KEY";
pub const CONFIG_DIR: &str = "CLAUDE_CONFIG_DIR";

/// The scope without which the CLI ignores an OAuth login ("Not logged in").
pub const INFERENCE_SCOPE: &str = "user:inference";

/// How the credential broker's placeholders begin: recognisable in any log or file, and
/// never worth keeping on the volume once the broker is off.
pub const OAUTH_PLACEHOLDER_PREFIX: &str = "sk-ant-oat01-sandbox-init-placeholder-";
pub const API_KEY_PLACEHOLDER_PREFIX: &str = "sk-ant-api03-sandbox-init-placeholder-";

/// Whether a `.credentials.json` on the volume holds only a broker placeholder.
pub fn holds_placeholder(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|d| {
        d["claudeAiOauth"]["accessToken"]
            .as_str()
            .is_some_and(|t| t.starts_with(OAUTH_PLACEHOLDER_PREFIX))
    })
}

/// Whether a `.credentials.json` on the volume holds a real login with a refresh token.
pub fn holds_refreshable_login(bytes: &[u8]) -> bool {
    !holds_placeholder(bytes)
        && serde_json::from_slice::<Value>(bytes).is_ok_and(|d| {
            d["claudeAiOauth"]["refreshToken"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
}

/// `login` (a document whose `claudeAiOauth` is a login or the broker's placeholder) in
/// place of the login in the `.credentials.json` the volume holds, keeping the file's other
/// keys: the `mcpOAuth` tokens Claude Code saved there for MCP servers are the user's,
/// written in this container, and no start may lose them. Anything but a JSON object on
/// the volume is replaced whole.
pub fn with_login(existing: &[u8], login: &Value) -> Value {
    match serde_json::from_slice::<Value>(existing) {
        Ok(Value::Object(mut kept)) => {
            kept.insert(
                "claudeAiOauth".into(),
                login.get("claudeAiOauth").cloned().unwrap_or(Value::Null),
            );
            Value::Object(kept)
        }
        _ => login.clone(),
    }
}

/// The refresh token of the login in a `.credentials.json`, if it has one.
pub fn refresh_token(bytes: &[u8]) -> Option<zeroize::Zeroizing<String>> {
    let d = serde_json::from_slice::<Value>(bytes).ok()?;
    d["claudeAiOauth"]["refreshToken"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(|t| zeroize::Zeroizing::new(t.to_string()))
}

/// What the environment asks us to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `.credentials.json` and the variable it came from.
    pub credentials: Option<(Value, &'static str)>,
    /// `primaryApiKey` for `.claude.json`.
    pub api_key: Option<String>,
    /// Where `api_key` came from, for the log.
    pub api_key_from: &'static str,
    /// A credential variable that was given but loses to another (warned about).
    pub ignored: Option<&'static str>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.credentials.is_none() && self.api_key.is_none()
    }
}

fn given<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// Reads the credential inputs. Fails (config error) on a keychain blob the CLI would not
/// accept, before anything is written.
pub fn plan(env: &HashMap<String, String>) -> Result<Plan, String> {
    let token = given(env, OAUTH_TOKEN);
    let blob = given(env, KEYCHAIN);
    let (credentials, ignored) = match (blob, token) {
        (Some(b), t) => (
            Some((validate_keychain(b)?, KEYCHAIN)),
            t.map(|_| OAUTH_TOKEN),
        ),
        (None, Some(t)) => (Some((oauth_token_document(t), OAUTH_TOKEN)), None),
        (None, None) => (None, None),
    };
    Ok(Plan {
        credentials,
        api_key: given(env, API_KEY).map(str::to_string),
        api_key_from: API_KEY,
        ignored,
    })
}

/// A `claude setup-token` token wrapped the way the CLI stores a login. Only
/// `user:inference`: the CLI then makes no profile call.
pub fn oauth_token_document(token: &str) -> Value {
    json!({
        "claudeAiOauth": {
            "accessToken": token,
            "refreshToken": null,
            "expiresAt": null,
            "scopes": [INFERENCE_SCOPE],
            "subscriptionType": null,
        }
    })
}

/// Checks a "Claude Code-credentials" keychain item and returns it unchanged.
pub fn validate_keychain(blob: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(blob).map_err(|e| {
        format!(
            "{KEYCHAIN} is not valid JSON (line {}, column {}); pass the keychain item \
             \"Claude Code-credentials\" verbatim",
            e.line(),
            e.column()
        )
    })?;
    let oauth = v
        .get("claudeAiOauth")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{KEYCHAIN} has no \"claudeAiOauth\" object"))?;
    match oauth.get("accessToken").and_then(Value::as_str) {
        Some(t) if !t.trim().is_empty() => {}
        _ => return Err(format!("{KEYCHAIN} has no claudeAiOauth.accessToken")),
    }
    let has_scope = oauth
        .get("scopes")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|x| x.as_str() == Some(INFERENCE_SCOPE)));
    if !has_scope {
        return Err(format!(
            "{KEYCHAIN}: claudeAiOauth.scopes lacks \"{INFERENCE_SCOPE}\"; Claude Code would \
             only say \"Not logged in\". Log in again on the host, or use \
             {OAUTH_TOKEN} from `claude setup-token`"
        ));
    }
    Ok(v)
}

/// The outcome of merging `primaryApiKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    None,
    Written,
    Same,
    Kept,
    Replaced,
}

/// `~/.claude.json` after merging first-run state (and the API key) into `existing`.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub doc: Value,
    pub changed: bool,
    pub key: KeyOutcome,
    /// Keys of the wrong type that had to be replaced (named in a warning).
    pub replaced: Vec<String>,
}

/// Ensures `doc[key]` is an object, replacing a value of another type.
fn object_at<'a>(
    doc: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
    replaced: &mut Vec<String>,
) -> &'a mut Map<String, Value> {
    let slot = doc
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        replaced.push(path.to_string());
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn set_true(map: &mut Map<String, Value>, key: &str) -> bool {
    if map.get(key) == Some(&Value::Bool(true)) {
        return false;
    }
    map.insert(key.into(), Value::Bool(true));
    true
}

/// Merges the first-run state (onboarding done, `workdir` trusted) and an optional API key
/// into the existing `.claude.json` object; every other key stays as it was.
pub fn merge_state(
    existing: Option<Map<String, Value>>,
    workdir: &str,
    api_key: Option<&str>,
    force: bool,
) -> Merged {
    let mut changed = existing.is_none();
    let mut doc = existing.unwrap_or_default();
    let mut replaced = vec![];
    changed |= set_true(&mut doc, "hasCompletedOnboarding");
    let projects = object_at(&mut doc, "projects", "projects", &mut replaced);
    let project = object_at(
        projects,
        workdir,
        &format!("projects[{workdir}]"),
        &mut replaced,
    );
    changed |= set_true(project, "hasTrustDialogAccepted");
    changed |= !replaced.is_empty();

    let key = match api_key {
        None => KeyOutcome::None,
        Some(k) => match doc.get("primaryApiKey").and_then(Value::as_str) {
            Some(old) if old == k => KeyOutcome::Same,
            Some(old)
                if !old.is_empty() && !force && !old.starts_with(API_KEY_PLACEHOLDER_PREFIX) =>
            {
                KeyOutcome::Kept
            }
            old => {
                let outcome = if old.is_some_and(|o| !o.is_empty()) {
                    KeyOutcome::Replaced
                } else {
                    KeyOutcome::Written
                };
                doc.insert("primaryApiKey".into(), Value::String(k.to_string()));
                changed = true;
                outcome
            }
        },
    };
    Merged {
        doc: Value::Object(doc),
        changed,
        key,
        replaced,
    }
}

/// `settings.json` with the bypass-permissions warning acknowledged; `None` when nothing
/// changes.
pub fn merge_settings(existing: Option<Map<String, Value>>) -> Option<Value> {
    let fresh = existing.is_none();
    let mut doc = existing.unwrap_or_default();
    let changed = set_true(&mut doc, "skipDangerousModePermissionPrompt");
    (fresh || changed).then_some(Value::Object(doc))
}

/// What an existing JSON state file held.
#[derive(Debug)]
pub enum Existing {
    Absent,
    Object(Map<String, Value>),
    /// Not a JSON object: kept as a backup, never silently destroyed.
    Malformed(String),
}

pub fn parse_existing(bytes: Option<&[u8]>) -> Existing {
    let Some(b) = bytes else {
        return Existing::Absent;
    };
    // The CLI may leave an empty file behind; that holds nothing worth a backup.
    if b.iter().all(u8::is_ascii_whitespace) {
        return Existing::Absent;
    }
    match serde_json::from_slice::<Value>(b) {
        Ok(Value::Object(m)) => Existing::Object(m),
        Ok(_) => Existing::Malformed("not a JSON object".into()),
        Err(e) => Existing::Malformed(format!(
            "invalid JSON at line {}, column {}",
            e.line(),
            e.column()
        )),
    }
}

/// Serialises a document the way the CLI writes it (two-space indent), newline-terminated.
pub fn render(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::test_util::env;

    const BLOB: &str = r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-x","refreshToken":"sk-ant-ort01-y","expiresAt":1767225600000,"scopes":["user:inference","user:profile"],"subscriptionType":"max","rateLimitTier":"default_claude_max_20x"},"mcpOAuth":{}}"#;

    #[test]
    fn token_is_wrapped_exactly_as_the_cli_expects() {
        let want: Value = serde_json::from_str(
            r#"{"claudeAiOauth":{"accessToken":"tok","refreshToken":null,"expiresAt":null,
                "scopes":["user:inference"],"subscriptionType":null}}"#,
        )
        .unwrap();
        assert_eq!(oauth_token_document("tok"), want);
        let p = plan(&env(&[(OAUTH_TOKEN, " tok\n")])).unwrap();
        assert_eq!(p.credentials, Some((want, OAUTH_TOKEN)));
        assert_eq!(p.ignored, None);
    }

    #[test]
    fn keychain_blob_is_kept_json_equal_and_wins_over_the_token() {
        let p = plan(&env(&[(KEYCHAIN, BLOB), (OAUTH_TOKEN, "tok")])).unwrap();
        let (doc, from) = p.credentials.unwrap();
        assert_eq!(from, KEYCHAIN);
        assert_eq!(doc, serde_json::from_str::<Value>(BLOB).unwrap());
        assert_eq!(p.ignored, Some(OAUTH_TOKEN));
    }

    #[test]
    fn keychain_blob_without_inference_scope_or_token_is_rejected() {
        let no_scope = BLOB.replace("\"user:inference\",", "");
        let e = validate_keychain(&no_scope).unwrap_err();
        assert!(e.contains("user:inference"), "{e}");
        let no_scopes = r#"{"claudeAiOauth":{"accessToken":"a"}}"#;
        assert!(validate_keychain(no_scopes).is_err());
        let no_token = r#"{"claudeAiOauth":{"scopes":["user:inference"]}}"#;
        assert!(validate_keychain(no_token)
            .unwrap_err()
            .contains("accessToken"));
        let empty_token = r#"{"claudeAiOauth":{"accessToken":"","scopes":["user:inference"]}}"#;
        assert!(validate_keychain(empty_token).is_err());
        assert!(validate_keychain(r#"{"claudeAiOauth":"x"}"#).is_err());
        assert!(validate_keychain("[]").is_err());
        // the rejection happens in plan(), i.e. before anything is written
        assert!(plan(&env(&[(KEYCHAIN, &no_scope), (OAUTH_TOKEN, "t")])).is_err());
    }

    #[test]
    fn messages_never_carry_the_secret() {
        let secret = "sk-ant-oat01-SECRETVALUE";
        for bad in [
            format!("{{\"claudeAiOauth\": {{\"accessToken\": \"{secret}\"}}"),
            format!("{{\"claudeAiOauth\": \"{secret}\"}}"),
            format!("{{\"claudeAiOauth\": {{\"accessToken\": \"{secret}\", \"scopes\": \"{secret}\"}}}}"),
            secret.to_string(),
        ] {
            let e = validate_keychain(&bad).unwrap_err();
            assert!(!e.contains("SECRETVALUE"), "{e}");
        }
    }

    #[test]
    fn nothing_given_is_an_empty_plan() {
        let p = plan(&env(&[(OAUTH_TOKEN, ""), ("PATH", "/bin")])).unwrap();
        assert!(p.is_empty());
        let p = plan(&env(&[(API_KEY, "sk-ant-api03-k")])).unwrap();
        assert_eq!(p.api_key.as_deref(), Some("sk-ant-api03-k"));
        assert!(p.credentials.is_none());
    }

    #[test]
    fn first_run_state_is_seeded_into_nothing() {
        let m = merge_state(None, "/workspace", None, false);
        assert!(m.changed);
        assert_eq!(
            m.doc,
            json!({"hasCompletedOnboarding": true,
                   "projects": {"/workspace": {"hasTrustDialogAccepted": true}}})
        );
        assert_eq!(m.key, KeyOutcome::None);
    }

    #[test]
    fn merge_keeps_every_other_key() {
        let existing = json!({
            "userID": "abc", "numStartups": 7, "oauthAccount": {"emailAddress": "a@b"},
            "projects": {"/other": {"allowedTools": ["x"]},
                         "/workspace": {"history": [1, 2], "hasTrustDialogAccepted": false}}
        });
        let m = merge_state(
            existing.as_object().cloned(),
            "/workspace",
            Some("k"),
            false,
        );
        assert!(m.changed);
        assert_eq!(m.key, KeyOutcome::Written);
        let d = &m.doc;
        assert_eq!(d["userID"], "abc");
        assert_eq!(d["numStartups"], 7);
        assert_eq!(d["oauthAccount"]["emailAddress"], "a@b");
        assert_eq!(d["projects"]["/other"]["allowedTools"], json!(["x"]));
        assert_eq!(d["projects"]["/workspace"]["history"], json!([1, 2]));
        assert_eq!(d["projects"]["/workspace"]["hasTrustDialogAccepted"], true);
        assert_eq!(d["hasCompletedOnboarding"], true);
        assert_eq!(d["primaryApiKey"], "k");
        // a second merge changes nothing
        let again = merge_state(d.as_object().cloned(), "/workspace", Some("k"), false);
        assert!(!again.changed);
        assert_eq!(again.key, KeyOutcome::Same);
    }

    #[test]
    fn an_existing_api_key_is_kept_unless_forced() {
        let existing = json!({"primaryApiKey": "old", "hasCompletedOnboarding": true,
                              "projects": {"/w": {"hasTrustDialogAccepted": true}}});
        let kept = merge_state(existing.as_object().cloned(), "/w", Some("new"), false);
        assert_eq!(kept.key, KeyOutcome::Kept);
        assert!(!kept.changed);
        assert_eq!(kept.doc["primaryApiKey"], "old");
        let forced = merge_state(existing.as_object().cloned(), "/w", Some("new"), true);
        assert_eq!(forced.key, KeyOutcome::Replaced);
        assert!(forced.changed);
        assert_eq!(forced.doc["primaryApiKey"], "new");
    }

    #[test]
    fn a_broker_placeholder_is_never_kept() {
        let ph = format!("{API_KEY_PLACEHOLDER_PREFIX}0123");
        let existing = json!({"primaryApiKey": ph});
        let m = merge_state(existing.as_object().cloned(), "/w", Some("real"), false);
        assert_eq!(m.key, KeyOutcome::Replaced);
        assert_eq!(m.doc["primaryApiKey"], "real");
        let login = |token: &str| {
            json!({"claudeAiOauth": {"accessToken": token, "refreshToken": null}}).to_string()
        };
        let ph = format!("{OAUTH_PLACEHOLDER_PREFIX}0123");
        assert!(holds_placeholder(login(&ph).as_bytes()));
        assert!(!holds_placeholder(login("sk-ant-oat01-real").as_bytes()));
        assert!(!holds_placeholder(b"not json"));
        let refreshable = |access: &str| {
            json!({"claudeAiOauth": {"accessToken": access, "refreshToken": "sk-ant-ort01-r"}})
                .to_string()
        };
        assert!(holds_refreshable_login(
            refreshable("sk-ant-oat01-real").as_bytes()
        ));
        assert!(!holds_refreshable_login(refreshable(&ph).as_bytes()));
        assert!(!holds_refreshable_login(
            login("sk-ant-oat01-real").as_bytes()
        ));
        // The prefix must lead: a real token that merely mentions it is kept.
        assert!(!holds_placeholder(login(&format!("x{ph}")).as_bytes()));
    }

    #[test]
    fn a_new_login_keeps_the_other_tokens_of_the_file_it_replaces() {
        let on_volume = json!({
            "claudeAiOauth": {"accessToken": "sk-ant-oat01-old", "refreshToken": "r"},
            "mcpOAuth": {"server|1": {"accessToken": "MCP"}}
        })
        .to_string();
        let login = json!({"claudeAiOauth": {"accessToken": "PH", "refreshToken": null}});
        let merged = with_login(on_volume.as_bytes(), &login);
        assert_eq!(merged["claudeAiOauth"], login["claudeAiOauth"]);
        assert_eq!(merged["mcpOAuth"]["server|1"]["accessToken"], "MCP");
        assert!(!merged.to_string().contains("sk-ant-oat01-old"));
        // Control: nothing to keep in a file that is no object.
        assert_eq!(with_login(b"[1]", &login), login);
        assert_eq!(with_login(b"not json", &login), login);
    }

    #[test]
    fn wrong_types_are_replaced_and_named() {
        let existing = json!({"projects": [1], "x": 1});
        let m = merge_state(existing.as_object().cloned(), "/w", None, false);
        assert_eq!(m.replaced, vec!["projects".to_string()]);
        assert_eq!(m.doc["projects"]["/w"]["hasTrustDialogAccepted"], true);
        assert_eq!(m.doc["x"], 1);
        let existing = json!({"projects": {"/w": "junk"}});
        let m = merge_state(existing.as_object().cloned(), "/w", None, false);
        assert_eq!(m.replaced, vec!["projects[/w]".to_string()]);
    }

    #[test]
    fn settings_merge() {
        assert_eq!(
            merge_settings(None),
            Some(json!({"skipDangerousModePermissionPrompt": true}))
        );
        let existing = json!({"model": "opus", "skipDangerousModePermissionPrompt": false});
        let m = merge_settings(existing.as_object().cloned()).unwrap();
        assert_eq!(m["model"], "opus");
        assert_eq!(m["skipDangerousModePermissionPrompt"], true);
        assert_eq!(merge_settings(m.as_object().cloned()), None);
    }

    #[test]
    fn existing_files_are_classified() {
        assert!(matches!(parse_existing(None), Existing::Absent));
        assert!(matches!(parse_existing(Some(b" \n")), Existing::Absent));
        assert!(matches!(
            parse_existing(Some(b"{\"a\":1}")),
            Existing::Object(_)
        ));
        assert!(matches!(
            parse_existing(Some(b"{\"a\":")),
            Existing::Malformed(_)
        ));
        assert!(matches!(
            parse_existing(Some(b"[1]")),
            Existing::Malformed(_)
        ));
        let doc = json!({"a": [1, {"b": null}]});
        assert_eq!(serde_json::from_slice::<Value>(&render(&doc)).unwrap(), doc);
    }
}
