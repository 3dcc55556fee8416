//! Legal identities on invoices (French rules): SIREN and SIRET with their Luhn check digit, the
//! intra-EU VAT number with its French key, the VAT rates allowed in France, and the checks
//! `check-config` runs when `[billing] facturx = true` (docs/BILLING.md "Factur-X").

use super::money::parse_rate_bp;
use super::tariff::{BillingConfig, RuleError};

/// The mention a seller under the VAT franchise (franchise en base) prints.
pub const FRANCHISE_MENTION: &str = "TVA non applicable, art. 293 B du CGI";

/// VAT rates allowed in France, basis points: 20 %, 10 %, 5.5 %, 2.1 % and 0 (with an exemption).
pub const FRENCH_RATES_BP: [u32; 5] = [2000, 1000, 550, 210, 0];

/// Whether the digits pass the Luhn check (the SIREN and SIRET check digit).
pub fn luhn_ok(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        if !c.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

fn compact(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '.' && *c != '-')
        .collect()
}

/// A SIREN (9 digits, spaces allowed), checked and compacted.
pub fn siren(s: &str) -> Result<String, String> {
    let c = compact(s);
    if c.len() != 9 || !c.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a SIREN: 9 digits"));
    }
    if !luhn_ok(&c) {
        return Err(format!("{s:?}: the SIREN check digit (Luhn) is wrong"));
    }
    Ok(c)
}

/// A SIRET (14 digits: the SIREN and a 5-digit establishment number), checked and compacted.
/// The Luhn check is applied to every SIRET: La Poste's establishments (SIREN 356000000), whose
/// SIRETs use another rule, are not supported.
pub fn siret(s: &str) -> Result<String, String> {
    let c = compact(s);
    if c.len() != 14 || !c.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a SIRET: 14 digits"));
    }
    siren(&c[..9]).map_err(|e| format!("{s:?}: its first 9 digits: {e}"))?;
    if !luhn_ok(&c) {
        return Err(format!("{s:?}: the SIRET check digit (Luhn) is wrong"));
    }
    Ok(c)
}

/// The French VAT key of a SIREN: `(12 + 3 * (SIREN mod 97)) mod 97`.
pub fn french_vat_key(siren: &str) -> Option<u64> {
    let n: u64 = siren.parse().ok()?;
    Some((12 + 3 * (n % 97)) % 97)
}

/// An intra-EU VAT number, checked and compacted (upper case, no spaces). A French one
/// (`FR` + 2-digit key + SIREN) has its SIREN and key checked; another member state's only its
/// shape (2 letters and 2 to 12 letters or digits).
pub fn vat_id(s: &str) -> Result<String, String> {
    let c = compact(s).to_ascii_uppercase();
    if let Some(rest) = c.strip_prefix("FR") {
        if rest.len() != 11 || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{s:?} is not a French VAT number: FR, a 2-digit key and the 9-digit SIREN"
            ));
        }
        let sn = siren(&rest[2..])?;
        let key = french_vat_key(&sn).unwrap_or(100);
        if rest[..2].parse::<u64>().ok() != Some(key) {
            return Err(format!(
                "{s:?}: the key should be {key:02} for SIREN {sn} ((12 + 3 x (SIREN mod 97)) mod 97)"
            ));
        }
        return Ok(c);
    }
    let ok = c.len() >= 4
        && c.len() <= 14
        && c.bytes().take(2).all(|b| b.is_ascii_uppercase())
        && c.bytes().skip(2).all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(c)
    } else {
        Err(format!(
            "{s:?} is not an intra-EU VAT number: 2 letters of the country and 2 to 12 letters or digits"
        ))
    }
}

/// An ISO 3166-1 alpha-2 country code.
fn country(s: &str) -> Result<(), String> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a country code: 2 capital letters"))
    }
}

fn rerr(key: impl Into<String>, problem: impl Into<String>) -> RuleError {
    RuleError {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Whether a seller or buyer's address fields are set (for the printed address and the XML).
fn require(key: String, value: &str, example: &str) -> Result<(), RuleError> {
    if value.trim().is_empty() {
        Err(rerr(
            key,
            format!("is required with billing.facturx = true, e.g. {example}"),
        ))
    } else {
        Ok(())
    }
}

/// With `billing.facturx = true`: checks the identifiers given (SIREN, SIRET, VAT numbers,
/// countries) and that every mandatory mention is there: both parties' names, addresses and SIREN, the seller's VAT number (or, under
/// the franchise, a tax registration), and only VAT rates allowed in France. `members` are the ids
/// of the site's `[[members]]`: each needs a `[[billing.customers]]` entry.
pub fn check(cfg: &BillingConfig, members: &[String]) -> Result<(), RuleError> {
    for (i, c) in cfg.customers.iter().enumerate() {
        if cfg.customers[..i].iter().any(|o| o.member == c.member) {
            return Err(rerr(
                format!("billing.customers[{i}].member"),
                format!("member {:?} is listed twice", c.member),
            ));
        }
    }
    if !cfg.facturx {
        // Without Factur-X the identifiers are printed as given (the HTML invoice).
        return Ok(());
    }
    let s = &cfg.seller;
    if !s.siren.is_empty() {
        siren(&s.siren)
            .map_err(|e| rerr("billing.seller.siren", format!("{e}, e.g. \"732 829 320\"")))?;
    }
    if !s.siret.is_empty() {
        // The historical key took a SIREN too.
        let c = compact(&s.siret);
        let r = if c.len() == 9 { siren(&c) } else { siret(&c) };
        r.map_err(|e| {
            rerr(
                "billing.seller.siret",
                format!("{e}, e.g. \"732 829 320 00074\""),
            )
        })?;
        if !s.siren.is_empty() && compact(&s.siren) != c[..9.min(c.len())] {
            return Err(rerr(
                "billing.seller.siret",
                format!(
                    "{:?} does not start with billing.seller.siren {:?}",
                    s.siret, s.siren
                ),
            ));
        }
    }
    if !s.vat_id.is_empty() {
        let v = vat_id(&s.vat_id).map_err(|e| {
            rerr(
                "billing.seller.vat_id",
                format!("{e}, e.g. \"FR44732829320\""),
            )
        })?;
        if let (Some(sn), true) = (seller_siren(s), v.starts_with("FR")) {
            if v[4..] != sn {
                return Err(rerr(
                    "billing.seller.vat_id",
                    format!("{:?} is not the VAT number of SIREN {sn}", s.vat_id),
                ));
            }
        }
    }
    if !matches!(s.vat_regime.as_str(), "" | "normal" | "franchise") {
        return Err(rerr(
            "billing.seller.vat_regime",
            format!(
                "{:?}: use \"normal\" (VAT charged) or \"franchise\" (art. 293 B du CGI)",
                s.vat_regime
            ),
        ));
    }
    if !s.country.is_empty() {
        country(&s.country)
            .map_err(|e| rerr("billing.seller.country", format!("{e}, e.g. \"FR\"")))?;
    }
    for (i, c) in cfg.customers.iter().enumerate() {
        let key = |f: &str| format!("billing.customers[{i}].{f}");
        if !c.siren.is_empty() {
            siren(&c.siren)
                .map_err(|e| rerr(key("siren"), format!("{e}, e.g. \"552 100 554\"")))?;
        }
        if !c.vat_id.is_empty() {
            vat_id(&c.vat_id)
                .map_err(|e| rerr(key("vat_id"), format!("{e}, e.g. \"FR03552100554\"")))?;
        }
        country(&c.country).map_err(|e| rerr(key("country"), format!("{e}, e.g. \"FR\"")))?;
    }
    require(
        "billing.seller.name".into(),
        &s.name,
        "\"Atelier de Lyon SAS\"",
    )?;
    require(
        "billing.seller.street".into(),
        &s.street,
        "\"12 rue des Tanneurs\"",
    )?;
    require("billing.seller.postcode".into(), &s.postcode, "\"69001\"")?;
    require("billing.seller.city".into(), &s.city, "\"Lyon\"")?;
    if seller_siren(s).is_none() {
        return Err(rerr(
            "billing.seller.siren",
            "is required with billing.facturx = true (or billing.seller.siret), e.g. \"732 829 320\"",
        ));
    }
    let franchise = s.vat_regime == "franchise";
    if !franchise {
        require(
            "billing.seller.vat_id".into(),
            &s.vat_id,
            "\"FR44732829320\"",
        )?;
    } else if s.vat_id.is_empty() && s.tax_id.is_empty() {
        return Err(rerr(
            "billing.seller.tax_id",
            "a seller under the VAT franchise without a VAT number needs its tax registration (EN 16931 BT-32), e.g. tax_id = \"1234567890123\"",
        ));
    }
    let mut rates = vec![("billing.vat_rate".to_owned(), cfg.vat_rate.clone())];
    for (i, t) in cfg.tariffs.iter().enumerate() {
        if let Some(r) = &t.vat_rate {
            rates.push((format!("billing.tariffs[{i}].vat_rate"), r.clone()));
        }
    }
    for (key, r) in rates {
        let bp = parse_rate_bp(&r).map_err(|e| rerr(&key, e))?;
        if franchise && bp != 0 {
            return Err(rerr(
                key,
                format!("{r:?}: a seller under the VAT franchise (billing.seller.vat_regime = \"franchise\") charges no VAT: set \"0\""),
            ));
        }
        if !FRENCH_RATES_BP.contains(&bp) {
            return Err(rerr(
                key,
                format!("{r:?} is not a VAT rate of France: use \"20\", \"10\", \"5.5\", \"2.1\" or \"0\""),
            ));
        }
        if bp == 0 && !franchise && s.vat_exemption.trim().is_empty() {
            return Err(rerr(
                "billing.seller.vat_exemption",
                format!("{key} = \"0\" needs the reason of the exemption printed on invoices, e.g. vat_exemption = \"Exonération de TVA, article 261 du CGI\""),
            ));
        }
    }
    for m in members {
        let Some((i, c)) = cfg
            .customers
            .iter()
            .enumerate()
            .find(|(_, c)| &c.member == m)
        else {
            return Err(rerr(
                "billing.customers",
                format!("member {m:?} has no billing identity: add [[billing.customers]] member = {m:?} with name, street, postcode, city and siren"),
            ));
        };
        let key = |f: &str| format!("billing.customers[{i}].{f}");
        require(key("street"), &c.street, "\"3 place Bellecour\"")?;
        require(key("postcode"), &c.postcode, "\"69002\"")?;
        require(key("city"), &c.city, "\"Lyon\"")?;
        require(key("siren"), &c.siren, "\"552 100 554\"")?;
    }
    Ok(())
}

/// The seller's SIREN: `siren`, else the first 9 digits of `siret`.
pub fn seller_siren(s: &super::tariff::Seller) -> Option<String> {
    if !s.siren.is_empty() {
        return siren(&s.siren).ok();
    }
    let c = compact(&s.siret);
    (c.len() >= 9).then(|| siren(&c[..9]).ok()).flatten()
}

/// Compacts an identifier as printed in the XML (no spaces).
pub fn compacted(s: &str) -> String {
    compact(s).to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factur_x_block_of_billing_md_is_valid_and_checked() {
        let md = include_str!("../../../docs/BILLING.md");
        let block = md
            .split("## Factur-X")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("the Factur-X configuration block");
        let site = format!("[site]\nid = \"atelier-lyon\"\n[[members]]\nid = \"alice\"\n{block}");
        let c = crate::config::Config::from_toml(&site).expect("parses");
        assert_eq!(c.validate(), Ok(()));
        // The same block with a second member who has no billing identity is refused.
        let two = site.replacen("[[members]]", "[[members]]\nid = \"bob\"\n[[members]]", 1);
        let e = crate::config::Config::from_toml(&two)
            .expect("parses")
            .validate()
            .expect_err("bob has no identity");
        assert_eq!(e.key, "billing.customers");
    }

    #[test]
    fn siren_siret_and_vat_numbers_are_checked() {
        assert_eq!(siren("732 829 320").as_deref(), Ok("732829320"));
        assert!(siren("732 829 321").is_err());
        assert!(siren("73282932").is_err());
        assert_eq!(siret("732 829 320 00074").as_deref(), Ok("73282932000074"));
        assert!(siret("732 829 320 00075").is_err());
        let key = french_vat_key("732829320").expect("key");
        assert_eq!(key, (12 + 3 * (732_829_320u64 % 97)) % 97);
        assert_eq!(
            vat_id(&format!("fr {key:02} 732829320")).as_deref(),
            Ok(format!("FR{key:02}732829320").as_str())
        );
        let wrong = (key + 1) % 97;
        let e = vat_id(&format!("FR{wrong:02}732829320")).expect_err("wrong key");
        assert!(e.contains(&format!("should be {key:02}")), "{e}");
        assert!(vat_id("DE123456789").is_ok());
        assert!(vat_id("123").is_err());
    }
}
