//! watch (stub)
