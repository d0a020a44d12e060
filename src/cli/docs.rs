//! `regferry completions SHELL` and `regferry man`: shell completions and
//! man pages generated from the CLI definition itself, so they never drift
//! from the flags. Prints to stdout (or writes pages into a directory);
//! reads nothing else.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, CommandFactory};

use super::{Cli, CliError, exit};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write regferry.1 and one page per subcommand (regferry-daemon.1, …) here
    /// instead of printing regferry.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Result<u8, CliError> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "regferry", &mut out);
    std::io::stdout().write_all(&out).map_err(|e| CliError::failed(format!("cannot write the completions: {e}")))?;
    Ok(exit::OK)
}

pub fn man(args: ManArgs) -> Result<u8, CliError> {
    let cmd = Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|e| CliError::usage(format!("{}: {e}", dir.display())))?;
            clap_mangen::generate_to(cmd, &dir).map_err(|e| CliError::failed(format!("cannot write man pages to {}: {e}", dir.display())))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out).map_err(|e| CliError::failed(format!("cannot render the man page: {e}")))?;
            std::io::stdout().write_all(&out).map_err(|e| CliError::failed(format!("cannot write the man page: {e}")))?;
        }
    }
    Ok(exit::OK)
}
