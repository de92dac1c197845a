//! `supervision completions SHELL` and `supervision man [COMMAND...]`: shell completion
//! scripts (clap_complete) and roff manual pages (clap_mangen), made from the same clap
//! definitions that parse the flags, so they cannot drift from them.
//!
//! `supervision` hands `train`, `eval` and `predict` to `supervision-torch` with their
//! arguments untouched; here those three are described by their real definitions
//! ([`TorchCommand`]), so the completions and pages cover their flags too.

use std::io::Write;

use anyhow::{Context, Result, bail};

use crate::output::StdoutClosed;
use clap::{Args, Command, Subcommand};
use clap_complete::Shell;

use super::TorchCommand;

/// Flags of `supervision completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Flags of `supervision man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// The command whose page to write (`train`, `shard build`); none: the page of
    /// `supervision` itself, which lists its commands.
    #[arg(value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `cli` with its forwarded `train`, `eval` and `predict` replaced by their full
/// definitions, the ones `supervision-torch` parses.
pub fn with_torch_commands(mut cli: Command) -> Command {
    let full = TorchCommand::augment_subcommands(Command::new("supervision-torch"));
    for sub in full.get_subcommands() {
        let name = sub.get_name().to_string();
        if cli.find_subcommand(&name).is_some() {
            let sub = sub.clone();
            cli = cli.mut_subcommand(&name, move |_| sub);
        } else {
            cli = cli.subcommand(sub.clone());
        }
    }
    cli
}

/// Writes the completion script of `cli` for `shell` to `out`.
pub fn completions(cli: Command, shell: Shell, out: &mut dyn Write) -> Result<()> {
    let mut cli = with_torch_commands(cli);
    let name = cli.get_name().to_string();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cli, name, &mut buf);
    write(out, &buf)
}

/// Writes the roff page of `cli`'s command `path` (empty: `cli` itself) to `out`.
pub fn man(cli: Command, path: &[String], out: &mut dyn Write) -> Result<()> {
    let mut cmd = with_torch_commands(cli);
    cmd.build();
    let mut title = cmd.get_name().to_string();
    for (i, word) in path.iter().enumerate() {
        let Some(sub) = cmd.find_subcommand(word).cloned() else {
            let known: Vec<_> = cmd.get_subcommands().map(Command::get_name).collect();
            bail!(
                "no command `{}`: `{title}` has {}",
                path[..=i].join(" "),
                known.join(", ")
            );
        };
        title = format!("{title}-{}", sub.get_name());
        cmd = sub;
    }
    // the page of `shard build` is supervision-shard-build(1), as git's pages are named
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .title(title)
        .render(&mut buf)
        .context("render the manual page")?;
    write(out, &buf)
}

/// Writes `bytes` to `out`: a closed pipe (`supervision man | head`) is a quiet
/// [`StdoutClosed`], as for every command's output.
fn write(out: &mut dyn Write, bytes: &[u8]) -> Result<()> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// `supervision completions SHELL`, on standard output.
pub fn run_completions(cli: Command, args: &CompletionsArgs) -> Result<i32> {
    completions(cli, args.shell, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// `supervision man [COMMAND...]`, on standard output.
pub fn run_man(cli: Command, args: &ManArgs) -> Result<i32> {
    man(cli, &args.command, &mut std::io::stdout().lock())?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `supervision`'s command line: `train` forwarded, one other command.
    fn cli() -> Command {
        Command::new("supervision")
            .subcommand(Command::new("train").about("forwarded"))
            .subcommand(Command::new("shard").subcommand(Command::new("build")))
    }

    #[test]
    fn the_forwarded_commands_get_their_real_flags() {
        let full = with_torch_commands(cli());
        let train = full.find_subcommand("train").unwrap();
        let flags: Vec<_> = train.get_arguments().filter_map(|a| a.get_long()).collect();
        assert!(flags.contains(&"precision") && flags.contains(&"nproc-per-node"));
        assert!(full.find_subcommand("eval").is_some());
        assert!(full.find_subcommand("shard").is_some());
    }

    #[test]
    fn completions_and_pages_name_the_flags() {
        let mut out = Vec::new();
        completions(cli(), Shell::Bash, &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("--precision") && script.contains("--lr"));
        let mut out = Vec::new();
        man(cli(), &["train".into()], &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains("supervision\\-train"), "{page}");
        let err = man(cli(), &["shard".into(), "nope".into()], &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("no command `shard nope`"), "{err}");
    }
}
