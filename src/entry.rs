//! entry (stub)
