//! Plain HTTP GETs with a deadline, for smoke checks and health gates.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Most of a response body kept.
const BODY_LIMIT: usize = 1 << 20;

/// A GET's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub latency: Duration,
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
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))??;
        Ok(Answer {
            status,
            body: body.slice(..body.len().min(BODY_LIMIT)),
            latency: started.elapsed(),
        })
    }
}
