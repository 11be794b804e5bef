//! `instr()` and `replace()`, replaced by linear-time versions that return exactly what
//! SQLite's return. SQLite's own compare the needle at every position of the haystack,
//! so a single call on megabyte arguments can run for minutes, in one step that no step
//! budget sees. These search with `memchr::memmem` (linear time) and charge the bytes they
//! scan against the line's budget ([`crate::mem`]), so repeating them is bounded too.
//!
//! SQLite's rules, kept here:
//! - any NULL argument gives NULL (for `replace`, an empty pattern gives the string back,
//!   even if the replacement is NULL, because SQLite checks the pattern first);
//! - `instr` compares bytes when both arguments are BLOBs, otherwise the text forms, and
//!   counts characters (bytes that do not continue a UTF-8 sequence) for text;
//! - numbers take their SQL text form (`%!.17g` for REAL, as SQLite renders them);
//! - a pattern whose first byte is NUL counts as empty, as in C;
//! - `replace` returns TEXT, and fails with "string or blob too big" beyond the length limit.

use std::borrow::Cow;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ffi, Connection, ToSql};

use crate::mem;

/// The length limit the functions enforce, set per line.
#[derive(Clone, Debug, Default)]
pub struct LengthLimit(Arc<AtomicU64>);

impl LengthLimit {
    /// Sets the limit for the lines that follow.
    pub fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }
}

/// Installs both functions on `conn`.
pub fn install(conn: &Connection, limit: &LengthLimit) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("instr", 2, flags, |ctx| instr(ctx.get_raw(0), ctx.get_raw(1)))?;
    let limit = limit.clone();
    conn.create_scalar_function("replace", 3, flags, move |ctx| replace(ctx, limit.0.load(Ordering::Relaxed)))
}

/// The bytes of a value's text form, as `sqlite3_value_text` would give them.
fn text_of(value: ValueRef<'_>) -> Option<Cow<'_, [u8]>> {
    match value {
        ValueRef::Null => None,
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(Cow::Borrowed(t)),
        ValueRef::Integer(i) => Some(Cow::Owned(i.to_string().into_bytes())),
        ValueRef::Real(r) => Some(Cow::Owned(real_text(r))),
    }
}

/// A REAL's SQL text, rendered by SQLite's own printf the way it renders values.
fn real_text(r: f64) -> Vec<u8> {
    let Ok(format) = CString::new("%!.17g") else { return Vec::new() };
    // SAFETY: a valid format for one double; SQLite allocates the result, freed below.
    let p = unsafe { ffi::sqlite3_mprintf(format.as_ptr(), r) };
    if p.is_null() {
        return Vec::new();
    }
    // SAFETY: sqlite3_mprintf returns a NUL-terminated string.
    let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes().to_vec();
    // SAFETY: freeing what sqlite3_mprintf allocated.
    unsafe { ffi::sqlite3_free(p.cast()) };
    bytes
}

fn charge(bytes: usize) -> rusqlite::Result<()> {
    if mem::charge_work(bytes as u64) {
        Ok(())
    } else {
        Err(rusqlite::Error::UserFunctionError("too much work for one request".into()))
    }
}

/// Whether a byte continues a UTF-8 sequence.
fn continues(b: u8) -> bool {
    b & 0xc0 == 0x80
}

fn instr(haystack: ValueRef<'_>, needle: ValueRef<'_>) -> rusqlite::Result<Option<i64>> {
    if matches!(haystack, ValueRef::Null) || matches!(needle, ValueRef::Null) {
        return Ok(None);
    }
    let text = !(matches!(haystack, ValueRef::Blob(_)) && matches!(needle, ValueRef::Blob(_)));
    let (Some(hay), Some(needle)) = (text_of(haystack), text_of(needle)) else { return Ok(None) };
    if needle.is_empty() {
        return Ok(Some(1));
    }
    charge(hay.len() + needle.len())?;
    // SQLite steps from character to character; a match must start on one.
    let found = memchr::memmem::find_iter(&hay, &*needle).find(|&at| !text || at == 0 || !continues(hay[at]));
    Ok(Some(match found {
        None => 0,
        Some(at) if text => 1 + hay[1..=at].iter().filter(|&&b| !continues(b)).count() as i64,
        Some(at) => at as i64 + 1,
    }))
}

/// TEXT made of any bytes (SQLite text need not be valid UTF-8).
struct TextBytes(Vec<u8>);

impl ToSql for TextBytes {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(&self.0)))
    }
}

fn replace(ctx: &Context<'_>, limit: u64) -> rusqlite::Result<Option<TextBytes>> {
    let Some(string) = text_of(ctx.get_raw(0)) else { return Ok(None) };
    let Some(pattern) = text_of(ctx.get_raw(1)) else { return Ok(None) };
    if pattern.first().is_none_or(|&b| b == 0) {
        return Ok(Some(TextBytes(string.into_owned())));
    }
    let Some(with) = text_of(ctx.get_raw(2)) else { return Ok(None) };
    charge(string.len() + pattern.len())?;
    let matches: Vec<usize> = memchr::memmem::find_iter(&string, &*pattern).collect();
    let size =
        string.len() as u64 + matches.len() as u64 * with.len() as u64 - matches.len() as u64 * pattern.len() as u64;
    if with.len() > pattern.len() && size > limit {
        return Err(rusqlite::Error::UserFunctionError("string or blob too big".into()));
    }
    let mut out = Vec::with_capacity(size as usize);
    let mut from = 0;
    for at in matches {
        out.extend_from_slice(&string[from..at]);
        out.extend_from_slice(&with);
        from = at + pattern.len();
    }
    out.extend_from_slice(&string[from..]);
    Ok(Some(TextBytes(out)))
}
