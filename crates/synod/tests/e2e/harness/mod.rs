//! Starting, stopping and killing real member processes for tests. Ports are picked free on
//! 127.0.0.1; every process is killed by PID when its handle drops, so a failing test leaves no
//! server behind.

mod pki;
pub mod zookeeper;

pub use pki::{MemberTls, TestPki};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a member may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns a port that was free a moment ago.
/// A port nothing listens on, for a member to bind. It is drawn below Linux's ephemeral range
/// (32768 and up): a port the kernel hands out for port 0 is also what it hands out as the source
/// port of outgoing connections, and one of the many connections other tests open could take it
/// between this check and the member's bind ("Address already in use"). Test processes draw
/// from a sequence seeded by their pid and clock, so two of them rarely try the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    const LOW: u64 = 12_000;
    const SPAN: u64 = 20_000;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    loop {
        let draw = NEXT.fetch_add(0x9e37_79b9, Ordering::Relaxed);
        let port = (LOW + draw % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn synod_binary() -> &'static str {
    env!("CARGO_BIN_EXE_synod")
}

/// A member process and its data directory.
pub struct Member {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    /// Where the member serves ZooKeeper's protocol (every test member does).
    pub zookeeper_port: u16,
    extra_args: Vec<String>,
    log_path: PathBuf,
    /// A program that runs the server (`prlimit ... --`), if any.
    wrapper: Vec<String>,
    /// Mutual TLS on both ports, when set.
    pub tls: Option<MemberTls>,
    /// `--auto-tls` and `--peer-auto-tls`: https with self-signed certificates.
    pub auto_tls: bool,
}

impl Member {
    /// Starts a single-member cluster in a fresh directory under `root`.
    pub fn start(root: &Path, extra_args: &[&str]) -> Member {
        let mut member = Member::prepare(root, extra_args.iter().map(|s| s.to_string()).collect());
        // A port taken between its pick and the bind (by another test's member) costs a retry on
        // new ports, not a failed test. Only a lone member can move: a cluster's members name
        // each other's ports.
        for _ in 0..3 {
            member.spawn();
            if !member.lost_its_port() {
                break;
            }
            member.client_port = free_port();
            member.peer_port = free_port();
            member.zookeeper_port = free_port();
        }
        member.wait_ready();
        member
    }

    /// Whether the process just started exited because a port was taken.
    fn lost_its_port(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                if self.log().contains("Address already in use") {
                    self.child = None;
                    return true;
                }
                return false;
            }
            if self.health().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A member whose ports are picked and arguments fixed, not started yet.
    pub fn prepare(root: &Path, extra_args: Vec<String>) -> Member {
        std::fs::create_dir_all(root).expect("create the member's directory");
        Member {
            child: None,
            data_dir: root.join("data"),
            client_port: free_port(),
            peer_port: free_port(),
            zookeeper_port: free_port(),
            extra_args,
            log_path: root.join("server.log"),
            wrapper: Vec::new(),
            tls: None,
            auto_tls: false,
        }
    }

    /// Starts a member under `wrapper`, a program that runs the server in an environment of its
    /// own (for example `prlimit --nofile=200:200 --`).
    pub fn start_wrapped(root: &Path, extra_args: &[&str], wrapper: &[&str]) -> Member {
        let mut member = Member::prepare(root, extra_args.iter().map(|s| s.to_string()).collect());
        member.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        member.spawn();
        member.wait_ready();
        member
    }

    /// Starts the process without waiting for it to serve.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "member is still running");
        self.spawn();
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() || self.auto_tls {
            "https"
        } else {
            "http"
        }
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }

    /// `GET /health`: (status code, body), over TLS for a TLS member.
    pub fn health(&self) -> Option<(u16, String)> {
        self.http("GET", "/health", None)
    }

    /// An HTTP request to the client port (curl with the client certificate for a TLS member).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        let mut args = match (&self.tls, self.auto_tls) {
            (Some(tls), _) => tls.curl_flags(),
            (None, true) => vec!["--insecure".to_owned()],
            (None, false) => return http_request(self.client_port, method, path, body),
        };
        args.extend(
            [
                "-s",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                "--max-time",
                "5",
            ]
            .map(str::to_owned),
        );
        if let Some(body) = body {
            args.extend([
                "-H".to_owned(),
                "Content-Type: application/json".to_owned(),
                "-d".to_owned(),
                body.to_owned(),
            ]);
        }
        args.push(format!("{}{path}", self.url()));
        let output = Command::new("curl").args(&args).output().ok()?;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_owned()))
    }

    /// etcdctl's flags (and synod's CLI's) to reach this member.
    pub fn client_flags(&self) -> Vec<String> {
        let mut flags = vec![format!("--endpoints={}", self.endpoint())];
        if let Some(tls) = &self.tls {
            flags.extend(tls.client_flags());
        }
        flags
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process is alive at this moment (it may have exited on its own).
    pub fn is_running_now(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|child| child.id())
    }

    /// Replaces the arguments used by the next start (for example to join as `existing`).
    pub fn set_args(&mut self, extra_args: Vec<String>) {
        self.extra_args = extra_args;
    }

    /// `host:port`, or the https URL of a TLS member.
    pub fn endpoint(&self) -> String {
        if self.tls.is_some() || self.auto_tls {
            return self.url();
        }
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The member's ZooKeeper address, as ZooKeeper clients name it.
    pub fn zookeeper_address(&self) -> String {
        format!("127.0.0.1:{}", self.zookeeper_port)
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(synod_binary());
                command
            }
            None => Command::new(synod_binary()),
        };
        let child = command
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(self.url())
            .arg("--advertise-client-urls")
            .arg(self.url())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--zookeeper-addr")
            .arg(self.zookeeper_address())
            .args(self.tls.iter().flat_map(MemberTls::server_flags))
            .args(
                self.auto_tls
                    .then_some(["--auto-tls", "--peer-auto-tls"])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.extra_args)
            .env("SYNOD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start synod server");
        self.child = Some(child);
    }

    /// Waits until the member answers a linearizable read.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "synod server exited early with {status}; log:\n{}",
                    self.log()
                );
            }
            if self.health().is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member did not become healthy; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "member is still running");
        self.spawn();
        self.wait_ready();
    }

    /// Starts the process again on the same ports and data, without waiting for it to serve
    /// (a member of a cluster without quorum cannot serve alone).
    pub fn restart_in_background(&mut self) {
        assert!(self.child.is_none(), "member is still running");
        self.spawn();
    }

    /// Starts the process again and returns its exit status and log if it fails to start.
    pub fn start_expecting_failure(&mut self) -> (std::process::ExitStatus, String) {
        self.spawn();
        let mut child = self.child.take().expect("spawned");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "member started although its data is corrupt; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself; returns its status, or `None` after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Connects the `etcd-client` crate to this member.
    pub async fn etcd_client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url()], self.etcd_client_options())
            .await
            .expect("etcd-client connects")
    }

    /// The `etcd-client` crate's options for this member (TLS for a TLS member).
    pub fn etcd_client_options(&self) -> Option<etcd_client::ConnectOptions> {
        self.tls.as_ref().map(MemberTls::etcd_client_options)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends a signal by name with kill(1), so tests need no libc bindings.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// A minimal HTTP/1.1 GET on 127.0.0.1; returns (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, None)
}

/// A minimal HTTP/1.1 request with an optional JSON body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, dechunk(&body)))
}

/// Undoes chunked transfer encoding when present.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size_line, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            return body.to_owned();
        };
        if size == 0 {
            return out;
        }
        if after.len() < size {
            return body.to_owned();
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the synod CLI against a member; returns (exit success, stdout, stderr).
pub fn synod_cli(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    run_tool(synod_binary(), &["--endpoints", endpoint], args, stdin)
}

/// Runs a command with a bounded time; returns (exit success, stdout, stderr).
pub fn run_tool(
    program: &str,
    leading: &[&str],
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(leading)
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let output = wait_with_deadline(child, Duration::from_secs(60));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn wait_with_deadline(child: Child, timeout: Duration) -> std::process::Output {
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(timeout) {
        Ok(output) => output.expect("collect output"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("command did not finish within {timeout:?}");
        }
    }
}

/// A real etcd (Debian's `etcd-server` package) on loopback, the reference for differential
/// tests. Killed by PID when dropped.
pub struct Etcd {
    child: Child,
    pub client_port: u16,
    log_path: PathBuf,
}

impl Etcd {
    pub fn start(root: &Path) -> Etcd {
        Etcd::start_on(root, &root.join("etcd-data"), "reference", free_port())
    }

    /// Starts etcd as member `name` on `data_dir` (restored ones included), with its peer URL on
    /// `peer_port`.
    pub fn start_on(root: &Path, data_dir: &Path, name: &str, peer_port: u16) -> Etcd {
        let found = Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .status();
        assert!(
            found.is_ok_and(|s| s.success()),
            "etcd is required (Debian package etcd-server); scripts/test installs it"
        );
        let client_port = free_port();
        let log_path = root.join(format!("etcd-{name}.log"));
        let log = std::fs::File::create(&log_path).expect("etcd log");
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .args(["--name", name, "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let mut etcd = Etcd {
            child,
            client_port,
            log_path,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while http_get(client_port, "/health").is_none_or(|(code, _)| code != 200) {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!(
                    "etcd exited with {status}:\n{}",
                    std::fs::read_to_string(&etcd.log_path).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd.child.try_wait().expect("etcd running");
        etcd
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster of member processes on loopback, each in its own directory under `root`.
pub struct Cluster {
    pub members: Vec<Member>,
    pub root: PathBuf,
    pub initial_cluster: String,
}

impl Cluster {
    /// Starts `size` members of a new cluster and waits until every one serves.
    pub fn start(root: &Path, size: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_with(root, size, extra_args, None)
    }

    /// Starts a cluster with mutual TLS on every client and peer port: member `mI` gets a
    /// certificate with CN `mI` from `pki`, clients the certificate of `client`.
    pub fn start_tls(
        root: &Path,
        size: usize,
        extra_args: &[&str],
        pki: &TestPki,
        client: &str,
    ) -> Cluster {
        Cluster::start_with(root, size, extra_args, Some((pki, client)))
    }

    fn start_with(
        root: &Path,
        size: usize,
        extra_args: &[&str],
        tls: Option<(&TestPki, &str)>,
    ) -> Cluster {
        Cluster::start_prepared(root, size, extra_args, tls, &|_, _, _| {})
    }

    /// Starts a cluster after `before_launch(name, member, initial_cluster)` has run for each
    /// member, its ports picked and its data directory not yet created (a restore fills it).
    pub fn start_prepared(
        root: &Path,
        size: usize,
        extra_args: &[&str],
        tls: Option<(&TestPki, &str)>,
        before_launch: &dyn Fn(&str, &Member, &str),
    ) -> Cluster {
        let mut members: Vec<Member> = (0..size)
            .map(|i| {
                let mut member = Member::prepare(&root.join(format!("m{i}")), Vec::new());
                member.tls = tls.map(|(pki, client)| pki.member(&format!("m{i}"), client));
                member
            })
            .collect();
        let initial_cluster = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}={}", m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for (i, member) in members.iter_mut().enumerate() {
            let mut args = vec![
                "--name".to_owned(),
                format!("m{i}"),
                "--initial-cluster".to_owned(),
                initial_cluster.clone(),
                "--initial-cluster-token".to_owned(),
                "e2e".to_owned(),
            ];
            args.extend(extra_args.iter().map(|s| s.to_string()));
            member.set_args(args);
            before_launch(&format!("m{i}"), member, &initial_cluster);
            member.launch();
        }
        for member in &mut members {
            member.wait_ready();
        }
        let cluster = Cluster {
            members,
            root: root.to_path_buf(),
            initial_cluster,
        };
        cluster.wait_published();
        cluster
    }

    /// Waits until every member has published its client URLs (through Raft, after it starts).
    fn wait_published(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let size = self.members.len();
        loop {
            let flags = self.members[0].client_flags();
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let (ok, out, _) = run_tool("etcdctl", &flags, &["member", "list"], None);
            let published = out
                .lines()
                .filter(|line| line.contains(", started, ") && line.contains("127.0.0.1"))
                .filter(|line| line.split(", ").nth(4).is_some_and(|urls| !urls.is_empty()))
                .count();
            if ok && published == size {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members did not publish their client URLs: {out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Client URLs of the members that are running.
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.url())
            .collect()
    }

    /// The index of the member that leads, as the running members see it; waits up to 20 s for
    /// one that every running member agrees on.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return leader;
            }
            assert!(Instant::now() < deadline, "the cluster elected no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn agreed_leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for member in &self.members {
            if !member.is_running() {
                ids.push(0);
                continue;
            }
            let mut client =
                etcd_client::Client::connect([member.url()], member.etcd_client_options())
                    .await
                    .ok()?;
            let status = tokio::time::timeout(Duration::from_secs(2), client.status())
                .await
                .ok()?
                .ok()?;
            ids.push(status.header()?.member_id());
            leaders.push(status.leader());
        }
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|l| *l != first) {
            return None;
        }
        ids.iter().position(|id| *id == first)
    }

    /// Member ids by index (from each running member's status).
    pub async fn member_id(&self, index: usize) -> u64 {
        let mut client = self.members[index].etcd_client().await;
        client
            .status()
            .await
            .expect("status")
            .header()
            .expect("header")
            .member_id()
    }

    /// Cuts member `index` off from every other member (both directions), through the
    /// test-only fault routes; `heal` undoes it.
    pub async fn isolate(&self, index: usize) {
        let mut ids = Vec::new();
        for i in 0..self.members.len() {
            ids.push(format!("{:x}", self.member_id(i).await));
        }
        for (i, member) in self.members.iter().enumerate() {
            let peers: Vec<&String> = if i == index {
                ids.iter()
                    .enumerate()
                    .filter(|(j, _)| *j != index)
                    .map(|(_, id)| id)
                    .collect()
            } else {
                vec![&ids[index]]
            };
            let body = serde_json::json!({ "peers": peers }).to_string();
            let (code, _) = member
                .http("POST", "/synod/test/partition", Some(&body))
                .expect("partition request");
            assert_eq!(code, 200);
        }
    }

    pub fn heal(&self) {
        for member in self.members.iter().filter(|m| m.is_running()) {
            let (code, _) = member
                .http("POST", "/synod/test/partition", Some(r#"{"peers": []}"#))
                .expect("heal request");
            assert_eq!(code, 200);
        }
    }
}

/// A small tmpfs mounted for a test, unmounted whatever happens to the test.
pub struct Mounted(PathBuf);

impl Mounted {
    /// Mounts a tmpfs of `size` (such as `8m`) at `path`; `None`, after saying so, when this
    /// process may not mount (not root): the calling test `test` is then skipped.
    pub fn tmpfs(path: &Path, size: &str, test: &str) -> Option<Mounted> {
        std::fs::create_dir_all(path).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipping {test}: mounting a tmpfs needs root");
            return None;
        }
        Some(Mounted(path.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
