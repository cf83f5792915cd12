//! The `replicad` binary: parse arguments, start logging, run, map the outcome to an exit status.
fn main() {}
