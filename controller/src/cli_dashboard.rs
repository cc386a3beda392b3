//! `cordon-controller dashboard user add|remove|list`: the dashboard's local users
//! (docs/DASHBOARD.md). The running dashboard sees a change at the next request.

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;
use cordon_controller::dashboard::config::DashboardConfig;
use cordon_controller::dashboard::users::{self, Role};

use crate::Common;

#[derive(Debug, Subcommand)]
pub(crate) enum DashboardAction {
    /// Local users: add, remove, list.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserAction {
    /// Adds a user. Without --password-stdin a password is generated and printed once.
    Add {
        #[command(flatten)]
        common: Common,
        /// 1 to 64 letters, digits and . _ @ - (an email address works).
        name: String,
        /// viewer (sees everything, changes nothing) or operator (also stops sessions,
        /// reloads the policy, opens terminals, uploads files).
        #[arg(long)]
        role: Role,
        /// Read the password from standard input (at least 12 characters).
        #[arg(long)]
        password_stdin: bool,
        /// Replace the user if it exists (a new password or role).
        #[arg(long)]
        replace: bool,
    },
    /// Removes a user; their logins end at their next request.
    Remove {
        #[command(flatten)]
        common: Common,
        name: String,
    },
    /// Lists users and roles.
    List {
        #[command(flatten)]
        common: Common,
    },
}

fn users_file(common: &Common) -> Result<std::path::PathBuf, ExitCode> {
    let file = cordon_config::read(&common.config).map_err(|e| {
        eprintln!("cordon-controller: {e}");
        ExitCode::from(64)
    })?;
    Ok(DashboardConfig::users_file(&file))
}

pub(crate) fn run(action: DashboardAction) -> Result<ExitCode, ExitCode> {
    let DashboardAction::User { action } = action;
    let fail = |e: users::UsersError| {
        eprintln!("cordon-controller: {e}");
        ExitCode::from(65)
    };
    match action {
        UserAction::Add {
            common,
            name,
            role,
            password_stdin,
            replace,
        } => {
            let path = users_file(&common)?;
            let (password, generated) = if password_stdin {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).map_err(|e| {
                    eprintln!("cordon-controller: cannot read the password: {e}");
                    ExitCode::from(66)
                })?;
                (text.trim_end_matches(['\n', '\r']).to_string(), false)
            } else {
                (users::generate_password(), true)
            };
            users::add(&path, &name, role, &password, replace).map_err(fail)?;
            println!(
                "user {name} ({}) added to {}",
                role.as_str(),
                path.display()
            );
            if generated {
                println!("password: {password}");
            }
            Ok(ExitCode::SUCCESS)
        }
        UserAction::Remove { common, name } => {
            let path = users_file(&common)?;
            users::remove(&path, &name).map_err(fail)?;
            println!("user {name} removed from {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        UserAction::List { common } => {
            let path = users_file(&common)?;
            let list = users::read(&path).map_err(fail)?;
            if list.is_empty() {
                println!(
                    "no dashboard users in {}; add one with `cordon-controller dashboard user add NAME --role operator`",
                    path.display()
                );
            }
            for user in list {
                println!("{:<40} {}", user.name, user.role.as_str());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
