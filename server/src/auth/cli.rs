//! Reading a password for `sightline user`: prompted without echo on a
//! terminal (twice, to catch typos), or one line from a pipe, so scripts
//! can create accounts without the password on the command line.

use std::io::{BufRead, IsTerminal};

/// Reads a new password.
pub fn read_password(prompt: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password(prompt).context("cannot read the password")?;
        let again = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    super::password::acceptable(&password).map_err(anyhow::Error::msg)?;
    Ok(password)
}
