//! What `retrocat user …` and `retrocat token …` do, on the catalog database.

use super::{TokenCommand, UserCommand};
use crate::auth::{password, token};
use crate::storage::Store;
use crate::storage::accounts::{TokenKind, TokenRecord};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use std::io::BufRead;

pub async fn user(store: &dyn Store, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let password = read_password(&name, password_stdin)?;
            password::check_new(&password).map_err(anyhow::Error::msg)?;
            let hash = password::hash(password).await;
            store.add_user(&name, role, &hash).await?;
            eprintln!("added {name}, {role}: log in with POST /api/auth/login or the web UI");
        }
        UserCommand::List => {
            let users = store.users().await?;
            let rows = users.iter().map(|user| {
                [
                    user.name.clone(),
                    user.role.to_string(),
                    day(user.created_at),
                ]
            });
            print!("{}", table(["NAME", "ROLE", "CREATED"], rows));
        }
        UserCommand::Remove { name } => {
            if !store.remove_user(&name).await? {
                bail!("no user named {name:?} (`retrocat user list` shows them)");
            }
            eprintln!("removed {name}; its logins have ended");
        }
    }
    Ok(())
}

pub async fn token(store: &dyn Store, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let created_at = Utc::now();
            let expires_at = match expires_in {
                Some(ttl) => Some(
                    chrono::TimeDelta::from_std(ttl)
                        .ok()
                        .and_then(|ttl| created_at.checked_add_signed(ttl))
                        .context("--expires-in is too far away")?,
                ),
                None => None,
            };
            let secret = token::generate();
            let record = TokenRecord {
                kind: TokenKind::Token,
                name,
                role,
                username: None,
                created_at,
                expires_at,
            };
            store.add_token(&token::digest(&secret), &record).await?;
            // The token alone on standard output, for `$(retrocat token create …)`.
            println!("{secret}");
            eprintln!(
                "token {} ({role}) created; it is shown this once: send it as \
                 Authorization: Bearer TOKEN",
                record.name
            );
        }
        TokenCommand::List => {
            let tokens = store.tokens().await?;
            let now = Utc::now();
            let rows = tokens.iter().map(|token| {
                let expires = match token.expires_at {
                    None => "never".to_owned(),
                    Some(_) if token.is_expired(now) => "expired".to_owned(),
                    Some(at) => day(at),
                };
                [
                    token.name.clone(),
                    token.role.to_string(),
                    day(token.created_at),
                    expires,
                ]
            });
            print!("{}", table(["NAME", "ROLE", "CREATED", "EXPIRES"], rows));
        }
        TokenCommand::Revoke { name } => {
            if !store.revoke_token(&name).await? {
                bail!("no token named {name:?} (`retrocat token list` shows them)");
            }
            eprintln!("revoked {name}");
        }
    }
    Ok(())
}

/// The new password of `name`: typed twice at a prompt that does not echo it, or the
/// first line of standard input.
fn read_password(name: &str, from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let prompt = |text: &str| {
        rpassword::prompt_password(text).context(
            "cannot read a password from the terminal; pipe it with --password-stdin instead",
        )
    };
    let password = prompt(&format!("Password for {name}: "))?;
    if prompt("Again: ")? != password {
        bail!("the two passwords differ; nothing was added");
    }
    Ok(password)
}

fn day(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M").to_string()
}

/// `rows` under `header`, in columns as wide as their widest cell.
fn table<const N: usize>(header: [&str; N], rows: impl Iterator<Item = [String; N]>) -> String {
    let rows: Vec<[String; N]> = std::iter::once(header.map(str::to_owned))
        .chain(rows)
        .collect();
    let widths: Vec<usize> = (0..N)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
