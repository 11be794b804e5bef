//! SQLite's memory, watched. As the VFS does for files ([`crate::vfs`]), this wraps
//! SQLite's allocator so that, for the line a thread is running:
//!
//! 1. a real allocation failure (the process ran out of memory: this node's problem) is
//!    told apart from SQLite refusing a request by its size, which happens alike on every
//!    replica (`concat()` of many large arguments asks for their total at once);
//! 2. no single allocation exceeds the line's cap: anything larger could only build a
//!    value that SQLite would reject as too big afterwards, yet every replica would first
//!    pay for it in memory;
//! 3. allocations of [`LARGE`] bytes or more (values, sort buffers; not the ones SQLite
//!    marks benign, such as page-cache hash tables, whose timing depends on how warm the
//!    connection's caches are) count against the line's budget, so a line that builds or
//!    copies large values over and over stops after the same amount of work on every
//!    replica instead of running for hours. The step budget alone cannot see that one
//!    step may copy megabytes.
//!
//! Sizes are what SQLite asks for, which depends only on the statement and the data (the
//! default allocator records each size in a header, so growth is computed from requested
//! sizes, never from what the C library happened to hand out). A large request is charged
//! its whole size, so whether a growing buffer started in a lookaside slot or on the heap
//! does not matter, and page caches allocate page by page (no bulk allocation whose
//! timing depends on the connection's age). So the caps stop a line at the same point
//! everywhere; the differential test compares every line's charge between a replica that
//! never stopped and one that restarted.

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
    /// How deep this thread is in SQLite's "benign" sections: allocations SQLite can do
    /// without (page-cache hash tables, lookaside, caches), whose timing depends on the
    /// connection's history. They are neither charged nor refused.
    static BENIGN: Cell<u32> = const { Cell::new(0) };
}

extern "C" fn benign_begin() {
    let _ = BENIGN.try_with(|depth| depth.set(depth.get() + 1));
}

extern "C" fn benign_end() {
    let _ = BENIGN.try_with(|depth| depth.set(depth.get().saturating_sub(1)));
}

fn in_benign_section() -> bool {
    BENIGN.try_with(|depth| depth.get() > 0).unwrap_or(false)
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
    with_line(|line| {
        *line =
            Line { failed: line.failed, refusal: line.refusal, injected: line.injected, used: line.used, ..UNLIMITED }
    });
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

/// Charges a request for a block of `size` bytes (new, or a resized one); false to
/// refuse. A large request costs its whole size, even when it grows a block: what the
/// block was before (a lookaside slot or the heap, which depends on the connection's
/// history) must not change the cost.
fn admit(size: u64) -> bool {
    if in_benign_section() {
        return true;
    }
    with_line(|line| {
        if size >= LARGE && line.injected > 0 {
            line.injected -= 1;
            line.failed = true;
            return false;
        }
        if size > line.cap {
            line.refusal.get_or_insert(Refusal::TooLarge { size });
            return false;
        }
        size < LARGE || line.charge(size)
    })
    .unwrap_or(true)
}

impl Line {
    /// Adds `bytes` to what the line used; false (and the refusal noted) past its budget.
    fn charge(&mut self, bytes: u64) -> bool {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.budget {
            self.refusal.get_or_insert(Refusal::Budget { budget: self.budget });
            return false;
        }
        true
    }
}

/// Charges `bytes` of work done outside SQLite's allocator (our own string searches);
/// false once the line's budget is spent.
pub fn charge_work(bytes: u64) -> bool {
    with_line(|line| line.charge(bytes)).unwrap_or(true)
}

/// What the current (or last) line on this thread was charged so far.
pub fn charged() -> u64 {
    with_line(|line| line.used).unwrap_or(0)
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
    if !admit(n.max(0) as u64) {
        return std::ptr::null_mut();
    }
    let Some(malloc) = default().and_then(|d| d.xMalloc) else { return std::ptr::null_mut() };
    // SAFETY: the default allocator's own function.
    let p = unsafe { malloc(n) };
    if p.is_null() && !in_benign_section() {
        note_failure();
    }
    p
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if !admit(n.max(0) as u64) {
        return std::ptr::null_mut();
    }
    let Some(realloc) = default().and_then(|d| d.xRealloc) else { return std::ptr::null_mut() };
    // SAFETY: the default allocator's own function on its own block.
    let q = unsafe { realloc(p, n) };
    if q.is_null() && !in_benign_section() {
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
    // No bulk page allocation when a page cache first fills: whether a cache is new
    // (say, the TEMP database's on a freshly opened connection) would change a line's
    // large allocations. Pages are then allocated one at a time, well below LARGE.
    // SAFETY: SQLITE_CONFIG_PAGECACHE takes a buffer (none), a page size and a count.
    let rc = unsafe {
        ffi::sqlite3_config(ffi::SQLITE_CONFIG_PAGECACHE, std::ptr::null_mut::<c_void>(), 0 as c_int, 0 as c_int)
    };
    if rc != ffi::SQLITE_OK {
        return Err(format!("turning off SQLite's bulk page allocation failed with code {rc}"));
    }
    type Hook = extern "C" fn();
    // SAFETY: registers two plain functions SQLite calls around its benign allocations.
    unsafe {
        ffi::sqlite3_test_control(ffi::SQLITE_TESTCTRL_BENIGN_MALLOC_HOOKS, benign_begin as Hook, benign_end as Hook)
    };
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
