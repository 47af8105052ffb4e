//! `ferry-example healthcheck`: a Docker `HEALTHCHECK` for a `FROM scratch`
//! image, which has no curl or wget. Blocking std I/O: it makes one request
//! and exits, so it has no use for an async runtime.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("cannot reach 127.0.0.1:{port}: {source}")]
    Unreachable { port: u16, source: io::Error },
    #[error("not an HTTP answer: {0:?}")]
    Malformed(String),
    #[error("unhealthy: {status} {body}")]
    Unhealthy { status: u16, body: String },
}

/// GETs `http://127.0.0.1:{port}/health`; `Ok` only for a 200.
pub fn check(port: u16, timeout: Duration) -> Result<(), HealthcheckError> {
    let unreachable = |source| HealthcheckError::Unreachable { port, source };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    // HTTP/1.0: the server closes after answering, so reading to the end
    // needs no length parsing.
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(unreachable)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(unreachable)?;
    let answer = String::from_utf8_lossy(&answer);
    match parse_answer(&answer) {
        Some((200, _)) => Ok(()),
        Some((status, body)) => Err(HealthcheckError::Unhealthy {
            status,
            body: body.to_owned(),
        }),
        None => Err(HealthcheckError::Malformed(
            answer.chars().take(80).collect(),
        )),
    }
}

/// The status code and body of a raw HTTP/1.x answer.
pub fn parse_answer(answer: &str) -> Option<(u16, &str)> {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let status_line = head.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        assert_eq!(
            parse_answer("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Some((200, "ok"))
        );
        assert_eq!(
            parse_answer("HTTP/1.1 503 Service Unavailable\r\n\r\nfailing on purpose"),
            Some((503, "failing on purpose"))
        );
        assert_eq!(parse_answer("HTTP/1.1 204 No Content\r\n"), Some((204, "")));
    }

    #[test]
    fn rejects_what_is_not_http() {
        assert_eq!(parse_answer(""), None);
        assert_eq!(parse_answer("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_answer("HTTP/1.1 abc\r\n\r\n"), None);
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = check(port, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, HealthcheckError::Unreachable { .. }), "{err}");
    }
}
