//! Plain HTTP GETs with a deadline, for smoke checks and health gates.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Most of a response body read: a check needs its start (a status page,
/// a version string), and an endless body must not fill the agent's memory.
const BODY_LIMIT: usize = 1 << 20;

/// The first `limit` bytes of `body`; reading stops there, the rest is
/// never read (the connection is dropped with it).
async fn read_limited<B>(mut body: B, limit: usize) -> Result<Bytes, String>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            let room = limit - out.len();
            out.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(Bytes::from(out))
}

/// A GET's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub latency: Duration,
    pub headers: hyper::HeaderMap,
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }
}

impl HttpClient {
    /// `GET url`, answered within `timeout`, or why not.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Answer, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let started = Instant::now();
        let fetch = async {
            let res = self
                .inner
                .get(uri)
                .await
                .map_err(|e| ferry_common::tls::error_chain(&e))?;
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let body = read_limited(res.into_body(), BODY_LIMIT).await?;
            Ok::<_, String>((status, body, headers))
        };
        let (status, body, headers) = tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))??;
        Ok(Answer {
            status,
            body,
            latency: started.elapsed(),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server whose body never ends: the check reads its first MiB and
    /// stops, so the agent's memory stays bounded whatever a service sends.
    #[tokio::test]
    async fn an_endless_body_is_read_to_the_limit_and_no_further() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&written);
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = sock.read(&mut request).await;
            sock.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let head = format!("{:x}\r\n", chunk.len());
            loop {
                let ok = sock.write_all(head.as_bytes()).await.is_ok()
                    && sock.write_all(&chunk).await.is_ok()
                    && sock.write_all(b"\r\n").await.is_ok();
                if !ok {
                    break;
                }
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                // At 10 GiB the client clearly read it all: stop the test.
                if counter.load(Ordering::Relaxed) > 10 << 30 {
                    break;
                }
            }
        });
        let answer = HttpClient::default()
            .get(&format!("http://{addr}/health"), Duration::from_secs(10))
            .await
            .expect("an answer");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), BODY_LIMIT);
        // What the server got out before the client hung up: the limit plus
        // what socket buffers hold, nowhere near the endless body.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = written.load(Ordering::Relaxed);
        assert!(sent < 64 << 20, "the client read {sent} bytes");
    }
}
