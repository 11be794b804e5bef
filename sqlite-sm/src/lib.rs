//! Applies committed SQL to SQLite on every replica. Built in the next issue.
