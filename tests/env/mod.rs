//! Configuration the way a unit file or a container gives it: every option through its
//! `REPLICAD_*` variable alone, list variables one item per line, booleans that refuse
//! what is not a boolean, and a warning naming the closest known variable for a typo.
//! See: issue #11, "Configuration the way a sidecar and a unit file give it".

use crate::support::{Run, Tree, replicad};

/// `replicad` with no arguments at all: only the variables given.
fn with_env(vars: &[(&str, &str)]) -> Run {
    let mut cmd = replicad();
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Run::of(&mut cmd)
}

fn roots(t: &Tree) -> [(&'static str, String); 2] {
    [
        ("REPLICAD_SOURCE", t.src().display().to_string()),
        ("REPLICAD_REPLICA", t.dst().display().to_string()),
    ]
}

fn run(t: &Tree, more: &[(&str, &str)]) -> Run {
    let roots = roots(t);
    let mut vars: Vec<(&str, &str)> = roots.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend_from_slice(more);
    with_env(&vars)
}

// See: issue #11 — `REPLICAD_DRY_RUN=true` was silently ignored and a real mirror ran.
#[test]
fn dry_run_from_the_environment_changes_nothing() {
    let t = Tree::new();
    t.file("a", "x");
    let r = run(&t, &[("REPLICAD_DRY_RUN", "true")]);
    r.assert_code(0);
    assert!(r.has_action("copy", "a"), "the plan names the copy:\n{r}");
    assert!(!t.dst().exists(), "a dry run created REPLICA:\n{r}");
}

#[test]
fn a_boolean_variable_that_is_not_a_boolean_is_refused() {
    let t = Tree::new();
    t.file("a", "x");
    let r = run(&t, &[("REPLICAD_DRY_RUN", "banana"), ("REPLICAD_ONCE", "1")]);
    r.assert_code(2);
    assert!(r.stderr.contains("--dry-run"), "the refusal names the option:\n{r}");
    assert!(!t.dst().exists(), "a refused run created REPLICA");
}

#[test]
fn false_turns_a_flag_off() {
    let t = Tree::new();
    t.file("a", "x");
    run(&t, &[("REPLICAD_DRY_RUN", "false"), ("REPLICAD_ONCE", "yes")]).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn excludes_one_per_line_and_from_a_file() {
    let t = Tree::new();
    t.file("keep", "k").file("a.o", "o").file("cache/x", "c").file("secret", "s");
    let list = t.base().join("excludes");
    std::fs::write(&list, "# a comment\n\nsecret\n").unwrap();
    let r = run(
        &t,
        &[
            ("REPLICAD_ONCE", "true"),
            ("REPLICAD_EXCLUDE", "*.o\r\ncache/\n"),
            ("REPLICAD_EXCLUDE_FROM", list.to_str().unwrap()),
        ],
    );
    r.assert_code(0);
    assert!(t.replica().exists("keep"), "{r}");
    for excluded in ["a.o", "cache", "secret"] {
        assert!(!t.replica().exists(excluded), "{excluded} was copied:\n{r}");
    }
}

#[test]
fn an_unreadable_exclude_file_is_refused_by_name() {
    let t = Tree::new();
    let r = run(&t, &[("REPLICAD_ONCE", "true"), ("REPLICAD_EXCLUDE_FROM", "/nonexistent/ex")]);
    r.assert_code(1);
    assert!(r.stderr.contains("/nonexistent/ex"), "{r}");
    assert!(!t.dst().exists());
}

#[test]
fn an_unknown_variable_is_warned_once_with_the_closest_known_name() {
    let t = Tree::new();
    t.file("a", "x");
    let r = run(
        &t,
        &[
            ("REPLICAD_ONCE", "true"),
            ("REPLICAD_DRYRUN", "true"),
            ("REPLICAD_SERVICE_HOST", "10.0.0.1"),
        ],
    );
    // A warning, not a refusal: the mirror ran.
    r.assert_code(0);
    t.assert_mirrored();
    let typo = r.lines_with("REPLICAD_DRYRUN");
    assert_eq!(typo.len(), 1, "{r}");
    assert!(typo[0].contains("WARN") && typo[0].contains("REPLICAD_DRY_RUN"), "{r}");
    assert_eq!(r.lines_with("REPLICAD_SERVICE_HOST").len(), 1, "{r}");
}

#[test]
fn the_rest_of_the_options_from_the_environment() {
    let t = Tree::new();
    t.file("a", "x");
    let r = run(
        &t,
        &[
            ("REPLICAD_ONCE", "on"),
            ("REPLICAD_CHECKSUM", "1"),
            ("REPLICAD_VERIFY", "yes"),
            ("REPLICAD_NO_WATCH", "true"),
            ("REPLICAD_ALLOW_EMPTY_SOURCE", "true"),
            ("REPLICAD_VERBOSE", "1"),
        ],
    );
    r.assert_code(0);
    t.assert_mirrored();
    // -v shows the end-of-pass flush (which --fsync would replace, so it is left out).
    assert!(r.stderr.contains("DEBUG"), "REPLICAD_VERBOSE=1 gave no debug lines:\n{r}");
    let quiet = run(&t, &[("REPLICAD_ONCE", "true"), ("REPLICAD_QUIET", "2")]);
    quiet.assert_code(0);
    let r = run(&t, &[("REPLICAD_ONCE", "true"), ("REPLICAD_FSYNC", "true")]);
    r.assert_code(0);
    assert!(quiet.stderr.is_empty(), "REPLICAD_QUIET=2 still logged:\n{quiet}");
}
