//! The member's invoices over HTTP and on the statement page, against a real SQLite ledger and a
//! real HTTP server (port 0): a member token lists and downloads only its own documents (the PDF
//! and XML served are the issued ones, byte for byte); and the page, in headless Chromium at a
//! phone's 390 px width (chromium + chromium-driver, installed by `.ci/run`, driven over the
//! WebDriver HTTP protocol), shows the invoices with visible download links and no horizontal
//! overflow.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabmeter_collector::api::{self, ApiState};
use fabmeter_collector::auth::{Role, TokenFile, Tokens};
use fabmeter_collector::billing::facturx::cii_xml;
use fabmeter_collector::billing::invoice::{Billing, Invoice};
use fabmeter_collector::billing::pdf::facturx_pdf;
use fabmeter_collector::billing::Period;
use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::Ledger;
use fabmeter_collector::metrics::Metrics;
use fabmeter_collector::timeseries::TimeSeriesHandle;
use serde_json::{json, Value};

#[path = "support/ledger.rs"]
mod support;
use support::open;
#[path = "support/facturx_site.rs"]
mod site;
use site::{config, ms, session, ALICE, BOB, SITE};

/// Sends a raw HTTP/1.1 request and reads the answer: (head, body). The body is read by its
/// Content-Length (chromedriver keeps connections open), else chunked, else to the end.
fn exchange(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
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
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
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

/// A site with November invoiced for alice and bob, served on port 0 (with the tokens file when
/// given). Returns the address and the issued documents.
fn serve(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    tokens: Option<std::path::PathBuf>,
) -> (SocketAddr, Vec<Invoice>) {
    let c: Config = config(dir, SITE);
    let billing = Billing::from_config(&c).expect("rules").expect("billing");
    let mut l = open(&c);
    if l.documents().expect("docs").is_empty() {
        let mut batch = session("laser-1", 1, ALICE, "2026-11-03T09:00:00Z", 1_800);
        batch.extend(session("saw-1", 1, ALICE, "2026-11-04T09:00:00Z", 780));
        batch.extend(session("laser-1", 5, BOB, "2026-11-10T09:00:00Z", 600));
        l.commit(&batch).expect("commit");
        let nov = Period::parse("2026-11").expect("period");
        l.issue_invoices(&billing, nov, ms("2026-12-02T10:00:00Z"), false)
            .expect("issue");
    }
    let docs = l.documents().expect("docs");
    let state = ApiState {
        ledger: Arc::new(Mutex::new(Box::new(l) as Box<dyn Ledger>)),
        metrics: Arc::new(Metrics::default()),
        series: TimeSeriesHandle::disabled(),
        site: ("atelier-lyon".into(), String::new()),
        billing: Some(Arc::new(billing)),
        base: "/".into(),
    };
    let mut router = api::router(state);
    if let Some(path) = tokens {
        let t = Arc::new(Tokens::new(path).expect("tokens"));
        router = router.layer(axum::middleware::from_fn_with_state(
            t,
            fabmeter_collector::auth::require_token,
        ));
    }
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(listener, router).await });
    (addr, docs)
}

#[test]
fn a_member_token_lists_and_downloads_only_its_own_invoices() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens_path = dir.path().join("api-tokens.toml");
    let mut tf = TokenFile::default();
    let alice_token = tf
        .create(
            "alice-phone",
            Role::Member,
            Some("alice"),
            "2026-12-01T00:00:00Z",
        )
        .expect("token");
    tf.save(&tokens_path).expect("save");
    let (addr, docs) = serve(&rt, dir.path(), Some(tokens_path));
    let alice = docs.iter().find(|d| d.buyer.id == "alice").expect("alice");
    let bob = docs.iter().find(|d| d.buyer.id == "bob").expect("bob");
    let t = Some(alice_token.as_str());

    let (status, _, body) = get(addr, "/api/members/alice/invoices", t);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let list: Value = serde_json::from_slice(&body).expect("json");
    let numbers: Vec<&str> = list["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .filter_map(|d| d["number"].as_str())
        .collect();
    assert_eq!(
        numbers,
        vec![alice.number.as_str()],
        "only alice's documents"
    );
    let links = &list["documents"][0]["links"];
    let link = |kind: &str| -> String {
        links
            .as_array()
            .and_then(|l| l.iter().find(|x| x["kind"] == kind))
            .and_then(|x| x["href"].as_str())
            .unwrap_or_else(|| panic!("no {kind} link: {links}"))
            .to_owned()
    };
    assert_eq!(links[0]["kind"], "pdf", "the PDF first: {links}");
    let pdf_link = link("pdf");
    assert_eq!(
        pdf_link,
        format!("api/members/alice/invoices/{}.pdf", alice.number)
    );

    let (status, head, pdf) = get(addr, &format!("/{pdf_link}"), t);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/pdf"),
        "{head}"
    );
    assert_eq!(
        pdf,
        facturx_pdf(alice).expect("pdf"),
        "the issued PDF, byte for byte"
    );
    let (status, _, xml) = get(addr, &format!("/{}", link("xml")), t);
    assert_eq!(status, 200);
    assert_eq!(xml, cii_xml(alice).expect("xml"));

    // Another member's documents: refused by the token, and not found under alice's path.
    let bob_pdf = format!("/api/members/bob/invoices/{}.pdf", bob.number);
    assert_eq!(get(addr, &bob_pdf, t).0, 403);
    assert_eq!(get(addr, "/api/members/bob/invoices", t).0, 403);
    let (status, _, body) = get(
        addr,
        &format!("/api/members/alice/invoices/{}.pdf", bob.number),
        t,
    );
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        get(
            addr,
            &format!("/api/members/alice/invoices/{}.exe", alice.number),
            t
        )
        .0,
        404
    );
    // No token: 401.
    assert_eq!(get(addr, &format!("/{pdf_link}"), None).0, 401);
}

/// The ledger's per-member query on a real SQLite file: alice's invoices and credit note, in
/// chain order, and none of bob's (and the reverse), read through the index `invoices_member`.
#[test]
fn the_ledger_returns_a_members_own_invoices_and_credit_notes_only() {
    use fabmeter_collector::billing::invoice::DocKind;
    use fabmeter_collector::ledger::MEMBER_DOCUMENTS_SQL;
    let dir = tempfile::tempdir().expect("tempdir");
    let c: Config = config(dir.path(), SITE);
    let billing = Billing::from_config(&c).expect("rules").expect("billing");
    let mut l = open(&c);
    let mut batch = session("laser-1", 1, ALICE, "2026-11-03T09:00:00Z", 1_800);
    batch.extend(session("laser-1", 5, BOB, "2026-11-10T09:00:00Z", 600));
    batch.extend(session("saw-1", 1, ALICE, "2026-12-04T09:00:00Z", 780));
    batch.extend(session("saw-1", 3, BOB, "2026-12-08T09:00:00Z", 900));
    l.commit(&batch).expect("commit");
    l.issue_invoices(
        &billing,
        Period::parse("2026-11").expect("period"),
        ms("2026-12-02T10:00:00Z"),
        false,
    )
    .expect("november");
    let alice_nov = l
        .member_documents("alice")
        .expect("alice")
        .pop()
        .expect("alice's invoice");
    l.credit_note(
        &billing,
        &alice_nov.number,
        "erreur",
        ms("2026-12-05T10:00:00Z"),
    )
    .expect("credit note");
    l.issue_invoices(
        &billing,
        Period::parse("2026-12").expect("period"),
        ms("2027-01-02T10:00:00Z"),
        false,
    )
    .expect("december");

    let all = l.documents().expect("documents");
    assert_eq!(all.len(), 5, "two invoices a month and a credit note");
    for (member, other) in [("alice", "bob"), ("bob", "alice")] {
        let mine = l.member_documents(member).expect("member documents");
        let expected: Vec<Invoice> = all
            .iter()
            .filter(|d| d.buyer.id == member)
            .cloned()
            .collect();
        assert_eq!(mine, expected, "{member}: its documents, in chain order");
        assert!(
            mine.iter().all(|d| d.buyer.id == member),
            "{member}: none of {other}'s"
        );
        let kinds: Vec<DocKind> = mine.iter().map(|d| d.kind).collect();
        if member == "alice" {
            assert_eq!(
                kinds,
                [DocKind::Invoice, DocKind::CreditNote, DocKind::Invoice]
            );
        } else {
            assert_eq!(kinds, [DocKind::Invoice, DocKind::Invoice]);
        }
    }
    assert!(l.member_documents("nobody").expect("none").is_empty());

    let raw = rusqlite::Connection::open(&c.ledger.path).expect("raw");
    let plan: Vec<String> = raw
        .prepare(&format!("EXPLAIN QUERY PLAN {MEMBER_DOCUMENTS_SQL}"))
        .expect("explain")
        .query_map(rusqlite::params!["atelier-lyon", "alice"], |r| {
            r.get::<_, String>(3)
        })
        .expect("plan")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(
        plan.iter()
            .any(|p| p.contains("USING INDEX invoices_member (site=? AND member=?)")),
        "{plan:?}"
    );
}

/// A chromedriver on a free port; on drop (also when an assertion failed) its browser session is
/// closed, which ends the browser, then chromedriver is ended.
struct Driver {
    child: Child,
    url: String,
    addr: SocketAddr,
    session: std::cell::RefCell<Option<String>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(sid) = self.session.borrow_mut().take() {
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

fn start_driver() -> (Driver, SocketAddr) {
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
        url: format!("http://{addr}"),
        addr,
        session: std::cell::RefCell::new(None),
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
            "chromedriver at {} not ready",
            driver.url
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (driver, addr)
}

#[test]
fn the_statement_page_lists_invoices_with_visible_links_at_390_px() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, docs) = serve(&rt, dir.path(), None);
    let alice = docs.iter().find(|d| d.buyer.id == "alice").expect("alice");
    let (driver, wd) = start_driver();
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            "mobileEmulation": {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 3.0}}
        }
    }}});
    let session = webdriver(wd, "POST", "/session", Some(&caps));
    let sid = session["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {session}"))
        .to_owned();
    *driver.session.borrow_mut() = Some(sid.clone());
    let run = |script: &str| -> Value {
        webdriver(
            wd,
            "POST",
            &format!("/session/{sid}/execute/sync"),
            Some(&json!({"script": script, "args": []})),
        )
    };
    webdriver(
        wd,
        "POST",
        &format!("/session/{sid}/url"),
        Some(&json!({"url": format!("http://{addr}/#member=alice&period=2026-11")})),
    );
    // Wait for the statement table and the invoice list (the page fetches both after load).
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe = r#"const a = document.querySelector('#st-invoices a[href$=".pdf"]');
        if (!a || !document.querySelector('#st-out table')) return null;
        a.scrollIntoView({block: "center"});
        const r = a.getBoundingClientRect();
        return {href: a.getAttribute("href"), left: r.left, right: r.right, width: r.width,
                height: r.height, visible: getComputedStyle(a).visibility,
                hit: document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) === a,
                scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth,
                text: document.getElementById("st-invoices").innerText};"#;
    let found = loop {
        let v = run(probe);
        if !v.is_null() {
            break v;
        }
        assert!(Instant::now() < deadline, "no PDF link on the page");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("at 390 px: {found}");
    assert_eq!(found["inner"], json!(390), "a 390 px viewport: {found}");
    assert!(
        found["scroll"].as_f64().expect("scrollWidth") <= 390.0,
        "horizontal overflow at 390 px: {found}"
    );
    let (left, right) = (
        found["left"].as_f64().expect("left"),
        found["right"].as_f64().expect("right"),
    );
    assert!(
        left >= 0.0 && right <= 390.0 && found["width"].as_f64() > Some(20.0),
        "{found}"
    );
    assert!(
        found["height"].as_f64() > Some(20.0),
        "a tappable link: {found}"
    );
    assert_eq!(found["visible"], json!("visible"));
    assert_eq!(
        found["hit"],
        json!(true),
        "nothing covers the link: {found}"
    );
    assert!(
        found["text"].as_str().unwrap_or("").contains(&alice.number),
        "{found}"
    );
    // The link the page shows serves the issued PDF.
    let href = found["href"].as_str().expect("href");
    let (status, _, pdf) = get(addr, &format!("/{href}"), None);
    assert_eq!(status, 200);
    assert_eq!(pdf, facturx_pdf(alice).expect("pdf"));

    // The measure can fail: a 600 px wide element makes the page overflow.
    let wide = run(
        r#"const d = document.createElement("div"); d.style.width = "600px"; d.style.height = "1px";
           document.getElementById("st-invoices").append(d);
           return document.scrollingElement.scrollWidth;"#,
    );
    assert!(
        wide.as_f64() > Some(390.0),
        "the overflow check sees overflow: {wide}"
    );
}
