//! `synod cluster up`: a local cluster on loopback for trying Synod, in the foreground, with the
//! members' logs interleaved and prefixed by their names (etcd's Procfile layout: clients on
//! 2379, 22379, 32379...; peers on 2380, 22380, 32380...). Ctrl-C stops every member.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use clap::{Args, Subcommand};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use synod_client::ClientError;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start the members and follow their logs until Ctrl-C.
    Up(UpArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    size: u16,
    /// Directory for the members' data (one folder each); reused on the next run.
    #[arg(long, default_value = "synod-cluster")]
    dir: PathBuf,
    /// Number ports from here instead (member i: client port P+2i, peer port P+2i+1).
    #[arg(long)]
    base_port: Option<u16>,
    /// Extra flags for every member (for example --heartbeat-interval=50).
    #[arg(last = true)]
    server_args: Vec<String>,
}

/// Client and peer ports of member `index` (0-based): as in etcd's Procfile, or from `base`.
fn ports(index: u16, base: Option<u16>) -> (u16, u16) {
    if let Some(base) = base {
        return (base + 2 * index, base + 2 * index + 1);
    }
    let offset = if index == 0 {
        0
    } else {
        index * 10_000 + 10_000
    };
    (2379 + offset, 2380 + offset)
}

pub async fn run(command: ClusterCommand) -> Result<ExitCode, ClientError> {
    let ClusterCommand::Up(args) = command;
    let exe = std::env::current_exe()
        .map_err(|e| ClientError::Other(format!("cannot find the synod binary: {e}")))?;
    let names: Vec<String> = (1..=args.size).map(|i| format!("m{i}")).collect();
    let initial_cluster = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "{name}=http://127.0.0.1:{}",
                ports(i as u16, args.base_port).1
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut children: Vec<Child> = Vec::new();
    let mut logs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (client, peer) = ports(i as u16, args.base_port);
        let mut child = Command::new(&exe)
            .arg("server")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(args.dir.join(name))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                "synod-local-cluster",
            ])
            .args(&args.server_args)
            .env("SYNOD_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ClientError::Other(format!("cannot start {name}: {e}")))?;
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let prefix = format!("{name:>3} | ");
            logs.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    println!("{prefix}{line}");
                }
            }));
        }
        children.push(child);
    }
    let endpoints: Vec<String> = (0..args.size)
        .map(|i| format!("127.0.0.1:{}", ports(i, args.base_port).0))
        .collect();
    println!(
        "synod cluster: {} members, data in {}; Ctrl-C stops them.\n\
         try:   synod --endpoints {} endpoint status -w table\n\
         \x20      synod --endpoints {} put hello world\n\
         then kill the leader's process and watch another take over.",
        args.size,
        args.dir.display(),
        endpoints.join(","),
        endpoints.join(","),
    );
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut exits = futures::future::select_all(children.iter_mut().map(|c| Box::pin(c.wait())));
    tokio::select! {
        _ = &mut interrupted => {}
        (status, index, _) = &mut exits => {
            println!("synod cluster: {} exited ({status:?}); stopping the others", names[index]);
        }
    }
    drop(exits);
    for child in &children {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for child in &mut children {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await;
    }
    for log in logs {
        log.abort();
    }
    Ok(ExitCode::SUCCESS)
}
