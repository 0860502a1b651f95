//! Helpers shared by the unit tests of several modules.

use crate::policy::identity::Identity;
use std::collections::HashMap;
use std::path::PathBuf;

/// An environment map from literal pairs.
pub fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The image's `claude` user (1000:1000, a supplementary group 500).
pub fn claude() -> Identity {
    Identity {
        name: "claude".into(),
        uid: 1000,
        gid: 1000,
        image_uid: 1000,
        image_gid: 1000,
        groups: vec![1000, 500],
        dropped_groups: vec![],
        home: PathBuf::from("/home/claude"),
        shell: "/bin/bash".into(),
    }
}
