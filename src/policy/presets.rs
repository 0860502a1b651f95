//! Named allowlists. Each is a fixed list in the source: nothing is fetched at start
//! (GitHub's meta API, for one, rate-limits unauthenticated callers to 60 calls an hour).

pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub entries: &'static [&'static str],
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "anthropic",
        about: "the Claude API (published fixed ranges, also Remote Control), login, token \
                refresh, updater, plugins, claude.ai MCP connectors, Claude Code's docs",
        entries: &[
            // Anthropic's published fixed API ranges: the API keeps working when its
            // addresses rotate inside them. Remote Control's bridge connects to an
            // address in these ranges without asking DNS for a name.
            "160.79.104.0/23",
            "2607:6bc0::/48",
            // The Messages API and the CLI's other calls under its base URL (remote
            // managed settings among them): asked for at every start without
            // ANTHROPIC_BASE_URL.
            "api.anthropic.com",
            // OAuth login (claude.com, claude.ai, platform.claude.com) and token refresh
            // (platform.claude.com); console.anthropic.com is where earlier releases
            // logged in.
            "claude.ai",
            "claude.com",
            "platform.claude.com",
            "console.anthropic.com",
            // The updater's releases, the official plugins and the model catalog: asked
            // for at every interactive start.
            "downloads.claude.ai",
            // The proxy through which the CLI reaches the MCP connectors of a claude.ai
            // account.
            "mcp-proxy.anthropic.com",
            // Claude Code's own documentation, which the CLI fetches as Markdown to
            // answer questions about itself (and its changelog).
            "code.claude.com",
        ],
    },
    Preset {
        name: "telemetry",
        about: "opt-in: the CLI's error reporting, feature flags and log intake",
        entries: &[
            "statsig.anthropic.com",
            "statsig.com",
            "api.statsig.com",
            "sentry.io",
            "*.sentry.io",
            "http-intake.logs.datadoghq.com",
        ],
    },
    Preset {
        name: "npm",
        about: "the npm registry",
        entries: &["registry.npmjs.org", "registry.yarnpkg.com"],
    },
    Preset {
        name: "pypi",
        about: "the Python package index",
        entries: &["pypi.org", "files.pythonhosted.org"],
    },
    Preset {
        name: "github",
        about: "GitHub web, API, git over HTTPS, raw content, releases, packages",
        entries: &[
            "github.com",
            "api.github.com",
            "codeload.github.com",
            "uploads.github.com",
            "objects.githubusercontent.com",
            "raw.githubusercontent.com",
            "release-assets.githubusercontent.com",
            "*.githubusercontent.com",
            "ghcr.io",
            "pkg-containers.githubusercontent.com",
        ],
    },
    Preset {
        name: "crates",
        about: "the Rust crate registry and rustup",
        entries: &[
            "crates.io",
            "index.crates.io",
            "static.crates.io",
            "static.rust-lang.org",
        ],
    },
    Preset {
        name: "debian",
        about: "Debian package mirrors",
        entries: &[
            "deb.debian.org",
            "security.debian.org",
            "cdn-fastly.deb.debian.org",
        ],
    },
    Preset {
        name: "vscode",
        about: "VS Code server, marketplace and extension downloads",
        entries: &[
            "update.code.visualstudio.com",
            // where update.code.visualstudio.com redirects the server download
            "vscode.download.prss.microsoft.com",
            "marketplace.visualstudio.com",
            "*.gallery.vsassets.io",
            "vscode.blob.core.windows.net",
            "*.vscode-cdn.net",
            "*.gallerycdn.vsassets.io",
        ],
    },
];

/// The `anthropic` preset's login and token hosts: with the credential broker running the
/// command holds a placeholder that never expires, so it never logs in nor refreshes there,
/// and they leave its allowlist (the broker refreshes through its token endpoint).
pub const BROKER_HOSTS: &[&str] = &[
    "claude.ai",
    "claude.com",
    "console.anthropic.com",
    "platform.claude.com",
];

pub fn lookup(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::{Entry, Target};

    #[test]
    fn every_preset_entry_parses() {
        for p in PRESETS {
            for e in p.entries {
                e.parse::<Entry>()
                    .unwrap_or_else(|err| panic!("preset {}: {err}", p.name));
            }
        }
    }

    #[test]
    fn anthropic_has_the_published_ranges_and_the_hosts_the_cli_uses() {
        let a = lookup("anthropic").unwrap();
        let parsed: Vec<Target> = a
            .entries
            .iter()
            .map(|e| e.parse::<Entry>().unwrap().target)
            .collect();
        for must in [
            Target::Net("160.79.104.0/23".parse().unwrap()),
            Target::Net("2607:6bc0::/48".parse().unwrap()),
            Target::Host("api.anthropic.com".into()),
            Target::Host("claude.ai".into()),
            Target::Host("platform.claude.com".into()),
            Target::Host("console.anthropic.com".into()),
            Target::Host("downloads.claude.ai".into()),
            Target::Host("mcp-proxy.anthropic.com".into()),
            Target::Host("code.claude.com".into()),
        ] {
            assert!(parsed.contains(&must), "{must:?}");
        }
        assert!(lookup("nope").is_none());
    }
}
