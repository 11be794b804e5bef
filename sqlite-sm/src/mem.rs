//! SQLite's memory, watched. As the VFS does for files ([`crate::vfs`]), this wraps
//! SQLite's allocator so that, for the line a thread is running:
//!
//! 1. a real allocation failure (the process ran out of memory: this node's problem) is
//!    told apart from SQLite refusing a request by its size, which happens alike on every
//!    replica (`concat()` of many large arguments asks for their total at once);
//! 2. no single allocation exceeds the line's cap: anything larger could only build a
//!    value that SQLite would reject as too big afterwards, yet every replica would first
//!    pay for it in memory;
//! 3. allocations of [`LARGE`] bytes or more (values, sort buffers) count against the
//!    line's budget, so a line that builds or copies large values over and over stops
//!    after the same amount of work on every replica instead of running for hours. The
//!    step budget alone cannot see that one step may copy megabytes.
//!
//! Sizes are what SQLite asks for, which depends only on the statement and the data (the
//! default allocator records each size in a header, so growth is computed from requested
//! sizes, never from what the C library happened to hand out). So the caps stop a line at
//! the same point everywhere.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// Allocations at least this large count against a line's budget.
pub const LARGE: u64 = 64 << 10;

/// Why the allocator refused a request for the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// One allocation of `size` bytes, above the line's cap.
    TooLarge {
        /// The size asked for.
        size: u64,
    },
    /// The line's large allocations went beyond its budget.
    Budget {
        /// The budget.
        budget: u64,
    },
}

#[derive(Clone, Copy)]
struct Line {
    cap: u64,
    budget: u64,
    used: u64,
    refusal: Option<Refusal>,
    /// The C library returned no memory.
    failed: bool,
    /// Test hook: fail this many large allocations as if the C library had.
    injected: u32,
}

const UNLIMITED: Line = Line { cap: u64::MAX, budget: u64::MAX, used: 0, refusal: None, failed: false, injected: 0 };

thread_local! {
    static LINE: Cell<Line> = const { Cell::new(UNLIMITED) };
}

fn with_line<T>(f: impl FnOnce(&mut Line) -> T) -> Option<T> {
    LINE.try_with(|cell| {
        let mut line = cell.get();
        let out = f(&mut line);
        cell.set(line);
        out
    })
    .ok()
}

/// Starts a line on this thread: no single allocation above `cap`, and at most `budget`
/// bytes in large allocations (`None`: no budget).
pub fn begin_line(cap: u64, budget: Option<u64>) {
    with_line(|line| *line = Line { cap, budget: budget.unwrap_or(u64::MAX), injected: line.injected, ..UNLIMITED });
}

/// Ends the line: lightraft's own work after it (reopening, loading the schema) is not
/// the line's and runs without caps.
pub fn end_line() {
    with_line(|line| *line = Line { failed: line.failed, refusal: line.refusal, injected: line.injected, ..UNLIMITED });
}

/// Test hook: the next `count` allocations of [`LARGE`] bytes or more on this thread fail
/// as if the process had run out of memory.
#[doc(hidden)]
pub fn inject_failures(count: u32) {
    with_line(|line| line.injected = count);
}

/// Whether the C library failed an allocation since the line began.
pub fn real_failure() -> bool {
    with_line(|line| line.failed).unwrap_or(false)
}

/// What the caps refused since the line began, if anything.
pub fn refusal() -> Option<Refusal> {
    with_line(|line| line.refusal).flatten()
}

/// Charges a request (`grow` new bytes, `total` the block's new size); false to refuse.
fn admit(grow: u64, total: u64) -> bool {
    with_line(|line| {
        if total >= LARGE && line.injected > 0 {
            line.injected -= 1;
            line.failed = true;
            return false;
        }
        if total > line.cap {
            line.refusal.get_or_insert(Refusal::TooLarge { size: total });
            return false;
        }
        if total >= LARGE {
            line.used = line.used.saturating_add(grow);
            if line.used > line.budget {
                line.refusal.get_or_insert(Refusal::Budget { budget: line.budget });
                return false;
            }
        }
        true
    })
    .unwrap_or(true)
}

fn note_failure() {
    with_line(|line| line.failed = true);
}

/// SQLite's default allocator, which does the real work.
struct Default(ffi::sqlite3_mem_methods);
// SAFETY: the default methods are plain C functions and SQLite's own (null) app data.
unsafe impl Send for Default {}
// SAFETY: as above; never changed after installation.
unsafe impl Sync for Default {}

static DEFAULT: OnceLock<Default> = OnceLock::new();

fn default() -> Option<&'static ffi::sqlite3_mem_methods> {
    DEFAULT.get().map(|d| &d.0)
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let size = n.max(0) as u64;
    if !admit(size, size) {
        return std::ptr::null_mut();
    }
    let Some(malloc) = default().and_then(|d| d.xMalloc) else { return std::ptr::null_mut() };
    // SAFETY: the default allocator's own function.
    let p = unsafe { malloc(n) };
    if p.is_null() {
        note_failure();
    }
    p
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    let size = n.max(0) as u64;
    let old = match (p.is_null(), default().and_then(|d| d.xSize)) {
        // SAFETY: `p` is a live allocation of the default allocator.
        (false, Some(size_of)) => unsafe { size_of(p) }.max(0) as u64,
        _ => 0,
    };
    if !admit(size.saturating_sub(old), size) {
        return std::ptr::null_mut();
    }
    let Some(realloc) = default().and_then(|d| d.xRealloc) else { return std::ptr::null_mut() };
    // SAFETY: the default allocator's own function on its own block.
    let q = unsafe { realloc(p, n) };
    if q.is_null() {
        note_failure();
    }
    q
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if let Some(free) = default().and_then(|d| d.xFree) {
        // SAFETY: the default allocator's own function on its own block.
        unsafe { free(p) }
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    match default().and_then(|d| d.xSize) {
        // SAFETY: the default allocator's own function on its own block.
        Some(size) => unsafe { size(p) },
        None => 0,
    }
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    match default().and_then(|d| d.xRoundup) {
        // SAFETY: the default allocator's own function.
        Some(roundup) => unsafe { roundup(n) },
        None => n,
    }
}

unsafe extern "C" fn x_init(app: *mut c_void) -> c_int {
    match default().and_then(|d| d.xInit) {
        // SAFETY: the default allocator's own function with its own app data.
        Some(init) => unsafe { init(app) },
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_shutdown(app: *mut c_void) {
    if let Some(shutdown) = default().and_then(|d| d.xShutdown) {
        // SAFETY: the default allocator's own function with its own app data.
        unsafe { shutdown(app) }
    }
}

/// Installs the watch. Must run before SQLite starts (before any connection opens);
/// [`crate::vfs::register`] calls it first thing.
pub(crate) fn install() -> Result<(), String> {
    let mut methods = ffi::sqlite3_mem_methods {
        xMalloc: None,
        xFree: None,
        xRealloc: None,
        xSize: None,
        xRoundup: None,
        xInit: None,
        xShutdown: None,
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_GETMALLOC takes a pointer to a methods struct to fill.
    let rc =
        unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETMALLOC, &mut methods as *mut ffi::sqlite3_mem_methods) };
    if rc != ffi::SQLITE_OK {
        return Err("SQLite started before lightraft could watch its memory; open lightraft's databases first".into());
    }
    let app = methods.pAppData;
    let _ = DEFAULT.set(Default(methods));
    let ours = ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: app,
    };
    // SAFETY: SQLITE_CONFIG_MALLOC copies the struct we pass.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &ours as *const ffi::sqlite3_mem_methods) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("installing lightraft's memory watch failed with code {rc}"));
    }
    Ok(())
}
