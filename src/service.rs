//! service (stub)
