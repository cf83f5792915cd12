//! `replicad completions bash|zsh|fish` and `replicad man`: shell completions and the man
//! page, generated from the same clap definitions as the options (clap_complete,
//! clap_mangen), so they can never drift from them. Recognised by `main` before the normal
//! parse, since the service's two positional roots leave no room for subcommands there.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Args;

/// What the command line asks for, if it is one of these extras.
pub enum Extra {
    /// Completions for a shell.
    Completions(Shell),
    /// The man page (roff).
    Man,
}

/// Recognises `completions SHELL` and `man` as the first argument. `Err` carries a usage
/// message for a shell that is not supported.
pub fn recognise(args: &[std::ffi::OsString]) -> Option<Result<Extra, String>> {
    let first = args.get(1)?.to_str()?;
    match first {
        "man" if args.len() == 2 => Some(Ok(Extra::Man)),
        "completions" => {
            let shell = args.get(2).and_then(|s| s.to_str()).unwrap_or_default();
            Some(match (shell, args.len()) {
                ("bash", 3) => Ok(Extra::Completions(Shell::Bash)),
                ("zsh", 3) => Ok(Extra::Completions(Shell::Zsh)),
                ("fish", 3) => Ok(Extra::Completions(Shell::Fish)),
                _ => Err("usage: replicad completions bash|zsh|fish".into()),
            })
        }
        _ => None,
    }
}

/// Writes the completions or the man page to `out`. Generated into memory first:
/// clap_complete panics when its writer fails (a reader that closed the pipe early, as
/// `| grep -q` does), and a write error must be an error, not a panic.
pub fn write(extra: Extra, out: &mut dyn Write) -> std::io::Result<()> {
    let mut command = Args::command();
    let mut text = Vec::new();
    match extra {
        Extra::Completions(shell) => {
            clap_complete::generate(shell, &mut command, "replicad", &mut text);
        }
        Extra::Man => {
            clap_mangen::Man::new(command.clone()).render(&mut text)?;
            text.extend_from_slice(environment_section(&command).as_bytes());
        }
    }
    out.write_all(&text)?;
    out.flush()
}

/// An ENVIRONMENT section (clap_mangen does not list the variables): each option's
/// `REPLICAD_*` variable, in roff.
fn environment_section(command: &clap::Command) -> String {
    let mut roff = String::from(".SH ENVIRONMENT\n");
    roff.push_str("Every option can be given by a variable instead; a command-line option wins.\n");
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let option = match arg.get_long() {
            Some(long) => format!("\\-\\-{}", long.replace('-', "\\-")),
            None => arg.get_id().as_str().to_uppercase(),
        };
        roff.push_str(&format!(".TP\n\\fB{}\\fR\nSame as {option}.\n", env.to_string_lossy()));
    }
    roff.push_str(
        ".TP\n\\fBRUST_LOG\\fR\nA tracing filter; when set, it wins over \\-v and \\-q.\n",
    );
    roff
}
