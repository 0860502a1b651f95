//! broker-bench: what the credential broker adds to a streamed Messages API response.
//! Run by scripts/bench-broker.sh (as root: it starts the real, confined broker process,
//! exactly as PID 1 does, with this executable as the broker's program).
//!
//!   broker-bench [--rounds N] [--events N] [--mib N] [--broker-cpu N]
//!
//! An upstream (its own thread) answers POST /v1/messages with an SSE stream of `--events`
//! events of about 200 bytes, and POST /bulk with `--mib` MiB in 64 KiB frames. The client
//! (another thread) measures over one keep-alive connection each, alternating direct and
//! through the broker in the same run: time to first byte (request written -> first event
//! read), time to the end of the stream, and bulk throughput. It prints medians and 90th
//! percentiles, and the broker's resident memory.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::http::{Request, Response};
use hyper_util::rt::TokioIo;
use sandbox_init::runtime::broker::launch::{self, Launch};
use sandbox_init::runtime::broker::proxy::Body;
use sandbox_init::runtime::broker::secret::Secret;
use sandbox_init::runtime::broker::wire::{ApiKeyBinding, Spec};
use sandbox_init::runtime::broker::{account, child, placeholder};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A body of prepared frames, each one yielded by its own poll (as a streaming upstream
/// produces them).
struct Frames(std::vec::IntoIter<Bytes>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
    }
}

fn sse_events(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let text = format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\
                 \"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i:06} of the streamed \
                 answer, padded to about two hundred bytes like a real delta event\"}}}}\n\n"
            );
            Bytes::from(text)
        })
        .collect()
}

/// The upstream, on a runtime of its own thread.
fn start_upstream(events: usize, mib: usize) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| fail("runtime", e));
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| fail("bind", e));
            tx.send(listener.local_addr().unwrap_or_else(|e| fail("addr", e)))
                .unwrap_or_else(|e| fail("send", e));
            let sse = sse_events(events);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let _ = s.set_nodelay(true);
                let (sse, chunk) = (sse.clone(), chunk.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (sse, chunk) = (sse.clone(), chunk.clone());
                            async move {
                                let bulk = req.uri().path() == "/bulk";
                                let _ = req.into_body().collect().await;
                                let frames = if bulk { vec![chunk; mib * 16] } else { sse };
                                let mut r = Response::new(Frames(frames.into_iter()));
                                r.headers_mut().insert(
                                    "content-type",
                                    hyper::http::HeaderValue::from_static("text/event-stream"),
                                );
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap_or_else(|e| fail("upstream address", e))
}

/// Ends the benchmark with what failed (a port taken, a runtime the kernel refused): a
/// measurement that cannot run has nothing to report.
fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("broker-bench: {what} failed: {e}");
    std::process::exit(1)
}

type Sender = hyper::client::conn::http1::SendRequest<Body>;

async fn connect(addr: SocketAddr) -> Sender {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| fail("connect", e));
    let _ = s.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap_or_else(|e| fail("handshake", e));
    tokio::spawn(conn);
    send
}

const BODY: &str = r#"{"model":"claude-bench","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#;

/// One request; (time to first body byte, time to the end, bytes).
async fn once(send: &mut Sender, path: &str, key: &str) -> (Duration, Duration, usize) {
    let req = Request::post(path)
        .header("host", "127.0.0.1")
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(
            http_body_util::Full::new(Bytes::from_static(BODY.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap_or_else(|e| fail("request", e));
    let t0 = Instant::now();
    let resp = send
        .send_request(req)
        .await
        .unwrap_or_else(|e| fail("response", e));
    assert!(resp.status().is_success(), "status {}", resp.status());
    let mut body = resp.into_body();
    let mut first = None;
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap_or_else(|e| fail("body", e)).into_data() {
            if first.is_none() && !data.is_empty() {
                first = Some(t0.elapsed());
            }
            bytes += data.len();
        }
    }
    (first.unwrap_or_default(), t0.elapsed(), bytes)
}

/// MiB/s of one bulk response.
async fn bulk(send: &mut Sender, key: &str) -> f64 {
    let (_, t, n) = once(send, "/bulk", key).await;
    n as f64 / t.as_secs_f64() / (1 << 20) as f64
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn rss_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    // This executable is also the broker's program (as sandbox-init is in production).
    if let Some(code) = child::main_if_invoked() {
        std::process::exit(code);
    }
    let rounds = arg("--rounds", 2000);
    let events = arg("--events", 50);
    let mib = arg("--mib", 256);
    let broker_cpu = arg("--broker-cpu", 0);

    let upstream = start_upstream(events, mib);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let acct = match account::choose(None, &passwd, &group, &[], "broker uid") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("broker-bench: {e}");
            std::process::exit(1);
        }
    };
    let ph = match placeholder::api_key() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("broker-bench: {e}");
            std::process::exit(1);
        }
    };
    let mut spec = Spec::new(
        None,
        Some(ApiKeyBinding {
            real: Secret::new("sk-ant-api03-bench-real-key"),
            placeholder: ph.clone(),
        }),
    );
    spec.upstream = format!("http://{upstream}");
    spec.log = "warn".into();
    let running = match launch::spawn(
        Launch {
            program: Path::new("/proc/self/exe"),
            account: acct,
            listen: "127.0.0.1:0".parse().unwrap_or_else(|e| fail("address", e)),
            store: None,
            timeout: Duration::from_secs(10),
        },
        &spec,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("broker-bench: {e} (run as root)");
            std::process::exit(1);
        }
    };
    let pid = running.pid.as_raw();
    let mut set = nix::sched::CpuSet::new();
    if set.set(broker_cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(running.pid, &set);
    }
    let rss_idle = rss_kib(pid, "VmRSS:");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", e));
    rt.block_on(async {
        let mut direct = connect(upstream).await;
        let mut broker = connect(running.addr).await;
        // Warm-up: connections, the broker's upstream pool, caches.
        for _ in 0..50 {
            once(&mut direct, "/v1/messages", &ph).await;
            once(&mut broker, "/v1/messages", &ph).await;
        }
        let (mut d_first, mut d_end, mut b_first, mut b_end) = (vec![], vec![], vec![], vec![]);
        let mut stream_bytes = 0;
        for i in 0..rounds {
            // Alternate which goes first, so neither profits from the other's warm caches.
            for via_broker in [i % 2 == 0, i % 2 == 1] {
                if via_broker {
                    let (f, e, n) = once(&mut broker, "/v1/messages", &ph).await;
                    b_first.push(f);
                    b_end.push(e);
                    stream_bytes = n;
                } else {
                    let (f, e, _) = once(&mut direct, "/v1/messages", &ph).await;
                    d_first.push(f);
                    d_end.push(e);
                }
            }
        }
        let mut d_tp = vec![];
        let mut b_tp = vec![];
        for _ in 0..3 {
            d_tp.push(bulk(&mut direct, &ph).await);
            b_tp.push(bulk(&mut broker, &ph).await);
        }
        d_tp.sort_by(|a, b| a.total_cmp(b));
        b_tp.sort_by(|a, b| a.total_cmp(b));

        println!(
            "broker bench: {rounds} rounds of a streamed response ({events} SSE events, \
             {stream_bytes} bytes) over keep-alive, direct and through the broker alternately"
        );
        println!("                        median      p90   (microseconds)");
        let row = |name: &str, v: &mut Vec<Duration>| {
            let (m, p) = (pct(v, 0.5), pct(v, 0.9));
            println!("{name:<22} {:>8.0} {:>8.0}", us(m), us(p));
            m
        };
        let dm = row("first byte, direct", &mut d_first);
        let bm = row("first byte, broker", &mut b_first);
        let de = row("whole stream, direct", &mut d_end);
        let be = row("whole stream, broker", &mut b_end);
        println!(
            "added by the broker: {:.0} us to the first byte, {:.0} us to the whole stream \
             (median; goal <= 1000 us)",
            us(bm) - us(dm),
            us(be) - us(de)
        );
        println!(
            "bulk {mib} MiB, median of 3: direct {:.0} MiB/s, broker {:.0} MiB/s",
            d_tp[1], b_tp[1]
        );
    });
    println!(
        "broker process: VmRSS {} KiB idle, {} KiB after the run (peak {} KiB)",
        rss_idle,
        rss_kib(pid, "VmRSS:"),
        rss_kib(pid, "VmHWM:")
    );
    running.stop();
}
