//! Shared by the web page tests (the statement page, the cost recovery table): a real server on
//! a free port, raw HTTP/1.1 requests to it, and headless Chromium driven over the WebDriver HTTP
//! protocol by a chromedriver on a free port (Debian `chromium` and `chromium-driver`, installed
//! by `.ci/run`), with a phone-sized viewport.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Serves `app` on a free port of 127.0.0.1, on `rt`; its address.
pub fn serve(rt: &tokio::runtime::Runtime, app: axum::Router) -> SocketAddr {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends a raw HTTP/1.1 request and reads the answer: (head, body). The body is read by its
/// Content-Length (chromedriver keeps connections open), else chunked, else to the end.
pub fn exchange(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let at = loop {
        if let Some(at) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "connection closed before the response head");
        out.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&out[..at]).to_string();
    let lower = head.to_ascii_lowercase();
    let mut body = out[at + 4..].to_vec();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "connection closed within the body");
                body.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut body).expect("read");
            if lower.contains("transfer-encoding: chunked") {
                body = dechunk(&body);
            }
        }
    }
    (head, body)
}

/// `GET path` with an optional bearer token: (status, head, body).
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let (head, body) = exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < nl + 2 + size {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[(nl + 4 + size).min(b.len())..];
    }
    out
}

/// A chromedriver on a free port; on drop (also when an assertion failed) its browser session is
/// closed, which ends the browser, then chromedriver is ended.
struct Driver {
    child: Child,
    addr: SocketAddr,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(sid) = self.session.take() {
            let _ = std::panic::catch_unwind(|| {
                webdriver(self.addr, "DELETE", &format!("/session/{sid}"), None)
            });
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A WebDriver command: `method path` with an optional JSON body; the `value` of the answer.
fn webdriver(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Value {
    let payload = body.map(Value::to_string).unwrap_or_default();
    let (_, b) = exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        ),
    );
    let v: Value = serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&b)));
    v["value"].clone()
}

fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian chromium-driver, installed by .ci/run)");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let driver = Driver {
        child,
        addr,
        session: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(addr).is_ok()
            && webdriver(addr, "GET", "/status", None)["ready"] == json!(true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver at http://{addr} not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    driver
}

/// Headless Chromium emulating a phone `width` CSS pixels wide (844 high, pixel ratio 3), with
/// one WebDriver session; ended on drop.
pub struct Phone {
    driver: Driver,
    sid: String,
}

impl Phone {
    /// Starts chromedriver and a browser session.
    pub fn start(width: u32) -> Phone {
        let mut driver = start_driver();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
                "mobileEmulation": {"deviceMetrics": {"width": width, "height": 844, "pixelRatio": 3.0}}
            }
        }}});
        let session = webdriver(driver.addr, "POST", "/session", Some(&caps));
        let sid = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        driver.session = Some(sid.clone());
        Phone { driver, sid }
    }

    /// Loads `url`.
    pub fn goto(&self, url: &str) {
        webdriver(
            self.driver.addr,
            "POST",
            &format!("/session/{}/url", self.sid),
            Some(&json!({ "url": url })),
        );
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub fn run(&self, script: &str) -> Value {
        webdriver(
            self.driver.addr,
            "POST",
            &format!("/session/{}/execute/sync", self.sid),
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// Runs `script` until it returns something other than `null`, for up to 30 s; that value.
    /// Panics naming `what` at the deadline, with the page's text.
    pub fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.run(script);
            if !v.is_null() {
                return v;
            }
            if Instant::now() >= deadline {
                let page = self.run("return document.body.innerHTML;");
                panic!("waited 30 s for {what}; the page: {page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
