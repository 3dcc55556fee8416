//! The Factur-X PDF of an issued document: PDF/A-3 (level B) with the EN 16931 CII XML embedded
//! as `factur-x.xml` (associated file, `/AFRelationship /Data`), XMP metadata with the Factur-X
//! extension schema (`fx:`), an sRGB output intent and an embedded font (DejaVu Sans, shipped in
//! `collector/assets/fonts`, so every build renders the same bytes).
//!
//! Like the XML, the PDF is a pure function of the stored document: no clock, no random file id
//! (the trailer id is derived from the document hash), so regenerating it gives the same bytes.

use pdf_writer::types::{AssociationKind, OutputIntentSubtype};
use pdf_writer::{Content, Date as PdfDate, Filter, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use quick_xml::events::{BytesPI, BytesText, Event};
use quick_xml::Writer;
use sha2::{Digest, Sha256};

use super::facturx::{cii_xml, FacturxError, DEFAULT_PAYMENT_TERMS};
use super::identity::FRANCHISE_MENTION;
use super::invoice::{DocKind, Invoice};
use super::money::{format_bp, format_cents};

/// The embedded font (DejaVu Sans 2.37, free license: `assets/fonts/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT_NAME: &[u8] = b"DejaVuSans";

/// The name of the embedded XML, as Factur-X requires.
pub const XML_NAME: &str = "factur-x.xml";

/// Windows-1252 bytes 0x80..0x9F (the font's WinAnsiEncoding); `None`: unassigned.
const CP1252_HIGH: [Option<char>; 32] = [
    Some('€'),
    None,
    Some('‚'),
    Some('ƒ'),
    Some('„'),
    Some('…'),
    Some('†'),
    Some('‡'),
    Some('ˆ'),
    Some('‰'),
    Some('Š'),
    Some('‹'),
    Some('Œ'),
    None,
    Some('Ž'),
    None,
    None,
    Some('‘'),
    Some('’'),
    Some('“'),
    Some('”'),
    Some('•'),
    Some('–'),
    Some('—'),
    Some('˜'),
    Some('™'),
    Some('š'),
    Some('›'),
    Some('œ'),
    None,
    Some('ž'),
    Some('Ÿ'),
];

fn decode(byte: u8) -> Option<char> {
    match byte {
        0x80..=0x9F => CP1252_HIGH[usize::from(byte - 0x80)],
        _ => Some(char::from(byte)),
    }
}

/// Text as WinAnsi bytes; a character outside it becomes `?`.
fn encode(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match u32::from(c) {
            0x20..=0x7E | 0xA0..=0xFF => c as u8,
            _ => CP1252_HIGH
                .iter()
                .position(|&x| x == Some(c))
                .map(|i| 0x80 + i as u8)
                .unwrap_or(b'?'),
        })
        .collect()
}

/// Font metrics in 1/1000 em: widths of bytes 32..=255, bbox, ascent, descent, cap height.
struct Metrics {
    widths: Vec<f32>,
    bbox: Rect,
    ascent: f32,
    descent: f32,
    cap: f32,
}

/// The font's metrics and its deflated program, computed once per process.
fn font() -> &'static (Metrics, Vec<u8>) {
    static FONT_DATA: std::sync::OnceLock<(Metrics, Vec<u8>)> = std::sync::OnceLock::new();
    FONT_DATA.get_or_init(|| {
        (
            metrics(),
            miniz_oxide::deflate::compress_to_vec_zlib(FONT, 6),
        )
    })
}

fn metrics() -> Metrics {
    // The font is part of the binary: it parses, or the build is broken (a test renders it).
    let face = ttf_parser::Face::parse(FONT, 0).expect("the embedded font parses");
    let upem = f32::from(face.units_per_em());
    let scale = |v: i16| (f32::from(v) * 1000.0 / upem).round();
    let advance = |g: ttf_parser::GlyphId| {
        (f32::from(face.glyph_hor_advance(g).unwrap_or(0)) * 1000.0 / upem).round()
    };
    let widths = (32u8..=255)
        .map(|b| {
            let g = decode(b)
                .and_then(|c| face.glyph_index(c))
                .unwrap_or(ttf_parser::GlyphId(0));
            advance(g)
        })
        .collect();
    let bb = face.global_bounding_box();
    Metrics {
        widths,
        bbox: Rect::new(
            scale(bb.x_min),
            scale(bb.y_min),
            scale(bb.x_max),
            scale(bb.y_max),
        ),
        ascent: scale(face.ascender()),
        descent: scale(face.descender()),
        cap: scale(face.capital_height().unwrap_or(face.ascender())),
    }
}

/// Width of `text` at `size` points.
fn width(m: &Metrics, text: &[u8], size: f32) -> f32 {
    text.iter()
        .map(|&b| {
            m.widths
                .get(usize::from(b.max(32) - 32))
                .copied()
                .unwrap_or(0.0)
        })
        .sum::<f32>()
        * size
        / 1000.0
}

/// A page being laid out, top to bottom.
struct Pages<'m> {
    m: &'m Metrics,
    done: Vec<Vec<u8>>,
    c: Content,
    y: f32,
}

const LEFT: f32 = 50.0;
const RIGHT: f32 = 545.0;
const TOP: f32 = 792.0;
const BOTTOM: f32 = 60.0;

impl<'m> Pages<'m> {
    fn new(m: &'m Metrics) -> Self {
        Pages {
            m,
            done: Vec::new(),
            c: Content::new(),
            y: TOP,
        }
    }

    fn text_at(&mut self, x: f32, size: f32, s: &str) {
        let bytes = encode(s);
        self.c
            .begin_text()
            .set_font(Name(b"F1"), size)
            .next_line(x, self.y)
            .show(Str(&bytes))
            .end_text();
    }

    fn right_at(&mut self, x: f32, size: f32, s: &str) {
        let w = width(self.m, &encode(s), size);
        self.text_at(x - w, size, s);
    }

    /// Moves down `dy`, starting a new page when the bottom margin is reached.
    fn down(&mut self, dy: f32) {
        self.y -= dy;
        if self.y < BOTTOM {
            let full = std::mem::replace(&mut self.c, Content::new());
            self.done.push(full.finish());
            self.y = TOP - dy;
        }
    }

    /// A paragraph wrapped to the page width.
    fn para(&mut self, size: f32, s: &str) {
        let mut line = String::new();
        for word in s.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_owned()
            } else {
                format!("{line} {word}")
            };
            if width(self.m, &encode(&candidate), size) > RIGHT - LEFT && !line.is_empty() {
                self.text_at(LEFT, size, &line);
                self.down(size * 1.3);
                line = word.to_owned();
            } else {
                line = candidate;
            }
        }
        if !line.is_empty() {
            self.text_at(LEFT, size, &line);
            self.down(size * 1.3);
        }
    }

    /// Truncates `s` to fit `max` points at `size`.
    fn fit(&self, s: &str, size: f32, max: f32) -> String {
        let mut out = s.to_owned();
        while width(self.m, &encode(&out), size) > max && !out.is_empty() {
            out.pop();
        }
        if out.len() < s.len() {
            out.pop();
            out.push('…');
        }
        out
    }

    fn rule(&mut self) {
        self.c
            .set_line_width(0.5)
            .move_to(LEFT, self.y + 4.0)
            .line_to(RIGHT, self.y + 4.0)
            .stroke();
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        self.done.push(self.c.finish());
        self.done
    }
}

fn address_lines(street: &str, postcode: &str, city: &str, country: &str) -> Vec<String> {
    vec![
        street.to_owned(),
        format!("{postcode} {city}"),
        if country.is_empty() {
            "FR".into()
        } else {
            country.to_owned()
        },
    ]
}

/// The page contents of a document (A4, one column of lines, totals, mentions).
fn layout(d: &Invoice, m: &Metrics) -> Vec<Vec<u8>> {
    let mut p = Pages::new(m);
    let credit = d.kind == DocKind::CreditNote;
    let sign: i64 = if credit { -1 } else { 1 };
    let title = if credit {
        "Avoir / Credit note"
    } else {
        "Facture / Invoice"
    };
    p.text_at(LEFT, 18.0, &format!("{title} {}", d.number));
    p.down(22.0);
    p.text_at(
        LEFT,
        10.0,
        &format!("Date : {} · Période / period : {}", d.issue_date, d.period),
    );
    p.down(14.0);
    if let Some(r) = &d.refers_to {
        p.para(
            10.0,
            &format!(
                "Annule la facture / cancels invoice {r}{} : {}",
                d.refers_to_date
                    .map(|t| format!(" du / of {t}"))
                    .unwrap_or_default(),
                d.reason.as_deref().unwrap_or("")
            ),
        );
    }
    p.down(8.0);
    let s = &d.seller;
    let b = &d.buyer;
    let mut left = vec![s.name.clone()];
    left.extend(address_lines(&s.street, &s.postcode, &s.city, &s.country));
    left.push(format!(
        "SIREN {}",
        super::identity::seller_siren(s).unwrap_or_default()
    ));
    if !s.vat_id.is_empty() {
        left.push(format!("TVA {}", s.vat_id));
    }
    let mut right = vec![b.name.clone()];
    right.extend(address_lines(&b.street, &b.postcode, &b.city, &b.country));
    right.push(format!("SIREN {}", b.siren));
    if !b.vat_id.is_empty() {
        right.push(format!("TVA {}", b.vat_id));
    }
    for i in 0..left.len().max(right.len()) {
        if let Some(l) = left.get(i) {
            let l = p.fit(l, 10.0, 230.0);
            p.text_at(LEFT, 10.0, &l);
        }
        if let Some(r) = right.get(i) {
            let r = p.fit(r, 10.0, 230.0);
            p.text_at(315.0, 10.0, &r);
        }
        p.down(13.0);
    }
    p.down(10.0);
    p.text_at(LEFT, 9.0, "Désignation (prestations de services)");
    p.text_at(360.0, 9.0, "Jour");
    p.right_at(490.0, 9.0, "HT (EUR)");
    p.right_at(RIGHT, 9.0, "TVA");
    p.down(4.0);
    p.rule();
    p.down(10.0);
    for l in &d.lines {
        let desc = if l.late {
            format!("[retard] {}", l.description)
        } else {
            l.description.clone()
        };
        let desc = p.fit(&desc, 9.0, 300.0);
        p.text_at(LEFT, 9.0, &desc);
        p.text_at(360.0, 9.0, &l.day.to_string());
        p.right_at(490.0, 9.0, &format_cents(sign * l.amount_cents));
        p.right_at(RIGHT, 9.0, &format!("{} %", format_bp(l.vat_bp)));
        p.down(12.0);
    }
    p.rule();
    p.down(12.0);
    let t = &d.totals;
    let mut totals = vec![("Total HT".to_owned(), sign * t.excl_cents)];
    for v in &t.vat {
        totals.push((
            format!(
                "TVA {} % sur {}",
                format_bp(v.rate_bp),
                format_cents(sign * v.base_cents)
            ),
            sign * v.vat_cents,
        ));
    }
    totals.push(("Total TTC".into(), sign * t.incl_cents));
    totals.push(("Acompte / prepaid".into(), sign * d.prepaid_cents));
    totals.push(("Net à payer / due".into(), sign * d.due_cents));
    for (label, cents) in totals {
        p.text_at(330.0, 10.0, &label);
        p.right_at(RIGHT, 10.0, &format_cents(cents));
        p.down(13.0);
    }
    p.down(8.0);
    if s.vat_regime == "franchise" {
        p.para(10.0, FRANCHISE_MENTION);
    } else if t.vat.iter().any(|v| v.rate_bp == 0) && !s.vat_exemption.is_empty() {
        p.para(9.0, &s.vat_exemption);
    }
    let terms = if s.payment_terms.is_empty() {
        DEFAULT_PAYMENT_TERMS
    } else {
        &s.payment_terms
    };
    p.para(9.0, terms);
    p.down(6.0);
    p.para(7.0, &format!("Empreinte / hash {}", d.hash));
    p.finish()
}

/// A v2 sRGB display profile (IEC 61966-2.1 primaries adapted to D50, the sRGB curve sampled at
/// 1024 points), built here so the output intent needs no file from the system.
pub fn srgb_icc() -> Vec<u8> {
    fn s15(v: f64) -> [u8; 4] {
        ((v * 65536.0).round() as i32).to_be_bytes()
    }
    fn xyz(x: f64, y: f64, z: f64) -> Vec<u8> {
        let mut t = b"XYZ \0\0\0\0".to_vec();
        for v in [x, y, z] {
            t.extend(s15(v));
        }
        t
    }
    let mut desc = b"desc\0\0\0\0".to_vec();
    let name = b"sRGB IEC61966-2.1\0";
    desc.extend((name.len() as u32).to_be_bytes());
    desc.extend(name);
    desc.extend([0u8; 4 + 4 + 2 + 1 + 67]);
    let mut cprt = b"text\0\0\0\0".to_vec();
    cprt.extend(b"No copyright, use freely\0");
    let mut curv = b"curv\0\0\0\0".to_vec();
    let n = 1024u32;
    curv.extend(n.to_be_bytes());
    for i in 0..n {
        let x = f64::from(i) / f64::from(n - 1);
        let y = if x <= 0.04045 {
            x / 12.92
        } else {
            ((x + 0.055) / 1.055).powf(2.4)
        };
        curv.extend(((y * 65535.0).round() as u16).to_be_bytes());
    }
    let tags: Vec<(&[u8; 4], Vec<u8>)> = vec![
        (b"desc", desc),
        (b"cprt", cprt),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curv),
    ];
    let count = tags.len() + 2; // gTRC and bTRC share rTRC's data
    let mut offset = 128 + 4 + 12 * count;
    let mut table = Vec::new();
    let mut data = Vec::new();
    let mut trc = (0, 0);
    for (sig, body) in &tags {
        table.push((**sig, offset, body.len()));
        if *sig == b"rTRC" {
            trc = (offset, body.len());
        }
        data.extend(body);
        while data.len() % 4 != 0 {
            data.push(0);
        }
        offset = 128 + 4 + 12 * count + data.len();
    }
    table.push((*b"gTRC", trc.0, trc.1));
    table.push((*b"bTRC", trc.0, trc.1));
    let size = 128 + 4 + 12 * count + data.len();
    let mut h = Vec::with_capacity(size);
    h.extend((size as u32).to_be_bytes());
    h.extend([0u8; 4]);
    h.extend(0x0210_0000u32.to_be_bytes());
    h.extend(b"mntrRGB XYZ ");
    for v in [2026u16, 1, 1, 0, 0, 0] {
        h.extend(v.to_be_bytes());
    }
    h.extend(b"acsp");
    h.extend([0u8; 4 + 4 + 4 + 4 + 8 + 4]);
    h.extend(s15(0.9642));
    h.extend(s15(1.0));
    h.extend(s15(0.8249));
    h.extend([0u8; 4 + 16 + 28]);
    h.extend((count as u32).to_be_bytes());
    for (sig, off, len) in table {
        h.extend(sig);
        h.extend((off as u32).to_be_bytes());
        h.extend((len as u32).to_be_bytes());
    }
    h.extend(data);
    h
}

/// An element with attributes and inner content.
fn tag(
    w: &mut Writer<Vec<u8>>,
    name: &str,
    attrs: &[(&str, &str)],
    f: impl FnOnce(&mut Writer<Vec<u8>>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    w.create_element(name)
        .with_attributes(attrs.iter().copied())
        .write_inner_content(f)?;
    Ok(())
}

/// The XMP packet: PDF/A-3B identification, title, producer, dates and the Factur-X properties
/// with their PDF/A extension schema description.
fn xmp(d: &Invoice, date: &str) -> Vec<u8> {
    type W = Writer<Vec<u8>>;
    fn el(w: &mut W, name: &str, v: &str) -> std::io::Result<()> {
        w.create_element(name)
            .write_text_content(BytesText::new(v))?;
        Ok(())
    }
    fn property(w: &mut W, name: &str, what: &str) -> std::io::Result<()> {
        tag(w, "rdf:li", &[("rdf:parseType", "Resource")], |w| {
            el(w, "pdfaProperty:name", name)?;
            el(w, "pdfaProperty:valueType", "Text")?;
            el(w, "pdfaProperty:category", "external")?;
            el(w, "pdfaProperty:description", what)
        })
    }
    let title = format!(
        "{} {}",
        if d.kind == DocKind::CreditNote {
            "Avoir"
        } else {
            "Facture"
        },
        d.number
    );
    let fx_ns = "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#";
    let description = [
        ("rdf:about", ""),
        ("xmlns:pdfaid", "http://www.aiim.org/pdfa/ns/id/"),
        ("xmlns:dc", "http://purl.org/dc/elements/1.1/"),
        ("xmlns:pdf", "http://ns.adobe.com/pdf/1.3/"),
        ("xmlns:xmp", "http://ns.adobe.com/xap/1.0/"),
        ("xmlns:fx", fx_ns),
    ];
    let extension = [
        ("rdf:about", ""),
        (
            "xmlns:pdfaExtension",
            "http://www.aiim.org/pdfa/ns/extension/",
        ),
        ("xmlns:pdfaSchema", "http://www.aiim.org/pdfa/ns/schema#"),
        (
            "xmlns:pdfaProperty",
            "http://www.aiim.org/pdfa/ns/property#",
        ),
    ];
    let properties = |w: &mut W| -> std::io::Result<()> {
        el(w, "pdfaid:part", "3")?;
        el(w, "pdfaid:conformance", "B")?;
        tag(w, "dc:title", &[], |w| {
            tag(w, "rdf:Alt", &[], |w| {
                w.create_element("rdf:li")
                    .with_attribute(("xml:lang", "x-default"))
                    .write_text_content(BytesText::new(&title))?;
                Ok(())
            })
        })?;
        el(w, "pdf:Producer", "fabmeter")?;
        el(w, "xmp:CreatorTool", "fabmeter")?;
        el(w, "xmp:CreateDate", date)?;
        el(w, "xmp:ModifyDate", date)?;
        el(w, "fx:DocumentType", "INVOICE")?;
        el(w, "fx:DocumentFileName", XML_NAME)?;
        el(w, "fx:Version", "1.0")?;
        el(w, "fx:ConformanceLevel", "EN 16931")
    };
    let schema = |w: &mut W| -> std::io::Result<()> {
        el(w, "pdfaSchema:schema", "Factur-X PDFA Extension Schema")?;
        el(w, "pdfaSchema:namespaceURI", fx_ns)?;
        el(w, "pdfaSchema:prefix", "fx")?;
        tag(w, "pdfaSchema:property", &[], |w| {
            tag(w, "rdf:Seq", &[], |w| {
                property(
                    w,
                    "DocumentFileName",
                    "name of the embedded XML invoice file",
                )?;
                property(w, "DocumentType", "INVOICE")?;
                property(
                    w,
                    "Version",
                    "The actual version of the Factur-X XML schema",
                )?;
                property(
                    w,
                    "ConformanceLevel",
                    "The conformance level of the embedded Factur-X data",
                )
            })
        })
    };
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 1);
    let written = (|| -> std::io::Result<()> {
        w.write_event(Event::PI(BytesPI::new(
            "xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"",
        )))?;
        tag(&mut w, "x:xmpmeta", &[("xmlns:x", "adobe:ns:meta/")], |w| {
            let rdf = [("xmlns:rdf", "http://www.w3.org/1999/02/22-rdf-syntax-ns#")];
            tag(w, "rdf:RDF", &rdf, |w| {
                tag(w, "rdf:Description", &description, properties)?;
                tag(w, "rdf:Description", &extension, |w| {
                    tag(w, "pdfaExtension:schemas", &[], |w| {
                        tag(w, "rdf:Bag", &[], |w| {
                            tag(w, "rdf:li", &[("rdf:parseType", "Resource")], schema)
                        })
                    })
                })
            })
        })?;
        w.write_event(Event::PI(BytesPI::new("xpacket end=\"w\"")))
    })();
    // Writing to a Vec cannot fail.
    debug_assert!(written.is_ok());
    w.into_inner()
}

/// The Factur-X PDF/A-3 of an issued document, with its CII XML embedded.
pub fn facturx_pdf(d: &Invoice) -> Result<Vec<u8>, FacturxError> {
    let xml = cii_xml(d)?;
    let (m, packed) = font();
    let pages = layout(d, m);
    let (year, month, day) = (d.issue_date.y, d.issue_date.m, d.issue_date.d);
    let secs = d.issued_ms / 1000 % 86_400;
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let xmp_date = format!("{year:04}-{month:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}Z");
    let pdf_date = PdfDate::new(u16::try_from(year).unwrap_or(2026))
        .month(month)
        .day(day)
        .hour(hh as u8)
        .minute(mm as u8)
        .second(ss as u8)
        .utc_offset_hour(0)
        .utc_offset_minute(0);

    let mut pdf = Pdf::new();
    pdf.set_version(1, 7);
    let mut next = 1;
    let mut id = || {
        let r = Ref::new(next);
        next += 1;
        r
    };
    let catalog = id();
    let pages_id = id();
    let font = id();
    let descriptor = id();
    let font_file = id();
    let icc = id();
    let metadata = id();
    let embedded = id();
    let filespec = id();
    let page_ids: Vec<(Ref, Ref)> = pages.iter().map(|_| (id(), id())).collect();

    let mut cat = pdf.catalog(catalog);
    cat.pages(pages_id).metadata(metadata);
    cat.names()
        .embedded_files()
        .names()
        .insert(Str(XML_NAME.as_bytes()), filespec);
    cat.insert(Name(b"AF")).array().item(filespec);
    cat.output_intents()
        .push()
        .subtype(OutputIntentSubtype::PDFA)
        .output_condition_identifier(TextStr("sRGB IEC61966-2.1"))
        .info(TextStr("sRGB IEC61966-2.1"))
        .dest_output_profile(icc);
    cat.finish();

    pdf.pages(pages_id)
        .kids(page_ids.iter().map(|(p, _)| *p))
        .count(page_ids.len() as i32);
    for ((page, content), bytes) in page_ids.iter().zip(&pages) {
        let mut pg = pdf.page(*page);
        pg.parent(pages_id)
            .media_box(Rect::new(0.0, 0.0, 595.0, 842.0))
            .contents(*content);
        pg.resources().fonts().pair(Name(b"F1"), font);
        pg.finish();
        pdf.stream(*content, bytes);
    }

    pdf.indirect(font)
        .dict()
        .pair(Name(b"Type"), Name(b"Font"))
        .pair(Name(b"Subtype"), Name(b"TrueType"))
        .pair(Name(b"BaseFont"), Name(FONT_NAME))
        .pair(Name(b"FirstChar"), 32)
        .pair(Name(b"LastChar"), 255)
        .pair(Name(b"Encoding"), Name(b"WinAnsiEncoding"))
        .pair(Name(b"FontDescriptor"), descriptor)
        .insert(Name(b"Widths"))
        .array()
        .items(m.widths.iter().copied());
    pdf.font_descriptor(descriptor)
        .name(Name(FONT_NAME))
        .flags(pdf_writer::types::FontFlags::NON_SYMBOLIC)
        .bbox(m.bbox)
        .italic_angle(0.0)
        .ascent(m.ascent)
        .descent(m.descent)
        .cap_height(m.cap)
        .stem_v(80.0)
        .font_file2(font_file);
    pdf.stream(font_file, packed)
        .filter(Filter::FlateDecode)
        .pair(Name(b"Length1"), FONT.len() as i32);

    let profile = srgb_icc();
    pdf.icc_profile(icc, &profile)
        .n(3)
        .range([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);

    let meta = xmp(d, &xmp_date);
    pdf.metadata(metadata, &meta);

    let mut ef = pdf.embedded_file(embedded, &xml);
    ef.subtype(Name(b"text/xml"));
    ef.params()
        .size(xml.len() as i32)
        .modification_date(pdf_date);
    ef.finish();
    pdf.file_spec(filespec)
        .path(Str(XML_NAME.as_bytes()))
        .unic_file(TextStr(XML_NAME))
        .description(TextStr("Factur-X invoice (EN 16931 CII XML)"))
        .association_kind(AssociationKind::Data)
        .embedded_file_with_unicode(embedded);

    let digest = Sha256::digest(d.hash.as_bytes());
    let file_id = digest[..16].to_vec();
    pdf.set_file_id((file_id.clone(), file_id));
    Ok(pdf.finish())
}
