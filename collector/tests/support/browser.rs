//! Shared by the web page tests (the statement page, the board's cost recovery and maintenance
//! tables): a real server on a free port, raw HTTP/1.1 requests to it, and headless Chromium
//! driven over the WebDriver HTTP protocol by a chromedriver on a free port (Debian `chromium` and
//! `chromium-driver`, installed by `.ci/run`), with a phone-sized viewport; what the board's
//! tables show, read in the page and computed here.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabmeter_collector::ledger::Ledger;
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

/// The board's routes over `ledger`, as the application merges them for one site without tokens:
/// the API (machines, statements), maintenance and cost recovery.
pub fn board(config: fabmeter_collector::config::Config, ledger: Box<dyn Ledger>) -> axum::Router {
    use fabmeter_collector::api::{self, ApiState, SharedLedger};
    use fabmeter_collector::billing::invoice::Billing;
    use fabmeter_collector::metrics::Metrics;
    use fabmeter_collector::timeseries::TimeSeriesHandle;
    use std::sync::{Arc, Mutex};
    let billing = Billing::from_config(&config).expect("rules");
    let ledger: SharedLedger = Arc::new(Mutex::new(ledger));
    let config = Arc::new(config);
    let state = ApiState {
        ledger: ledger.clone(),
        metrics: Arc::new(Metrics::default()),
        series: TimeSeriesHandle::disabled(),
        site: (config.site.id.clone(), String::new()),
        billing: billing.map(Arc::new),
        base: "/".into(),
    };
    api::router(state)
        .merge(api::maintenance_router(ledger.clone(), config.clone()))
        .merge(api::costs_router(ledger, config))
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

    /// When `FABMETER_SCREENSHOTS` names a directory, saves what the viewport shows there as
    /// `name` (a PNG), to look at the page as the test saw it.
    pub fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let Some(dir) = std::env::var_os("FABMETER_SCREENSHOTS") else {
            return;
        };
        let png = webdriver(
            self.driver.addr,
            "GET",
            &format!("/session/{}/screenshot", self.sid),
            None,
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 PNG"))
            .expect("base64");
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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

/// What JavaScript's `x.toFixed(digits)` gives: the exact binary value rounded to `digits`
/// decimals, a tie to the larger magnitude.
pub fn to_fixed(x: f64, digits: usize) -> String {
    let exact = format!("{:.1100}", x.abs());
    let (int, frac) = exact.split_once('.').expect("a decimal point");
    let mut d: Vec<u8> = format!("{int}{}", &frac[..digits]).into_bytes();
    if frac.as_bytes()[digits] >= b'5' {
        let mut i = d.len();
        loop {
            if i == 0 {
                d.insert(0, b'1');
                break;
            }
            i -= 1;
            if d[i] == b'9' {
                d[i] = b'0';
            } else {
                d[i] += 1;
                break;
            }
        }
    }
    let d = String::from_utf8(d).expect("digits");
    let (a, b) = d.split_at(d.len() - digits);
    let sign = if x < 0.0 { "-" } else { "" };
    if digits == 0 {
        format!("{sign}{a}")
    } else {
        format!("{sign}{a}.{b}")
    }
}

/// A script reading the board's table in the section of id `section` once it shows rows (else
/// `null`), scrolled into view: each row (its `data-machine`, its cells' text and classes), and
/// the measures of horizontal overflow at the viewport's width: the viewport, the page's scroll
/// width, the section's box and scroll width, the cells displayed and those of them outside.
pub fn table_probe(section: &str) -> String {
    format!(
        r##"const section = document.getElementById("{section}");
    const trs = [...section.querySelectorAll("tbody tr")];
    if (section.hidden || trs.length === 0) return null;
    section.scrollIntoView({{block: "start"}});
    const w = window.innerWidth;
    const cells = [...section.querySelectorAll("th, td")].filter(c => getComputedStyle(c).display !== "none");
    const out = cells.filter(c => {{ const r = c.getBoundingClientRect(); return r.left < -0.5 || r.right > w + 0.5; }});
    const s = section.getBoundingClientRect();
    return {{
      rows: trs.map(tr => ({{machine: tr.dataset.machine || null,
                            cells: [...tr.children].map(td => td.textContent),
                            classes: [...tr.children].map(td => td.className)}})),
      inner: w, scroll: document.scrollingElement.scrollWidth,
      section: {{left: s.left, right: s.right, scroll: section.scrollWidth, client: section.clientWidth}},
      cells: cells.length, outside: out.map(c => c.textContent)
    }};"##
    )
}

/// The board served on port 0 and loaded in a phone, showing one of its tables.
pub struct Board {
    /// The browser.
    pub phone: Phone,
    /// The [`table_probe`] of the table's section.
    pub probe: String,
    /// What the probe read once the table showed rows.
    pub found: Value,
    /// The API's answer just before and just after the page's own request (figures that move
    /// with the clock may differ between two requests).
    pub answers: [Value; 2],
    width: u32,
    section: String,
    _server: tokio::runtime::Runtime,
}

impl Board {
    /// Serves `app` on port 0 and loads its board in a phone `width` px wide until the table in
    /// the section of id `section` shows rows; `api` is the path the table is read from (`GET`,
    /// no token). With `FABMETER_SCREENSHOTS`, saves `board-{section}-{width}.png`.
    pub fn load(app: axum::Router, width: u32, api: &str, section: &str) -> Board {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let addr = serve(&rt, app);
        let answer = || -> Value {
            let (status, _, body) = get(addr, api, None);
            assert_eq!(status, 200, "{api}: {}", String::from_utf8_lossy(&body));
            serde_json::from_slice(&body).expect("json")
        };
        let before = answer();
        let phone = Phone::start(width);
        phone.goto(&format!("http://{addr}/"));
        let probe = table_probe(section);
        let found = phone.wait_for(&format!("the table of #{section}"), &probe);
        let after = answer();
        eprintln!("at {width} px: {found}");
        phone.screenshot(&format!("board-{section}-{width}.png"));
        Board {
            phone,
            probe,
            found,
            answers: [before, after],
            width,
            section: section.to_owned(),
            _server: rt,
        }
    }

    /// Asserts that `rows`, what the table shows, are `expected` of one of the API's answers.
    pub fn assert_shows(&self, rows: &Value, expected: impl Fn(&Value) -> Value) {
        let e = self.answers.each_ref().map(expected);
        assert!(
            e.iter().any(|e| e == rows),
            "the table shows the API's figures:\n table {rows}\n API   {}",
            e[1]
        );
    }

    /// Asserts that nothing lies sideways outside the viewport: not the page, not the section,
    /// not one displayed cell (of more than `min_cells`), and that the table does not scroll
    /// inside its box. Then that the measure can fail: the table's first cell made as wide as the
    /// viewport (600 px at least) is seen outside.
    pub fn assert_fits(&self, min_cells: f64) {
        let found = &self.found;
        let width = f64::from(self.width);
        let num = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("a number: {found}"));
        assert_eq!(num(&found["inner"]), width, "{found}");
        assert!(
            num(&found["scroll"]) <= width,
            "the page scrolls sideways: {found}"
        );
        let section = &found["section"];
        assert!(
            num(&section["left"]) >= 0.0 && num(&section["right"]) <= width,
            "{found}"
        );
        assert!(
            num(&section["scroll"]) <= num(&section["client"]),
            "the table scrolls sideways inside its box: {found}"
        );
        assert!(num(&found["cells"]) > min_cells, "{found}");
        assert_eq!(
            found["outside"],
            json!([]),
            "cells outside the viewport: {found}"
        );

        let wide = self.phone.run(&format!(
            r##"document.querySelector("#{} tbody td").style.minWidth = "{}px";
               {}"##,
            self.section,
            self.width.max(600),
            self.probe
        ));
        assert!(
            !wide["outside"].as_array().expect("outside").is_empty(),
            "the overflow check sees a wide cell: {wide}"
        );
    }
}
