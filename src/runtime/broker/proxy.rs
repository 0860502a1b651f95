//! The forwarder: HTTP/1.1 on loopback in, the upstream (TLS or not) out.
//!
//! A request is forwarded only when every credential header it carries (`Authorization:
//! Bearer ...`, `x-api-key`) holds this session's placeholder; each is then replaced by the
//! real value, in the same header. Anything else is refused with a JSON error in the API's
//! own shape that says why, so the broker is no relay for other credentials or hosts: the
//! target is always the configured upstream plus the request's path, whatever Host or
//! absolute-form URL the request names. Bodies stream both ways frame by frame (SSE
//! events reach the CLI as the upstream sends them); connections to the upstream are kept
//! alive and shared.

use super::lookup::Lookup;
use super::oauth::Refresher;
use super::secret::Secret;
use super::upstream::Upstream;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode,
};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub type Body = BoxBody<Bytes, hyper::Error>;
pub type HttpClient = Client<HttpsConnector<HttpConnector<Lookup>>, Body>;

/// The CLI opens a handful of connections; an agent flooding the port gets no more.
pub const MAX_CONNECTIONS: usize = 256;
/// A client has this long to send a request head (also bounds idle keep-alive).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client for the upstream and the token endpoint: http or https (as each URL names),
/// HTTP/1.1, pooled; names resolved by [`Lookup`] with /etc/resolv.conf.
pub fn http_client(tls: rustls::ClientConfig) -> HttpClient {
    let mut http = HttpConnector::new_with_resolver(Lookup::system());
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .build(https)
}

/// Which real credential a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    OAuth,
    ApiKey,
}

/// A request the broker will not forward, or could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// The API's error type (`permission_error`, `invalid_request_error`, `api_error`).
    pub kind: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            kind,
            message: format!("sandbox-init broker: {}", message.into()),
        }
    }

    pub fn response(&self) -> Response<Body> {
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": self.kind, "message": self.message},
        })
        .to_string();
        let mut r = Response::new(boxed(Bytes::from(body)));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

const NOT_OURS: &str = "this address forwards only Claude Code's requests, which carry the \
                        sandbox's placeholder credential";

/// Decides which credential a request's headers stand for. `oauth` and `api_key` are the
/// placeholders in use.
pub fn check_credentials(
    headers: &HeaderMap,
    oauth: Option<&str>,
    api_key: Option<&str>,
) -> Result<Binding, Refusal> {
    let forbid = |m: String| Refusal::new(StatusCode::FORBIDDEN, "permission_error", m);
    let mut found: Option<Binding> = None;
    let placeholders = [(oauth, Binding::OAuth), (api_key, Binding::ApiKey)];
    for (name, bearer) in [
        (header::AUTHORIZATION, true),
        (HeaderName::from_static("x-api-key"), false),
    ] {
        for value in headers.get_all(&name) {
            let text = value.to_str().unwrap_or("").trim();
            let token = if bearer {
                match text.split_once(' ') {
                    Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
                    _ => {
                        return Err(forbid(format!(
                            "refused: {name} is not a Bearer credential; {NOT_OURS}"
                        )))
                    }
                }
            } else {
                text
            };
            let binding = placeholders
                .iter()
                .find(|(ph, _)| ph.is_some_and(|p| p == token))
                .map(|(_, b)| *b)
                .ok_or_else(|| {
                    forbid(format!(
                        "refused: {name} holds a credential that is not this sandbox's \
                         placeholder (other credentials are never forwarded); {NOT_OURS}"
                    ))
                })?;
            if found.is_some_and(|f| f != binding) {
                return Err(forbid(
                    "refused: the request carries two different placeholders".into(),
                ));
            }
            found = Some(binding);
        }
    }
    // Every credential header either matched a placeholder or returned above.
    found.ok_or_else(|| {
        forbid(format!(
            "refused: the request carries no credential; {NOT_OURS}"
        ))
    })
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), plus those the
/// forwarder sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// The headers sent upstream: the client's, without hop-by-hop headers, Host (the client
/// sets the upstream's) and Expect (answered here), with each credential header holding
/// the real value.
pub fn upstream_headers(
    incoming: &HeaderMap,
    binding: Binding,
    real: &Secret,
) -> Result<HeaderMap, Refusal> {
    let mut h = incoming.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::HOST);
    h.remove(header::EXPECT);
    let bad = || {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "the real credential is not a valid header value; check the credential given to \
             the container",
        )
    };
    let had_bearer = h.remove(header::AUTHORIZATION).is_some();
    let had_key = h.remove("x-api-key").is_some();
    if had_bearer {
        let v = zeroize::Zeroizing::new(format!("Bearer {}", real.expose()));
        let mut v = HeaderValue::from_str(&v).map_err(|_| bad())?;
        v.set_sensitive(true);
        h.insert(header::AUTHORIZATION, v);
    }
    if had_key || (!had_bearer && binding == Binding::ApiKey) {
        let mut v = HeaderValue::from_str(real.expose()).map_err(|_| bad())?;
        v.set_sensitive(true);
        h.insert(HeaderName::from_static("x-api-key"), v);
    }
    Ok(h)
}

/// An error and its causes on one line, for 502 answers and logs (no secret is ever part
/// of a connection error).
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ").replace(['\n', '\r'], " ")
}

fn boxed(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

pub struct Broker {
    upstream: Upstream,
    client: HttpClient,
    oauth: Option<(String, Arc<Refresher>)>,
    api_key: Option<(String, Secret)>,
}

impl Broker {
    pub fn new(
        upstream: Upstream,
        client: HttpClient,
        oauth: Option<(String, Arc<Refresher>)>,
        api_key: Option<(String, Secret)>,
    ) -> Result<Broker, String> {
        if oauth.is_none() && api_key.is_none() {
            return Err("no credential to broker".into());
        }
        if let Some((_, key)) = &api_key {
            HeaderValue::from_str(key.expose())
                .map_err(|_| "the API key holds characters no HTTP header can carry")?;
        }
        Ok(Broker {
            upstream,
            client,
            oauth,
            api_key,
        })
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        Ok(match self.forward(req).await {
            Ok(r) => r,
            Err(refusal) => {
                log::info!(
                    "{method} {path}: {} {}",
                    refusal.status.as_u16(),
                    refusal.message
                );
                refusal.response()
            }
        })
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
        let bad = |m: &str| Refusal::new(StatusCode::BAD_REQUEST, "invalid_request_error", m);
        if req.method() == Method::CONNECT {
            return Err(bad(
                "refused: CONNECT; the broker is no proxy, it forwards only to its upstream",
            ));
        }
        let uri = req.uri();
        if uri.scheme().is_some() || uri.authority().is_some() {
            return Err(bad(
                "refused: an absolute URL as the request target; the broker forwards only to \
                 its upstream, by path",
            ));
        }
        let pq = uri
            .path_and_query()
            .filter(|pq| pq.as_str().starts_with('/'))
            .cloned()
            .ok_or_else(|| bad("refused: the request target is not a path"))?;
        let binding = check_credentials(
            req.headers(),
            self.oauth.as_ref().map(|(p, _)| p.as_str()),
            self.api_key.as_ref().map(|(p, _)| p.as_str()),
        )?;
        let real = match (binding, &self.oauth, &self.api_key) {
            (Binding::OAuth, Some((_, r)), _) => r.access_token().await,
            (Binding::ApiKey, _, Some((_, k))) => k.clone(),
            _ => unreachable!("a binding is only found for a configured placeholder"),
        };
        let target = self
            .upstream
            .target(&pq)
            .map_err(|m| Refusal::new(StatusCode::BAD_REQUEST, "invalid_request_error", m))?;
        let (parts, body) = req.into_parts();
        let mut out = Request::new(body.boxed());
        *out.method_mut() = parts.method;
        *out.uri_mut() = target;
        *out.headers_mut() = upstream_headers(&parts.headers, binding, &real)?;
        drop(real);
        let resp = self.client.request(out).await.map_err(|e| {
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                format!("cannot reach {}: {}", self.upstream.display(), one_line(&e)),
            )
        })?;
        if resp.status() == StatusCode::UNAUTHORIZED && binding == Binding::OAuth {
            if let Some((_, r)) = &self.oauth {
                r.rejected();
            }
        }
        let (mut parts, body) = resp.into_parts();
        let body = if is_close_delimited(&parts.headers) {
            CloseDelimited(body).boxed()
        } else {
            body.boxed()
        };
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

/// Whether a response's body ends only when the upstream closes the connection: neither
/// a length nor chunked framing (RFC 9112 6.3, the last rule).
pub fn is_close_delimited(headers: &HeaderMap) -> bool {
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("chunked"));
    !chunked && !headers.contains_key(header::CONTENT_LENGTH)
}

/// Whether a body failed only because the TLS peer closed the connection without a
/// close_notify alert (rustls reports that as an unexpected EOF).
pub fn ended_without_close_notify(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::UnexpectedEof;
        }
        src = s.source();
    }
    false
}

/// The body of a close-delimited response: its end is the upstream's close, and many
/// servers (Python's ssl module among them) close without close_notify. For such a body
/// the close is the only end there is, so a missing close_notify ends it cleanly instead
/// of cutting the client's stream (and its last chunk) with an error. Bodies with a length
/// or chunked framing keep hyper's own check that they arrived whole.
struct CloseDelimited(Incoming);

impl hyper::body::Body for CloseDelimited {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        match std::pin::Pin::new(&mut self.0).poll_frame(cx) {
            std::task::Poll::Ready(Some(Err(e))) if ended_without_close_notify(&e) => {
                log::debug!("upstream closed a close-delimited body without close_notify");
                std::task::Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.size_hint()
    }
}

/// Accepts connections until the listener fails for good.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors or memory: wait for connections to end.
                log::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let b = broker.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| b.clone().handle(req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                log::debug!("connection: {e}");
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use hyper::body::Frame;
    use std::net::SocketAddr;
    use std::sync::Mutex as StdMutex;
    use tokio::sync::mpsc;

    const LIVENESS: Duration = Duration::from_secs(10);

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_a_body_without_length_or_chunks_is_close_delimited() {
        assert!(is_close_delimited(&hdrs(&[(
            "content-type",
            "text/event-stream"
        )])));
        assert!(!is_close_delimited(&hdrs(&[("content-length", "12")])));
        assert!(!is_close_delimited(&hdrs(&[(
            "transfer-encoding",
            "gzip, Chunked"
        )])));
    }

    #[test]
    fn only_the_placeholder_opens_the_door() {
        let check =
            |pairs: &[(&str, &str)]| check_credentials(&hdrs(pairs), Some(OAUTH_PH), Some(KEY_PH));
        let bearer = format!("Bearer {OAUTH_PH}");
        assert_eq!(check(&[("authorization", &bearer)]), Ok(Binding::OAuth));
        assert_eq!(
            check(&[("authorization", &format!("bearer  {OAUTH_PH}"))]),
            Ok(Binding::OAuth)
        );
        assert_eq!(check(&[("x-api-key", KEY_PH)]), Ok(Binding::ApiKey));
        // apiKeyHelper sends the key in both headers.
        let both = format!("Bearer {KEY_PH}");
        assert_eq!(
            check(&[("x-api-key", KEY_PH), ("authorization", &both)]),
            Ok(Binding::ApiKey)
        );

        let refused = |pairs: &[(&str, &str)], why: &str| {
            let r = check(pairs).unwrap_err();
            assert_eq!(r.status, StatusCode::FORBIDDEN);
            assert!(r.message.contains(why), "{}", r.message);
            assert!(
                r.message.starts_with("sandbox-init broker: refused"),
                "{}",
                r.message
            );
        };
        refused(&[], "no credential");
        refused(
            &[("authorization", "Bearer sk-ant-oat01-someone-elses")],
            "not this sandbox's placeholder",
        );
        refused(
            &[("x-api-key", "sk-ant-api03-someone-elses")],
            "not this sandbox's placeholder",
        );
        refused(
            &[("authorization", &format!("Basic {OAUTH_PH}"))],
            "not a Bearer",
        );
        // The placeholder plus a smuggled second credential.
        refused(
            &[
                ("authorization", &bearer),
                ("x-api-key", "sk-ant-api03-other"),
            ],
            "not this sandbox's",
        );
        refused(
            &[
                ("authorization", &bearer),
                ("authorization", "Bearer other"),
            ],
            "not this sandbox's",
        );
        refused(
            &[("authorization", &bearer), ("x-api-key", KEY_PH)],
            "two different placeholders",
        );
        // A placeholder of a credential this broker does not hold.
        let r = check_credentials(&hdrs(&[("x-api-key", KEY_PH)]), Some(OAUTH_PH), None);
        assert!(r.is_err());
    }

    #[test]
    fn headers_going_upstream() {
        let incoming = hdrs(&[
            ("host", "evil.example"),
            ("authorization", &format!("Bearer {OAUTH_PH}")),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("proxy-authorization", "Basic abc"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "oauth-2025-04-20"),
        ]);
        let out = upstream_headers(&incoming, Binding::OAuth, &Secret::new(REAL_TOKEN)).unwrap();
        assert_eq!(
            out["authorization"],
            format!("Bearer {REAL_TOKEN}").as_str()
        );
        assert!(out["authorization"].is_sensitive());
        for gone in [
            "host",
            "connection",
            "x-hop",
            "keep-alive",
            "transfer-encoding",
            "expect",
            "proxy-authorization",
            "x-api-key",
        ] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        assert_eq!(out["anthropic-version"], "2023-06-01");
        assert_eq!(out["anthropic-beta"], "oauth-2025-04-20");
        let text = format!("{out:?}");
        assert!(!text.contains(OAUTH_PH));

        let key = upstream_headers(
            &hdrs(&[("x-api-key", KEY_PH)]),
            Binding::ApiKey,
            &Secret::new(REAL_KEY),
        )
        .unwrap();
        assert_eq!(key["x-api-key"], REAL_KEY);
        assert!(!key.contains_key("authorization"));
        assert!(upstream_headers(
            &hdrs(&[("x-api-key", KEY_PH)]),
            Binding::ApiKey,
            &Secret::new("bad\nvalue")
        )
        .is_err());
    }

    type Seen = Arc<StdMutex<Vec<(String, String, Option<String>, Option<String>)>>>;

    /// An upstream that records (method, path, authorization, x-api-key) and the Host.
    async fn recording_upstream() -> (SocketAddr, Seen, Arc<StdMutex<Vec<String>>>) {
        let seen: Seen = Arc::default();
        let hosts: Arc<StdMutex<Vec<String>>> = Arc::default();
        let (s, h) = (seen.clone(), hosts.clone());
        let (addr, _) = server(move |req: Request<Incoming>| {
            let (s, h) = (s.clone(), h.clone());
            async move {
                let get = |n: &str| {
                    req.headers()
                        .get(n)
                        .map(|v| v.to_str().unwrap().to_string())
                };
                s.lock().unwrap().push((
                    req.method().to_string(),
                    req.uri().to_string(),
                    get("authorization"),
                    get("x-api-key"),
                ));
                h.lock().unwrap().push(get("host").unwrap_or_default());
                Response::new(full("upstream-ok"))
            }
        })
        .await;
        (addr, seen, hosts)
    }

    #[tokio::test]
    async fn forwards_with_the_real_secret_and_never_elsewhere() {
        let (up, seen, hosts) = recording_upstream().await;
        let (b, _) = broker(
            &format!("http://{up}/base"),
            oauth_login(None, None),
            "http://127.0.0.1:9/",
        )
        .await;

        // The CLI's request, with a Host naming another server.
        let ok = raw(b, format!("POST /v1/messages?beta=true HTTP/1.1\r\nhost: evil.example\r\nauthorization: Bearer {OAUTH_PH}\r\ncontent-length: 2\r\n\r\n{{}}").as_bytes()).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("upstream-ok"), "{ok}");
        let key = raw(
            b,
            format!("GET /v1/models HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY_PH}\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(key.starts_with("HTTP/1.1 200"), "{key}");
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen[0].1, "/base/v1/messages?beta=true");
            assert_eq!(
                seen[0].2.as_deref(),
                Some(format!("Bearer {REAL_TOKEN}").as_str())
            );
            assert_eq!(seen[1].3.as_deref(), Some(REAL_KEY));
            assert_eq!(
                hosts.lock().unwrap()[0],
                up.to_string(),
                "Host is the upstream's"
            );
        }

        // Refusals never reach the upstream.
        let before = seen.lock().unwrap().len();
        let cases: Vec<(String, &str)> = vec![
            ("POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".into(), "403"),
            ("GET /v1/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-ant-oat01-mine\r\n\r\n".into(), "403"),
            (format!("GET http://evil.example/steal HTTP/1.1\r\nhost: evil.example\r\nauthorization: Bearer {OAUTH_PH}\r\n\r\n"), "400"),
            (format!("CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\nauthorization: Bearer {OAUTH_PH}\r\n\r\n"), "400"),
            (format!("OPTIONS * HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {OAUTH_PH}\r\n\r\n"), "400"),
        ];
        for (req, code) in &cases {
            let answer = raw(b, req.as_bytes()).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {code}")),
                "{req:?} -> {answer}"
            );
            assert!(answer.contains("sandbox-init broker: refused"), "{answer}");
            assert!(!answer.contains(REAL_TOKEN) && !answer.contains(REAL_KEY));
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            before,
            "a refused request was forwarded"
        );
        // Control: the absolute-form request's authority really is another server (the
        // upstream would have seen it as a path had the broker passed the target on).
        assert!(seen.lock().unwrap().iter().all(|s| !s.1.contains("steal")));
    }

    /// A response body fed through a channel, frame by frame.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl hyper::body::Body for ChannelBody {
        type Data = Bytes;
        type Error = hyper::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    /// An upstream whose every response streams what the test sends into the channel it
    /// hands out for that request.
    async fn streaming_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<mpsc::Sender<Bytes>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (addr, _) = server(move |_req| {
            let tx = tx.clone();
            async move {
                let (ftx, frx) = mpsc::channel(4);
                tx.send(ftx).unwrap();
                let mut r = Response::new(ChannelBody(frx).boxed());
                r.headers_mut().insert(
                    "content-type",
                    HeaderValue::from_static("text/event-stream"),
                );
                r
            }
        })
        .await;
        (addr, rx)
    }

    async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    fn cli_request(body: Body) -> Request<Body> {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/messages?beta=true")
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {OAUTH_PH}"))
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn sse_chunks_pass_as_they_arrive() {
        let (up, mut streams) = streaming_upstream().await;
        let (b, _) = broker(
            &format!("http://{up}"),
            oauth_login(None, None),
            "http://127.0.0.1:9/",
        )
        .await;
        let mut send = connect(b).await;
        let resp =
            tokio::spawn(async move { send.send_request(cli_request(full(""))).await.unwrap() });
        let frames = tokio::time::timeout(LIVENESS, streams.recv())
            .await
            .unwrap()
            .unwrap();
        frames
            .send(Bytes::from_static(b"event: message_start\ndata: {}\n\n"))
            .await
            .unwrap();
        let resp = tokio::time::timeout(LIVENESS, resp).await.unwrap().unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        // The first event reaches the client while the upstream has not sent the last one:
        // the upstream sends it only after this read succeeded.
        let first = tokio::time::timeout(LIVENESS, body.frame())
            .await
            .expect("first event buffered")
            .unwrap()
            .unwrap();
        assert_eq!(
            first.into_data().unwrap(),
            "event: message_start\ndata: {}\n\n"
        );
        frames
            .send(Bytes::from_static(b"event: message_stop\ndata: {}\n\n"))
            .await
            .unwrap();
        drop(frames);
        let rest = tokio::time::timeout(LIVENESS, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(rest, "event: message_stop\ndata: {}\n\n");
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_stream_ends_the_upstream_stream_and_nothing_else() {
        let (up, mut streams) = streaming_upstream().await;
        let (b, _) = broker(
            &format!("http://{up}"),
            oauth_login(None, None),
            "http://127.0.0.1:9/",
        )
        .await;
        let mut send = connect(b).await;
        let resp = tokio::spawn(async move {
            let r = send.send_request(cli_request(full(""))).await.unwrap();
            (r, send)
        });
        let frames = tokio::time::timeout(LIVENESS, streams.recv())
            .await
            .unwrap()
            .unwrap();
        frames
            .send(Bytes::from_static(b"data: 1\n\n"))
            .await
            .unwrap();
        let (resp, send) = tokio::time::timeout(LIVENESS, resp).await.unwrap().unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop((body, send));
        // The upstream's side of the stream is dropped: the broker let go of it.
        tokio::time::timeout(LIVENESS, frames.closed())
            .await
            .expect("the upstream stream outlived its client");
        // And the broker still serves.
        let mut again = connect(b).await;
        let r =
            tokio::spawn(async move { again.send_request(cli_request(full(""))).await.unwrap() });
        let frames = tokio::time::timeout(LIVENESS, streams.recv())
            .await
            .unwrap()
            .unwrap();
        frames
            .send(Bytes::from_static(b"data: 2\n\n"))
            .await
            .unwrap();
        drop(frames);
        let r = tokio::time::timeout(LIVENESS, r).await.unwrap().unwrap();
        assert_eq!(
            r.into_body().collect().await.unwrap().to_bytes(),
            "data: 2\n\n"
        );
    }

    /// An upstream that answers with the length and a checksum of the body it got, and
    /// whether it came chunked.
    async fn echo_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        server(|req: Request<Incoming>| async move {
            let chunked = req.headers().get("transfer-encoding").is_some();
            let declared = req
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap().to_string());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let sum: u64 = body.iter().map(|b| *b as u64).sum();
            Response::new(full(format!(
                "{} {sum} chunked={chunked} declared={declared:?}",
                body.len()
            )))
        })
        .await
    }

    #[tokio::test]
    async fn request_bodies_chunked_and_sized_large_and_small() {
        let (up, _) = echo_upstream().await;
        let (b, _) = broker(
            &format!("http://{up}"),
            oauth_login(None, None),
            "http://127.0.0.1:9/",
        )
        .await;
        // 8 MiB with a length.
        let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let sum: u64 = big.iter().map(|b| *b as u64).sum();
        let mut send = connect(b).await;
        let mut req = cli_request(full(big.clone()));
        req.headers_mut()
            .insert("content-length", HeaderValue::from(big.len()));
        let r = send.send_request(req).await.unwrap();
        let text = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            text,
            format!(
                "{} {sum} chunked=false declared=Some(\"{}\")",
                big.len(),
                big.len()
            )
        );
        // Chunked: frames of unknown total length, sent as the client produces them.
        let (tx, rx) = mpsc::channel(4);
        let r = tokio::spawn(async move {
            send.send_request(cli_request(ChannelBody(rx).boxed()))
                .await
                .unwrap()
        });
        for part in ["{\"a\":", "1}"] {
            tx.send(Bytes::from(part)).await.unwrap();
        }
        drop(tx);
        let r = tokio::time::timeout(LIVENESS, r).await.unwrap().unwrap();
        let text = r.into_body().collect().await.unwrap().to_bytes();
        let want_sum: u64 = b"{\"a\":1}".iter().map(|b| *b as u64).sum();
        assert_eq!(text, format!("7 {want_sum} chunked=true declared=None"));
    }

    #[tokio::test]
    async fn upstream_down_is_a_502_with_one_line() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (b, _) = broker(
            &format!("http://{closed}"),
            oauth_login(None, None),
            "http://127.0.0.1:9/",
        )
        .await;
        let answer = raw(b, format!("POST /v1/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {OAUTH_PH}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("cannot reach http://{closed}")),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(v["error"]["type"], "api_error");
    }

    #[tokio::test]
    async fn connections_are_served_at_once_and_upstream_connections_reused() {
        const N: usize = 12;
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        let bar = barrier.clone();
        let (up, accepted) = server(move |_req| {
            let bar = bar.clone();
            async move {
                // Answers only when all N requests are in flight at the same time.
                bar.wait().await;
                Response::new(full("together"))
            }
        })
        .await;
        let (b, _) = broker(
            &format!("http://{up}"),
            oauth_login(None, None),
            "http://127.0.0.1:9/",
        )
        .await;
        let mut tasks = Vec::new();
        for _ in 0..N {
            tasks.push(tokio::spawn(async move {
                let mut send = connect(b).await;
                let r = send.send_request(cli_request(full(""))).await.unwrap();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                // Keep-alive: a second request on the same client connection.
                let r2 = send.send_request(cli_request(full(""))).await;
                (body, r2.is_ok())
            }));
        }
        // The second round needs N in flight again: the barrier is reusable.
        for t in tasks {
            let (body, second) = tokio::time::timeout(LIVENESS, t).await.unwrap().unwrap();
            assert_eq!(body, "together");
            assert!(second);
        }
        // 2N requests went over at most N pooled upstream connections.
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) <= N);
    }
}
