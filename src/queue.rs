//! queue (stub)
