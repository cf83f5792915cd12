//! The `replicad` binary: parse arguments, build the validated configuration, start
//! logging, run one pass or the service, and map the outcome to an exit status
//! (0 ok, 1 fatal, 2 usage — clap's own, 23 partial).

use std::process::ExitCode;

use clap::Parser;
use replicad::cli::Args;
use replicad::config::Config;
use replicad::{extras, logging, service};

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(extra) = extras::recognise(&argv) {
        let written = match extra {
            Ok(extra) => extras::write(extra, &mut std::io::stdout().lock()),
            Err(usage) => {
                eprintln!("replicad: {usage}");
                return ExitCode::from(2);
            }
        };
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            // The reader took what it wanted and closed the pipe (`| head`, `| grep -q`).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("replicad: cannot write to standard output: {e}");
                ExitCode::from(1)
            }
        };
    }
    let args = Args::parse_from(argv);
    // Refusals are printed before logging starts: one clear line, nothing touched.
    let mut config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("replicad: {:#}", anyhow::Error::from(e));
            return ExitCode::from(1);
        }
    };
    let log = logging::init(
        config.log_format,
        config.verbosity,
        config.log_file.take(),
        config.log_path.clone(),
    );
    let status = service::run_main(config);
    // Lines lost in the log file mean the run did not do all it promised.
    let lost = log.report_losses();
    // Dropping the guard flushes the last lines (bounded if an output is stalled).
    drop(log);
    ExitCode::from(if lost && status == 0 { 1 } else { status })
}
