//! Pinning down what SQLite would otherwise take from the machine: the current time and
//! random numbers. Every replica must compute the same result from the same entry.
//!
//! - Time: `datetime('now')`, `CURRENT_TIMESTAMP`, `unixepoch()` and friends all ask the
//!   VFS for the time (`xCurrentTimeInt64`), including inside column DEFAULTs and triggers,
//!   which no rewriting of statement text could reach. We register a VFS that is SQLite's
//!   default in every respect but one: while an entry is applied, it reports the time the
//!   leader wrote into the entry.
//! - Randomness: `random()` and `randomblob(n)` are replaced on our connection by
//!   functions drawing from a generator seeded by the entry.

use std::cell::Cell;
use std::ffi::CString;
use std::sync::{Arc, Mutex, Once, OnceLock};

use rusqlite::ffi;
use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;

/// The name under which the pinned-clock VFS is registered.
pub const VFS_NAME: &str = "lightraft";

/// Milliseconds from the Julian day epoch to the Unix epoch (2440587.5 days).
const UNIX_EPOCH_JULIAN_MS: i64 = 210_866_760_000_000;

thread_local! {
    /// The pinned time while this thread applies an entry, in Unix milliseconds.
    static PINNED_MS: Cell<Option<i64>> = const { Cell::new(None) };
}

type CurrentTimeFn = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut i64) -> i32;

/// The default VFS's own clock, for when no time is pinned.
static DEFAULT_CURRENT_TIME: OnceLock<CurrentTimeFn> = OnceLock::new();
static REGISTER: Once = Once::new();

unsafe extern "C" fn current_time_int64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> i32 {
    if let Some(ms) = PINNED_MS.with(|p| p.get()) {
        // SAFETY: SQLite passes a valid pointer for the result.
        unsafe { *out = ms + UNIX_EPOCH_JULIAN_MS };
        return ffi::SQLITE_OK;
    }
    match DEFAULT_CURRENT_TIME.get() {
        // SAFETY: the default VFS's own function, called with the arguments SQLite gave us.
        Some(real) => unsafe { real(vfs, out) },
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> i32 {
    let mut ms = 0i64;
    // SAFETY: forwards to the function above with a valid local pointer.
    let rc = unsafe { current_time_int64(vfs, &mut ms) };
    // SAFETY: SQLite passes a valid pointer for the result.
    unsafe { *out = ms as f64 / 86_400_000.0 };
    rc
}

/// Registers the pinned-clock VFS once per process. It copies the default VFS, so files
/// are read and written exactly as SQLite would anyway.
pub fn register_vfs() -> Result<(), String> {
    let mut result = Ok(());
    REGISTER.call_once(|| {
        // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, valid for the process.
        let default = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
        if default.is_null() {
            result = Err("SQLite has no default VFS".to_string());
            return;
        }
        // SAFETY: `default` is valid; we copy the struct, then only change our copy.
        let mut vfs = unsafe { *default };
        let Some(real_clock) = vfs.xCurrentTimeInt64.filter(|_| vfs.iVersion >= 2) else {
            result = Err("the default SQLite VFS has no 64-bit clock".to_string());
            return;
        };
        let _ = DEFAULT_CURRENT_TIME.set(real_clock);
        let Ok(name) = CString::new(VFS_NAME) else { return };
        vfs.zName = name.into_raw();
        vfs.pNext = std::ptr::null_mut();
        vfs.xCurrentTimeInt64 = Some(current_time_int64);
        vfs.xCurrentTime = Some(current_time);
        // SQLite keeps the pointer for the life of the process.
        let vfs = Box::into_raw(Box::new(vfs));
        // SAFETY: `vfs` is a valid, leaked VFS struct.
        let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
        if rc != ffi::SQLITE_OK {
            result = Err(format!("registering the lightraft VFS failed with code {rc}"));
        }
    });
    result
}

/// Runs `f` with SQLite's clock pinned to `unix_ms` on this thread.
pub fn with_pinned_time<T>(unix_ms: i64, f: impl FnOnce() -> T) -> T {
    struct Unpin;
    impl Drop for Unpin {
        fn drop(&mut self) {
            PINNED_MS.with(|p| p.set(None));
        }
    }
    PINNED_MS.with(|p| p.set(Some(unix_ms)));
    let _unpin = Unpin;
    f()
}

/// A seedable generator shared with the SQL functions it backs (SplitMix64).
#[derive(Clone, Debug, Default)]
pub struct SeededRandom(Arc<Mutex<u64>>);

impl SeededRandom {
    /// Restarts the sequence from `seed`.
    pub fn reseed(&self, seed: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = seed;
    }

    fn next(&self) -> u64 {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Replaces SQLite's `random()` and `randomblob(n)` on `conn` with this generator.
    pub fn install(&self, conn: &Connection) -> rusqlite::Result<()> {
        let flags = FunctionFlags::SQLITE_UTF8;
        let rng = self.clone();
        conn.create_scalar_function("random", 0, flags, move |_| Ok(rng.next() as i64))?;
        let rng = self.clone();
        conn.create_scalar_function("randomblob", 1, flags, move |ctx| {
            // Like SQLite's: at least one byte; capped so a typo cannot eat the memory.
            let n = ctx.get::<i64>(0).unwrap_or(1).clamp(1, 1 << 20) as usize;
            let mut bytes = Vec::with_capacity(n + 8);
            while bytes.len() < n {
                bytes.extend_from_slice(&rng.next().to_le_bytes());
            }
            bytes.truncate(n);
            Ok(bytes)
        })
    }
}
