//! `random()` and `randomblob(n)`, replaced on the state machine's connection by functions
//! drawing from a generator that each entry seeds (the leader picks the seed), so every
//! replica draws the same numbers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;

/// A seedable generator shared with the SQL functions it backs (SplitMix64).
#[derive(Clone, Debug, Default)]
pub struct SeededRandom {
    state: Arc<Mutex<u64>>,
    /// The largest blob `randomblob` may make: the line's value-size limit.
    max_blob: Arc<AtomicU64>,
}

impl SeededRandom {
    /// Restarts the sequence from `seed`; blobs may be at most `max_blob` bytes.
    pub fn reseed(&self, seed: u64, max_blob: u64) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = seed;
        self.max_blob.store(max_blob, Ordering::Relaxed);
    }

    fn next(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
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
            // Like SQLite's: at least one byte, and "too big" beyond the length limit,
            // checked before anything is allocated.
            let n = ctx.get::<i64>(0).unwrap_or(1).max(1) as u64;
            if n > rng.max_blob.load(Ordering::Relaxed) {
                return Err(rusqlite::Error::UserFunctionError("string or blob too big".into()));
            }
            let mut bytes = Vec::with_capacity(n as usize + 8);
            while (bytes.len() as u64) < n {
                bytes.extend_from_slice(&rng.next().to_le_bytes());
            }
            bytes.truncate(n as usize);
            Ok(bytes)
        })
    }
}
