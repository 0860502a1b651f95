//! The broker's name lookups for its upstream and the OAuth token endpoint: hickory-resolver
//! with the servers of /etc/resolv.conf, A and AAAA at once, keeping whatever answered.
//! musl's resolver fails the whole lookup when one of the two is refused (a server that
//! answers AAAA with REFUSED, as some dnsmasq setups do), so an upstream given by name
//! would be unreachable although its A record is fine.

use hickory_resolver::config::{LookupIpStrategy, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use hyper_util::client::legacy::connect::dns::Name;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// One query's wait before hickory tries again.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole lookup (both types, every server) is given up after this.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The resolver, or why there is none (then every lookup says so; addresses still work).
#[derive(Clone)]
pub struct Lookup {
    resolver: Result<TokioResolver, Arc<str>>,
}

impl Lookup {
    /// The servers, search list and options of /etc/resolv.conf.
    pub fn system() -> Lookup {
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| {
                Arc::from(format!(
                    "cannot use /etc/resolv.conf for the upstream's name: {e}"
                ))
            })
            .and_then(Self::build);
        Lookup { resolver }
    }

    /// The given servers (tests).
    pub fn with_config(config: ResolverConfig) -> Lookup {
        let builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        Lookup {
            resolver: Self::build(builder),
        }
    }

    fn build(
        mut builder: hickory_resolver::ResolverBuilder<TokioRuntimeProvider>,
    ) -> Result<TokioResolver, Arc<str>> {
        let opts = builder.options_mut();
        // Both at once; one refused or empty while the other answers is an answer.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = 2;
        builder
            .build()
            .map_err(|e| Arc::from(format!("cannot build the resolver: {e}")))
    }

    /// The addresses of `host`, A answers first.
    pub async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let resolver = self.resolver.as_ref().map_err(|e| e.to_string())?;
        // A dotted name is absolute: no search list. A single label (a container name)
        // goes through it as the C library would.
        let query = if host.contains('.') && !host.ends_with('.') {
            format!("{host}.")
        } else {
            host.to_string()
        };
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(query.as_str()))
            .await
            .map_err(|_| {
                format!(
                    "cannot resolve {host}: no answer within {} s",
                    LOOKUP_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let addrs: Vec<IpAddr> = answer.iter().collect();
        if addrs.is_empty() {
            return Err(format!("cannot resolve {host}: no A or AAAA record"));
        }
        Ok(addrs)
    }
}

/// What hyper's connector calls for a host that is not an address (the port is set by the
/// connector).
impl tower_service::Service<Name> for Lookup {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let lookup = self.clone();
        Box::pin(async move {
            let addrs = lookup
                .addrs(name.as_str())
                .await
                .map_err(std::io::Error::other)?;
            Ok(addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::config::NameServerConfig;
    use std::net::Ipv4Addr;

    const ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

    /// A DNS server on loopback that answers A with ANSWER and refuses every other type,
    /// as the Docker fixture's dnsmasq does for AAAA. Serves until the test ends.
    fn refusing_aaaa_server() -> SocketAddr {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let q = &buf[..n];
                // Header (12) then one question: labels, type (2), class (2).
                let Some(end) = q[12..].iter().position(|b| *b == 0).map(|p| 12 + p + 1) else {
                    continue;
                };
                let Some(qtype) = q.get(end..end + 2) else {
                    continue;
                };
                let question = &q[12..end + 4];
                let mut r = Vec::with_capacity(64);
                r.extend_from_slice(&q[..2]); // id
                let is_a = qtype == [0, 1];
                // QR, RD copied, RA; RCODE 0 for A, 5 (REFUSED) otherwise.
                r.push(0x80 | (q[2] & 0x01));
                r.push(if is_a { 0x80 } else { 0x85 });
                r.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
                r.extend_from_slice(question);
                if is_a {
                    // The name by pointer to the question, A, IN, TTL 60, 4 bytes.
                    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    r.extend_from_slice(&ANSWER.octets());
                }
                let _ = sock.send_to(&r, from);
            }
        });
        addr
    }

    fn lookup_at(server: SocketAddr, strategy: LookupIpStrategy) -> Lookup {
        let mut ns = NameServerConfig::udp(server.ip());
        for c in &mut ns.connections {
            c.port = server.port();
        }
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], vec![ns]),
            TokioRuntimeProvider::default(),
        );
        builder.options_mut().ip_strategy = strategy;
        builder.options_mut().timeout = QUERY_TIMEOUT;
        builder.options_mut().attempts = 1;
        Lookup {
            resolver: builder.build().map_err(|e| Arc::from(e.to_string())),
        }
    }

    #[test]
    fn a_refused_aaaa_query_leaves_the_a_answer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = refusing_aaaa_server();
        rt.block_on(async {
            // Control: the server does refuse AAAA, so a lookup that needs it fails.
            let v6 = lookup_at(server, LookupIpStrategy::Ipv6Only);
            assert!(v6.addrs("api.example.test").await.is_err());
            // The broker's lookup asks both and keeps the A answer.
            let both = lookup_at(server, LookupIpStrategy::Ipv4AndIpv6);
            let mut ns = NameServerConfig::udp(server.ip());
            for c in &mut ns.connections {
                c.port = server.port();
            }
            let configured =
                Lookup::with_config(ResolverConfig::from_parts(None, vec![], vec![ns]));
            for l in [both, configured] {
                assert_eq!(
                    l.addrs("api.example.test").await,
                    Ok(vec![IpAddr::V4(ANSWER)])
                );
            }
        });
    }

    #[test]
    fn the_connector_gets_the_addresses_and_a_failure_names_the_host() {
        use tower_service::Service;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = refusing_aaaa_server();
        rt.block_on(async {
            let mut l = lookup_at(server, LookupIpStrategy::Ipv4AndIpv6);
            let name: Name = "api.example.test".parse().unwrap();
            let got: Vec<SocketAddr> = l.call(name).await.unwrap().collect();
            assert_eq!(got, vec![SocketAddr::new(IpAddr::V4(ANSWER), 0)]);
            let none = Lookup {
                resolver: Err(Arc::from("no resolver")),
            };
            assert_eq!(none.addrs("x.test").await, Err("no resolver".into()));
        });
    }
}
