//! Helpers shared by the unit tests of several modules.

use std::collections::HashMap;

/// An environment map from literal pairs.
pub fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
