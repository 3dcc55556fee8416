//! The accounting export of a month's documents (docs/BILLING.md "Accounting export"): a CSV with
//! one line per document and VAT rate, and the French FEC layout (art. A47 A-1 du LPF) of the
//! sales journal. Pure functions of the issued documents; the command writes the file atomically.

use std::collections::BTreeMap;

use crate::billing::calendar::Period;
use crate::billing::invoice::{DocKind, Invoice};
use crate::billing::money::{format_bp, format_cents};
use crate::billing::tariff::Accounts;

/// The documents issued in `period` (by their local issue date), in chain order.
pub fn issued_in(docs: Vec<Invoice>, period: Period) -> Vec<Invoice> {
    docs.into_iter()
        .filter(|d| Period::of(d.issue_date) == period)
        .collect()
}

/// Header of [`vat_csv`].
pub const VAT_CSV_HEADER: &str =
    "number,kind,date,period,member,member_name,vat_rate,net,vat,gross,refers_to\n";

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn kind(d: &Invoice) -> &'static str {
    match d.kind {
        DocKind::Invoice => "invoice",
        DocKind::CreditNote => "credit_note",
    }
}

/// One line per document and VAT rate: number, kind, issue date, period billed, member, VAT rate
/// (percent), net, VAT, gross (EUR, `.` decimal); credit notes are negative.
pub fn vat_csv(docs: &[Invoice]) -> String {
    let mut out = String::from(VAT_CSV_HEADER);
    for d in docs {
        for v in &d.totals.vat {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                csv_field(&d.number),
                kind(d),
                d.issue_date,
                d.period,
                csv_field(&d.buyer.id),
                csv_field(&d.buyer.name),
                format_bp(v.rate_bp),
                format_cents(v.base_cents),
                format_cents(v.vat_cents),
                format_cents(v.base_cents + v.vat_cents),
                csv_field(d.refers_to.as_deref().unwrap_or("")),
            ));
        }
    }
    out
}

/// The 18 columns of the FEC, in the order of art. A47 A-1 du LPF.
pub const FEC_COLUMNS: [&str; 18] = [
    "JournalCode",
    "JournalLib",
    "EcritureNum",
    "EcritureDate",
    "CompteNum",
    "CompteLib",
    "CompAuxNum",
    "CompAuxLib",
    "PieceRef",
    "PieceDate",
    "EcritureLib",
    "Debit",
    "Credit",
    "EcritureLet",
    "DateLet",
    "ValidDate",
    "Montantdevise",
    "Idevise",
];

/// The FEC's journal of sales.
pub const JOURNAL: (&str, &str) = ("VT", "Ventes");

/// Cents as the FEC writes amounts: `1234,56`, comma decimal, no thousands separator.
pub fn fec_amount(cents: i64) -> String {
    format_cents(cents).replace('.', ",")
}

/// One FEC line (row of an entry): account, its label, the customer's auxiliary account and name
/// (customer lines only), the entry's label, and the signed amount (positive: debit).
struct FecLine {
    account: String,
    account_label: &'static str,
    aux: Option<(String, String)>,
    label: String,
    debit: i64,
}

/// The balanced entry of one document: customer (411) debit incl. VAT, sales (706, per account
/// and VAT rate) credit excl. VAT, VAT collected (44571, per rate) credit, and the prepaid credit
/// used moved from 419 (debit) to the customer (credit). A credit note is the same entry with
/// debit and credit swapped.
fn entry(d: &Invoice, accounts: &Accounts) -> Vec<FecLine> {
    let what = match d.kind {
        DocKind::Invoice => "Facture",
        DocKind::CreditNote => "Avoir",
    };
    let label = format!("{what} {} {}", d.number, d.buyer.name);
    let customer = || Some((d.buyer.id.clone(), d.buyer.name.clone()));
    let mut lines = vec![FecLine {
        account: accounts.customers.clone(),
        account_label: "Clients",
        aux: customer(),
        label: label.clone(),
        debit: d.totals.incl_cents,
    }];
    let mut sales: BTreeMap<(&str, u32), i64> = BTreeMap::new();
    for l in &d.lines {
        *sales.entry((l.account.as_str(), l.vat_bp)).or_default() += l.amount_cents;
    }
    for ((account, rate), cents) in sales {
        lines.push(FecLine {
            account: account.to_owned(),
            account_label: "Prestations de services",
            aux: None,
            label: format!("{label} HT {} %", format_bp(rate)),
            debit: -cents,
        });
    }
    for v in &d.totals.vat {
        lines.push(FecLine {
            account: accounts.vat.clone(),
            account_label: "TVA collectée",
            aux: None,
            label: format!("{label} TVA {} %", format_bp(v.rate_bp)),
            debit: -v.vat_cents,
        });
    }
    if d.prepaid_cents != 0 {
        lines.push(FecLine {
            account: accounts.prepaid.clone(),
            account_label: "Clients - avances reçues",
            aux: None,
            label: format!("{label} crédit prépayé"),
            debit: d.prepaid_cents,
        });
        lines.push(FecLine {
            account: accounts.customers.clone(),
            account_label: "Clients",
            aux: customer(),
            label: format!("{label} crédit prépayé"),
            debit: -d.prepaid_cents,
        });
    }
    lines
}

fn fec_date(d: crate::billing::Date) -> String {
    format!("{:04}{:02}{:02}", d.y, d.m, d.d)
}

/// A field of the FEC: no separator, tab or line break inside.
fn fec_field(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '|' | '\t' | '\n' | '\r') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// The FEC of the documents (sales journal `VT`), `|`-separated with a header line, as text:
/// one entry per document, `EcritureNum` = the document number (gapless per site and year, so
/// continuous across monthly exports), dates `AAAAMMJJ` (issue date for the entry, the piece and
/// the validation: documents are final when issued), amounts with a comma decimal, each line
/// either a debit or a credit. Encode with [`latin9`] to write the file.
pub fn fec(docs: &[Invoice], accounts: &Accounts) -> String {
    let mut out = FEC_COLUMNS.join("|");
    out.push_str("\r\n");
    for d in docs {
        let date = fec_date(d.issue_date);
        for l in entry(d, accounts) {
            let (debit, credit) = if l.debit >= 0 {
                (l.debit, 0)
            } else {
                (0, -l.debit)
            };
            let (aux, aux_label) = l.aux.unwrap_or_default();
            let row = [
                JOURNAL.0.to_owned(),
                JOURNAL.1.to_owned(),
                fec_field(&d.number),
                date.clone(),
                fec_field(&l.account),
                l.account_label.to_owned(),
                fec_field(&aux),
                fec_field(&aux_label),
                fec_field(&d.number),
                date.clone(),
                fec_field(&l.label),
                fec_amount(debit),
                fec_amount(credit),
                String::new(),
                String::new(),
                date.clone(),
                String::new(),
                String::new(),
            ];
            out.push_str(&row.join("|"));
            out.push_str("\r\n");
        }
    }
    out
}

/// Text as ISO 8859-15 (Latin-9), one of the FEC's encodings: Latin-1 except the 8 code points
/// Latin-9 changed (the euro sign, Š š Ž ž Œ œ Ÿ); characters outside it become `?`.
pub fn latin9(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            '€' => 0xA4,
            'Š' => 0xA6,
            'š' => 0xA8,
            'Ž' => 0xB4,
            'ž' => 0xB8,
            'Œ' => 0xBC,
            'œ' => 0xBD,
            'Ÿ' => 0xBE,
            '\u{A4}' | '\u{A6}' | '\u{A8}' | '\u{B4}' | '\u{B8}' | '\u{BC}' | '\u{BD}'
            | '\u{BE}' => b'?',
            c => u8::try_from(u32::from(c)).unwrap_or(b'?'),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin9_keeps_french_letters_and_the_euro() {
        assert_eq!(latin9("é€Œ|x"), vec![0xE9, 0xA4, 0xBC, b'|', b'x']);
        assert_eq!(latin9("¤✓"), b"??".to_vec());
        assert_eq!(fec_amount(-123_456), "-1234,56");
        assert_eq!(fec_field("a|b\tc"), "a b c");
    }
}
