//! The auth commands, with etcdctl's names and output: `user add|get|list|delete|passwd|
//! grant-role|revoke-role`, `role add|get|list|delete|grant-permission|revoke-permission`,
//! `auth enable|disable|status`.

use synod_client::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest,
};
use synod_client::{ClientError, authpb};

use super::*;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user: `NAME[:PASSWORD]` (the password is read from standard input when absent).
    Add {
        user: String,
        /// A user that authenticates only by client certificate.
        #[arg(long)]
        no_password: bool,
    },
    /// Show a user's roles.
    Get {
        name: String,
        /// Also show each role's permissions.
        #[arg(long)]
        detail: bool,
    },
    /// List the users.
    List,
    /// Delete a user.
    Delete { name: String },
    /// Change a user's password (read from standard input).
    Passwd { name: String },
    /// Grant a role to a user.
    GrantRole { user: String, role: String },
    /// Revoke a role from a user.
    RevokeRole { user: String, role: String },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Add a role.
    Add { name: String },
    /// Show a role's permissions.
    Get { name: String },
    /// List the roles.
    List,
    /// Delete a role.
    Delete { name: String },
    /// Grant `read`, `write` or `readwrite` on a key, a range, a prefix or everything from a key.
    GrantPermission {
        role: String,
        /// read, write or readwrite.
        kind: String,
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Revoke a permission (named by its key and range as granted).
    RevokePermission {
        role: String,
        #[command(flatten)]
        range: RangeArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Turn authentication on (needs a user root with the role root; the role is created and
    /// granted if missing, as etcdctl does).
    Enable,
    /// Turn authentication off.
    Disable,
    /// Whether authentication is on, and the auth revision.
    Status,
}

/// A password read from standard input (its first line).
fn password_from_stdin() -> Result<String, ClientError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| bad(format!("reading the password: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// etcdctl's display of a permission's range.
fn show_range(permission: &authpb::Permission, hex: bool) -> String {
    let key = output::bytes(&permission.key, hex);
    if permission.range_end.is_empty() {
        return key;
    }
    if permission.range_end == [0] {
        return format!("[{key}, <open ended>");
    }
    let end = output::bytes(&permission.range_end, hex);
    if prefix_range_end(&permission.key) == permission.range_end {
        return format!("[{key}, {end}) (prefix {key})");
    }
    format!("[{key}, {end})")
}

fn print_role(name: &str, permissions: &[authpb::Permission], hex: bool) {
    use authpb::permission::Type;
    println!("Role {name}");
    let of = |wanted: Type| -> Vec<String> {
        permissions
            .iter()
            .filter(|p| {
                let kind = Type::try_from(p.perm_type).unwrap_or(Type::Read);
                kind == wanted || kind == Type::Readwrite
            })
            .map(|p| show_range(p, hex))
            .collect()
    };
    println!("KV Read:");
    for range in of(Type::Read) {
        println!("\t{range}");
    }
    println!("KV Write:");
    for range in of(Type::Write) {
        println!("\t{range}");
    }
}

pub(super) async fn user(
    global: &Global,
    client: &Client,
    command: UserCommand,
) -> Result<(), ClientError> {
    let mut auth = client.auth();
    match command {
        UserCommand::Add { user, no_password } => {
            let (name, password) = match user.split_once(':') {
                Some((name, password)) => (name.to_owned(), password.to_owned()),
                None if no_password => (user.clone(), String::new()),
                None => (user.clone(), password_from_stdin()?),
            };
            auth.user_add(AuthUserAddRequest {
                name: name.clone(),
                password,
                options: Some(authpb::UserAddOptions { no_password }),
                hashed_password: String::new(),
            })
            .await?;
            println!("User {name} created");
        }
        UserCommand::Get { name, detail } => {
            let roles = auth
                .user_get(AuthUserGetRequest { name: name.clone() })
                .await?
                .into_inner()
                .roles;
            println!("User: {name}");
            if detail {
                for role in roles {
                    let permissions = auth
                        .role_get(AuthRoleGetRequest { role: role.clone() })
                        .await?
                        .into_inner()
                        .perm;
                    print_role(&role, &permissions, global.hex);
                }
            } else {
                println!("Roles: {}", roles.join(" "));
            }
        }
        UserCommand::List => {
            for user in auth
                .user_list(AuthUserListRequest {})
                .await?
                .into_inner()
                .users
            {
                println!("{user}");
            }
        }
        UserCommand::Delete { name } => {
            auth.user_delete(AuthUserDeleteRequest { name: name.clone() })
                .await?;
            println!("User {name} deleted");
        }
        UserCommand::Passwd { name } => {
            let password = password_from_stdin()?;
            auth.user_change_password(AuthUserChangePasswordRequest {
                name,
                password,
                hashed_password: String::new(),
            })
            .await?;
            println!("Password updated");
        }
        UserCommand::GrantRole { user, role } => {
            auth.user_grant_role(AuthUserGrantRoleRequest {
                user: user.clone(),
                role: role.clone(),
            })
            .await?;
            println!("Role {role} is granted to user {user}");
        }
        UserCommand::RevokeRole { user, role } => {
            auth.user_revoke_role(AuthUserRevokeRoleRequest {
                name: user.clone(),
                role: role.clone(),
            })
            .await?;
            println!("Role {role} is revoked from user {user}");
        }
    }
    Ok(())
}

pub(super) async fn role(
    global: &Global,
    client: &Client,
    command: RoleCommand,
) -> Result<(), ClientError> {
    let mut auth = client.auth();
    match command {
        RoleCommand::Add { name } => {
            auth.role_add(AuthRoleAddRequest { name: name.clone() })
                .await?;
            println!("Role {name} created");
        }
        RoleCommand::Get { name } => {
            let permissions = auth
                .role_get(AuthRoleGetRequest { role: name.clone() })
                .await?
                .into_inner()
                .perm;
            print_role(&name, &permissions, global.hex);
        }
        RoleCommand::List => {
            for role in auth
                .role_list(AuthRoleListRequest {})
                .await?
                .into_inner()
                .roles
            {
                println!("{role}");
            }
        }
        RoleCommand::Delete { name } => {
            auth.role_delete(AuthRoleDeleteRequest { role: name.clone() })
                .await?;
            println!("Role {name} deleted");
        }
        RoleCommand::GrantPermission { role, kind, range } => {
            use authpb::permission::Type;
            let perm_type = match kind.to_ascii_lowercase().as_str() {
                "read" => Type::Read,
                "write" => Type::Write,
                "readwrite" => Type::Readwrite,
                other => {
                    return Err(bad(format!(
                        "invalid permission type {other:?} (read, write or readwrite)"
                    )));
                }
            };
            let (key, range_end) = range.resolve();
            auth.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: Some(authpb::Permission {
                    perm_type: perm_type as i32,
                    key,
                    range_end,
                }),
            })
            .await?;
            println!("Role {role} updated");
        }
        RoleCommand::RevokePermission { role, range } => {
            let (key, range_end) = range.resolve();
            auth.role_revoke_permission(AuthRoleRevokePermissionRequest {
                role: role.clone(),
                key,
                range_end,
            })
            .await?;
            println!(
                "Permission of range [{}) is revoked from role {role}",
                range.key
            );
        }
    }
    Ok(())
}

pub(super) async fn auth(client: &Client, command: AuthCommand) -> Result<(), ClientError> {
    let mut auth = client.auth();
    match command {
        AuthCommand::Enable => {
            let enabled = auth.auth_enable(AuthEnableRequest {}).await;
            match enabled {
                Err(status)
                    if status.message() == "etcdserver: root user does not have root role" =>
                {
                    // etcdctl's help: make the role and grant it, then try again.
                    let _ = auth
                        .role_add(AuthRoleAddRequest {
                            name: "root".to_owned(),
                        })
                        .await;
                    auth.user_grant_role(AuthUserGrantRoleRequest {
                        user: "root".to_owned(),
                        role: "root".to_owned(),
                    })
                    .await?;
                    auth.auth_enable(AuthEnableRequest {}).await?;
                }
                other => {
                    other?;
                }
            }
            println!("Authentication Enabled");
        }
        AuthCommand::Disable => {
            auth.auth_disable(AuthDisableRequest {}).await?;
            println!("Authentication Disabled");
        }
        AuthCommand::Status => {
            let status = auth.auth_status(AuthStatusRequest {}).await?.into_inner();
            println!("Authentication Status: {}", status.enabled);
            println!("AuthRevision: {}", status.auth_revision);
        }
    }
    Ok(())
}
