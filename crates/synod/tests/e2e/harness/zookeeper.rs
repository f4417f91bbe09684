//! A real ZooKeeper 3.8 (Debian's `zookeeper` package) on loopback, the reference for the
//! ZooKeeper tests, and ZooKeeper's four-letter words. Killed by PID when dropped.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{START_TIMEOUT, free_port};

/// Where Debian's package puts ZooKeeper's jar and its configuration directory.
const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar";
/// Debian's zkCli.sh.
pub const ZKCLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

pub struct ZooKeeper {
    child: Child,
    pub port: u16,
    log_path: PathBuf,
}

impl ZooKeeper {
    /// Starts a standalone ZooKeeper with its data under `root`, every four-letter word on.
    pub fn start(root: &Path) -> ZooKeeper {
        assert!(
            Path::new("/usr/share/java/zookeeper.jar").exists(),
            "ZooKeeper is required (Debian package zookeeper); scripts/test installs it"
        );
        let port = free_port();
        let data = root.join("zookeeper-data");
        std::fs::create_dir_all(&data).expect("ZooKeeper's data directory");
        let config = root.join("zoo.cfg");
        std::fs::write(
            &config,
            format!(
                "tickTime=3000\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 4lw.commands.whitelist=*\nadmin.enableServer=false\n",
                data.display()
            ),
        )
        .expect("zoo.cfg");
        let log_path = root.join("zookeeper.log");
        let log = std::fs::File::create(&log_path).expect("ZooKeeper's log");
        let child = Command::new("java")
            .args(["-cp", CLASSPATH, "-Xmx256m"])
            .arg(format!("-Dzookeeper.log.dir={}", root.display()))
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start ZooKeeper (java)");
        let mut server = ZooKeeper {
            child,
            port,
            log_path,
        };
        let deadline = Instant::now() + START_TIMEOUT * 2;
        // `ruok` answers before the server serves; `srvr` names its mode once it does.
        while !four_letter(&server.address(), "srvr").contains("Mode: ") {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "ZooKeeper exited with {status}:\n{}",
                    std::fs::read_to_string(&server.log_path).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "ZooKeeper did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a four-letter word; the answer, or "" if none came.
pub fn four_letter(address: &str, word: &str) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(word.as_bytes()).is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}
