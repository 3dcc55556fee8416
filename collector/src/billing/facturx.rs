//! Factur-X (profile EN 16931): the CII XML (UN/CEFACT Cross Industry Invoice D16B, as Factur-X
//! 1.0 profiles it) of an issued invoice or credit note, written with an escaping XML writer.
//!
//! The XML is a pure function of the stored document (whose hash covers every field used here):
//! regenerating it gives the same bytes. A document issued before the parties' identities were
//! configured cannot be rendered ([`FacturxError::Missing`]): it stays as issued (JSON, HTML), and
//! a correction is a credit note and a new invoice. Files are written with [`write_new`]: a
//! temporary file renamed into place, never overwriting different bytes.
//!
//! A credit note (TypeCode 381) names the invoice it cancels (BT-25) and, when it recorded it
//! (every credit note issued since it does), that invoice's issue date (BT-26,
//! `FormattedIssueDateTime` with a `qdt:DateTimeString` of format 102).
//!
//! Sign convention: a credit note (TypeCode 381) carries positive amounts, as EN 16931 requires;
//! the stored credit note's lines are negated, so they are negated back. A negative line (a
//! daily-cap adjustment) is a quantity of -1 at a positive net price (BR-27: no negative price).

use std::io;
use std::path::Path;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use super::calendar::Date;
use super::identity::{compacted, seller_siren, FRANCHISE_MENTION};
use super::invoice::{DocKind, Invoice};
use super::money::{format_bp, format_cents};

/// The EN 16931 specification identifier (BT-24) of the Factur-X EN 16931 profile.
pub const GUIDELINE: &str = "urn:cen.eu:en16931:2017";

/// The VATEX code of the French VAT franchise (franchise en base).
pub const VATEX_FRANCHISE: &str = "VATEX-FR-FRANCHISE";

/// Payment terms printed when `billing.seller.payment_terms` is empty.
pub const DEFAULT_PAYMENT_TERMS: &str = "Paiement à réception. Pénalités de retard : trois fois le taux d'intérêt légal ; indemnité forfaitaire pour frais de recouvrement : 40 EUR.";

/// Why a document cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum FacturxError {
    /// A mandatory mention is missing from the stored document.
    #[error("document {number} cannot be issued as Factur-X: {what} is missing (it was issued before billing.facturx identities were configured; see docs/BILLING.md \"Factur-X\")")]
    Missing {
        /// Document number.
        number: String,
        /// Which field.
        what: &'static str,
    },
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The file exists with other bytes: an issued document never changes.
    #[error("{path} exists with other content: an issued document never changes; remove it only if it is not the issued one")]
    Differs {
        /// The file.
        path: String,
    },
}

type W = Writer<Vec<u8>>;

fn text(w: &mut W, name: &str, v: &str) -> io::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(v))?;
    Ok(())
}

fn node(w: &mut W, name: &str, f: impl FnOnce(&mut W) -> io::Result<()>) -> io::Result<()> {
    w.create_element(name).write_inner_content(f)?;
    Ok(())
}

fn with_attr(w: &mut W, name: &str, attr: (&str, &str), v: &str) -> io::Result<()> {
    w.create_element(name)
        .with_attribute(attr)
        .write_text_content(BytesText::new(v))?;
    Ok(())
}

/// A date as format 102 writes it: `YYYYMMDD`.
fn yyyymmdd(d: Date) -> String {
    format!("{:04}{:02}{:02}", d.y, d.m, d.d)
}

fn date(w: &mut W, name: &str, d: Date) -> io::Result<()> {
    node(w, name, |w| {
        with_attr(w, "udt:DateTimeString", ("format", "102"), &yyyymmdd(d))
    })
}

/// A party as the XML needs it.
struct Party<'a> {
    name: &'a str,
    siren: String,
    street: &'a str,
    postcode: &'a str,
    city: &'a str,
    country: &'a str,
    /// (scheme, id): `VA` VAT number, `FC` tax registration.
    tax: Option<(&'static str, String)>,
}

fn party(w: &mut W, name: &str, p: &Party) -> io::Result<()> {
    node(w, name, |w| {
        text(w, "ram:Name", p.name)?;
        node(w, "ram:SpecifiedLegalOrganization", |w| {
            with_attr(w, "ram:ID", ("schemeID", "0002"), &p.siren)
        })?;
        node(w, "ram:PostalTradeAddress", |w| {
            text(w, "ram:PostcodeCode", p.postcode)?;
            text(w, "ram:LineOne", p.street)?;
            text(w, "ram:CityName", p.city)?;
            text(w, "ram:CountryID", p.country)
        })?;
        if let Some((scheme, id)) = &p.tax {
            node(w, "ram:SpecifiedTaxRegistration", |w| {
                with_attr(w, "ram:ID", ("schemeID", scheme), id)
            })?;
        }
        Ok(())
    })
}

fn nonempty<'a>(number: &str, what: &'static str, v: &'a str) -> Result<&'a str, FacturxError> {
    if v.trim().is_empty() {
        Err(FacturxError::Missing {
            number: number.to_owned(),
            what,
        })
    } else {
        Ok(v)
    }
}

/// The VAT category of a rate: `S` (standard) above 0, else `E` (exempt) with its reason and
/// VATEX code (the franchise) or the seller's exemption text.
fn category(d: &Invoice, rate_bp: u32) -> (&'static str, Option<(String, Option<&'static str>)>) {
    if rate_bp > 0 {
        ("S", None)
    } else if d.seller.vat_regime == "franchise" {
        (
            "E",
            Some((FRANCHISE_MENTION.to_owned(), Some(VATEX_FRANCHISE))),
        )
    } else {
        ("E", Some((d.seller.vat_exemption.clone(), None)))
    }
}

/// The EN 16931 CII XML of an issued document (UTF-8, indented).
pub fn cii_xml(d: &Invoice) -> Result<Vec<u8>, FacturxError> {
    let n = d.number.as_str();
    let s = &d.seller;
    let franchise = s.vat_regime == "franchise";
    let seller = Party {
        name: nonempty(n, "billing.seller.name", &s.name)?,
        siren: seller_siren(s).ok_or(FacturxError::Missing {
            number: n.to_owned(),
            what: "billing.seller.siren",
        })?,
        street: nonempty(n, "billing.seller.street", &s.street)?,
        postcode: nonempty(n, "billing.seller.postcode", &s.postcode)?,
        city: nonempty(n, "billing.seller.city", &s.city)?,
        country: if s.country.is_empty() {
            "FR"
        } else {
            &s.country
        },
        tax: if !s.vat_id.is_empty() {
            Some(("VA", compacted(&s.vat_id)))
        } else if !s.tax_id.is_empty() {
            Some(("FC", compacted(&s.tax_id)))
        } else {
            None
        },
    };
    if seller.tax.is_none() && !franchise {
        return Err(FacturxError::Missing {
            number: n.to_owned(),
            what: "billing.seller.vat_id",
        });
    }
    let b = &d.buyer;
    let buyer = Party {
        name: nonempty(n, "the buyer's name", &b.name)?,
        siren: nonempty(n, "billing.customers.siren", &b.siren)?.to_owned(),
        street: nonempty(n, "billing.customers.street", &b.street)?,
        postcode: nonempty(n, "billing.customers.postcode", &b.postcode)?,
        city: nonempty(n, "billing.customers.city", &b.city)?,
        country: if b.country.is_empty() {
            "FR"
        } else {
            &b.country
        },
        tax: (!b.vat_id.is_empty()).then(|| ("VA", b.vat_id.clone())),
    };
    let credit = d.kind == DocKind::CreditNote;
    let sign: i64 = if credit { -1 } else { 1 };
    let first = d
        .lines
        .iter()
        .map(|l| l.day)
        .chain([d.period.first_day()])
        .min_by_key(|x| x.days())
        .unwrap_or(d.period.first_day());
    let last = Date::from_days(d.period.next().first_day().days() - 1);
    let payment_terms = if s.payment_terms.is_empty() {
        DEFAULT_PAYMENT_TERMS
    } else {
        &s.payment_terms
    };
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let io = |e: io::Error| FacturxError::Io {
        path: format!("<{n} XML>"),
        source: e,
    };
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .map_err(io)?;
    w.create_element("rsm:CrossIndustryInvoice")
        .with_attribute((
            "xmlns:rsm",
            "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
        ))
        .with_attribute((
            "xmlns:qdt",
            "urn:un:unece:uncefact:data:standard:QualifiedDataType:100",
        ))
        .with_attribute((
            "xmlns:ram",
            "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
        ))
        .with_attribute((
            "xmlns:udt",
            "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
        ))
        .write_inner_content(|w| {
            node(w, "rsm:ExchangedDocumentContext", |w| {
                node(w, "ram:GuidelineSpecifiedDocumentContextParameter", |w| {
                    text(w, "ram:ID", GUIDELINE)
                })
            })?;
            node(w, "rsm:ExchangedDocument", |w| {
                text(w, "ram:ID", &d.number)?;
                text(w, "ram:TypeCode", if credit { "381" } else { "380" })?;
                date(w, "ram:IssueDateTime", d.issue_date)?;
                if franchise {
                    node(w, "ram:IncludedNote", |w| {
                        text(w, "ram:Content", FRANCHISE_MENTION)
                    })?;
                }
                if let Some(reason) = d.reason.as_deref().filter(|r| !r.is_empty()) {
                    node(w, "ram:IncludedNote", |w| text(w, "ram:Content", reason))?;
                }
                Ok(())
            })?;
            node(w, "rsm:SupplyChainTradeTransaction", |w| {
                for (i, l) in d.lines.iter().enumerate() {
                    let amount = sign * l.amount_cents;
                    let (qty, price) = if amount < 0 {
                        ("-1", -amount)
                    } else {
                        ("1", amount)
                    };
                    let name = if l.late {
                        format!("{} (retard / late)", l.description)
                    } else {
                        l.description.clone()
                    };
                    node(w, "ram:IncludedSupplyChainTradeLineItem", |w| {
                        node(w, "ram:AssociatedDocumentLineDocument", |w| {
                            text(w, "ram:LineID", &(i + 1).to_string())
                        })?;
                        node(w, "ram:SpecifiedTradeProduct", |w| {
                            text(w, "ram:Name", &name)
                        })?;
                        node(w, "ram:SpecifiedLineTradeAgreement", |w| {
                            node(w, "ram:NetPriceProductTradePrice", |w| {
                                text(w, "ram:ChargeAmount", &format_cents(price))
                            })
                        })?;
                        node(w, "ram:SpecifiedLineTradeDelivery", |w| {
                            with_attr(w, "ram:BilledQuantity", ("unitCode", "C62"), qty)
                        })?;
                        node(w, "ram:SpecifiedLineTradeSettlement", |w| {
                            node(w, "ram:ApplicableTradeTax", |w| {
                                text(w, "ram:TypeCode", "VAT")?;
                                text(w, "ram:CategoryCode", category(d, l.vat_bp).0)?;
                                text(w, "ram:RateApplicablePercent", &format_bp(l.vat_bp))
                            })?;
                            node(w, "ram:BillingSpecifiedPeriod", |w| {
                                date(w, "ram:StartDateTime", l.day)?;
                                date(w, "ram:EndDateTime", l.day)
                            })?;
                            node(
                                w,
                                "ram:SpecifiedTradeSettlementLineMonetarySummation",
                                |w| text(w, "ram:LineTotalAmount", &format_cents(amount)),
                            )
                        })
                    })?;
                }
                node(w, "ram:ApplicableHeaderTradeAgreement", |w| {
                    party(w, "ram:SellerTradeParty", &seller)?;
                    party(w, "ram:BuyerTradeParty", &buyer)
                })?;
                w.create_element("ram:ApplicableHeaderTradeDelivery")
                    .write_empty()?;
                node(w, "ram:ApplicableHeaderTradeSettlement", |w| {
                    text(w, "ram:InvoiceCurrencyCode", &d.currency)?;
                    for v in &d.totals.vat {
                        let (cat, exemption) = category(d, v.rate_bp);
                        node(w, "ram:ApplicableTradeTax", |w| {
                            text(w, "ram:CalculatedAmount", &format_cents(sign * v.vat_cents))?;
                            text(w, "ram:TypeCode", "VAT")?;
                            if let Some((reason, _)) = &exemption {
                                text(w, "ram:ExemptionReason", reason)?;
                            }
                            text(w, "ram:BasisAmount", &format_cents(sign * v.base_cents))?;
                            text(w, "ram:CategoryCode", cat)?;
                            if let Some((_, Some(code))) = &exemption {
                                text(w, "ram:ExemptionReasonCode", code)?;
                            }
                            text(w, "ram:RateApplicablePercent", &format_bp(v.rate_bp))
                        })?;
                    }
                    node(w, "ram:BillingSpecifiedPeriod", |w| {
                        date(w, "ram:StartDateTime", first)?;
                        date(w, "ram:EndDateTime", last)
                    })?;
                    node(w, "ram:SpecifiedTradePaymentTerms", |w| {
                        text(w, "ram:Description", payment_terms)
                    })?;
                    node(
                        w,
                        "ram:SpecifiedTradeSettlementHeaderMonetarySummation",
                        |w| {
                            let t = &d.totals;
                            text(w, "ram:LineTotalAmount", &format_cents(sign * t.excl_cents))?;
                            text(
                                w,
                                "ram:TaxBasisTotalAmount",
                                &format_cents(sign * t.excl_cents),
                            )?;
                            with_attr(
                                w,
                                "ram:TaxTotalAmount",
                                ("currencyID", &d.currency),
                                &format_cents(sign * t.vat_cents),
                            )?;
                            text(
                                w,
                                "ram:GrandTotalAmount",
                                &format_cents(sign * t.incl_cents),
                            )?;
                            text(
                                w,
                                "ram:TotalPrepaidAmount",
                                &format_cents(sign * d.prepaid_cents),
                            )?;
                            text(w, "ram:DuePayableAmount", &format_cents(sign * d.due_cents))
                        },
                    )?;
                    if let Some(r) = &d.refers_to {
                        node(w, "ram:InvoiceReferencedDocument", |w| {
                            text(w, "ram:IssuerAssignedID", r)?;
                            if let Some(day) = d.refers_to_date {
                                node(w, "ram:FormattedIssueDateTime", |w| {
                                    with_attr(
                                        w,
                                        "qdt:DateTimeString",
                                        ("format", "102"),
                                        &yyyymmdd(day),
                                    )
                                })?;
                            }
                            Ok(())
                        })?;
                    }
                    Ok(())
                })
            })
        })
        .map_err(io)?;
    let mut out = w.into_inner();
    out.push(b'\n');
    Ok(out)
}

/// Writes `bytes` to `path` atomically (a temporary file in the same directory, synced, then
/// renamed): no half-written document is ever visible. If `path` already holds the same bytes,
/// nothing is done; if it holds other bytes, [`FacturxError::Differs`]: an issued document never
/// changes.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), FacturxError> {
    use std::io::Write;
    let shown = path.display().to_string();
    let io = |e: io::Error| FacturxError::Io {
        path: shown.clone(),
        source: e,
    };
    match std::fs::read(path) {
        Ok(existing) if existing == bytes => return Ok(()),
        Ok(_) => return Err(FacturxError::Differs { path: shown }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir).map_err(io)?;
    let result = tmp
        .1
        .write_all(bytes)
        .and_then(|()| tmp.1.sync_all())
        .and_then(|()| std::fs::rename(&tmp.0, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp.0);
        return Err(io(e));
    }
    Ok(())
}

/// A new file `.{pid}-{n}.tmp` in `dir`, created exclusively.
fn tempfile_in(dir: &Path) -> io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    loop {
        let p = dir.join(format!(
            ".fabmeter-{}-{}.tmp",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}
