//! logging (stub)
