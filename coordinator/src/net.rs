//! The TLS listener: accepts TCP connections, runs each handshake on its own
//! task (a slow client cannot stall the accept loop), and hands tonic
//! streams that carry the peer's certificate chain as connect info.
//!
//! Every stage of a connection has a deadline and every connection holds a
//! slot of a bounded pool ([`ConnectionLimits`]):
//!
//! - From accept until its TLS handshake ends, a connection is
//!   *untrusted*: it holds one of `max_untrusted` slots (at most
//!   `max_untrusted_per_address` per source address), and the handshake
//!   must finish within `handshake_timeout`.
//! - A client whose certificate this coordinator's CA issued (an agent or
//!   an operator) then moves to the *trusted* pool (`max_connections`),
//!   which a flood of strangers cannot fill: that pool is the reserve that
//!   keeps operators and agents getting in. Its first request must arrive
//!   within `first_request_timeout`; after that it lives as long as it is
//!   used (an agent's session, a watch), with HTTP/2 keepalives.
//! - Any other client can only enroll: it stays in the untrusted pool, its
//!   first request must arrive within `first_request_timeout`, and the
//!   connection is closed `untrusted_lifetime` after it was accepted.
//!
//! When the untrusted pool (or one address's share of it) is full, the
//! oldest untrusted connection is closed to make room for the new one, so a
//! flood cannot lock anyone out: it only churns its own connections, while
//! a real client's handshake takes milliseconds. A full trusted pool
//! refuses the newcomer instead (no agent is cut for another). Each such
//! close is counted in `ferry_connections_refused_total{reason}` and logged
//! (rate-limited).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ferry_common::tls::PeerVerifier;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::metrics::Metrics;
use crate::ratelimit::{LogDecision, LogLimiter};

/// The limits of the gRPC port (`[limits]` in coordinator.toml).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// From accept to the end of the TLS handshake.
    #[serde(with = "ferry_common::time::serde_duration")]
    pub handshake_timeout: Duration,
    /// From the end of the handshake to the first request.
    #[serde(with = "ferry_common::time::serde_duration")]
    pub first_request_timeout: Duration,
    /// How long a connection without a certificate of this CA (enrollment
    /// only) may stay open in all.
    #[serde(with = "ferry_common::time::serde_duration")]
    pub untrusted_lifetime: Duration,
    /// Connections of agents and operators (certificates of this CA).
    pub max_connections: usize,
    /// Connections still in their handshake, or without a certificate of
    /// this CA.
    pub max_untrusted: usize,
    /// Of those, from one source address.
    pub max_untrusted_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            handshake_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(10),
            untrusted_lifetime: Duration::from_secs(60),
            max_connections: 20_000,
            max_untrusted: 1024,
            max_untrusted_per_address: 64,
        }
    }
}

/// What a connection has done so far, shared between the connection and
/// the requests it carries.
#[derive(Debug, Default)]
pub struct ConnState {
    first_request: AtomicBool,
}

impl ConnState {
    /// Called for every request: the connection is in use.
    pub fn request_seen(&self) {
        self.first_request.store(true, Ordering::Relaxed);
    }
}

/// What the auth layer learns about a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The chain the client presented, end entity first; unverified.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    pub state: Arc<ConnState>,
}

/// Counts of open connections per pool; a [`Slot`] gives its place back
/// when dropped. Untrusted slots are kept in arrival order, so that when
/// their pool is full the oldest stranger makes room for the newest: a
/// flood only churns itself, and an operator's or agent's handshake (a few
/// milliseconds) always gets through to the trusted pool.
#[derive(Debug, Default)]
struct Pools {
    trusted: usize,
    next_id: u64,
    /// Live untrusted slots by id: their address and how to close them.
    untrusted: HashMap<u64, (IpAddr, CancellationToken)>,
    /// Untrusted slot ids, oldest first (ids of released slots are skipped).
    order: VecDeque<u64>,
    per_address: HashMap<IpAddr, usize>,
}

impl Pools {
    /// Releases untrusted slot `id` if it is still live; true if it was.
    fn release(&mut self, id: u64) -> bool {
        let Some((ip, _)) = self.untrusted.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
        true
    }

    /// Closes the oldest live untrusted connection (of `ip`, if given).
    fn evict_oldest(&mut self, ip: Option<IpAddr>) {
        let position = self.order.iter().position(|id| {
            self.untrusted
                .get(id)
                .is_some_and(|(a, _)| ip.is_none_or(|ip| *a == ip))
        });
        if let Some(i) = position
            && let Some(id) = self.order.remove(i)
            && let Some((_, token)) = self.untrusted.get(&id)
        {
            token.cancel();
            self.release(id);
        }
        // Forget ids of slots released meanwhile, from the front.
        while self
            .order
            .front()
            .is_some_and(|id| !self.untrusted.contains_key(id))
        {
            self.order.pop_front();
        }
    }
}

#[derive(Debug)]
struct Gate {
    limits: ConnectionLimits,
    pools: Mutex<Pools>,
    metrics: Arc<Metrics>,
    refusal_log: LogLimiter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Trusted,
    /// With its slot id.
    Untrusted(u64),
}

/// A place in one of the pools, held by a connection for its life.
#[derive(Debug)]
struct Slot {
    gate: Arc<Gate>,
    pool: Pool,
    /// Cancelled when the gate evicts this (untrusted) connection.
    evicted: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pools = self.gate.lock();
        match self.pool {
            Pool::Trusted => pools.trusted = pools.trusted.saturating_sub(1),
            Pool::Untrusted(id) => {
                pools.release(id);
            }
        }
    }
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A trusted slot, or the name of the limit that refuses it (an agent
    /// or operator is never evicted to make room for another).
    fn take_trusted(self: &Arc<Self>) -> Result<Slot, &'static str> {
        let mut pools = self.lock();
        if pools.trusted >= self.limits.max_connections {
            return Err("max_connections");
        }
        pools.trusted += 1;
        Ok(Slot {
            gate: Arc::clone(self),
            pool: Pool::Trusted,
            evicted: CancellationToken::new(),
        })
    }

    /// An untrusted slot for a connection from `ip`, closing the oldest
    /// stranger (from the same address first) when a limit is reached.
    fn take_untrusted(self: &Arc<Self>, remote: SocketAddr) -> Slot {
        let ip = remote.ip();
        let mut pools = self.lock();
        let mut evicted_for = None;
        if pools.per_address.get(&ip).copied().unwrap_or(0)
            >= self.limits.max_untrusted_per_address.max(1)
        {
            pools.evict_oldest(Some(ip));
            evicted_for = Some("max_untrusted_per_address");
        } else if pools.untrusted.len() >= self.limits.max_untrusted.max(1) {
            pools.evict_oldest(None);
            evicted_for = Some("max_untrusted");
        }
        let id = pools.next_id;
        pools.next_id += 1;
        let token = CancellationToken::new();
        pools.untrusted.insert(id, (ip, token.clone()));
        pools.order.push_back(id);
        *pools.per_address.entry(ip).or_default() += 1;
        drop(pools);
        if let Some(limit) = evicted_for {
            self.dropped(remote, limit);
        }
        Slot {
            gate: Arc::clone(self),
            pool: Pool::Untrusted(id),
            evicted: token,
        }
    }

    fn dropped(&self, remote: SocketAddr, limit: &'static str) {
        self.metrics.connection_refused(limit);
        if let LogDecision::Log { suppressed } = self.refusal_log.check() {
            tracing::warn!(
                %remote,
                limit,
                suppressed,
                "connection limit reached: closed a connection (`suppressed` similar events were not logged)"
            );
        }
    }
}

/// A server-side TLS connection.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    /// Closes the connection if no request came by then.
    first_request_deadline: Option<Pin<Box<Sleep>>>,
    /// Closes the connection then, whatever it does (untrusted ones).
    end_of_life: Option<Pin<Box<Sleep>>>,
    /// Wakes the connection when the gate evicts it.
    eviction: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    metrics: Arc<Metrics>,
    _slot: Slot,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl TlsConn {
    /// An error that makes the server drop the connection, once a deadline
    /// passed. Checked on every read: the HTTP/2 server always has one
    /// pending, so the timers' wakeups reach it.
    fn check_deadlines(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        if let Some(deadline) = &mut self.first_request_deadline {
            if self.info.state.first_request.load(Ordering::Relaxed) {
                self.first_request_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                self.metrics.connection_timed_out("first_request");
                tracing::debug!(remote = ?self.info.remote, "no request in time; closing");
                return Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request before the first-request deadline",
                ));
            }
        }
        if let Some(eviction) = &mut self.eviction
            && eviction.as_mut().poll(cx).is_ready()
        {
            return Some(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed to make room: too many connections without a certificate of this CA",
            ));
        }
        if let Some(end) = &mut self.end_of_life
            && end.as_mut().poll(cx).is_ready()
        {
            self.metrics.connection_timed_out("untrusted_lifetime");
            return Some(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection without a certificate of this CA outlived its lifetime",
            ));
        }
        None
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.check_deadlines(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the listener needs besides the socket.
pub struct Incoming {
    pub config: Arc<ServerConfig>,
    /// Tells this CA's clients from strangers, after the handshake.
    pub verifier: PeerVerifier,
    pub limits: ConnectionLimits,
    pub metrics: Arc<Metrics>,
}

/// Accepts on `listener` until `shutdown`, yielding established TLS
/// connections within the limits of `how`. The returned task owns the
/// listener: the port is free once it has finished, so whoever stops the
/// server awaits it before saying so.
pub fn incoming(
    listener: TcpListener,
    how: Incoming,
    shutdown: CancellationToken,
) -> (
    ReceiverStream<std::io::Result<TlsConn>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(256);
    let acceptor = tokio_rustls::TlsAcceptor::from(how.config);
    let gate = Arc::new(Gate {
        limits: how.limits,
        pools: Mutex::default(),
        metrics: Arc::clone(&how.metrics),
        refusal_log: LogLimiter::new(Duration::from_secs(10), 5),
    });
    let verifier = how.verifier;
    let accept_loop = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let accepted_at = tokio::time::Instant::now();
            let untrusted = gate.take_untrusted(remote);
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let gate = Arc::clone(&gate);
            let verifier = verifier.clone();
            tokio::spawn(async move {
                let limits = &gate.limits;
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
                let tls = tokio::select! {
                    _ = untrusted.evicted.cancelled() => return,
                    done = handshake => match done {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            gate.metrics.connection_timed_out("handshake");
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    },
                };
                let certs: Option<Arc<Vec<CertificateDer<'static>>>> = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
                let ours = certs.as_ref().is_some_and(|c| verifier.verify(c).is_ok());
                let (slot, end_of_life, eviction) = if ours {
                    match gate.take_trusted() {
                        Ok(slot) => (slot, None, None),
                        Err(limit) => {
                            gate.dropped(remote, limit);
                            return;
                        }
                    }
                } else {
                    let end = accepted_at + limits.untrusted_lifetime;
                    let eviction = Box::pin(untrusted.evicted.clone().cancelled_owned());
                    (
                        untrusted,
                        Some(Box::pin(tokio::time::sleep_until(end))),
                        Some(eviction),
                    )
                };
                let info = PeerInfo {
                    remote: Some(remote),
                    certs,
                    state: Arc::default(),
                };
                let conn = TlsConn {
                    inner: tls,
                    info,
                    first_request_deadline: Some(Box::pin(tokio::time::sleep(
                        limits.first_request_timeout,
                    ))),
                    end_of_life,
                    eviction,
                    metrics: Arc::clone(&gate.metrics),
                    _slot: slot,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    (ReceiverStream::new(rx), accept_loop)
}
