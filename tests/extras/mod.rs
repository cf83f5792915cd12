//! `replicad completions bash|zsh|fish` and `replicad man` generate, and the man page
//! mentions every option (enumerated from clap, so an option added later is checked too).
//! See: issue #11, "Shell completions and a man page".

use clap::CommandFactory;
use replicad::cli::Args;

use crate::support::{Run, replicad};

fn run(args: &[&str]) -> Run {
    Run::of(replicad().args(args))
}

#[test]
fn the_man_page_mentions_every_option() {
    let man = run(&["man"]);
    man.assert_code(0);
    assert!(man.stdout.starts_with(".ie") || man.stdout.contains(".TH"), "not roff:\n{man}");
    // roff escapes '-' as '\-'.
    let page = man.stdout.replace("\\-", "-");
    let command = Args::command();
    let mut checked = 0;
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(page.contains(&format!("--{long}")), "--{long} missing from the man page");
            checked += 1;
        }
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(page.contains(env.as_ref()), "{env} missing from the man page");
        }
    }
    assert!(checked >= 17, "only {checked} options checked");
}

#[test]
fn completions_generate_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        out.assert_code(0);
        assert!(out.stdout.contains("status-addr"), "{shell} completions lack options:\n{out}");
    }
    let bad = run(&["completions", "tcsh"]);
    bad.assert_code(2);
    assert!(bad.stderr.contains("bash|zsh|fish"), "{bad}");
}

#[test]
fn a_reader_that_closes_the_pipe_early_is_not_a_panic() {
    // `replicad completions bash | grep -q …` closes the pipe after the first match:
    // clap_complete panicked on the failed write (exit 101); `.ci/run` tripped on it.
    for args in [&["completions", "bash"][..], &["man"][..]] {
        let mut child = std::process::Command::new(crate::support::bin())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take()); // the reader is gone before a byte is written
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
