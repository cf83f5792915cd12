//! replicad's integration tests, in one test binary so the crate is linked once (STYLE.md:
//! "one integration test binary"). Test modules live in subdirectories, which cargo does not
//! auto-discover as separate targets.
//!
//! - `support`: the oracle (strict tree comparer), tree builder, binary runner, waiting.
//! - `bucket`: the S3 REPLICA side against a real Garage and real rclone, and the bucket
//!   oracle's own tests.
//! - `boundary`: never touch what is not ours — bind mounts, unmounts, planted links.
//! - `comparer`: proves the oracle catches every kind of difference.
//! - `exact`: hard links, xattrs, ACLs, capabilities, `-x`, REPLICAs without xattrs.
//! - `env`: every option through its `REPLICAD_*` variable; typos warned.
//! - `exchange`: `renameat2(RENAME_EXCHANGE)` and parent/child churn, followed by events.
//! - `extras`: shell completions and the man page generate and cover every option.
//! - `faults`: full, read-only and coarse-timed REPLICAs, unwritable logs, signals, limits.
//! - `logs`: hostile names cannot forge log fields (logfmt and JSON parsed back).
//! - `once`: one-shot runs of the binary against SPEC.md §1–§3.
//! - `promises`: README promises no other module covered (fsync, verify, jobs, guard, systemd, logging).
//! - `production`: SIGHUP reopens the log; as PID 1 in namespaces by env alone; deploy/ YAML.
//! - `prop`: random operation sequences on SOURCE, a pass (or the running service's events),
//!   then the oracle.
//! - `removals`: the event path must remove every name that left SOURCE, whatever the
//!   debouncer merged away.
//! - `service`: the long-running service (events, passes, signals, guard, systemd).
//! - `sparse`: a 10 GiB file holding a few MiB of data stays sparse and equal.
//! - `status`: the status endpoint's routes, lag and in-sync time, the page in Chromium.
//! - `attack`: a stranger writing into REPLICA races replicad; nothing outside REPLICA changes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

mod support;

mod attack;
mod boundary;
mod bucket;
mod comparer;
mod env;
mod exact;
mod exchange;
mod extras;
mod faults;
mod logs;
mod once;
mod production;
mod promises;
mod prop;
mod removals;
mod seam;
mod service;
mod sparse;
mod status;
