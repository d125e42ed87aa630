//! `sightline user`: accounts and API tokens managed from the shell. A
//! password is prompted without echo on a terminal (twice, to catch
//! typos), or read as one line from a pipe, so scripts can create accounts
//! without the password on the command line.

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use app::model::Role;

use super::Auth;
use crate::store::Store;

/// What `sightline user` was asked to do.
#[derive(Debug)]
pub enum UserAction {
    Add { name: String, role: Role },
    Passwd { name: String },
    Remove { name: String },
    List,
    Token { name: String, label: String },
}

/// Does `action` on the accounts in `store`, printing the outcome.
pub async fn run(store: Store, action: UserAction, idle_minutes: u64) -> anyhow::Result<()> {
    // Counters of a one-off command are not reported anywhere.
    let auth = Auth::new(store.clone(), std::sync::Arc::default(), idle_minutes);
    match action {
        UserAction::Add { name, role } => {
            let password = read_password(&format!("Password for {name}: "))?;
            auth.add_account(&name, &password, role).await?;
            println!("account {name} created ({})", role.label());
        }
        UserAction::Passwd { name } => {
            let password = read_password(&format!("New password for {name}: "))?;
            auth.set_password(&name, &password, true).await?;
            println!("password of {name} changed; its sessions have ended");
        }
        UserAction::Remove { name } => {
            auth.remove_account(&name).await?;
            println!("account {name} removed");
        }
        UserAction::List => {
            for a in store.accounts().await? {
                println!("{}\t{}", a.name, a.role.label());
            }
        }
        UserAction::Token { name, label } => {
            let account = store
                .account(&name)
                .await?
                .with_context(|| format!("no account {name}"))?;
            let created = auth.add_token(account.id, &label).await?;
            println!("{}", created.token);
            eprintln!(
                "This token acts as {name} ({}) until revoked (DELETE /api/tokens/{}). It is shown only now.",
                account.role().label(),
                created.id
            );
        }
    }
    Ok(())
}

/// Reads a new password.
pub fn read_password(prompt: &str) -> anyhow::Result<String> {
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
