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
        about: "the Claude API (published fixed ranges), login, token refresh, plugins, MCP",
        entries: &[
            // Anthropic's published fixed API ranges: the API keeps working when its
            // addresses rotate inside them.
            "160.79.104.0/23",
            "2607:6bc0::/48",
            "api.anthropic.com",
            // OAuth login and token refresh
            "claude.ai",
            "claude.com",
            "platform.claude.com",
            "console.anthropic.com",
            // plugins and release downloads, MCP proxy
            "downloads.claude.ai",
            "mcp-proxy.anthropic.com",
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
    fn anthropic_has_the_published_ranges_and_login_hosts() {
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
        ] {
            assert!(parsed.contains(&must), "{must:?}");
        }
        assert!(lookup("nope").is_none());
    }
}
