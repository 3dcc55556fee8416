//! Integer money. Internally amounts are in [`UNIT`]s of 1e-7 EUR (one hundred-thousandth of a
//! cent); documents show cents. The one rounding step, [`to_cents`], turns the exact amount of a
//! line into cents, half away from zero (half-up for charges, mirrored for credit notes).

use serde::{Deserialize, Serialize};

/// Internal money units per cent: an amount of 1 unit is 1e-7 EUR.
pub const UNIT: i64 = 100_000;

/// Decimal places accepted in configured amounts (`"0.12345"` EUR at most): so every configured
/// amount is a multiple of 100 units and any whole-percent discount of it stays exact.
pub const MAX_DECIMALS: u32 = 5;

/// An exact internal amount (units of 1e-7 EUR).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Exact(pub i64);

/// Parses a decimal amount in EUR (`"12"`, `"0.35"`, `"0.04167"`), non-negative, at most
/// [`MAX_DECIMALS`] decimals, into exact units.
pub fn parse_amount(s: &str) -> Result<Exact, String> {
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a decimal amount in EUR"));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (t.contains('.') && frac.is_empty()) {
        return Err(format!("{s:?} is not a decimal amount in EUR"));
    }
    if frac.len() > MAX_DECIMALS as usize {
        return Err(format!(
            "{s:?} has more than {MAX_DECIMALS} decimals (1/1000 of a cent is the finest price)"
        ));
    }
    let whole: i64 = whole
        .parse()
        .ok()
        .filter(|w: &i64| *w <= 1_000_000_000)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    let mut f: i64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        f += i64::from(b - b'0') * 10i64.pow(6 - u32::try_from(i).unwrap_or(6));
    }
    Ok(Exact(whole * 10_000_000 + f))
}

/// Parses a percentage (`"20"`, `"5.5"`, `"2.1"`: at most 2 decimals, 0 to 100) into basis points.
pub fn parse_rate_bp(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let ok = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 2
        && !(t.contains('.') && frac.is_empty());
    if !ok {
        return Err(format!(
            "{s:?} is not a percentage with at most 2 decimals, e.g. \"20\" or \"5.5\""
        ));
    }
    let w: u32 = whole.parse().map_err(|_| format!("{s:?} is too large"))?;
    let mut f: u32 = 0;
    for (i, b) in frac.bytes().enumerate() {
        f += u32::from(b - b'0') * if i == 0 { 10 } else { 1 };
    }
    let bp = w.saturating_mul(100).saturating_add(f);
    if bp > 10_000 {
        return Err(format!("{s:?} is above 100 %"));
    }
    Ok(bp)
}

/// The one rounding step: exact units to cents, half away from zero.
pub fn to_cents(x: Exact) -> i64 {
    let half = UNIT / 2;
    if x.0 >= 0 {
        (x.0 + half) / UNIT
    } else {
        -((-x.0 + half) / UNIT)
    }
}

/// VAT of an amount excl. VAT in cents at a rate in basis points, rounded half away from zero to
/// the cent.
pub fn vat_cents(excl_cents: i64, rate_bp: u32) -> i64 {
    let p = i128::from(excl_cents) * i128::from(rate_bp);
    let r = if p >= 0 {
        (p + 5_000) / 10_000
    } else {
        -((-p + 5_000) / 10_000)
    };
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// Formats cents as `12.34` (or `-12.34`).
pub fn format_cents(c: i64) -> String {
    let sign = if c < 0 { "-" } else { "" };
    let a = c.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// Formats an exact amount in EUR with as many decimals as needed (2 to 5), e.g. a unit price.
pub fn format_exact(x: Exact) -> String {
    let sign = if x.0 < 0 { "-" } else { "" };
    let a = x.0.unsigned_abs();
    let whole = a / 10_000_000;
    let frac = a % 10_000_000;
    // Units finer than 1e-5 EUR are shown rounded (they only appear in discounted unit prices).
    let mut digits = format!("{:07}", frac);
    while digits.len() > 2 && digits.ends_with('0') {
        digits.pop();
    }
    format!("{sign}{whole}.{digits}")
}

/// Formats basis points as a percentage, e.g. `20` or `5.5`.
pub fn format_bp(bp: u32) -> String {
    if bp.is_multiple_of(100) {
        format!("{}", bp / 100)
    } else if bp.is_multiple_of(10) {
        format!("{}.{}", bp / 100, bp % 100 / 10)
    } else {
        format!("{}.{:02}", bp / 100, bp % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(parse_amount("0.35"), Ok(Exact(3_500_000)));
        assert_eq!(parse_amount("12"), Ok(Exact(120_000_000)));
        assert_eq!(parse_amount("0.00001"), Ok(Exact(100)));
        assert!(parse_amount("0.000001").is_err());
        assert!(parse_amount("-1").is_err());
        assert!(parse_amount("1.").is_err());
        assert!(parse_amount("1,5").is_err());
        assert!(parse_amount("").is_err());
    }

    #[test]
    fn rates_parse_to_basis_points() {
        assert_eq!(parse_rate_bp("20"), Ok(2000));
        assert_eq!(parse_rate_bp("5.5"), Ok(550));
        assert_eq!(parse_rate_bp("2.10"), Ok(210));
        assert!(parse_rate_bp("0.2.1").is_err());
        assert!(parse_rate_bp("101").is_err());
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(to_cents(Exact(50_000)), 1);
        assert_eq!(to_cents(Exact(49_999)), 0);
        assert_eq!(to_cents(Exact(-50_000)), -1);
        assert_eq!(to_cents(Exact(-49_999)), 0);
        assert_eq!(vat_cents(1250, 2000), 250);
        assert_eq!(vat_cents(1, 2000), 0);
        assert_eq!(vat_cents(3, 2000), 1); // 0.6 -> 1
        assert_eq!(vat_cents(-3, 2000), -1);
        assert_eq!(vat_cents(10, 550), 1); // 0.55 -> 1
        assert_eq!(format_cents(-1205), "-12.05");
        assert_eq!(format_exact(Exact(3_500_000)), "0.35");
        assert_eq!(format_exact(Exact(416_700)), "0.04167");
        assert_eq!(format_bp(550), "5.5");
    }
}
