//! The `/metrics` endpoint: a minimal HTTP/1.1 responder on the interchange's runtime. It reads
//! one request head (at most 8 KiB, within 10 s), answers `GET /metrics` with the text
//! exposition format and anything else with a 404 or 405, and closes the connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

const MAX_REQUEST_HEAD: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; more wait for the listener's backlog.
const MAX_CONNECTIONS: usize = 32;

pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Mutex<Metrics>>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("the metrics endpoint cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics).await {
                tracing::debug!(%peer, "a metrics request ended early: {e}");
            }
            drop(permit);
        });
    }
}

async fn answer(stream: TcpStream, metrics: &Mutex<Metrics>) -> std::io::Result<()> {
    // The whole exchange has the one deadline: a client that stops reading frees its place.
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(stream, metrics)).await {
        Ok(done) => done,
        Err(_) => Ok(()),
    }
}

async fn exchange(mut stream: TcpStream, metrics: &Mutex<Metrics>) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let head_only = head.starts_with(b"HEAD ");
    let response = match route(&head) {
        Route::Metrics => {
            let body = metrics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .render();
            response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body)
        }
        Route::NotFound => response(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "htex serves /metrics only\n",
        ),
        Route::BadMethod => response(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "use GET /metrics\n",
        ),
        Route::Bad => response(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "not an HTTP request\n",
        ),
    };
    let response = if head_only {
        // HEAD: the headers alone (Content-Length still names the body's size).
        response
            .split_inclusive("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string()
    } else {
        response
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends a request head (or the limit, or EOF).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_REQUEST_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::Bad;
    };
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    if method != "GET" && method != "HEAD" {
        return Route::BadMethod;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"\x16\x03\x01 garbage"), Route::Bad);
        assert_eq!(route(b""), Route::Bad);
    }
}
