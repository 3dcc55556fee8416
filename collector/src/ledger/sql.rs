//! One ledger logic, two engines: the queries the [`Ledger`](super::Ledger) runs go through
//! [`Db`], implemented for SQLite ([`Lite`]) and PostgreSQL ([`Pg`]).
//!
//! Queries are written once, in the SQL both engines share, with SQLite's numbered parameters
//! (`?1`); [`postgres_dialect`] rewrites the few spellings PostgreSQL does not share (parameters,
//! `INSERT OR IGNORE`, `INDEXED BY`, the two-argument `MIN`/`MAX`). Values cross as [`Val`]:
//! integers are 64-bit on both sides (`BIGINT` in the PostgreSQL schema), booleans are integers.

use std::collections::HashMap;

use rusqlite::types::ValueRef;

use super::LedgerError;

/// A value bound to a parameter or read from a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val {
    /// SQL NULL.
    Null,
    /// An integer (also booleans, as 0 and 1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl From<i64> for Val {
    fn from(x: i64) -> Self {
        Val::Int(x)
    }
}

impl From<i32> for Val {
    fn from(x: i32) -> Self {
        Val::Int(i64::from(x))
    }
}

impl From<u32> for Val {
    fn from(x: u32) -> Self {
        Val::Int(i64::from(x))
    }
}

impl From<u64> for Val {
    fn from(x: u64) -> Self {
        Val::Int(i64::try_from(x).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Val {
    fn from(x: bool) -> Self {
        Val::Int(i64::from(x))
    }
}

impl From<&str> for Val {
    fn from(x: &str) -> Self {
        Val::Text(x.to_owned())
    }
}

impl From<&String> for Val {
    fn from(x: &String) -> Self {
        Val::Text(x.clone())
    }
}

impl From<String> for Val {
    fn from(x: String) -> Self {
        Val::Text(x)
    }
}

impl From<&[u8]> for Val {
    fn from(x: &[u8]) -> Self {
        Val::Blob(x.to_vec())
    }
}

impl From<&Vec<u8>> for Val {
    fn from(x: &Vec<u8>) -> Self {
        Val::Blob(x.clone())
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(x: Option<T>) -> Self {
        x.map_or(Val::Null, Into::into)
    }
}

/// Binds values: `args![a, b]` is `&[Val::from(a), Val::from(b)]`.
macro_rules! args {
    ($($e:expr),* $(,)?) => { &[$($crate::ledger::sql::Val::from($e)),*] };
}
pub(crate) use args;

/// A result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row(Vec<Val>);

fn column_error(i: usize, want: &str, got: &Val) -> LedgerError {
    LedgerError::Column(format!("column {i}: expected {want}, found {got:?}"))
}

impl Row {
    fn at(&self, i: usize) -> Result<&Val, LedgerError> {
        self.0
            .get(i)
            .ok_or_else(|| LedgerError::Column(format!("column {i} is missing")))
    }

    /// An integer or NULL.
    pub(crate) fn opt_i64(&self, i: usize) -> Result<Option<i64>, LedgerError> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Int(x) => Ok(Some(*x)),
            v => Err(column_error(i, "an integer", v)),
        }
    }

    /// An integer.
    pub(crate) fn i64(&self, i: usize) -> Result<i64, LedgerError> {
        self.opt_i64(i)?
            .ok_or_else(|| column_error(i, "an integer", &Val::Null))
    }

    /// A non-negative integer that fits 32 bits, or NULL.
    pub(crate) fn opt_u32(&self, i: usize) -> Result<Option<u32>, LedgerError> {
        self.opt_i64(i)?
            .map(|x| u32::try_from(x).map_err(|_| column_error(i, "a u32", &Val::Int(x))))
            .transpose()
    }

    /// A non-negative integer that fits 32 bits.
    pub(crate) fn u32(&self, i: usize) -> Result<u32, LedgerError> {
        self.opt_u32(i)?
            .ok_or_else(|| column_error(i, "a u32", &Val::Null))
    }

    /// A non-negative integer (a negative one reads as 0), or NULL.
    pub(crate) fn opt_u64(&self, i: usize) -> Result<Option<u64>, LedgerError> {
        Ok(self.opt_i64(i)?.map(super::ops::u64_of))
    }

    /// A non-negative integer (a negative one reads as 0).
    pub(crate) fn u64(&self, i: usize) -> Result<u64, LedgerError> {
        Ok(super::ops::u64_of(self.i64(i)?))
    }

    /// A boolean stored as an integer, or NULL.
    pub(crate) fn opt_bool(&self, i: usize) -> Result<Option<bool>, LedgerError> {
        Ok(self.opt_i64(i)?.map(|x| x != 0))
    }

    /// A boolean stored as an integer (PostgreSQL's `BOOL` reads as one too).
    pub(crate) fn bool(&self, i: usize) -> Result<bool, LedgerError> {
        self.opt_bool(i)?
            .ok_or_else(|| column_error(i, "a boolean", &Val::Null))
    }

    /// Text or NULL.
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, LedgerError> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Text(s) => Ok(Some(s.clone())),
            Val::Blob(b) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
            v => Err(column_error(i, "text", v)),
        }
    }

    /// Text.
    pub(crate) fn text(&self, i: usize) -> Result<String, LedgerError> {
        self.opt_text(i)?
            .ok_or_else(|| column_error(i, "text", &Val::Null))
    }

    /// Bytes (text reads as its UTF-8).
    pub(crate) fn blob(&self, i: usize) -> Result<Vec<u8>, LedgerError> {
        match self.at(i)? {
            Val::Blob(b) => Ok(b.clone()),
            Val::Text(s) => Ok(s.clone().into_bytes()),
            v => Err(column_error(i, "bytes", v)),
        }
    }
}

/// A connection or a transaction of either engine.
pub(crate) trait Db {
    /// Runs a statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64, LedgerError>;
    /// Runs a query; all its rows.
    fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Row>, LedgerError>;
    /// Asks the engine to join the keys of the rest of this transaction's reads to their tables by
    /// index lookups, one per key (`batch_reads`). PostgreSQL's planner, on a new ledger without
    /// statistics, would otherwise hash-join the keys to a scan of every partition of `events`:
    /// each batch would then read the whole table; and a plan it cached while the ledger was
    /// nearly empty would keep looking keys up through a site-wide index (`sessions_start`), so
    /// each statement is planned with its values. SQLite follows `CROSS JOIN`'s order already.
    fn keyed_lookups(&mut self) -> Result<(), LedgerError> {
        Ok(())
    }
    /// Appends rows to `table` in bulk when the engine has a faster way than `INSERT` (PostgreSQL's
    /// binary `COPY`): each row holds `columns.len()` values, and no row may conflict with a
    /// stored one. `None`: no such way (the caller inserts).
    fn copy_rows(
        &mut self,
        _table: &str,
        _columns: &[&str],
        _rows: &[&[Val]],
    ) -> Result<Option<u64>, LedgerError> {
        Ok(None)
    }
    /// Runs a query; its first row, if any.
    fn row(&mut self, sql: &str, args: &[Val]) -> Result<Option<Row>, LedgerError> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }
    /// Runs a query that returns one row (an aggregate).
    fn one(&mut self, sql: &str, args: &[Val]) -> Result<Row, LedgerError> {
        self.row(sql, args)?
            .ok_or_else(|| LedgerError::Column(format!("no row from {sql}")))
    }
}

/// SQLite, through a connection or a transaction (which derefs to one); statements are cached.
pub(crate) struct Lite<'a>(pub(crate) &'a rusqlite::Connection);

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(match self {
            Val::Null => Borrowed(ValueRef::Null),
            Val::Int(x) => Borrowed(ValueRef::Integer(*x)),
            Val::Text(s) => Borrowed(ValueRef::Text(s.as_bytes())),
            Val::Blob(b) => Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl Db for Lite<'_> {
    fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64, LedgerError> {
        let n = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args))?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Row>, LedgerError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let n = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(n);
            for i in 0..n {
                vals.push(match r.get_ref(i)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(x) => Val::Int(x),
                    // The ledger stores no REAL; a computed one (never) reads truncated.
                    ValueRef::Real(x) => Val::Int(x as i64),
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Val::Blob(b.to_vec()),
                });
            }
            out.push(Row(vals));
        }
        Ok(out)
    }
}

/// PostgreSQL, through a client or a transaction; statements are prepared once per connection,
/// in the PostgreSQL spelling, and cached by their shared text.
pub(crate) struct Pg<'a, C: postgres::GenericClient> {
    /// The client or transaction.
    pub(crate) client: &'a mut C,
    /// The connection's prepared statements.
    pub(crate) cache: &'a mut HashMap<String, postgres::Statement>,
}

impl<C: postgres::GenericClient> Pg<'_, C> {
    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement, LedgerError> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare(&postgres_dialect(sql))?;
        self.cache.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    /// The arguments, checked against the statement's parameter count; each binds itself as
    /// the type its parameter was inferred to be (`impl ToSql for Val`), without a copy.
    fn bind<'v>(
        types: &[postgres::types::Type],
        args: &'v [Val],
    ) -> Result<Vec<&'v (dyn postgres::types::ToSql + Sync)>, LedgerError> {
        if types.len() != args.len() {
            return Err(LedgerError::Column(format!(
                "{} arguments for {} parameters",
                args.len(),
                types.len()
            )));
        }
        Ok(args
            .iter()
            .map(|v| v as &(dyn postgres::types::ToSql + Sync))
            .collect())
    }
}

/// A value bound as the PostgreSQL type of its parameter: integers as `INT8`, `INT4` (checked),
/// `INT2` (checked) or `BOOL`; bytes and text as `BYTEA`; text as any type text binds to; NULL
/// as any type. Borrowed: binding copies nothing but into the message.
impl postgres::types::ToSql for Val {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, ToSql, Type};
        match (ty, self) {
            (_, Val::Null) => Ok(IsNull::Yes),
            (&Type::INT8, Val::Int(x)) => x.to_sql(ty, out),
            (&Type::INT4, Val::Int(x)) => i32::try_from(*x)?.to_sql(ty, out),
            (&Type::INT2, Val::Int(x)) => i16::try_from(*x)?.to_sql(ty, out),
            (&Type::BOOL, Val::Int(x)) => (*x != 0).to_sql(ty, out),
            (&Type::BYTEA, Val::Blob(b)) => b.as_slice().to_sql(ty, out),
            (&Type::BYTEA, Val::Text(s)) => s.as_bytes().to_sql(ty, out),
            (_, v) if !<&str as ToSql>::accepts(ty) => Err(format!(
                "a {} value cannot be bound as PostgreSQL type {ty}",
                match v {
                    Val::Int(_) => "integer",
                    Val::Blob(_) => "bytes",
                    _ => "text",
                }
            )
            .into()),
            (_, Val::Text(s)) => s.as_str().to_sql(ty, out),
            (_, Val::Int(x)) => x.to_string().as_str().to_sql(ty, out),
            (_, Val::Blob(b)) => String::from_utf8_lossy(b).as_ref().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl<C: postgres::GenericClient> Db for Pg<'_, C> {
    fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64, LedgerError> {
        let stmt = self.prepared(sql)?;
        let refs = Self::bind(stmt.params(), args)?;
        Ok(self.client.execute(&stmt, &refs)?)
    }

    fn keyed_lookups(&mut self) -> Result<(), LedgerError> {
        // Transaction-scoped: the write transaction of a batch ends with it.
        self.client.batch_execute(
            "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;
             SET LOCAL plan_cache_mode = force_custom_plan",
        )?;
        Ok(())
    }

    fn copy_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[&[Val]],
    ) -> Result<Option<u64>, LedgerError> {
        if rows.is_empty() || columns.is_empty() {
            return Ok(Some(0));
        }
        let columns = columns.join(", ");
        // The columns' types, from a statement prepared once per connection.
        let types: Vec<postgres::types::Type> = self
            .prepared(&format!("SELECT {columns} FROM {table} WHERE false"))?
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        let sink = self.client.copy_in(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))?;
        let mut writer = postgres::binary_copy::BinaryCopyInWriter::new(sink, &types);
        for row in rows {
            writer.write(&Self::bind(&types, row)?)?;
        }
        Ok(Some(writer.finish()?))
    }

    fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Row>, LedgerError> {
        use postgres::types::Type;
        let stmt = self.prepared(sql)?;
        let refs = Self::bind(stmt.params(), args)?;
        let rows = self.client.query(&stmt, &refs)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut vals = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let v = match *col.type_() {
                    Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Val::Int),
                    Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(|x| Val::Int(x.into())),
                    Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(|x| Val::Int(x.into())),
                    Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(|x| Val::Int(x.into())),
                    Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Val::Blob),
                    _ => r.try_get::<_, Option<String>>(i)?.map(Val::Text),
                };
                vals.push(v.unwrap_or(Val::Null));
            }
            out.push(Row(vals));
        }
        Ok(out)
    }
}

/// The PostgreSQL spelling of a query written for both engines: `?N` → `$N`; `INSERT OR IGNORE
/// INTO` → `INSERT INTO ... ON CONFLICT DO NOTHING`; `INDEXED BY name` (an SQLite planner hint)
/// dropped; a two-argument `MIN(a, b)`/`MAX(a, b)` (SQLite's scalar forms) → `LEAST`/`GREATEST`.
pub(crate) fn postgres_dialect(sql: &str) -> String {
    let mut s = sql.to_owned();
    let ignore = s.contains("INSERT OR IGNORE INTO");
    if ignore {
        s = s.replace("INSERT OR IGNORE INTO", "INSERT INTO");
    }
    // INDEXED BY <name>
    while let Some(at) = s.find("INDEXED BY ") {
        let rest = &s[at + "INDEXED BY ".len()..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        s.replace_range(at..at + "INDEXED BY ".len() + name_len, "");
    }
    s = scalar_min_max(&s);
    let mut out = String::with_capacity(s.len() + 32);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    if ignore {
        out.push_str(" ON CONFLICT DO NOTHING");
    }
    out
}

/// `MIN(a, b)` → `LEAST(a, b)` and `MAX(a, b)` → `GREATEST(a, b)` where the call has a comma at
/// its top level (the aggregate forms have one argument and stay).
fn scalar_min_max(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 16);
    let mut i = 0;
    while i < sql.len() {
        let rest = &sql[i..];
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let hit = ["MIN(", "MAX("]
            .into_iter()
            .find(|f| word_start && rest.starts_with(f));
        if let Some(f) = hit {
            let open = i + 3;
            let mut depth = 0usize;
            let mut comma = false;
            for (j, b) in sql.as_bytes()[open..].iter().enumerate() {
                match b {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            let _ = j;
                            break;
                        }
                    }
                    b',' if depth == 1 => comma = true,
                    _ => {}
                }
            }
            out.push_str(match (f, comma) {
                ("MIN(", true) => "LEAST(",
                ("MAX(", true) => "GREATEST(",
                _ => f,
            });
            i += 4;
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::postgres_dialect;

    #[test]
    fn postgres_spelling_of_shared_queries() {
        assert_eq!(
            postgres_dialect("INSERT OR IGNORE INTO t (a) VALUES (?1)"),
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            postgres_dialect("SELECT x FROM events INDEXED BY events_session WHERE a=?12"),
            "SELECT x FROM events  WHERE a=$12"
        );
        assert_eq!(
            postgres_dialect("SET a = MIN(t.a, excluded.a), b = MAX(COALESCE(x, 1), ?4)"),
            "SET a = LEAST(t.a, excluded.a), b = GREATEST(COALESCE(x, 1), $4)"
        );
        // Forms the invoicing and privacy queries use: an INSERT from a SELECT that ignores
        // conflicts, a hinted DELETE, the scalar MAX of an upsert beside an aggregate MAX.
        assert_eq!(
            postgres_dialect(
                "INSERT OR IGNORE INTO b (s, m) SELECT DISTINCT s, m FROM t WHERE s=?1 AND m=?2"
            ),
            "INSERT INTO b (s, m) SELECT DISTINCT s, m FROM t WHERE s=$1 AND m=$2 \
             ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            postgres_dialect("DELETE FROM events INDEXED BY events_session WHERE site=?1"),
            "DELETE FROM events  WHERE site=$1"
        );
        assert_eq!(
            postgres_dialect(
                "SELECT MAX(seq) FROM t; UPDATE SET max_seq = MAX(k.max_seq, excluded.max_seq)"
            ),
            "SELECT MAX(seq) FROM t; UPDATE SET max_seq = GREATEST(k.max_seq, excluded.max_seq)"
        );
        // Aggregates stay; a name ending in min is not a call.
        assert_eq!(
            postgres_dialect("SELECT MAX(boot), admin(x, y), MIN(COALESCE(a, b)) FROM t"),
            "SELECT MAX(boot), admin(x, y), MIN(COALESCE(a, b)) FROM t"
        );
    }
}
