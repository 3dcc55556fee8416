//! Factur-X against a real SQLite ledger: a month of sessions invoiced (two VAT rates, a daily-cap
//! line, prepaid credit), a credit note, a seller under the VAT franchise; each document's EN 16931
//! CII XML is validated by open tools (`scripts/facturx-check.py`: the Factur-X XSD and the
//! EN 16931 Schematron with Saxon-HE; each PDF with Apache PDFBox Preflight; installed by
//! `.ci/run`); a deliberately broken document is refused by the same validator. Bad identities are config errors naming the key; written
//! documents are never changed nor left half-written.

use std::path::{Path, PathBuf};
use std::process::Command;

use fabmeter_collector::billing::facturx::{cii_xml, write_new, FacturxError};
use fabmeter_collector::billing::invoice::{to_html, Billing, DocKind, Invoice};
use fabmeter_collector::billing::pdf::facturx_pdf;
use fabmeter_collector::billing::Period;
use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::Ledger;

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

fn checker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/facturx-check.py")
}

/// Runs the validator on the files: (exit code, stdout + stderr).
fn validate(files: &[PathBuf]) -> (i32, String) {
    let out = Command::new("python3")
        .arg(checker())
        .args(files)
        .output()
        .expect("python3 runs (installed by .ci/run)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(code, 2, "validator not installed (run .ci/run): {text}");
    (code, text)
}

/// The `InvoiceReferencedDocument` element of a CII XML, each line trimmed and joined (the
/// indentation removed); empty when there is none.
fn referenced_document(xml: &str) -> String {
    let (Some(from), Some(to)) = (
        xml.find("<ram:InvoiceReferencedDocument>"),
        xml.find("</ram:InvoiceReferencedDocument>"),
    ) else {
        return String::new();
    };
    xml[from..to + "</ram:InvoiceReferencedDocument>".len()]
        .lines()
        .map(str::trim)
        .collect()
}

/// The PDF with the width of "e" in its font dictionary's `/Widths` made 999 (the same number of
/// digits, so that no offset moves).
fn with_e_width_999(pdf: &[u8]) -> Vec<u8> {
    let find = |needle: &[u8]| {
        pdf.windows(needle.len())
            .position(|w| w == needle)
            .expect("the font dictionary")
            + needle.len()
    };
    let first_at = find(b"/FirstChar ");
    let first: usize = String::from_utf8_lossy(&pdf[first_at..first_at + 3])
        .trim()
        .parse()
        .expect("FirstChar");
    let mut at = find(b"/Widths [");
    for _ in first..usize::from(b'e') {
        at += pdf[at..].iter().position(|&b| b == b' ').expect("a width") + 1;
    }
    let len = pdf[at..].iter().position(|&b| b == b' ').expect("a width");
    assert_eq!(len, 3, "a three-digit width");
    assert_ne!(&pdf[at..at + 3], b"999");
    let mut out = pdf.to_vec();
    out[at..at + 3].copy_from_slice(b"999");
    out
}

/// Writes each document's XML and PDF: the paths, XML files first.
fn write_all(dir: &Path, docs: &[Invoice]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for d in docs {
        let p = dir.join(format!("{}.xml", d.number));
        write_new(&p, &cii_xml(d).expect("xml")).expect("write");
        files.push(p);
    }
    for d in docs {
        let p = dir.join(format!("{}.pdf", d.number));
        write_new(&p, &facturx_pdf(d).expect("pdf")).expect("write");
        files.push(p);
    }
    files
}

#[test]
fn invoices_and_credit_notes_of_a_real_ledger_are_valid_en16931_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &site_text());
    let billing = Billing::from_config(&c).expect("rules").expect("billing");
    let mut l = open(&c);
    let mut batch = Vec::new();
    // Alice: 30 + 25 laser minutes on the 3rd (27.50, capped at 20.00), 13 wood minutes at 5.5 %.
    batch.extend(session("laser-1", 1, ALICE, "2026-11-03T09:00:00Z", 1_800));
    batch.extend(session("laser-1", 3, ALICE, "2026-11-03T14:00:00Z", 1_500));
    batch.extend(session("saw-1", 1, ALICE, "2026-11-04T09:00:00Z", 780));
    // Bob: 10 laser minutes, paid partly with his prepaid credit.
    batch.extend(session("laser-1", 5, BOB, "2026-11-10T09:00:00Z", 600));
    l.commit(&batch).expect("commit");
    let nov = Period::parse("2026-11").expect("period");
    let r = l
        .issue_invoices(&billing, nov, ms("2026-12-02T10:00:00Z"), false)
        .expect("issue");
    assert_eq!(r.invoices.len(), 2);
    let alice = r
        .invoices
        .iter()
        .find(|d| d.buyer.id == "alice")
        .expect("alice");
    assert!(alice.lines.iter().any(|l| l.amount_cents < 0), "a cap line");
    assert_eq!(alice.totals.vat.len(), 2, "two VAT rates");
    assert_eq!(alice.buyer.siren, "552100554");
    let cn = l
        .credit_note(
            &billing,
            &alice.number,
            "erreur de tarif",
            ms("2026-12-05T10:00:00Z"),
        )
        .expect("credit note");
    assert_eq!(cn.kind, DocKind::CreditNote);

    let docs = l.documents().expect("documents");
    assert_eq!(docs.len(), 3);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let files = write_all(&out, &docs);
    let (code, text) = validate(&files);
    assert_eq!(code, 0, "every document is valid: {text}");
    assert_eq!(
        text.matches(": valid").count(),
        6,
        "3 XML and 3 PDF: {text}"
    );

    // What the XML says: the type codes, the reference of the credit note, escaped text,
    // positive credit-note totals.
    let inv = String::from_utf8(cii_xml(alice).expect("xml")).expect("utf-8");
    assert!(inv.contains("<ram:TypeCode>380</ram:TypeCode>"));
    assert!(inv.contains("<ram:ID schemeID=\"0002\">552100554</ram:ID>"));
    assert!(inv.contains("<ram:ID schemeID=\"VA\">FR44732829320</ram:ID>"));
    assert!(inv.contains("Découpe laser &lt;CO2&gt; &amp; gravure"));
    assert!(inv.contains("<ram:BilledQuantity unitCode=\"C62\">-1</ram:BilledQuantity>"));
    let credit = String::from_utf8(cii_xml(&cn).expect("xml")).expect("utf-8");
    assert!(credit.contains("<ram:TypeCode>381</ram:TypeCode>"));
    let compact: String = credit.split_whitespace().collect();
    assert!(compact.contains(&format!(
        "<ram:InvoiceReferencedDocument><ram:IssuerAssignedID>{}</ram:IssuerAssignedID>",
        alice.number
    )));
    // BT-26: the cancelled invoice's issue date (2 December), not the credit note's (5 December).
    assert_eq!(alice.issue_date.to_string(), "2026-12-02");
    assert_eq!(cn.refers_to_date, Some(alice.issue_date));
    assert_eq!(
        referenced_document(&credit),
        format!(
            "<ram:InvoiceReferencedDocument><ram:IssuerAssignedID>{}</ram:IssuerAssignedID>\
             <ram:FormattedIssueDateTime><qdt:DateTimeString format=\"102\">20261202</qdt:DateTimeString>\
             </ram:FormattedIssueDateTime></ram:InvoiceReferencedDocument>",
            alice.number
        ),
        "BT-25 and BT-26 of the credit note"
    );
    assert!(
        !inv.contains("InvoiceReferencedDocument"),
        "an invoice refers to none"
    );
    // The printable credit note names the cancelled invoice with its date.
    assert!(
        to_html(&cn).contains(&format!(
            "cancels invoice <b>{}</b> du / of 2026-12-02",
            alice.number
        )),
        "{}",
        to_html(&cn)
    );
    let cn_pdf = facturx_pdf(&cn).expect("pdf");
    let said = format!("cancels invoice {} du / of 2026-12-02", alice.number);
    assert!(
        cn_pdf.windows(said.len()).any(|w| w == said.as_bytes()),
        "the PDF's text (content streams are not compressed) says {said:?}"
    );
    assert!(credit.contains(&format!(
        "<ram:GrandTotalAmount>{}.{:02}</ram:GrandTotalAmount>",
        alice.totals.incl_cents / 100,
        alice.totals.incl_cents % 100
    )));

    // A credit note stored before BT-26 was recorded: its JSON has no such field, so it parses,
    // keeps its hash, and its XML names the invoice by number only, still valid.
    let mut older = cn.clone();
    older.refers_to_date = None;
    older.seal(&cn.prev_hash);
    let json = older.to_json();
    assert!(!json.contains("refers_to_date"), "{json}");
    let parsed: Invoice = serde_json::from_str(&json).expect("parses");
    assert!(parsed.hash_ok() && parsed.refers_to_date.is_none());
    let older_xml = String::from_utf8(cii_xml(&parsed).expect("xml")).expect("utf-8");
    assert_eq!(
        referenced_document(&older_xml),
        format!(
            "<ram:InvoiceReferencedDocument><ram:IssuerAssignedID>{}</ram:IssuerAssignedID>\
             </ram:InvoiceReferencedDocument>",
            alice.number
        )
    );
    let older_file = out.join("older-credit-note.xml");
    std::fs::write(&older_file, &older_xml).expect("write");
    let (code, text) = validate(&[older_file]);
    assert_eq!(code, 0, "a credit note without BT-26 stays valid: {text}");

    // Deliberately broken: the grand total one cent off (BR-CO-15), and the seller's name gone
    // (XSD order and BR-6). The validator must refuse each.
    let off = format!(
        "<ram:GrandTotalAmount>{}.{:02}</ram:GrandTotalAmount>",
        (alice.totals.incl_cents + 1) / 100,
        (alice.totals.incl_cents + 1) % 100
    );
    let good = format!(
        "<ram:GrandTotalAmount>{}.{:02}</ram:GrandTotalAmount>",
        alice.totals.incl_cents / 100,
        alice.totals.incl_cents % 100
    );
    assert!(inv.contains(&good));
    let broken_total = out.join("broken-total.xml");
    std::fs::write(&broken_total, inv.replace(&good, &off)).expect("write");
    let broken_name = out.join("broken-name.xml");
    std::fs::write(
        &broken_name,
        inv.replacen("<ram:Name>Atelier de Lyon SAS</ram:Name>", "", 1),
    )
    .expect("write");
    let (code, text) = validate(&[broken_total]);
    assert_eq!(code, 1, "a wrong total is refused: {text}");
    assert!(text.contains("BR-CO-15"), "{text}");
    let (code, text) = validate(&[broken_name]);
    assert_eq!(code, 1, "a seller without a name is refused: {text}");
    // A PDF that does not declare PDF/A-3 is refused too.
    let pdf = facturx_pdf(alice).expect("pdf");
    assert_eq!(
        facturx_pdf(alice).expect("pdf"),
        pdf,
        "the PDF is reproducible"
    );
    let at = pdf
        .windows(14)
        .position(|w| w == b"<pdfaid:part>3")
        .expect("XMP in clear");
    let mut broken = pdf.clone();
    broken[at + 13] = b'2';
    let broken_pdf = out.join("broken.pdf");
    std::fs::write(&broken_pdf, &broken).expect("write");
    let (code, text) = validate(&[broken_pdf]);
    assert_eq!(code, 1, "a PDF that is not PDF/A-3 is refused: {text}");
    assert!(text.contains("pdfaid:part"), "{text}");
    // A PDF/A rule only the PDF/A validator (Preflight) checks: the width the font dictionary
    // gives a glyph the text uses must be the font program's.
    let wrong_width = out.join("wrong-width.pdf");
    std::fs::write(&wrong_width, with_e_width_999(&pdf)).expect("write");
    let (code, text) = validate(&[wrong_width]);
    assert_eq!(code, 1, "a PDF whose font widths lie is refused: {text}");
    assert!(
        text.contains("PDF/A [3.1.6]") && text.contains("\"101\""),
        "Preflight names the width of 'e': {text}"
    );
    // And the XMP: a Factur-X property its extension schema does not declare.
    let needle = b"<pdfaProperty:name>DocumentType<";
    let at = pdf
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the extension schema declares fx:DocumentType");
    let mut undeclared = pdf.clone();
    undeclared[at + needle.len() - 2] = b'x';
    let undeclared_pdf = out.join("undeclared.pdf");
    std::fs::write(&undeclared_pdf, &undeclared).expect("write");
    let (code, text) = validate(&[undeclared_pdf]);
    assert_eq!(code, 1, "an undeclared XMP property is refused: {text}");
    assert!(
        text.contains("PDF/A [7.1.1]") && text.contains("DocumentType"),
        "{text}"
    );

    // Issued documents never change: writing the same bytes again is a no-op, other bytes are
    // refused and the file is left as it was; no temporary file is left behind.
    let first = files[0].clone();
    let before = std::fs::read(&first).expect("read");
    write_new(&first, &before).expect("same bytes");
    match write_new(&first, b"<other/>") {
        Err(FacturxError::Differs { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(std::fs::read(&first).expect("read"), before);
    assert_eq!(
        cii_xml(&docs[0]).expect("xml"),
        before,
        "regenerating gives the same bytes"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A write that fails (the directory is gone) leaves nothing behind and says where.
    let gone = dir.path().join("gone").join("x.xml");
    let e = write_new(&gone, &before).expect_err("no directory");
    assert!(e.to_string().contains("gone"), "{e}");
}

#[test]
fn a_seller_under_the_vat_franchise_issues_valid_exempt_invoices() {
    let text = site_text()
        .replace(
            "vat_id = \"FR44732829320\"\n",
            "vat_regime = \"franchise\"\ntax_id = \"1234567890123\"\n",
        )
        .replace(
            "timezone = \"UTC\"\n",
            "timezone = \"UTC\"\nvat_rate = \"0\"\n",
        )
        .replace("vat_rate = \"5.5\"\n", "");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &text);
    let billing = Billing::from_config(&c).expect("rules").expect("billing");
    let mut l = open(&c);
    l.commit(&session("laser-1", 1, ALICE, "2026-11-03T09:00:00Z", 1_800))
        .expect("commit");
    let r = l
        .issue_invoices(
            &billing,
            Period::parse("2026-11").expect("p"),
            ms("2026-12-02T10:00:00Z"),
            false,
        )
        .expect("issue");
    let d = &r.invoices[0];
    assert_eq!(d.totals.vat_cents, 0);
    let xml = String::from_utf8(cii_xml(d).expect("xml")).expect("utf-8");
    assert!(xml.contains("<ram:CategoryCode>E</ram:CategoryCode>"));
    assert!(xml.contains("<ram:ExemptionReasonCode>VATEX-FR-FRANCHISE</ram:ExemptionReasonCode>"));
    assert!(xml.contains("TVA non applicable, art. 293 B du CGI"));
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let files = write_all(&out, &r.invoices);
    let (code, text) = validate(&files);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn missing_or_wrong_identities_are_config_errors_naming_the_key() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            site_text().replace("siret = \"732 829 320 00074\"\n", ""),
            "billing.seller.siren",
            "required",
        ),
        (
            site_text().replace("street = \"12 rue des Tanneurs\"\n", ""),
            "billing.seller.street",
            "e.g.",
        ),
        (
            site_text().replace("732 829 320 00074", "732 829 320 00075"),
            "billing.seller.siret",
            "check digit",
        ),
        (
            site_text().replace("FR44732829320", "FR45732829320"),
            "billing.seller.vat_id",
            "should be 44",
        ),
        (
            site_text().replace("siren = \"443061841\"", "siren = \"443061842\""),
            "billing.customers[1].siren",
            "Luhn",
        ),
        (
            site_text().replace("siren = \"443061841\"\n", ""),
            "billing.customers[1].siren",
            "required",
        ),
        (
            site_text().replace("vat_rate = \"5.5\"", "vat_rate = \"7\""),
            "billing.tariffs[1].vat_rate",
            "not a VAT rate of France",
        ),
        (
            site_text().replace(
                "timezone = \"UTC\"\n",
                "timezone = \"UTC\"\nvat_rate = \"0\"\n",
            ),
            "billing.seller.vat_exemption",
            "reason",
        ),
        (
            site_text().replace(
                "[[billing.customers]]\nmember = \"bob\"",
                "[[billing.customers]]\nmember = \"carol\"",
            ),
            "billing.customers",
            "\"bob\" has no billing identity",
        ),
    ];
    for (text, key, problem) in cases {
        let c = Config::from_toml(&text).expect("parses");
        let e = c.validate().expect_err(key).to_string();
        assert!(
            e.contains(&format!("`{key}`")) && e.contains(problem),
            "{key}: {e}"
        );
        assert!(e.contains("for example"), "{e}");
    }
    // Without facturx the same identities are not required.
    let off = site_text()
        .replace("facturx = true\n", "")
        .replace("street = \"12 rue des Tanneurs\"\n", "");
    Config::from_toml(&off)
        .expect("parses")
        .validate()
        .expect("valid without facturx");
}

#[test]
fn the_invoice_command_writes_valid_factur_x_files_and_check_config_names_a_missing_siren() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), &site_text());
    {
        let mut l = open(&c);
        l.commit(&session("laser-1", 1, ALICE, "2026-11-03T09:00:00Z", 1_800))
            .expect("commit");
    }
    let file = dir.path().join("site.toml");
    std::fs::write(&file, c.to_toml()).expect("write config");
    let run = |file: &Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
            .args(args)
            .arg("--config")
            .arg(file)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let out_dir = dir.path().join("out");
    let out = out_dir.to_str().expect("utf-8 path");
    let (ok, stdout, stderr) = run(&file, &["invoice", "--period", "2026-11", "--out", out]);
    assert!(ok && stdout.contains("issued ATL-"), "{stdout}{stderr}");
    let number = stdout
        .split_whitespace()
        .nth(1)
        .expect("a number")
        .to_owned();
    let (ok, stdout, stderr) = run(
        &file,
        &[
            "credit-note",
            "--invoice",
            &number,
            "--reason",
            "test",
            "--out",
            out,
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    let credit = stdout
        .split_whitespace()
        .nth(1)
        .expect("a number")
        .to_owned();
    let files: Vec<PathBuf> = [&number, &credit]
        .iter()
        .flat_map(|n| ["xml", "pdf"].map(|e| out_dir.join(format!("{n}.{e}"))))
        .collect();
    let (code, text) = validate(&files);
    assert_eq!(code, 0, "{text}");
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

    // check-config names the missing key with an example.
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&file)
        .expect("read")
        .replace("siret = \"732 829 320 00074\"\n", "");
    std::fs::write(&bad, text).expect("write");
    let (ok, stdout, stderr) = run(&bad, &["check-config"]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("billing.seller.siren") && stderr.contains("for example"),
        "{stderr}"
    );
}
