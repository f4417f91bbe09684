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
    /// Make a CA and certificates for members and a client, valid for 127.0.0.1 and localhost
    /// (what `up --tls` uses): DIR/ca.pem, DIR/NAME.pem and DIR/NAME-key.pem, DIR/client.pem.
    Certs {
        /// Where the files go.
        #[arg(long)]
        dir: PathBuf,
        /// Member names (each certificate's CN), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "m1,m2,m3")]
        names: Vec<String>,
    },
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
    /// Mutual TLS everywhere: a CA, a certificate per member and one for clients are made in
    /// `<dir>/tls` (kept for the next run), clients and peers must present theirs, and peers
    /// only accept the members' names.
    #[arg(long)]
    tls: bool,
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

/// The files `--tls` makes, under `<dir>/tls`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    /// Makes the CA and the certificates of `members` and of `client`, unless an earlier run
    /// left them all.
    fn ensure(dir: PathBuf, members: &[String]) -> Result<Pki, synod_tls::TlsError> {
        let pki = Pki { dir };
        let names = members.iter().map(String::as_str).chain(["client"]);
        let complete = pki.ca().exists()
            && names
                .clone()
                .all(|name| pki.cert(name).exists() && pki.key(name).exists());
        if complete {
            return Ok(pki);
        }
        std::fs::create_dir_all(&pki.dir).map_err(|e| synod_tls::TlsError::File {
            path: pki.dir.clone(),
            message: e.to_string(),
        })?;
        let ca = synod_tls::generate::Authority::new("synod local cluster CA")?;
        synod_tls::generate::write_file(&pki.ca(), ca.cert_pem().as_bytes(), 0o644)?;
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        for name in names {
            ca.issue(name, &hosts)?.write(&pki.dir, name)?;
        }
        Ok(pki)
    }

    /// The TLS flags of member `name`.
    fn server_flags(&self, name: &str, members: &[String]) -> Vec<String> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            format!("--cert-file={}", path(self.cert(name))),
            format!("--key-file={}", path(self.key(name))),
            format!("--trusted-ca-file={}", path(self.ca())),
            "--client-cert-auth=true".to_owned(),
            format!("--peer-cert-file={}", path(self.cert(name))),
            format!("--peer-key-file={}", path(self.key(name))),
            format!("--peer-trusted-ca-file={}", path(self.ca())),
            "--peer-client-cert-auth=true".to_owned(),
            format!("--peer-cert-allowed-cn={}", members.join(",")),
        ]
    }
}

pub async fn run(command: ClusterCommand) -> Result<ExitCode, ClientError> {
    let args = match command {
        ClusterCommand::Up(args) => args,
        ClusterCommand::Certs { dir, names } => {
            let pki = Pki::ensure(dir, &names)?;
            println!("CA: {}", pki.ca().display());
            for name in names.iter().map(String::as_str).chain(["client"]) {
                println!(
                    "{name}: {} {}",
                    pki.cert(name).display(),
                    pki.key(name).display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let exe = std::env::current_exe()
        .map_err(|e| ClientError::Other(format!("cannot find the synod binary: {e}")))?;
    let names: Vec<String> = (1..=args.size).map(|i| format!("m{i}")).collect();
    let pki = if args.tls {
        Some(Pki::ensure(args.dir.join("tls"), &names)?)
    } else {
        None
    };
    let scheme = if args.tls { "https" } else { "http" };
    let initial_cluster = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "{name}={scheme}://127.0.0.1:{}",
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
                &format!("{scheme}://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("{scheme}://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("{scheme}://127.0.0.1:{peer}"),
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                "synod-local-cluster",
            ])
            .args(
                pki.as_ref()
                    .map(|pki| pki.server_flags(name, &names))
                    .unwrap_or_default(),
            )
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
        .map(|i| {
            let port = ports(i, args.base_port).0;
            if args.tls {
                format!("https://127.0.0.1:{port}")
            } else {
                format!("127.0.0.1:{port}")
            }
        })
        .collect();
    let mut flags = format!("--endpoints {}", endpoints.join(","));
    if let Some(pki) = &pki {
        flags.push_str(&format!(
            " --cacert {} --cert {} --key {}",
            pki.ca().display(),
            pki.cert("client").display(),
            pki.key("client").display()
        ));
    }
    println!(
        "synod cluster: {} members{}, data in {}; Ctrl-C stops them.\n\
         try:   synod {flags} endpoint status -w table\n\
         \x20      synod {flags} put hello world\n\
         then kill the leader's process and watch another take over.",
        args.size,
        if args.tls { " with mutual TLS" } else { "" },
        args.dir.display(),
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
