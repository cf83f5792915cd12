//! replicad keeps a REPLICA directory an exact one-way copy of a SOURCE directory.
//!
//! # Layout
//! Events are hints, the filesystem is the truth: one idempotent operation, *reconcile a
//! path*, is used by both the periodic full pass and the event queue. Imports point down:
//!
//! | module | holds |
//! |---|---|
//! | [`service`] | the only place that spawns: watcher, passes, queue workers, signals, systemd |
//! | [`watch`] | notify-debouncer-full on SOURCE, turned into [`queue::Hint`]s; raw events noted so no merged-away name is lost |
//! | [`queue`] | pending paths: dedupe, fold into pending parents, one worker per path, retries |
//! | [`engine`] | the engine: walk both sides, `decide` (pure), then apply through the replica seam, as tasks on one pool of `--jobs` threads |
//! | [`replica`] | the REPLICA side as one seam (the `Replica` trait): the local, fd-relative implementation and the S3 bucket |
//! | [`status`] | the HTTP status endpoint: probes, Prometheus metrics, JSON and a page |
//! | [`stats`] | what the service knows of itself (counters, lag, in-sync time, last errors), for the status endpoint |
//! | [`guard`] | the roots' guards (deletion, replica, no symlink in their paths) and bind-mount boundaries |
//! | [`ops`] | primitive replica operations, each safe alone; never resolve a swappable name |
//! | [`checksum`] | MD5 of a file and a bounded cache keyed by inode and timestamps |
//! | [`entry`] | what one `statx` says about an entry, and how two entries differ |
//! | [`config`] | validated configuration built once from [`cli::Args`] |
//! | [`cli`] | the clap argument struct and DURATION parsing |
//! | [`extras`] | `replicad completions SHELL` and `replicad man`, from the clap definitions |
//! | [`logging`] | the tracing subscriber (stderr + optional file, text or JSON) |
//! | [`logfmt`] | the text log's fields, quoted so that no name can forge one |
//! | [`error`] | `Fatal` (exit 1) and `EntryError` (one entry; the pass goes on) |
//! | [`state`] | what one run leaves for the next: the mark of the last clean pass |
//! | [`relpath`] | paths relative to the roots, escaped for display |
//! | [`bucket`] | the S3 store side (mapping, store requests, quick check), behind `replica::bucket` |

pub mod bucket;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod engine;
pub mod entry;
pub mod error;
pub mod extras;
pub mod guard;
pub mod logfmt;
pub mod logging;
pub mod ops;
pub mod queue;
pub mod relpath;
pub mod replica;
pub mod service;
pub mod state;
pub mod stats;
pub mod status;
pub mod watch;
