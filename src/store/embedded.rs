//! The embedded store (SQLite). Being written.
