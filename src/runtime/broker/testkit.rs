//! In-process servers and clients for the broker's unit tests: an upstream whose handler
//! the test writes, the broker itself on a loopback port, and a raw HTTP/1.1 client.

use super::oauth::{Clock, Refresher, Reporter};
use super::proxy::{self, Body, Broker, HttpClient};
use super::secret::Secret;
use super::upstream::{client_config, Upstream};
use super::wire::OAuth;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const OAUTH_PH: &str = "sk-ant-oat01-sandbox-init-placeholder-00112233445566778899aabbccddeeff";
pub const KEY_PH: &str = "sk-ant-api03-sandbox-init-placeholder-ffeeddccbbaa99887766554433221100";
pub const REAL_TOKEN: &str = "sk-ant-oat01-REAL-ACCESS-TOKEN";
pub const REAL_KEY: &str = "sk-ant-api03-REAL-API-KEY";

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A server on 127.0.0.1 with the given handler; counts the connections it accepted.
pub async fn server<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, std::convert::Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

pub fn client() -> HttpClient {
    proxy::http_client(client_config(rustls::RootCertStore::empty()).unwrap())
}

pub fn oauth_login(expires_at_ms: Option<u64>, refresh: Option<&str>) -> OAuth {
    OAuth {
        access: Secret::new(REAL_TOKEN),
        refresh: refresh.map(Secret::new),
        expires_at_ms,
        scopes: vec!["user:inference".into(), "user:profile".into()],
        client_id: None,
        subscription_type: serde_json::Value::Null,
        rate_limit_tier: serde_json::Value::Null,
        lineage: None,
    }
}

/// A clock the test moves.
pub struct FakeClock(pub AtomicU64);

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Collects reports instead of printing them.
pub fn reporter() -> (Reporter, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    (
        Arc::new(move |m: &str| sink.lock().unwrap().push(m.to_string())),
        got,
    )
}

/// The broker on a loopback port, forwarding to `upstream` (a URL), with an OAuth login
/// (whose refresher is returned) and an API key.
pub async fn broker(upstream: &str, login: OAuth, token_url: &str) -> (SocketAddr, Arc<Refresher>) {
    let (report, _) = reporter();
    let refresher = Arc::new(Refresher::new(
        &login,
        token_url.parse().unwrap(),
        client(),
        None,
        Arc::new(super::oauth::SystemClock),
        report,
    ));
    let b = Broker::new(
        Upstream::parse(upstream, "upstream").unwrap(),
        client(),
        Some((OAUTH_PH.into(), refresher.clone())),
        Some((KEY_PH.into(), Secret::new(REAL_KEY))),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy::serve(listener, Arc::new(b)));
    (addr, refresher)
}

/// Sends raw bytes, returns everything the server sent until it closed or paused.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One whole answer with a length is enough.
                let text = String::from_utf8_lossy(&out);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    });
                    if len.is_some_and(|l| body.len() >= l) {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
