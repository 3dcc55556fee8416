//! Points, their validation and their line-protocol encoding (sans-IO).

use std::fmt::{self, Write as _};

/// Longest tag value accepted, in bytes: tags are for bounded, low-cardinality labels.
pub const MAX_TAG_VALUE_BYTES: usize = 256;

/// A numeric field value. There are no string fields on purpose: VictoriaMetrics stores them as
/// 0, so text belongs in (bounded) tags.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldValue {
    /// A 64-bit signed integer, written as `42i`.
    Int(i64),
    /// A finite 64-bit float; NaN and ±infinity are refused ([`RefusalReason::NonFiniteFloat`]).
    Float(f64),
}

impl From<i64> for FieldValue {
    fn from(value: i64) -> Self {
        FieldValue::Int(value)
    }
}

impl From<f64> for FieldValue {
    fn from(value: f64) -> Self {
        FieldValue::Float(value)
    }
}

/// One time-series point: a measurement, tags, numeric fields and a timestamp in milliseconds.
///
/// Names are `&'static str` because they come from the code (docs/SCHEMA.md), while tag values
/// come from input and are checked by [`Point::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Measurement name, e.g. `machine_power`.
    pub measurement: &'static str,
    /// Tags (labels): keep them low-cardinality (site, machine, kind).
    pub tags: Vec<(&'static str, String)>,
    /// Numeric fields; at least one.
    pub fields: Vec<(&'static str, FieldValue)>,
    /// Milliseconds since the Unix epoch (written with `precision=ms`).
    pub time_ms: i64,
}

/// Why a point was refused before it reached the store. Every refusal is counted per reason
/// and logged once per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// A float field is NaN or infinite (line protocol cannot carry it).
    NonFiniteFloat,
    /// The point has no field at all.
    NoFields,
    /// A measurement, tag key or field key is empty, contains a control character, starts with
    /// `_` (reserved by InfluxDB), is the reserved key `time`, or the measurement starts with `#`
    /// (a comment in line protocol).
    InvalidName,
    /// A name or a tag value ends with a backslash, which would escape the following separator.
    TrailingBackslash,
    /// A tag value is empty (line protocol cannot carry an empty tag value).
    EmptyTagValue,
    /// A tag value contains a newline, a carriage return or another control character.
    ControlCharInTagValue,
    /// A tag value is longer than [`MAX_TAG_VALUE_BYTES`].
    TagValueTooLong,
    /// The same tag key or field key appears twice.
    DuplicateKey,
}

impl RefusalReason {
    /// Every reason, in a stable order (for metrics).
    pub const ALL: [RefusalReason; 8] = [
        RefusalReason::NonFiniteFloat,
        RefusalReason::NoFields,
        RefusalReason::InvalidName,
        RefusalReason::TrailingBackslash,
        RefusalReason::EmptyTagValue,
        RefusalReason::ControlCharInTagValue,
        RefusalReason::TagValueTooLong,
        RefusalReason::DuplicateKey,
    ];

    /// A stable snake_case label, for `/metrics` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NonFiniteFloat => "non_finite_float",
            RefusalReason::NoFields => "no_fields",
            RefusalReason::InvalidName => "invalid_name",
            RefusalReason::TrailingBackslash => "trailing_backslash",
            RefusalReason::EmptyTagValue => "empty_tag_value",
            RefusalReason::ControlCharInTagValue => "control_char_in_tag_value",
            RefusalReason::TagValueTooLong => "tag_value_too_long",
            RefusalReason::DuplicateKey => "duplicate_key",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for RefusalReason {}

impl Point {
    /// A point without tags or fields; add them with [`Point::tag`] and [`Point::field`].
    pub fn new(measurement: &'static str, time_ms: i64) -> Self {
        Point {
            measurement,
            tags: Vec::new(),
            fields: Vec::new(),
            time_ms,
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.tags.push((key, value.into()));
        self
    }

    /// Adds a field.
    pub fn field(mut self, key: &'static str, value: impl Into<FieldValue>) -> Self {
        self.fields.push((key, value.into()));
        self
    }

    /// Checks that line protocol can carry this point exactly; see [`RefusalReason`].
    pub fn validate(&self) -> Result<(), RefusalReason> {
        check_name(self.measurement)?;
        if self.measurement.starts_with('#') {
            return Err(RefusalReason::InvalidName);
        }
        for (i, (key, value)) in self.tags.iter().enumerate() {
            check_name(key)?;
            if self.tags[..i].iter().any(|(k, _)| k == key) {
                return Err(RefusalReason::DuplicateKey);
            }
            if value.is_empty() {
                return Err(RefusalReason::EmptyTagValue);
            }
            if value.chars().any(char::is_control) {
                return Err(RefusalReason::ControlCharInTagValue);
            }
            if value.ends_with('\\') {
                return Err(RefusalReason::TrailingBackslash);
            }
            if value.len() > MAX_TAG_VALUE_BYTES {
                return Err(RefusalReason::TagValueTooLong);
            }
        }
        if self.fields.is_empty() {
            return Err(RefusalReason::NoFields);
        }
        for (i, (key, value)) in self.fields.iter().enumerate() {
            check_name(key)?;
            if self.fields[..i].iter().any(|(k, _)| k == key) {
                return Err(RefusalReason::DuplicateKey);
            }
            if let FieldValue::Float(f) = value {
                if !f.is_finite() {
                    return Err(RefusalReason::NonFiniteFloat);
                }
            }
        }
        Ok(())
    }

    /// Validates the point and appends it to `out` as one line of line protocol (with `\n`,
    /// timestamp in milliseconds, tags sorted by key). On refusal `out` is left unchanged.
    pub fn write_line(&self, out: &mut String) -> Result<(), RefusalReason> {
        self.validate()?;
        escape_into(out, self.measurement, &[',', ' ']);
        let mut tags: Vec<&(&'static str, String)> = self.tags.iter().collect();
        tags.sort_by_key(|(k, _)| *k);
        for (key, value) in tags {
            out.push(',');
            escape_into(out, key, &[',', '=', ' ']);
            out.push('=');
            escape_into(out, value, &[',', '=', ' ']);
        }
        for (i, (key, value)) in self.fields.iter().enumerate() {
            out.push(if i == 0 { ' ' } else { ',' });
            escape_into(out, key, &[',', '=', ' ']);
            out.push('=');
            write_field_value(out, *value);
        }
        // Writing to a String cannot fail.
        let _ = writeln!(out, " {}", self.time_ms);
        Ok(())
    }

    /// The point as one line of line protocol (without the trailing newline).
    pub fn to_line(&self) -> Result<String, RefusalReason> {
        let mut out = String::new();
        self.write_line(&mut out)?;
        out.pop();
        Ok(out)
    }
}

fn check_name(name: &str) -> Result<(), RefusalReason> {
    if name.is_empty()
        || name.starts_with('_')
        || name == "time"
        || name.chars().any(char::is_control)
    {
        return Err(RefusalReason::InvalidName);
    }
    if name.ends_with('\\') {
        return Err(RefusalReason::TrailingBackslash);
    }
    Ok(())
}

fn escape_into(out: &mut String, text: &str, special: &[char]) {
    for c in text.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

fn write_field_value(out: &mut String, value: FieldValue) {
    // Writing to a String cannot fail.
    let _ = match value {
        FieldValue::Int(i) => write!(out, "{i}i"),
        // `Display` of f64 is the shortest exact representation but never uses an exponent,
        // so very large or small magnitudes would print hundreds of digits: use `e` there.
        FieldValue::Float(f) if f == 0.0 || (1e-5..1e16).contains(&f.abs()) => write!(out, "{f}"),
        FieldValue::Float(f) => write!(out, "{f:e}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(p: &Point) -> String {
        p.to_line().expect("valid point")
    }

    #[test]
    fn plain_point() {
        let p = Point::new("machine_power", 1_700_000_000_123)
            .tag("site", "lab")
            .field("watts", 12.5)
            .field("state", 2_i64);
        assert_eq!(
            line(&p),
            "machine_power,site=lab watts=12.5,state=2i 1700000000123"
        );
    }

    #[test]
    fn tags_are_sorted_by_key() {
        let p = Point::new("m", 1)
            .tag("z", "1")
            .tag("a", "2")
            .field("f", 1_i64);
        assert_eq!(line(&p), "m,a=2,z=1 f=1i 1");
    }

    #[test]
    fn tag_values_escape_spaces_commas_and_equals() {
        let p = Point::new("m", 5)
            .tag("machine", "laser cutter,big=1")
            .field("f", 1.0);
        assert_eq!(line(&p), r"m,machine=laser\ cutter\,big\=1 f=1 5");
    }

    #[test]
    fn tag_and_field_keys_escape_spaces_commas_and_equals() {
        let p = Point::new("m", 5)
            .tag("a key,x=y", "v")
            .field("f ld,=", 1_i64);
        assert_eq!(line(&p), r"m,a\ key\,x\=y=v f\ ld\,\==1i 5");
    }

    #[test]
    fn measurement_escapes_spaces_and_commas_but_not_equals() {
        let p = Point::new("my meas,ure=x", -3).field("f", 1_i64);
        assert_eq!(line(&p), r"my\ meas\,ure=x f=1i -3");
    }

    #[test]
    fn inner_backslashes_and_quotes_pass_through() {
        let p = Point::new("m", 1)
            .tag("path", r#"C:\dir "q""#)
            .field("f", 1_i64);
        assert_eq!(line(&p), r#"m,path=C:\dir\ "q" f=1i 1"#);
    }

    #[test]
    fn unicode_is_kept() {
        let p = Point::new("m", 1)
            .tag("member", "Zoë Ångström")
            .field("f", 1_i64);
        assert_eq!(line(&p), r"m,member=Zoë\ Ångström f=1i 1");
    }

    #[test]
    fn floats_round_trip_and_use_exponents_for_extremes() {
        for (value, text) in [
            (0.1, "0.1"),
            (-2.0, "-2"),
            (0.0, "0"),
            (123456789.125, "123456789.125"),
            (1e300, "1e300"),
            (-2.5e-12, "-2.5e-12"),
            (f64::MAX, "1.7976931348623157e308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
        ] {
            let p = Point::new("m", 1).field("f", value);
            assert_eq!(line(&p), format!("m f={text} 1"));
            assert_eq!(text.parse::<f64>().ok(), Some(value));
        }
        let p = Point::new("m", 1).field("i", i64::MIN);
        assert_eq!(line(&p), format!("m i={}i 1", i64::MIN));
    }

    #[test]
    fn refusals() {
        let ok = || Point::new("m", 1).tag("site", "a").field("f", 1.0);
        let cases: Vec<(Point, RefusalReason)> = vec![
            (ok().field("g", f64::NAN), RefusalReason::NonFiniteFloat),
            (
                ok().field("g", f64::INFINITY),
                RefusalReason::NonFiniteFloat,
            ),
            (
                ok().field("g", f64::NEG_INFINITY),
                RefusalReason::NonFiniteFloat,
            ),
            (Point::new("m", 1).tag("site", "a"), RefusalReason::NoFields),
            (
                Point::new("", 1).field("f", 1.0),
                RefusalReason::InvalidName,
            ),
            (
                Point::new("#m", 1).field("f", 1.0),
                RefusalReason::InvalidName,
            ),
            (
                Point::new("_m", 1).field("f", 1.0),
                RefusalReason::InvalidName,
            ),
            (
                Point::new("m\n", 1).field("f", 1.0),
                RefusalReason::InvalidName,
            ),
            (
                Point::new("m\\", 1).field("f", 1.0),
                RefusalReason::TrailingBackslash,
            ),
            (ok().tag("", "x"), RefusalReason::InvalidName),
            (ok().tag("time", "x"), RefusalReason::InvalidName),
            (ok().tag("k\\", "x"), RefusalReason::TrailingBackslash),
            (ok().tag("k", ""), RefusalReason::EmptyTagValue),
            (ok().tag("k", "a\nb"), RefusalReason::ControlCharInTagValue),
            (ok().tag("k", "a\rb"), RefusalReason::ControlCharInTagValue),
            (ok().tag("k", "a\tb"), RefusalReason::ControlCharInTagValue),
            (ok().tag("k", "ab\\"), RefusalReason::TrailingBackslash),
            (
                ok().tag("k", "x".repeat(MAX_TAG_VALUE_BYTES + 1)),
                RefusalReason::TagValueTooLong,
            ),
            (ok().tag("site", "b"), RefusalReason::DuplicateKey),
            (ok().field("f", 2_i64), RefusalReason::DuplicateKey),
            (ok().field("", 2_i64), RefusalReason::InvalidName),
            (ok().field("f\\", 2_i64), RefusalReason::TrailingBackslash),
        ];
        for (point, reason) in cases {
            assert_eq!(point.validate(), Err(reason), "{point:?}");
            let mut out = String::from("kept\n");
            assert_eq!(point.write_line(&mut out), Err(reason));
            assert_eq!(out, "kept\n", "a refused point leaves the buffer alone");
        }
        assert_eq!(
            ok().tag("k", "x".repeat(MAX_TAG_VALUE_BYTES)).validate(),
            Ok(())
        );
    }

    #[test]
    fn reason_labels_are_distinct_and_indexed_in_order() {
        for (i, reason) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let mut labels: Vec<_> = RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
    }
}
