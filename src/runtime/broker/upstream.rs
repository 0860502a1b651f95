//! Where the broker forwards to, and the TLS trust it uses for it.
//!
//! The upstream is fixed at start: requests name only a path, and that path is appended to
//! the upstream's own. Nothing a request carries (Host header, absolute-form target) ever
//! changes the scheme or authority, so the real credential only ever goes to this origin.

use hyper::http::uri::{Authority, PathAndQuery, Scheme, Uri};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The base path without a trailing slash ("" for none).
    pub base_path: String,
}

impl Upstream {
    /// Parses an http or https URL without credentials, query or fragment. `what` names
    /// the setting in errors.
    pub fn parse(url: &str, what: &str) -> Result<Upstream, String> {
        let bad = |why: &str| format!("{what} {url:?}: {why}");
        if url.contains('#') {
            return Err(bad("a fragment has no meaning here"));
        }
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| bad("not a URL (expected http://HOST[:PORT][/PATH] or https://...)"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if uri.query().is_some() {
            return Err(bad("a query has no meaning here"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Upstream {
            scheme,
            authority,
            base_path,
        })
    }

    /// The upstream URI for a request's path and query (origin-form only).
    pub fn target(&self, path_and_query: &PathAndQuery) -> Result<Uri, String> {
        let joined = format!("{}{}", self.base_path, path_and_query.as_str());
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(joined)
            .build()
            .map_err(|e| format!("cannot build the upstream URL: {e}"))
    }

    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// For messages: scheme://authority/path (no secret is ever part of it).
    pub fn display(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// The CA bundles of the common distributions, in the order they are tried.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The CA bundle the broker trusts: the given one (SSL_CERT_FILE), or the first system
/// bundle that exists.
pub fn bundle_path(ca_file: Option<&Path>) -> Result<PathBuf, String> {
    match ca_file {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) => Err(format!(
            "SSL_CERT_FILE={} is not a readable file: point it at a CA bundle, or unset it",
            p.display()
        )),
        None => SYSTEM_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "no CA certificates found (looked for {}); install the ca-certificates \
                     package in the image or set SSL_CERT_FILE",
                    SYSTEM_BUNDLES.join(", ")
                )
            }),
    }
}

/// The trust anchors of `bundle_path`.
pub fn load_roots(ca_file: Option<&Path>) -> Result<(rustls::RootCertStore, PathBuf), String> {
    let path = bundle_path(ca_file)?;
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("cannot read the CA bundle {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut bad = 0usize;
    for cert in certs {
        match cert {
            Ok(c) => {
                if roots.add(c).is_err() {
                    bad += 1;
                }
            }
            Err(_) => bad += 1,
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "the CA bundle {} holds no usable certificate ({bad} unreadable)",
            path.display()
        ));
    }
    if bad > 0 {
        log::debug!("{}: {bad} certificates skipped", path.display());
    }
    Ok((roots, path))
}

/// The client TLS configuration: rustls with the graviola provider, TLS 1.2 and 1.3.
pub fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls_graviola::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_people_set() {
        let u = Upstream::parse("https://api.anthropic.com", "ANTHROPIC_BASE_URL").unwrap();
        assert!(u.is_tls());
        assert_eq!(u.authority.as_str(), "api.anthropic.com");
        assert_eq!(u.base_path, "");
        let pq = PathAndQuery::from_static("/v1/messages?beta=true");
        assert_eq!(
            u.target(&pq).unwrap().to_string(),
            "https://api.anthropic.com/v1/messages?beta=true"
        );
        let g = Upstream::parse("http://gw.corp:8080/anthropic/", "X").unwrap();
        assert!(!g.is_tls());
        assert_eq!(
            g.target(&pq).unwrap().to_string(),
            "http://gw.corp:8080/anthropic/v1/messages?beta=true"
        );
        assert_eq!(g.display(), "http://gw.corp:8080/anthropic");
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for bad in [
            "api.anthropic.com",
            "ftp://h/",
            "https://user:pw@h/",
            "https:///x",
            "https://h/?a=1",
            "https://h/#x",
            "",
        ] {
            let e = Upstream::parse(bad, "ANTHROPIC_BASE_URL").unwrap_err();
            assert!(e.starts_with("ANTHROPIC_BASE_URL"), "{bad}: {e}");
            assert!(!e.contains("pw@") || bad.contains("pw@"));
        }
    }

    #[test]
    fn a_missing_or_empty_bundle_says_what_to_do() {
        let e = load_roots(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("broker-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let e = load_roots(Some(&empty)).unwrap_err();
        assert!(e.contains("no usable certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
