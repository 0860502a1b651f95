//! What the CLI gets instead of the real credential: values that pass Claude Code's own
//! checks and are worthless anywhere else. Each start draws new ones, so a placeholder
//! copied out of one session opens nothing, not even that session's broker after a restart.
//!
//! The documents are pure values; writing them into the home is the credentials stage's
//! job (as the user, link-proof), exactly as it writes real credentials when the broker is
//! off.

use super::secret::Secret;
use super::wire::OAuth;
use serde_json::{json, Value};

/// Recognisable in any log or file: whoever finds one knows it is not a credential.
pub use crate::stages::credentials::doc::{
    API_KEY_PLACEHOLDER_PREFIX as API_KEY_PREFIX, OAUTH_PLACEHOLDER_PREFIX as OAUTH_PREFIX,
};

/// The scope the CLI needs to use an OAuth login at all. With nothing else, it makes no
/// profile call (those ignore ANTHROPIC_BASE_URL and would go around the broker).
pub const INFERENCE_SCOPE: &str = "user:inference";

/// 2100-01-01T00:00:00Z in milliseconds: the placeholder never expires in the CLI's eyes,
/// so the CLI never tries to refresh it itself (the broker refreshes the real one).
pub const FAR_EXPIRY_MS: u64 = 4_102_444_800_000;

/// A fresh OAuth access-token placeholder.
pub fn oauth_token() -> Result<String, String> {
    Ok(format!("{OAUTH_PREFIX}{}", random_hex()?))
}

/// A fresh API-key placeholder.
pub fn api_key() -> Result<String, String> {
    Ok(format!("{API_KEY_PREFIX}{}", random_hex()?))
}

/// 128 bits from the kernel. PID 1 draws these, so this uses getrandom(2) directly rather
/// than the broker's crypto library (which refuses to run on CPUs it does not support).
fn random_hex() -> Result<String, String> {
    let mut b = [0u8; 16];
    crate::sys::random_bytes(&mut b)
        .map_err(|e| format!("cannot draw a random placeholder: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The real OAuth credential from a `claude setup-token` token (no refresh token, no
/// expiry the CLI knows of).
pub fn oauth_from_token(token: &str) -> OAuth {
    OAuth {
        access: Secret::new(token.trim()),
        refresh: None,
        expires_at_ms: None,
        scopes: vec![INFERENCE_SCOPE.into()],
        client_id: None,
        subscription_type: Value::Null,
        rate_limit_tier: Value::Null,
        lineage: None,
    }
}

/// The real OAuth credential from a "Claude Code-credentials" keychain item (already
/// validated by the credentials stage; checked again here because the broker depends on
/// these fields). No message contains a token.
pub fn oauth_from_keychain(blob: &Value) -> Result<OAuth, String> {
    let o = blob
        .get("claudeAiOauth")
        .and_then(Value::as_object)
        .ok_or("the keychain item has no \"claudeAiOauth\" object")?;
    let text = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let access = text("accessToken").ok_or("the keychain item has no claudeAiOauth.accessToken")?;
    let scopes: Vec<String> = o
        .get("scopes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if !scopes.iter().any(|s| s == INFERENCE_SCOPE) {
        return Err(format!(
            "the keychain item's claudeAiOauth.scopes lacks \"{INFERENCE_SCOPE}\""
        ));
    }
    Ok(OAuth {
        access: Secret::new(access),
        refresh: text("refreshToken").map(Secret::new),
        expires_at_ms: o.get("expiresAt").and_then(Value::as_u64),
        scopes,
        client_id: text("clientId").map(String::from),
        subscription_type: o.get("subscriptionType").cloned().unwrap_or(Value::Null),
        rate_limit_tier: o.get("rateLimitTier").cloned().unwrap_or(Value::Null),
        lineage: None,
    })
}

/// `.credentials.json` for the CLI: the placeholder as the access token, no refresh token,
/// an expiry far ahead, only the inference scope, and the plan fields of the real login
/// (they change what the CLI offers, and are no secret). Nothing else of the keychain item
/// is carried over: its `mcpOAuth` tokens are secrets of other services.
pub fn credentials_document(real: &OAuth, placeholder: &str) -> Value {
    json!({
        "claudeAiOauth": {
            "accessToken": placeholder,
            "refreshToken": null,
            "expiresAt": FAR_EXPIRY_MS,
            "scopes": [INFERENCE_SCOPE],
            "subscriptionType": real.subscription_type,
            "rateLimitTier": real.rate_limit_tier,
        }
    })
}

/// `.credentials.json` holding the real login, as Claude Code writes one after `/login`:
/// what goes back on the volume when the broker that held it no longer runs.
pub fn login_document(real: &OAuth) -> Value {
    json!({
        "claudeAiOauth": {
            "accessToken": real.access.expose(),
            "refreshToken": real.refresh.as_ref().map(Secret::expose),
            "expiresAt": real.expires_at_ms,
            "scopes": real.scopes,
            "subscriptionType": real.subscription_type,
            "rateLimitTier": real.rate_limit_tier,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob() -> Value {
        json!({"claudeAiOauth": {
            "accessToken": "sk-ant-oat01-REAL-ACCESS",
            "refreshToken": "sk-ant-ort01-REAL-REFRESH",
            "expiresAt": 1_800_000_000_000u64,
            "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
            "subscriptionType": "max",
            "rateLimitTier": "default_claude_max_20x"},
            "mcpOAuth": {"server": {"accessToken": "MCP-SECRET"}}})
    }

    #[test]
    fn placeholders_are_fresh_and_recognisable() {
        let a = oauth_token().unwrap();
        let b = oauth_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(OAUTH_PREFIX) && a.len() == OAUTH_PREFIX.len() + 32);
        assert!(api_key().unwrap().starts_with(API_KEY_PREFIX));
    }

    #[test]
    fn keychain_item_becomes_the_real_credential() {
        let real = oauth_from_keychain(&blob()).unwrap();
        assert_eq!(real.access.expose(), "sk-ant-oat01-REAL-ACCESS");
        assert_eq!(
            real.refresh.as_ref().unwrap().expose(),
            "sk-ant-ort01-REAL-REFRESH"
        );
        assert_eq!(real.expires_at_ms, Some(1_800_000_000_000));
        assert_eq!(real.scopes.len(), 3);
        let mut no_scope = blob();
        no_scope["claudeAiOauth"]["scopes"] = json!(["user:profile"]);
        assert!(oauth_from_keychain(&no_scope)
            .unwrap_err()
            .contains("user:inference"));
        assert!(oauth_from_keychain(&json!({"claudeAiOauth": {}})).is_err());
    }

    #[test]
    fn the_cli_document_holds_no_real_secret() {
        let real = oauth_from_keychain(&blob()).unwrap();
        let ph = oauth_token().unwrap();
        let doc = credentials_document(&real, &ph);
        let text = doc.to_string();
        for secret in ["REAL-ACCESS", "REAL-REFRESH", "MCP-SECRET"] {
            assert!(!text.contains(secret), "{text}");
        }
        let o = &doc["claudeAiOauth"];
        assert_eq!(o["accessToken"], ph.as_str());
        assert_eq!(o["refreshToken"], Value::Null);
        assert_eq!(o["expiresAt"], FAR_EXPIRY_MS);
        assert_eq!(o["scopes"], json!(["user:inference"]));
        assert_eq!(o["subscriptionType"], "max");
    }

    #[test]
    fn a_login_given_back_reads_as_the_login_it_was() {
        let real = oauth_from_keychain(&blob()).unwrap();
        let back = oauth_from_keychain(&login_document(&real)).unwrap();
        assert_eq!(back.access.expose(), real.access.expose());
        assert_eq!(
            back.refresh.as_ref().map(Secret::expose),
            real.refresh.as_ref().map(Secret::expose)
        );
        assert_eq!(back.expires_at_ms, real.expires_at_ms);
        assert_eq!(back.scopes, real.scopes);
        assert_eq!(back.subscription_type, "max");
        assert_eq!(back.rate_limit_tier, "default_claude_max_20x");
        let doc = login_document(&real).to_string();
        assert!(!doc.contains("MCP-SECRET"), "{doc}");
        assert!(crate::stages::credentials::doc::holds_refreshable_login(
            doc.as_bytes()
        ));
    }

    #[test]
    fn a_setup_token_has_no_refresh() {
        let real = oauth_from_token(" sk-ant-oat01-LONG-LIVED \n");
        assert_eq!(real.access.expose(), "sk-ant-oat01-LONG-LIVED");
        assert!(real.refresh.is_none() && real.expires_at_ms.is_none());
        let doc = credentials_document(&real, "PH");
        assert_eq!(doc["claudeAiOauth"]["subscriptionType"], Value::Null);
    }
}
