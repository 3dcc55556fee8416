//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`, enough for local services.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::HarnessError;

/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read/write timeout for one request.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// True for 2xx statuses.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
///
/// `path` includes the query string and must already be percent-encoded (see [`url_encode`]).
pub fn request(
    method: &str,
    host: &str,
    port: u16,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse, HarnessError> {
    let url = format!("http://{host}:{port}{path}");
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(HarnessError::io(format!("resolving {host}")))?
        .next()
        .ok_or_else(|| HarnessError::Usage(format!("{host} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(HarnessError::io(format!("connecting to {url}")))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(HarnessError::io("setting a read timeout"))?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(HarnessError::io("setting a write timeout"))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nUser-Agent: fabmeter-e2e\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(HarnessError::io(format!("sending {method} {url}")))?;
    stream.write_all(body).map_err(HarnessError::io(format!(
        "sending the body of {method} {url}"
    )))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(HarnessError::io(format!(
            "reading the response of {method} {url}"
        )))?;
    parse_response(&raw).map_err(|reason| HarnessError::BadResponse { url, reason })
}

/// `GET path`.
pub fn get(host: &str, port: u16, path: &str) -> Result<HttpResponse, HarnessError> {
    request("GET", host, port, path, None, &[])
}

/// `POST path` with a body.
pub fn post(
    host: &str,
    port: u16,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<HttpResponse, HarnessError> {
    request("POST", host, port, path, Some(content_type), body)
}

/// Percent-encodes a query-string component (everything but unreserved characters).
pub fn url_encode(component: &str) -> String {
    let mut out = String::with_capacity(component.len() * 3);
    for byte in component.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        body.get(..length)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk terminator")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_plain_responses() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked),
            Ok(HttpResponse {
                status: 200,
                body: b"abcde".to_vec()
            })
        );
        let plain = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(plain),
            Ok(HttpResponse {
                status: 204,
                body: Vec::new()
            })
        );
    }

    #[test]
    fn encodes_selectors() {
        assert_eq!(
            url_encode(r#"{__name__=~"a.*"}"#),
            "%7B__name__%3D~%22a.%2A%22%7D"
        );
    }
}
