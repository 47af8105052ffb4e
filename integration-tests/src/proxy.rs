//! A TCP proxy that a test can cut: every connection through it is dropped
//! at once, as a broken network would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    blocked: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<new port>` to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, b) = (Arc::clone(&conns), Arc::clone(&blocked));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if b.load(std::sync::atomic::Ordering::Relaxed) {
                    drop(inbound);
                    continue;
                }
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
            }
        });
        Ok(Proxy {
            addr,
            blocked,
            conns,
            accept,
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Cuts every connection and refuses new ones until [`Proxy::unblock`].
    pub fn block(&self) {
        self.blocked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.cut();
    }

    pub fn unblock(&self) {
        self.blocked
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drops every open connection (new ones are still accepted).
    pub fn cut(&self) -> usize {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let n = conns.iter().filter(|h| !h.is_finished()).count();
        for h in conns.drain(..) {
            h.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
