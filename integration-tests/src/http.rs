//! A tiny HTTP service for smoke checks: answers 503 until it is told to be
//! healthy (or until a time), then 200 with body "ok".

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct TestService {
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    pub hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TestService {
    pub async fn start(healthy: bool) -> std::io::Result<TestService> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let flag = Arc::new(AtomicBool::new(healthy));
        let hits = Arc::new(AtomicU64::new(0));
        let (f, h) = (Arc::clone(&flag), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (f, h) = (Arc::clone(&f), Arc::clone(&h));
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    h.fetch_add(1, Ordering::Relaxed);
                    let (status, body) = if f.load(Ordering::Relaxed) {
                        ("200 OK", "ok")
                    } else {
                        ("503 Service Unavailable", "starting")
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        Ok(TestService {
            addr,
            healthy: flag,
            hits,
            task,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.task.abort();
    }
}
