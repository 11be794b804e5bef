//! A replicated write as it sits in the log: the client's SQL plus everything the leader
//! fixes for every replica: the time, a random seed, and the limits the line runs under.
//!
//! Limits travel in the entry, not in each node's config, so every replica (and a replica
//! that replays the log after its operator changed the config) stops a runaway line at
//! exactly the same point.
//!
//! The encoding is binary and compact: a version byte, eight little-endian 64-bit fields,
//! then the SQL as UTF-8. A line of any bytes costs only its own length plus 65.

/// What one line may consume. The same on every replica for a given entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// SQLite virtual-machine steps (a deterministic measure of work).
    pub max_steps: u64,
    /// The largest string or blob (SQLite's `SQLITE_LIMIT_LENGTH`).
    pub max_value_bytes: u64,
    /// How much the line may grow the database.
    pub max_growth_bytes: u64,
    /// The largest the database may become; 0 for no limit.
    pub max_database_bytes: u64,
    /// The most result data (rows from RETURNING or SELECT) the line may produce.
    pub max_result_bytes: u64,
    /// How much temporary files (sorts, statement journals) may grow during the line.
    pub max_temp_bytes: u64,
}

/// The longest LIKE or GLOB pattern (SQLite's default is 50,000). Matching costs up to
/// the text's length times the pattern's, in one step.
pub const MAX_PATTERN_BYTES: i32 = 256;

impl Limits {
    /// The smallest value-size limit a line runs under, whatever the entry says. SQLite's
    /// own modules store blobs of up to 128 KiB (R-tree nodes, FTS5 pages) and do not all
    /// notice a lower limit: an R-tree would write an undersized node and be broken.
    pub const MIN_VALUE_BYTES: u64 = 1 << 20;

    /// `max_value_bytes` as SQLite's length limit, never below [`Limits::MIN_VALUE_BYTES`].
    pub fn length_limit(&self) -> i32 {
        self.max_value_bytes.clamp(Limits::MIN_VALUE_BYTES, i32::MAX as u64) as i32
    }

    /// The largest single allocation a line may make (see [`crate::mem`]): four values'
    /// worth, and never below 64 MiB, which SQLite's own buffers (sorting) stay under.
    pub fn allocation_cap(&self) -> u64 {
        (4 * self.length_limit() as u64).max(64 << 20)
    }

    /// How many bytes a write may move through large allocations (see [`crate::mem`]):
    /// sixty-four values' worth, or sixteen times what it may add to the database,
    /// whichever is more. Deterministic, like the step budget, and it sees what steps
    /// cannot: one step copying megabytes.
    pub fn allocation_budget(&self) -> u64 {
        (64 * self.length_limit() as u64).max(self.max_growth_bytes.saturating_mul(16))
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_steps: 100_000_000,
            max_value_bytes: 8 << 20,
            max_growth_bytes: 64 << 20,
            max_database_bytes: 0,
            max_result_bytes: 8 << 20,
            max_temp_bytes: 1 << 30,
        }
    }
}

/// A replicated write: one line of SQL and what the leader fixed for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteCommand {
    /// One line of SQL: one or more statements, applied as one transaction.
    pub sql: String,
    /// The leader's clock when it proposed the write, in Unix milliseconds: what
    /// `datetime('now')` and `CURRENT_TIMESTAMP` return on every replica.
    pub time_ms: i64,
    /// Seeds `random()` and `randomblob()` for this entry.
    pub seed: u64,
    /// What the line may consume.
    pub limits: Limits,
    /// Who asked for the write, when a node forwarded it to the leader: so that node can
    /// recognise the entry in its own log (see the node's `forwarding.rs`). The state
    /// machine ignores it.
    pub origin: Option<Origin>,
}

/// A forwarded write's origin: the node its client sent it to, and that node's id for
/// the request (unique across the node's restarts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The node the client sent the write to.
    pub node: u64,
    /// That node's request id.
    pub request: u64,
}

/// Version 1 had no origin; version 2 adds two words. Both are read, so logs written
/// before the origin existed still apply.
const VERSION: u8 = 2;
const V1: u8 = 1;
const V1_HEADER: usize = 1 + 8 * 8;
const HEADER: usize = V1_HEADER + 1 + 2 * 8;

impl WriteCommand {
    /// The bytes of the log entry.
    pub fn encode(&self) -> Vec<u8> {
        let l = &self.limits;
        let mut out = Vec::with_capacity(HEADER + self.sql.len());
        out.push(VERSION);
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        for field in
            [self.seed, l.max_steps, l.max_value_bytes, l.max_growth_bytes, l.max_database_bytes, l.max_result_bytes]
        {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&l.max_temp_bytes.to_le_bytes());
        let origin = self.origin.unwrap_or(Origin { node: 0, request: 0 });
        out.push(u8::from(self.origin.is_some()));
        out.extend_from_slice(&origin.node.to_le_bytes());
        out.extend_from_slice(&origin.request.to_le_bytes());
        out.extend_from_slice(self.sql.as_bytes());
        out
    }

    /// Reads only the origin of an encoded command, without copying its SQL: the node
    /// looks at every committed entry for its forwarded writes.
    pub fn origin_of(bytes: &[u8]) -> Option<Origin> {
        if bytes.len() < HEADER || bytes[0] != VERSION || bytes[V1_HEADER] != 1 {
            return None;
        }
        Some(Origin { node: word(bytes, V1_HEADER + 1), request: word(bytes, V1_HEADER + 9) })
    }

    /// Parses a log entry's bytes.
    pub fn decode(bytes: &[u8]) -> Result<WriteCommand, String> {
        let (header, origin) = match bytes.first() {
            Some(&VERSION) if bytes.len() >= HEADER => (HEADER, WriteCommand::origin_of(bytes)),
            Some(&V1) if bytes.len() >= V1_HEADER => (V1_HEADER, None),
            _ => return Err("the log entry is not a write command this version understands".to_string()),
        };
        let field = |i: usize| word(bytes, 1 + 8 * i);
        let sql = std::str::from_utf8(&bytes[header..]).map_err(|_| "the log entry's SQL is not UTF-8".to_string())?;
        Ok(WriteCommand {
            sql: sql.to_string(),
            time_ms: field(0) as i64,
            seed: field(1),
            limits: Limits {
                max_steps: field(2),
                max_value_bytes: field(3),
                max_growth_bytes: field(4),
                max_database_bytes: field(5),
                max_result_bytes: field(6),
                max_temp_bytes: field(7),
            },
            origin,
        })
    }
}

/// The little-endian word at `start` (the caller checked the length).
fn word(bytes: &[u8], start: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[start..start + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_cost_little_more_than_their_sql() {
        let command = WriteCommand {
            sql: "INSERT INTO t VALUES ('\u{1}\u{2}\u{1b}[2J é')".into(),
            time_ms: -5,
            seed: u64::MAX,
            limits: Limits { max_database_bytes: 7, ..Limits::default() },
            origin: Some(Origin { node: 2, request: u64::MAX }),
        };
        let bytes = command.encode();
        assert_eq!(bytes.len(), command.sql.len() + 82);
        assert_eq!(WriteCommand::origin_of(&bytes), command.origin);
        assert_eq!(WriteCommand::decode(&bytes), Ok(command.clone()));
        let local = WriteCommand { origin: None, ..command.clone() };
        assert_eq!(WriteCommand::origin_of(&local.encode()), None);
        assert_eq!(WriteCommand::decode(&local.encode()), Ok(local));
        assert!(WriteCommand::decode(b"{\"sql\":\"x\"}").is_err());
        assert!(WriteCommand::decode(&[]).is_err());
        assert_eq!(WriteCommand::origin_of(&[VERSION]), None);
        let mut bad_utf8 = WriteCommand { sql: String::new(), origin: None, ..command.clone() }.encode();
        bad_utf8.push(0xff);
        assert!(WriteCommand::decode(&bad_utf8).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn commands_written_before_the_origin_existed_still_decode() {
        let command = WriteCommand {
            sql: "INSERT INTO t VALUES (1)".into(),
            time_ms: 1_700_000_000_000,
            seed: 42,
            limits: Limits::default(),
            origin: None,
        };
        // Version 1: the same header without the origin.
        let v2 = command.encode();
        let mut v1 = vec![V1];
        v1.extend_from_slice(&v2[1..V1_HEADER]);
        v1.extend_from_slice(command.sql.as_bytes());
        assert_eq!(WriteCommand::decode(&v1), Ok(command));
        assert_eq!(WriteCommand::origin_of(&v1), None);
    }
}
