//! The member's invoices over HTTP and on the statement page, against a real SQLite ledger and a
//! real HTTP server (port 0): a member token lists and downloads only its own documents (the PDF
//! and XML served are the issued ones, byte for byte); and the page, in headless Chromium at a
//! phone's 390 px width (chromium + chromium-driver, installed by `.ci/run`, driven over the
//! WebDriver HTTP protocol), shows the invoices with visible download links and no horizontal
//! overflow.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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
#[path = "support/sites.rs"]
#[allow(dead_code)]
mod sites;
use sites::{config, ms, ALICE, BOB};
#[path = "support/facturx_site.rs"]
mod site;
use site::{session, site_text};
#[path = "support/browser.rs"]
#[allow(dead_code)]
mod browser;
use browser::{get, Phone};

/// A site with November invoiced for alice and bob, served on port 0 (with the tokens file when
/// given). Returns the address and the issued documents.
fn serve(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    tokens: Option<std::path::PathBuf>,
) -> (SocketAddr, Vec<Invoice>) {
    let c: Config = config(dir, &site_text());
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
    (browser::serve(rt, router), docs)
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
    let c: Config = config(dir.path(), &site_text());
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

#[test]
fn the_statement_page_lists_invoices_with_visible_links_at_390_px() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, docs) = serve(&rt, dir.path(), None);
    let alice = docs.iter().find(|d| d.buyer.id == "alice").expect("alice");
    let phone = Phone::start(390);
    phone.goto(&format!("http://{addr}/#member=alice&period=2026-11"));
    // Wait for the statement table and the invoice list (the page fetches both after load).
    let probe = r#"const a = document.querySelector('#st-invoices a[href$=".pdf"]');
        if (!a || !document.querySelector('#st-out table')) return null;
        a.scrollIntoView({block: "center"});
        const r = a.getBoundingClientRect();
        return {href: a.getAttribute("href"), left: r.left, right: r.right, width: r.width,
                height: r.height, visible: getComputedStyle(a).visibility,
                hit: document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) === a,
                scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth,
                text: document.getElementById("st-invoices").innerText};"#;
    let found = phone.wait_for("a PDF link on the page", probe);
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
    let wide = phone.run(
        r#"const d = document.createElement("div"); d.style.width = "600px"; d.style.height = "1px";
           document.getElementById("st-invoices").append(d);
           return document.scrollingElement.scrollWidth;"#,
    );
    assert!(
        wide.as_f64() > Some(390.0),
        "the overflow check sees overflow: {wide}"
    );
}
