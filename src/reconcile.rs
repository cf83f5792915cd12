//! reconcile (stub)
