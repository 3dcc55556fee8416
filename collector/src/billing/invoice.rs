//! Invoices and credit notes: totals with VAT per rate, the content hash chain, and the exports
//! (JSON, accounting CSV, printable HTML). Storage and numbering are in `ledger/invoices.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::calendar::{Date, Period};
use super::engine::PricedLine;
use super::money::{format_bp, format_cents, format_exact, vat_cents};
use super::tariff::{Accounts, Seller};

/// Invoice or credit note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocKind {
    /// An invoice.
    Invoice,
    /// A credit note (avoir) cancelling an invoice.
    CreditNote,
}

/// The buyer, as printed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buyer {
    /// Member id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Street line (Factur-X; from `[[billing.customers]]`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub street: String,
    /// Postcode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub postcode: String,
    /// City.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub city: String,
    /// Country, ISO 3166-1 alpha-2.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub country: String,
    /// SIREN.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub siren: String,
    /// Intra-EU VAT number.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vat_id: String,
}

/// VAT of one rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VatRow {
    /// Rate, basis points.
    pub rate_bp: u32,
    /// Sum of the line amounts at this rate, cents excl. VAT.
    pub base_cents: i64,
    /// VAT: `base x rate`, rounded half away from zero to the cent.
    pub vat_cents: i64,
}

/// Totals of a set of lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Totals {
    /// Per VAT rate, ascending.
    pub vat: Vec<VatRow>,
    /// Total excl. VAT.
    pub excl_cents: i64,
    /// Total VAT.
    pub vat_cents: i64,
    /// Total incl. VAT.
    pub incl_cents: i64,
}

impl Totals {
    /// Sums lines per VAT rate; VAT is computed per rate on the sum (rule 9).
    pub fn of(lines: &[PricedLine]) -> Totals {
        let mut by_rate: BTreeMap<u32, i64> = BTreeMap::new();
        for l in lines {
            *by_rate.entry(l.vat_bp).or_default() += l.amount_cents;
        }
        let vat: Vec<VatRow> = by_rate
            .into_iter()
            .map(|(rate_bp, base_cents)| VatRow {
                rate_bp,
                base_cents,
                vat_cents: vat_cents(base_cents, rate_bp),
            })
            .collect();
        let excl_cents = vat.iter().map(|r| r.base_cents).sum();
        let vat_total = vat.iter().map(|r| r.vat_cents).sum();
        Totals {
            vat,
            excl_cents,
            vat_cents: vat_total,
            incl_cents: excl_cents + vat_total,
        }
    }
}

/// An issued document. Once stored it never changes; [`Invoice::hash`] covers every other field,
/// including [`Invoice::prev_hash`], the hash of the site's previous document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Number, e.g. `ATL-2026-000123`: per site and year, without gaps.
    pub number: String,
    /// Invoice or credit note.
    pub kind: DocKind,
    /// Site id.
    pub site: String,
    /// The period billed.
    pub period: Period,
    /// Issue date (local).
    pub issue_date: Date,
    /// Issue instant, UTC ms.
    pub issued_ms: u64,
    /// The seller.
    pub seller: Seller,
    /// The buyer.
    pub buyer: Buyer,
    /// Currency (EUR).
    pub currency: String,
    /// The lines.
    pub lines: Vec<PricedLine>,
    /// Totals.
    pub totals: Totals,
    /// Prepaid credit used, cents incl. VAT.
    pub prepaid_cents: i64,
    /// Left to pay, cents incl. VAT.
    pub due_cents: i64,
    /// The invoice a credit note cancels.
    pub refers_to: Option<String>,
    /// The issue date of the invoice a credit note cancels (EN 16931 BT-26). Absent from credit
    /// notes issued before it was recorded, whose stored JSON (and so hash) has no such field:
    /// they stay as issued and their XML has BT-25 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refers_to_date: Option<Date>,
    /// Why (credit notes).
    pub reason: Option<String>,
    /// Hash of the previous document of the site (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) of this document with `hash` empty.
    pub hash: String,
}

/// Hash of the first document's predecessor.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Invoice {
    /// The content hash: SHA-256 of the JSON of the document with an empty `hash`.
    pub fn content_hash(&self) -> String {
        let mut copy = self.clone();
        copy.hash = String::new();
        let bytes = serde_json::to_vec(&copy).unwrap_or_default();
        hex(&Sha256::digest(&bytes))
    }

    /// Sets `prev_hash` and `hash`.
    pub fn seal(&mut self, prev_hash: &str) {
        self.prev_hash = prev_hash.to_owned();
        self.hash = self.content_hash();
    }

    /// Whether the stored hash matches the content.
    pub fn hash_ok(&self) -> bool {
        self.hash == self.content_hash()
    }

    /// The credit note cancelling this invoice: every line negated, the same VAT rates.
    pub fn credit_note(
        &self,
        number: String,
        issued_ms: u64,
        issue_date: Date,
        reason: &str,
    ) -> Invoice {
        let lines: Vec<PricedLine> = self
            .lines
            .iter()
            .map(|l| {
                let mut n = l.clone();
                n.amount_cents = -l.amount_cents;
                n.exact = super::money::Exact(-l.exact.0);
                for p in &mut n.parts {
                    p.exact = super::money::Exact(-p.exact.0);
                }
                n
            })
            .collect();
        let totals = Totals::of(&lines);
        Invoice {
            number,
            kind: DocKind::CreditNote,
            site: self.site.clone(),
            period: self.period,
            issue_date,
            issued_ms,
            seller: self.seller.clone(),
            buyer: self.buyer.clone(),
            currency: self.currency.clone(),
            due_cents: -self.due_cents,
            prepaid_cents: -self.prepaid_cents,
            totals,
            lines,
            refers_to: Some(self.number.clone()),
            refers_to_date: Some(self.issue_date),
            reason: Some(reason.to_owned()),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// The document as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Header of [`accounting_csv`].
pub const CSV_HEADER: &str =
    "journal,date,number,kind,member,account,label,vat_rate,debit,credit\n";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The accounting export of documents: balanced journal entries (sales journal `VT`), one row per
/// account: customer (debit, incl. VAT), sales per account and VAT rate (credit, excl. VAT), VAT
/// collected per rate (credit), and prepaid credit used. A credit note swaps debit and credit.
pub fn accounting_csv(docs: &[Invoice], accounts: &Accounts) -> String {
    let mut out = String::from(CSV_HEADER);
    for d in docs {
        let kind = match d.kind {
            DocKind::Invoice => "invoice",
            DocKind::CreditNote => "credit_note",
        };
        let mut row = |account: &str, label: &str, rate: Option<u32>, debit: i64| {
            let (dr, cr) = if debit >= 0 { (debit, 0) } else { (0, -debit) };
            out.push_str(&format!(
                "VT,{},{},{},{},{},{},{},{},{}\n",
                d.issue_date,
                d.number,
                kind,
                csv_field(&d.buyer.id),
                csv_field(account),
                csv_field(label),
                rate.map(format_bp).unwrap_or_default(),
                format_cents(dr),
                format_cents(cr)
            ));
        };
        row(
            &accounts.customers,
            &d.buyer.name,
            None,
            d.totals.incl_cents,
        );
        let mut sales: BTreeMap<(String, u32), i64> = BTreeMap::new();
        for l in &d.lines {
            *sales.entry((l.account.clone(), l.vat_bp)).or_default() += l.amount_cents;
        }
        for ((account, rate), cents) in sales {
            row(&account, "sales", Some(rate), -cents);
        }
        for v in &d.totals.vat {
            row(
                &accounts.vat,
                "VAT collected",
                Some(v.rate_bp),
                -v.vat_cents,
            );
        }
        if d.prepaid_cents != 0 {
            row(
                &accounts.prepaid,
                "prepaid credit used",
                None,
                d.prepaid_cents,
            );
            row(
                &accounts.customers,
                "paid by prepaid credit",
                None,
                -d.prepaid_cents,
            );
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A printable HTML document (A4, print to PDF from a browser).
pub fn to_html(d: &Invoice) -> String {
    let title = match d.kind {
        DocKind::Invoice => "Facture / Invoice",
        DocKind::CreditNote => "Avoir / Credit note",
    };
    let mut rows = String::new();
    for l in &d.lines {
        let mut detail = String::new();
        for p in &l.parts {
            detail.push_str(&format!(
                "<div class=part>{} : {} x {} = {}</div>",
                esc(&p.what),
                p.quantity,
                format_exact(p.unit_price),
                format_exact(p.exact)
            ));
        }
        let sessions: Vec<String> = l.sessions.iter().map(ToString::to_string).collect();
        rows.push_str(&format!(
            "<tr><td>{}{}{}<div class=s>sessions: {}</div></td><td>{}</td><td class=n>{}</td><td class=n>{} %</td></tr>\n",
            if l.late { "<b>[late / retard]</b> " } else { "" },
            esc(&l.description),
            detail,
            esc(&sessions.join(", ")),
            l.day,
            format_cents(l.amount_cents),
            format_bp(l.vat_bp),
        ));
    }
    let mut vat = String::new();
    for v in &d.totals.vat {
        vat.push_str(&format!(
            "<tr><td>TVA {} % sur {}</td><td class=n>{}</td></tr>",
            format_bp(v.rate_bp),
            format_cents(v.base_cents),
            format_cents(v.vat_cents)
        ));
    }
    let refers = d
        .refers_to
        .as_ref()
        .map(|r| {
            format!(
                "<p>Annule la facture / cancels invoice <b>{}</b>{}: {}</p>",
                esc(r),
                d.refers_to_date
                    .map(|t| format!(" du / of {t}"))
                    .unwrap_or_default(),
                esc(d.reason.as_deref().unwrap_or(""))
            )
        })
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>{title} {number}</title>
<style>
body{{font-family:sans-serif;font-size:11pt;margin:2cm}} table{{border-collapse:collapse;width:100%}}
td,th{{border-bottom:1px solid #ccc;padding:4px;vertical-align:top}} .n{{text-align:right;white-space:nowrap}}
.part,.s{{font-size:9pt;color:#555}} .parties{{display:flex;justify-content:space-between}}
@page{{size:A4;margin:1.5cm}}
</style></head><body>
<h1>{title} {number}</h1>
<p>Date : {date} &middot; Période / period : {period}</p>
{refers}
<div class=parties><div><b>{seller}</b><br>{seller_addr}<br>SIRET {siret}<br>TVA {vat_id}</div>
<div><b>{buyer}</b><br>{buyer_addr}<br>({buyer_id})</div></div>
<table><tr><th>Désignation / description</th><th>Jour</th><th class=n>Montant HT (EUR)</th><th class=n>TVA</th></tr>
{rows}</table>
<table style="width:50%;margin-left:50%;margin-top:1em">
<tr><td>Total HT</td><td class=n>{excl}</td></tr>
{vat}
<tr><td><b>Total TTC</b></td><td class=n><b>{incl}</b></td></tr>
<tr><td>Crédit prépayé / prepaid</td><td class=n>{prepaid}</td></tr>
<tr><td><b>Net à payer / due</b></td><td class=n><b>{due}</b></td></tr>
</table>
<p class=s>Empreinte / hash {hash} (précédent / previous {prev})</p>
</body></html>
"#,
        number = esc(&d.number),
        date = d.issue_date,
        period = d.period,
        seller = esc(&d.seller.name),
        seller_addr = esc(&d.seller.address).replace('\n', "<br>"),
        siret = esc(&d.seller.siret),
        vat_id = esc(&d.seller.vat_id),
        buyer = esc(&d.buyer.name),
        buyer_addr = esc(&d.buyer.address).replace('\n', "<br>"),
        buyer_id = esc(&d.buyer.id),
        excl = format_cents(d.totals.excl_cents),
        incl = format_cents(d.totals.incl_cents),
        prepaid = format_cents(d.prepaid_cents),
        due = format_cents(d.due_cents),
        hash = d.hash,
        prev = d.prev_hash,
    )
}

/// Prepaid credit applied to a total incl. VAT: (used, left to pay). Credit is an advance
/// payment: it never changes prices or VAT (rule 11).
pub fn apply_prepaid(incl_cents: i64, available_cents: i64) -> (i64, i64) {
    let used = available_cents.clamp(0, incl_cents.max(0));
    (used, incl_cents - used)
}

/// What issuing needs besides the ledger: the site, its parsed rules and configuration, and the
/// members' names.
#[derive(Debug, Clone)]
pub struct Billing {
    /// Site id.
    pub site: String,
    /// Parsed rules.
    pub rules: super::tariff::BillingRules,
    /// The `[billing]` section as configured.
    pub config: super::tariff::BillingConfig,
    /// Member id to name.
    pub members: BTreeMap<String, String>,
}

impl Billing {
    /// From the site configuration; `Ok(None)` without a `[billing]` section.
    pub fn from_config(
        c: &crate::config::Config,
    ) -> Result<Option<Billing>, crate::config::ConfigError> {
        let Some(rules) = c.billing_rules()? else {
            return Ok(None);
        };
        let Some(config) = c.billing.clone() else {
            return Ok(None);
        };
        Ok(Some(Billing {
            site: c.site.id.clone(),
            rules,
            config,
            members: c
                .members
                .iter()
                .map(|m| {
                    (
                        m.id.clone(),
                        if m.name.is_empty() {
                            m.id.clone()
                        } else {
                            m.name.clone()
                        },
                    )
                })
                .collect(),
        }))
    }

    /// The buyer block of a member, with its `[[billing.customers]]` identity when configured.
    pub fn buyer(&self, member: &str) -> Buyer {
        let customer = self.config.customers.iter().find(|c| c.member == member);
        let name = self
            .members
            .get(member)
            .cloned()
            .unwrap_or_else(|| member.to_owned());
        let mut address = self
            .config
            .memberships
            .iter()
            .filter(|m| m.member == member && !m.address.is_empty())
            .max_by_key(|m| m.valid_from)
            .map(|m| m.address.clone())
            .unwrap_or_default();
        let Some(c) = customer else {
            return Buyer {
                id: member.to_owned(),
                name,
                address,
                ..Buyer::default()
            };
        };
        if address.is_empty() {
            address = format!("{}\n{} {}", c.street, c.postcode, c.city);
        }
        Buyer {
            id: member.to_owned(),
            name: if c.name.is_empty() {
                name
            } else {
                c.name.clone()
            },
            address,
            street: c.street.clone(),
            postcode: c.postcode.clone(),
            city: c.city.clone(),
            country: c.country.clone(),
            siren: super::identity::compacted(&c.siren),
            vat_id: super::identity::compacted(&c.vat_id),
        }
    }

    /// A document number: `{prefix}-{year}-{seq:06}`.
    pub fn number(&self, year: i32, seq: u32) -> String {
        format!("{}-{year}-{seq:06}", self.config.invoice_prefix)
    }
}

/// A member's usage and charges so far in a period (nothing stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Member id.
    pub member: String,
    /// The period.
    pub period: Period,
    /// When computed, UTC ms.
    pub now_ms: u64,
    /// Sessions priced (open ones included, as far as they ran).
    pub sessions: usize,
    /// Busy seconds.
    pub busy_s: u64,
    /// Idle seconds.
    pub idle_s: u64,
    /// Allowance minutes used per tariff.
    pub allowance_used: BTreeMap<String, u64>,
    /// The priced lines.
    pub lines: Vec<PricedLine>,
    /// Totals so far.
    pub totals: Totals,
    /// Always true: an estimate until the period is invoiced.
    pub provisional: bool,
}

/// The statement of `member` for `period` from its sessions (pure).
pub fn statement(
    billing: &Billing,
    member: &str,
    period: Period,
    sessions: &[super::engine::BillableSession],
    now_ms: u64,
) -> Statement {
    let p = super::engine::price(
        &billing.rules,
        member,
        period,
        sessions,
        &std::collections::BTreeSet::new(),
    );
    let priced = p.sessions();
    let mine: Vec<_> = super::engine::canonical(sessions)
        .into_iter()
        .filter(|s| priced.contains(&s.key))
        .collect();
    Statement {
        member: member.to_owned(),
        period,
        now_ms,
        sessions: mine.len(),
        busy_s: mine.iter().map(|s| u64::from(s.busy_s)).sum(),
        idle_s: mine.iter().map(|s| u64::from(s.idle_s)).sum(),
        allowance_used: p.allowance_used.clone(),
        totals: Totals::of(&p.lines),
        lines: p.lines,
        provisional: true,
    }
}
