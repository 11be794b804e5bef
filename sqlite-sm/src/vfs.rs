//! The lightraft VFS: SQLite's default VFS with three additions, each needed to keep
//! replicas identical and the node honest about its disk.
//!
//! 1. A pinned clock. `datetime('now')`, `CURRENT_TIMESTAMP`, `unixepoch()` and friends ask
//!    the VFS for the time (`xCurrentTimeInt64`), including inside column DEFAULTs and
//!    triggers, which no rewriting of statement text could reach. While an entry is
//!    applied, this thread's clock reports the time the leader wrote into the entry.
//! 2. A watch on the operating system. Some SQLite errors can come either from the entry
//!    or from this node's disk: `SQLITE_FULL` is both "AUTOINCREMENT ran out" (the same on
//!    every replica) and "the disk is full" (this node only). Every file operation passes
//!    through here, so a failed `read`, `write`, `fsync`, `open`... is recorded for the
//!    thread that caused it. If a line fails and the OS failed during it, the node is at
//!    fault; otherwise the entry is, identically everywhere.
//! 3. A budget for temporary files (sorting, statement journals, materialized subqueries).
//!    Their growth is a function of the statement and the data, so a line that needs more
//!    than its budget fails the same way on every replica, before it can fill a disk.
//!
//! Everything else (locking, shared memory, the files' bytes) is the default VFS's own
//! code, called with the default VFS's own arguments.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::{Once, OnceLock};

use rusqlite::ffi;

/// The name under which the VFS is registered.
pub const VFS_NAME: &str = "lightraft";

/// Milliseconds from the Julian day epoch to the Unix epoch (2440587.5 days).
const UNIX_EPOCH_JULIAN_MS: i64 = 210_866_760_000_000;

/// An operating-system failure seen by SQLite on this thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoFailure {
    /// What was attempted: "write", "fsync", "open", ...
    pub operation: &'static str,
    /// SQLite's (extended) result code for it.
    pub code: c_int,
    /// The OS error, as the OS describes it.
    pub os_error: String,
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed ({}; SQLite code {})", self.operation, self.os_error, self.code)
    }
}

/// What this thread's current line did to the OS, and may still do.
#[derive(Default)]
struct Watch {
    /// The first OS failure since the line began.
    failure: Option<IoFailure>,
    /// Bytes by which temporary files grew during the line.
    temp_grown: u64,
    /// The most they may grow; `None` means no limit.
    temp_limit: Option<u64>,
    /// The line asked for more temporary space than its budget.
    temp_exceeded: bool,
    /// Test hook: fail this many upcoming writes with this code, as a broken disk would.
    injected: Option<(u32, c_int)>,
}

thread_local! {
    /// The pinned time while this thread applies an entry, in Unix milliseconds.
    static PINNED_MS: Cell<Option<i64>> = const { Cell::new(None) };
    static WATCH: RefCell<Watch> = RefCell::new(Watch::default());
    /// Temporary files this thread's connections hold open.
    static OPEN_TEMP: Cell<u64> = const { Cell::new(0) };
}

/// How many temporary files this thread's connections hold open. A statement journal
/// that outgrew memory stays open until its transaction ends.
pub fn temp_files_open() -> u64 {
    OPEN_TEMP.with(Cell::get)
}

/// Starts watching a new line on this thread: forgets earlier failures and sets the
/// temporary-file budget.
pub fn begin_line(temp_limit: Option<u64>) {
    WATCH.with(|w| {
        let mut w = w.borrow_mut();
        let injected = w.injected.take();
        *w = Watch { temp_limit, injected, ..Watch::default() };
    });
}

/// The OS failure seen since [`begin_line`], if any.
pub fn io_failure() -> Option<IoFailure> {
    WATCH.with(|w| w.borrow().failure.clone())
}

/// Whether the line ran out of temporary-file budget since [`begin_line`].
pub fn temp_budget_exceeded() -> bool {
    WATCH.with(|w| w.borrow().temp_exceeded)
}

/// Test hook: the next `count` writes on this thread fail with `code` (e.g.
/// `SQLITE_FULL`, as on a full disk), as if the OS had refused them.
#[doc(hidden)]
pub fn inject_write_failures(count: u32, code: c_int) {
    WATCH.with(|w| w.borrow_mut().injected = (count > 0).then_some((count, code)));
}

fn record(operation: &'static str, code: c_int) {
    let os_error = std::io::Error::last_os_error().to_string();
    WATCH.with(|w| {
        let mut w = w.borrow_mut();
        if w.failure.is_none() {
            w.failure = Some(IoFailure { operation, code, os_error });
        }
    });
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

// ---- registration -----------------------------------------------------------------------

/// The default VFS, whose functions do the real work.
static DEFAULT: OnceLock<Default> = OnceLock::new();
static REGISTER: Once = Once::new();

/// The default VFS, as a pointer that may be shared between threads: SQLite keeps it
/// for the life of the process and never changes it.
struct Default(*mut ffi::sqlite3_vfs);
// SAFETY: the default VFS is immutable, process-wide state owned by SQLite.
unsafe impl Send for Default {}
// SAFETY: as above.
unsafe impl Sync for Default {}

fn default_vfs() -> *mut ffi::sqlite3_vfs {
    DEFAULT.get().map_or(std::ptr::null_mut(), |d| d.0)
}

/// Our file: SQLite's file header (pointing at our methods), what we track, then the
/// default VFS's own file structure, which the default methods work on.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    /// A temporary file: its growth counts against the line's budget.
    temp: bool,
    /// The highest offset written to a temporary file.
    size: u64,
}

const REAL_OFFSET: usize = std::mem::size_of::<File>().next_multiple_of(8);

/// The default VFS's file inside ours.
///
/// # Safety
/// `file` must point to a `File` allocated by SQLite with our `szOsFile`.
unsafe fn real(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: SQLite allocated REAL_OFFSET + the default szOsFile bytes for the file.
    unsafe { file.cast::<u8>().add(REAL_OFFSET).cast() }
}

/// Registers the VFS (and the memory watch) once per process, before SQLite starts: call
/// it before opening any connection.
pub fn register() -> Result<(), String> {
    let mut result = Ok(());
    REGISTER.call_once(|| {
        // The memory watch must be in place before SQLite starts, which the next call does.
        if let Err(e) = crate::mem::install() {
            result = Err(e);
            return;
        }
        // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, valid for the process.
        let default = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
        if default.is_null() {
            result = Err("SQLite has no default VFS".to_string());
            return;
        }
        // SAFETY: `default` is valid; we copy the struct, then only change our copy.
        let mut vfs = unsafe { *default };
        if vfs.iVersion < 2 || vfs.xCurrentTimeInt64.is_none() {
            result = Err("the default SQLite VFS has no 64-bit clock".to_string());
            return;
        }
        let _ = DEFAULT.set(Default(default));
        let Ok(name) = CString::new(VFS_NAME) else { return };
        vfs.zName = name.into_raw();
        vfs.pNext = std::ptr::null_mut();
        vfs.szOsFile = (REAL_OFFSET + vfs.szOsFile as usize) as c_int;
        vfs.xOpen = Some(x_open);
        vfs.xDelete = Some(x_delete);
        vfs.xAccess = Some(x_access);
        vfs.xCurrentTimeInt64 = Some(x_current_time_int64);
        vfs.xCurrentTime = Some(x_current_time);
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

// ---- the VFS's own functions --------------------------------------------------------------

unsafe extern "C" fn x_current_time_int64(_vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    if let Some(ms) = PINNED_MS.with(|p| p.get()) {
        // SAFETY: SQLite passes a valid pointer for the result.
        unsafe { *out = ms + UNIX_EPOCH_JULIAN_MS };
        return ffi::SQLITE_OK;
    }
    let default = default_vfs();
    // SAFETY: the default VFS is valid; register() checked it has this function.
    match unsafe { default.as_ref() }.and_then(|v| v.xCurrentTimeInt64) {
        // SAFETY: the default VFS's own function, with its own VFS pointer.
        Some(real) => unsafe { real(default, out) },
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let mut ms = 0i64;
    // SAFETY: forwards to the function above with a valid local pointer.
    let rc = unsafe { x_current_time_int64(vfs, &mut ms) };
    // SAFETY: SQLite passes a valid pointer for the result.
    unsafe { *out = ms as f64 / 86_400_000.0 };
    rc
}

const TEMP_FILES: c_int = ffi::SQLITE_OPEN_TEMP_DB
    | ffi::SQLITE_OPEN_TEMP_JOURNAL
    | ffi::SQLITE_OPEN_SUBJOURNAL
    | ffi::SQLITE_OPEN_TRANSIENT_DB;

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let default = default_vfs();
    // SAFETY: SQLite hands us a block of our szOsFile bytes for the file.
    let shim = file.cast::<File>();
    // SAFETY: as above; until the real open succeeds SQLite must not call our methods.
    unsafe { (*shim).base.pMethods = std::ptr::null() };
    // SAFETY: the default VFS is valid and has xOpen.
    let Some(open) = (unsafe { default.as_ref() }).and_then(|v| v.xOpen) else { return ffi::SQLITE_CANTOPEN };
    // SAFETY: the default VFS opens its own file structure inside ours.
    let rc = unsafe { open(default, name, real(file), flags, out_flags) };
    if rc != ffi::SQLITE_OK {
        record("open", rc);
        return rc;
    }
    // SAFETY: the real open succeeded, so the real file has its methods.
    let methods = unsafe { (*real(file)).pMethods };
    if methods.is_null() {
        return rc;
    }
    // SAFETY: `methods` is the default VFS's static method table.
    let with_shm = unsafe { (*methods).iVersion >= 3 && (*methods).xShmMap.is_some() };
    // SAFETY: `shim` is our file; we fill in our part.
    unsafe {
        (*shim).temp = name.is_null() || flags & TEMP_FILES != 0;
        (*shim).size = 0;
        if (*shim).temp {
            OPEN_TEMP.with(|n| n.set(n.get() + 1));
        }
        (*shim).base.pMethods = if with_shm { &METHODS_V3 } else { &METHODS_V1 };
    }
    rc
}

unsafe extern "C" fn x_delete(_vfs: *mut ffi::sqlite3_vfs, name: *const c_char, sync_dir: c_int) -> c_int {
    let default = default_vfs();
    // SAFETY: the default VFS is valid.
    let Some(delete) = (unsafe { default.as_ref() }).and_then(|v| v.xDelete) else { return ffi::SQLITE_IOERR_DELETE };
    // SAFETY: forwarded unchanged to the default VFS.
    let rc = unsafe { delete(default, name, sync_dir) };
    if rc != ffi::SQLITE_OK && rc != ffi::SQLITE_IOERR_DELETE_NOENT {
        record("delete", rc);
    }
    rc
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let default = default_vfs();
    // SAFETY: the default VFS is valid.
    let Some(access) = (unsafe { default.as_ref() }).and_then(|v| v.xAccess) else { return ffi::SQLITE_IOERR_ACCESS };
    // SAFETY: forwarded unchanged to the default VFS.
    let rc = unsafe { access(default, name, flags, out) };
    if rc != ffi::SQLITE_OK {
        record("access", rc);
    }
    rc
}

// ---- the file methods: forward, and watch ---------------------------------------------------

/// Calls the real file's method `$name` with `$args`, or fails with `$missing` if the
/// default VFS lacks it.
macro_rules! forward {
    ($file:expr, $name:ident, $missing:expr $(, $arg:expr)*) => {{
        // SAFETY: SQLite calls our methods only on files we opened, whose real part holds
        // the default VFS's methods.
        let real = unsafe { real($file) };
        match unsafe { (*(*real).pMethods).$name } {
            // SAFETY: the default VFS's own method on its own file.
            Some(method) => unsafe { method(real $(, $arg)*) },
            None => $missing,
        }
    }};
}

/// Whether a locking result is an ordinary "someone else holds it", not a failure.
fn is_busy(rc: c_int) -> bool {
    rc & 0xff == ffi::SQLITE_BUSY
}

unsafe extern "C" fn m_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite passes a file our xOpen filled in.
    if unsafe { (*file.cast::<File>()).temp } {
        OPEN_TEMP.with(|n| n.set(n.get().saturating_sub(1)));
    }
    let rc = forward!(file, xClose, ffi::SQLITE_OK);
    if rc != ffi::SQLITE_OK {
        record("close", rc);
    }
    rc
}

unsafe extern "C" fn m_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amount: c_int, offset: i64) -> c_int {
    let rc = forward!(file, xRead, ffi::SQLITE_IOERR_READ, buf, amount, offset);
    // A short read is how the end of a file looks; SQLite expects it.
    if rc != ffi::SQLITE_OK && rc != ffi::SQLITE_IOERR_SHORT_READ {
        record("read", rc);
    }
    rc
}

unsafe extern "C" fn m_write(file: *mut ffi::sqlite3_file, buf: *const c_void, amount: c_int, offset: i64) -> c_int {
    let injected = WATCH.with(|w| {
        let mut w = w.borrow_mut();
        let (count, code) = w.injected?;
        w.injected = (count > 1).then_some((count - 1, code));
        Some(code)
    });
    if let Some(code) = injected {
        record("write (injected)", code);
        return code;
    }
    let shim = file.cast::<File>();
    // SAFETY: `file` is one of ours (see x_open).
    let (temp, size) = unsafe { ((*shim).temp, (*shim).size) };
    let end = offset.max(0) as u64 + amount.max(0) as u64;
    if temp && end > size {
        let refused = WATCH.with(|w| {
            let mut w = w.borrow_mut();
            let grown = w.temp_grown + (end - size);
            if w.temp_limit.is_some_and(|limit| grown > limit) {
                w.temp_exceeded = true;
                return true;
            }
            w.temp_grown = grown;
            false
        });
        if refused {
            // Not an OS failure: the line's own budget, the same on every replica.
            return ffi::SQLITE_FULL;
        }
        // SAFETY: as above.
        unsafe { (*shim).size = end };
    }
    let rc = forward!(file, xWrite, ffi::SQLITE_IOERR_WRITE, buf, amount, offset);
    if rc != ffi::SQLITE_OK {
        record("write", rc);
    }
    rc
}

unsafe extern "C" fn m_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let rc = forward!(file, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, size);
    if rc != ffi::SQLITE_OK {
        record("truncate", rc);
    } else {
        let shim = file.cast::<File>();
        // SAFETY: `file` is one of ours.
        unsafe { (*shim).size = (*shim).size.min(size.max(0) as u64) };
    }
    rc
}

unsafe extern "C" fn m_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let rc = forward!(file, xSync, ffi::SQLITE_IOERR_FSYNC, flags);
    if rc != ffi::SQLITE_OK {
        record("fsync", rc);
    }
    rc
}

unsafe extern "C" fn m_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    let rc = forward!(file, xFileSize, ffi::SQLITE_IOERR_FSTAT, size);
    if rc != ffi::SQLITE_OK {
        record("stat", rc);
    }
    rc
}

unsafe extern "C" fn m_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let rc = forward!(file, xLock, ffi::SQLITE_IOERR_LOCK, level);
    if rc != ffi::SQLITE_OK && !is_busy(rc) {
        record("lock", rc);
    }
    rc
}

unsafe extern "C" fn m_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let rc = forward!(file, xUnlock, ffi::SQLITE_IOERR_UNLOCK, level);
    if rc != ffi::SQLITE_OK && !is_busy(rc) {
        record("unlock", rc);
    }
    rc
}

unsafe extern "C" fn m_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let rc = forward!(file, xCheckReservedLock, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, out);
    if rc != ffi::SQLITE_OK {
        record("lock check", rc);
    }
    rc
}

unsafe extern "C" fn m_file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // Unknown opcodes answer SQLITE_NOTFOUND by design: nothing to watch here.
    forward!(file, xFileControl, ffi::SQLITE_NOTFOUND, op, arg)
}

unsafe extern "C" fn m_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xSectorSize, 4096)
}

unsafe extern "C" fn m_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xDeviceCharacteristics, 0)
}

unsafe extern "C" fn m_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let rc = forward!(file, xShmMap, ffi::SQLITE_IOERR_SHMMAP, page, page_size, extend, out);
    if rc != ffi::SQLITE_OK && rc & 0xff != ffi::SQLITE_READONLY {
        record("shared-memory map", rc);
    }
    rc
}

unsafe extern "C" fn m_shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    let rc = forward!(file, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags);
    if rc != ffi::SQLITE_OK && !is_busy(rc) {
        record("shared-memory lock", rc);
    }
    rc
}

unsafe extern "C" fn m_shm_barrier(file: *mut ffi::sqlite3_file) {
    forward!(file, xShmBarrier, ())
}

unsafe extern "C" fn m_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    forward!(file, xShmUnmap, ffi::SQLITE_OK, delete)
}

unsafe extern "C" fn m_fetch(file: *mut ffi::sqlite3_file, offset: i64, amount: c_int, out: *mut *mut c_void) -> c_int {
    let rc = forward!(file, xFetch, ffi::SQLITE_OK, offset, amount, out);
    if rc != ffi::SQLITE_OK {
        record("memory map", rc);
    }
    rc
}

unsafe extern "C" fn m_unfetch(file: *mut ffi::sqlite3_file, offset: i64, page: *mut c_void) -> c_int {
    forward!(file, xUnfetch, ffi::SQLITE_OK, offset, page)
}

/// For files whose default methods have shared memory and memory mapping (all files of
/// the unix VFS).
static METHODS_V3: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(m_close),
    xRead: Some(m_read),
    xWrite: Some(m_write),
    xTruncate: Some(m_truncate),
    xSync: Some(m_sync),
    xFileSize: Some(m_file_size),
    xLock: Some(m_lock),
    xUnlock: Some(m_unlock),
    xCheckReservedLock: Some(m_check_reserved_lock),
    xFileControl: Some(m_file_control),
    xSectorSize: Some(m_sector_size),
    xDeviceCharacteristics: Some(m_device_characteristics),
    xShmMap: Some(m_shm_map),
    xShmLock: Some(m_shm_lock),
    xShmBarrier: Some(m_shm_barrier),
    xShmUnmap: Some(m_shm_unmap),
    xFetch: Some(m_fetch),
    xUnfetch: Some(m_unfetch),
};

/// For files whose default methods lack them: SQLite then never asks us for them.
static METHODS_V1: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
    ..METHODS_V3
};
