//! Certificates for TLS tests: one CA per test, member certificates valid for 127.0.0.1, and a
//! client certificate, all made with `synod_tls::generate` (the code `synod cluster up --tls`
//! uses) and written as the PEM files operators give to etcd's flags.

use std::path::{Path, PathBuf};

use synod_tls::generate::{Authority, write_file};

/// A test's certificate authority and the directory its files go to.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: Authority,
    pub ca_file: PathBuf,
}

/// The files one member is started with, and those of the client that talks to it.
#[derive(Debug, Clone)]
pub struct MemberTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    pub fn new(dir: &Path, ca_name: &str) -> TestPki {
        std::fs::create_dir_all(dir).expect("create the pki directory");
        let ca = Authority::new(ca_name).expect("make a CA");
        let ca_file = dir.join("ca.pem");
        write_file(&ca_file, ca.cert_pem().as_bytes(), 0o644).expect("write the CA");
        TestPki {
            dir: dir.to_owned(),
            ca,
            ca_file,
        }
    }

    /// A certificate and key for `name` (its CN), valid for 127.0.0.1 and localhost.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        self.ca
            .issue(name, &["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("issue a certificate")
            .write(&self.dir, name)
            .expect("write a certificate")
    }

    /// The files of member `name`, with a client certificate for `client`.
    pub fn member(&self, name: &str, client: &str) -> MemberTls {
        let (cert, key) = self.issue(name);
        let client_cert = self.dir.join(format!("{client}.pem"));
        let client_key = self.dir.join(format!("{client}-key.pem"));
        if !client_cert.exists() {
            self.issue(client);
        }
        MemberTls {
            ca: self.ca_file.clone(),
            cert,
            key,
            client_cert,
            client_key,
        }
    }
}

impl MemberTls {
    /// Server flags for mutual TLS on the client and the peer URLs.
    pub fn server_flags(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            format!("--cert-file={}", path(&self.cert)),
            format!("--key-file={}", path(&self.key)),
            format!("--trusted-ca-file={}", path(&self.ca)),
            "--client-cert-auth=true".to_owned(),
            format!("--peer-cert-file={}", path(&self.cert)),
            format!("--peer-key-file={}", path(&self.key)),
            format!("--peer-trusted-ca-file={}", path(&self.ca)),
            "--peer-client-cert-auth=true".to_owned(),
        ]
    }

    /// etcdctl's (and synod's CLI) flags to reach the member as the client.
    pub fn client_flags(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.client_cert.display()),
            format!("--key={}", self.client_key.display()),
        ]
    }

    /// curl's flags to reach the member as the client.
    pub fn curl_flags(&self) -> Vec<String> {
        vec![
            "--cacert".to_owned(),
            self.ca.display().to_string(),
            "--cert".to_owned(),
            self.client_cert.display().to_string(),
            "--key".to_owned(),
            self.client_key.display().to_string(),
        ]
    }

    /// Options for the `etcd-client` crate.
    pub fn etcd_client_options(&self) -> etcd_client::ConnectOptions {
        self.with_tls(etcd_client::ConnectOptions::new())
    }

    /// `options` with this client's TLS.
    pub fn with_tls(&self, options: etcd_client::ConnectOptions) -> etcd_client::ConnectOptions {
        let read = |p: &PathBuf| std::fs::read(p).expect("read a PEM file");
        options.with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
                .identity(etcd_client::Identity::from_pem(
                    read(&self.client_cert),
                    read(&self.client_key),
                )),
        )
    }
}
