//! The HTTP/1.1 server: one task per connection, one log line per request on
//! stdout, and a graceful shutdown on SIGTERM or SIGINT.
//!
//! The process is PID 1 in its container, and the kernel ignores signals
//! that PID 1 has no handler for: without [`Signals`], `docker stop` would
//! wait out its timeout and then SIGKILL. So the handlers are installed
//! before anything else, and shutdown is bounded by [`DRAIN_TIMEOUT`].

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::db;
use crate::routes::{self, Reply, Route};

/// How long in-flight requests may take to finish after a shutdown signal;
/// well under `docker stop`'s default 10s grace period.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A client that opens a connection and sends nothing must not hold a task
/// (and a drain) forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// SIGTERM and SIGINT handlers. Installing them (at construction) is what
/// stops the kernel from ignoring those signals for PID 1.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Must run inside a tokio runtime.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Writes one line to stdout. Errors are dropped: a closed stdout must not
/// take the service down (`println!` would panic).
pub fn log(line: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
}

/// Serves on `0.0.0.0:{config.port}` until SIGTERM or SIGINT.
pub async fn run(config: Config) -> io::Result<()> {
    let mut signals = Signals::install()?;
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, config.port)).await?;
    log(format_args!(
        "ferry-example {} listening on {}",
        config.version,
        listener.local_addr()?
    ));
    serve(Arc::new(config), listener, async move {
        let name = signals.recv().await;
        log(format_args!("received {name}, shutting down"));
    })
    .await;
    log(format_args!("stopped"));
    Ok(())
}

/// Serves `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish (idle keep-alive connections close at once) and
/// returns, after at most [`DRAIN_TIMEOUT`].
pub async fn serve(config: Arc<Config>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, Arc::clone(&config), stopped.clone()));
                }
                // Out of file descriptors, say: back off rather than spin.
                Err(e) => {
                    log(format_args!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log(format_args!(
            "{} connection(s) still busy after {}s; closing them",
            connections.len(),
            DRAIN_TIMEOUT.as_secs()
        ));
        connections.abort_all();
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    mut stopped: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| handle(req, Arc::clone(&config), peer));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // Connection errors (a client that resets, a header timeout) concern
    // that client only; there is nobody to report them to.
    tokio::select! {
        _ = conn.as_mut() => {}
        // Sent once, false to true; an error means serve() is gone: stop too.
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    config: Arc<Config>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let route = routes::route(req.method(), req.uri().path());
    let reply = match (route, &config.database_url) {
        (Route::HealthDb, Some(url)) => match db::probe(url).await {
            Ok(()) => Reply::new(StatusCode::OK, "ok"),
            Err(e) => Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unhealthy: {e}"),
            ),
        },
        _ => routes::reply(route, &config),
    };
    log(format_args!(
        "{peer} {} {} {} {:.1}ms",
        req.method(),
        req.uri(),
        reply.status.as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    ));
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if route == Route::MethodNotAllowed {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    struct Running {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(config: Config) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(Arc::new(config), listener, async move {
            let _ = stopped.await;
        }));
        Running { addr, stop, task }
    }

    fn config() -> Config {
        Config {
            port: 0,
            fail_health: false,
            database_url: None,
            version: "v-test".into(),
        }
    }

    /// Sends `request` as raw bytes and returns the whole answer (the
    /// requests close the connection, so the answer ends at EOF).
    async fn raw(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let answer = raw(addr, &format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")).await;
        let (status, body) = crate::healthcheck::parse_answer(&answer).expect("an HTTP answer");
        (status, body.to_owned())
    }

    #[tokio::test]
    async fn answers_each_endpoint() {
        let s = start(config()).await;
        assert_eq!(get(s.addr, "/health").await, (200, "ok".into()));
        assert_eq!(get(s.addr, "/health?probe=1").await, (200, "ok".into()));
        assert_eq!(get(s.addr, "/version").await, (200, "v-test".into()));
        assert_eq!(
            get(s.addr, "/health/db").await,
            (503, "DATABASE_URL not set".into())
        );
        assert_eq!(get(s.addr, "/missing").await.0, 404);
        let (status, body) = get(s.addr, "/").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("ferry-example v-test"), "{body}");
        s.stop.send(()).unwrap();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn parses_http11_methods_and_headers() {
        let s = start(Config {
            fail_health: true,
            ..config()
        })
        .await;
        let answer = raw(
            s.addr,
            "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("allow: get, head"),
            "{answer}"
        );

        let answer = raw(
            s.addr,
            "HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            !answer.contains("failing on purpose"),
            "HEAD has no body: {answer}"
        );

        let answer = raw(s.addr, "this is not http\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

        assert_eq!(
            get(s.addr, "/health").await,
            (503, "failing on purpose".into())
        );
        s.stop.send(()).unwrap();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_idle_keep_alive_connections_promptly() {
        let s = start(config()).await;
        // A keep-alive client that stays connected after its answer.
        let mut idle = TcpStream::connect(s.addr).await.unwrap();
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        let started = Instant::now();
        s.stop.send(()).unwrap();
        s.task.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // The server hung up on the idle client.
        assert_eq!(idle.read(&mut buf).await.unwrap(), 0);
    }
}
