//! `synod`: the one binary. `synod server` runs a member; every other subcommand is a client
//! that talks to `--endpoints` over etcd's wire protocol, with etcdctl's command names and
//! output. This file only parses arguments and calls the libraries.

mod bench;
mod commands;
mod local_cluster;
mod output;
mod recipes;
mod txn;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "synod",
    version,
    about = "Synod: a Raft-replicated, etcd-compatible coordination service"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options of every client command (etcdctl's names).
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Members to talk to, comma-separated.
    #[arg(
        long,
        global = true,
        env = "SYNOD_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Output format: simple, json or table.
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        default_value = "simple"
    )]
    pub write_out: output::Format,
    /// Time to establish a connection.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Time a command may take (not for watch or keep-alive).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Print only the value of keys (get).
    #[arg(long, global = true)]
    pub print_value_only: bool,
    /// Write keys and values as hex (simple output).
    #[arg(long, global = true)]
    pub hex: bool,
    /// CA bundle (PEM) that members' certificates must chain to [default: the system's].
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        global = true,
        env = "SYNOD_CACERT"
    )]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present to members.
    #[arg(long = "cert", id = "tls_cert", global = true, env = "SYNOD_CERT")]
    pub cert: Option<std::path::PathBuf>,
    /// Key of `--cert`.
    #[arg(long = "key", id = "tls_key", global = true, env = "SYNOD_KEY")]
    pub key: Option<std::path::PathBuf>,
    /// Accept any member certificate (for self-signed `--auto-tls` members; not for production).
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,
    /// `name[:password]` to authenticate as.
    #[arg(long = "user", id = "auth_user", global = true, env = "SYNOD_USER")]
    pub user: Option<String>,
    /// Password of `--user` (when it does not carry one).
    #[arg(
        long = "password",
        id = "auth_password",
        global = true,
        env = "SYNOD_PASSWORD"
    )]
    pub password: Option<String>,
}

impl Global {
    /// How to reach the endpoints: with TLS when any TLS flag is given (then endpoints without
    /// a scheme use TLS, as with etcdctl), and for every `https://` endpoint.
    pub fn dial(&self) -> Result<synod_client::Dial, synod_client::ClientError> {
        let wants_tls = self.cacert.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.insecure_skip_tls_verify;
        let tls = client_tls(
            wants_tls,
            synod_tls::ClientFiles {
                ca: self.cacert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
                skip_verify: self.insecure_skip_tls_verify,
            },
        )?;
        let user = match (&self.user, &self.password) {
            (None, _) => None,
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (Some(user), None) => match user.split_once(':') {
                Some((name, password)) => Some((name.to_owned(), password.to_owned())),
                None => {
                    return Err(synod_client::ClientError::Other(format!(
                        "no password for user {user:?}: use --user {user}:PASSWORD or --password"
                    )));
                }
            },
        };
        Ok(synod_client::Dial {
            timeout: self.dial_timeout,
            tls,
            user,
        })
    }
}

/// TLS for the client's connections when `wanted`, from `files`, with the default policy.
pub fn client_tls(
    wanted: bool,
    files: synod_tls::ClientFiles,
) -> Result<Option<std::sync::Arc<synod_tls::ClientTls>>, synod_client::ClientError> {
    if !wanted {
        return Ok(None);
    }
    let tls = synod_tls::ClientTls::new(files, synod_tls::Policy::default())?;
    Ok(Some(std::sync::Arc::new(tls)))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    synod_server::config::parse_duration(text).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a member (a single-member cluster by default, data in ./default.synod).
    Server(Box<synod_server::config::ServerArgs>),
    #[command(flatten)]
    Client(commands::ClientCommand),
}

/// mimalloc instead of glibc's malloc: with many threads (tokio workers, the node loop, raft-engine)
/// glibc keeps freed memory in per-thread arenas, which after loading 1,000,000 keys held about a
/// fifth of the member's RSS; allocation was also 8% of the leader's CPU (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => run_server(*args),
        Command::Client(command) => {
            // The benchmark drives many connections at once: it gets every core.
            let mut builder = if matches!(command, commands::ClientCommand::Bench(_)) {
                tokio::runtime::Builder::new_multi_thread()
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            let runtime = match builder.enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("Error: cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(commands::run(&cli.global, command)) {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("Error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_server(args: synod_server::config::ServerArgs) -> ExitCode {
    let config = match synod_server::config::Config::resolve(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("synod server: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("synod server: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The span exporter's gRPC client lives on the runtime.
    let telemetry = {
        let _entered = runtime.enter();
        synod_server::telemetry::install(config.tracing.as_ref())
    };
    let _telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("synod server: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(synod_server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "member stopped with an error");
            eprintln!("synod server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
