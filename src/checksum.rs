//! checksum (stub)
