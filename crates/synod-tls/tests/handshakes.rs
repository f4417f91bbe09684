//! Handshakes between `ServerTls` and `ClientTls` over loopback sockets, with certificates made
//! by `generate`: who gets in, who is refused and why, and rotation without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use synod_tls::generate::{Authority, Issued, write_file};
use synod_tls::{ClientFiles, ClientTls, Policy, ServerFiles, ServerTls, common_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LOOPBACK: &str = "127.0.0.1";

struct Pki {
    dir: tempfile::TempDir,
    ca: Authority,
    ca_file: PathBuf,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Authority::new(ca_name).expect("ca");
        let ca_file = dir.path().join("ca.pem");
        write_file(&ca_file, ca.cert_pem().as_bytes(), 0o644).expect("write");
        Pki { dir, ca, ca_file }
    }

    fn issue(&self, name: &str) -> (Issued, PathBuf, PathBuf) {
        let issued = self
            .ca
            .issue(name, &[LOOPBACK.to_owned(), "localhost".to_owned()])
            .expect("issue");
        let (cert, key) = issued.write(self.dir.path(), name).expect("write");
        (issued, cert, key)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn server_files(pki: &Pki, name: &str) -> ServerFiles {
    let (_, cert, key) = pki.issue(name);
    ServerFiles {
        cert,
        key,
        trusted_ca: Some(pki.ca_file.clone()),
        client_cert_auth: true,
        ..ServerFiles::default()
    }
}

fn client(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<ClientTls> {
    Arc::new(
        ClientTls::new(
            ClientFiles {
                ca: Some(ca.to_owned()),
                cert: cert.map(|c| c.0.to_owned()),
                key: cert.map(|c| c.1.to_owned()),
                skip_verify: false,
            },
            Policy::default(),
        )
        .expect("client tls"),
    )
}

/// Serves one connection: answers "pong:<client CN>" or reports the server's refusal.
async fn serve_once(
    server: Arc<ServerTls>,
) -> (u16, tokio::task::JoinHandle<Result<String, String>>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut stream = server.accept(tcp).await?;
        let cn = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf))
            .unwrap_or_default();
        let mut ping = [0u8; 4];
        stream
            .read_exact(&mut ping)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("pong:{cn}").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.shutdown().await.map_err(|e| e.to_string())?;
        Ok(cn)
    });
    (port, task)
}

/// Dials, pings, and returns what the server answered (or the client's error).
async fn ping(client: &ClientTls, port: u16) -> Result<String, String> {
    let mut stream = client
        .connect(LOOPBACK, port, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

#[tokio::test]
async fn mutual_tls_names_the_client() {
    let pki = Pki::new("test CA");
    let server = Arc::new(
        ServerTls::new("client", server_files(&pki, "m1"), Policy::default()).expect("server"),
    );
    let (_, cert, key) = pki.issue("alice");
    let (port, served) = serve_once(server).await;
    assert_eq!(
        ping(&client(&pki.ca_file, Some((&cert, &key))), port).await,
        Ok("pong:alice".to_owned())
    );
    assert_eq!(served.await.expect("task"), Ok("alice".to_owned()));
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new("test CA");
    let server = Arc::new(
        ServerTls::new("client", server_files(&pki, "m1"), Policy::default()).expect("server"),
    );
    let (port, served) = serve_once(server).await;
    assert!(ping(&client(&pki.ca_file, None), port).await.is_err());
    let refusal = served.await.expect("task").expect_err("refused");
    assert!(refusal.contains("certificate"), "{refusal}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    let pki = Pki::new("test CA");
    let other = Pki::new("another CA");
    let server = Arc::new(
        ServerTls::new("client", server_files(&pki, "m1"), Policy::default()).expect("server"),
    );
    let (_, cert, key) = other.issue("mallory");
    let (port, served) = serve_once(server.clone()).await;
    // Trusting the right CA but presenting a stranger's certificate.
    assert!(
        ping(&client(&pki.ca_file, Some((&cert, &key))), port)
            .await
            .is_err()
    );
    let refusal = served.await.expect("task").expect_err("refused");
    assert!(refusal.contains("UnknownIssuer"), "{refusal}");
    // A client that trusts another CA refuses the server.
    let (port, _served) = serve_once(server).await;
    let refusal = ping(&client(&other.ca_file, Some((&cert, &key))), port)
        .await
        .expect_err("refused");
    assert!(refusal.contains("UnknownIssuer"), "{refusal}");
}

#[tokio::test]
async fn plaintext_on_a_tls_port_is_refused_with_a_reason() {
    let pki = Pki::new("test CA");
    let server = Arc::new(
        ServerTls::new("client", server_files(&pki, "m1"), Policy::default()).expect("server"),
    );
    let (port, served) = serve_once(server).await;
    let mut tcp = tokio::net::TcpStream::connect((LOOPBACK, port))
        .await
        .expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let refusal = served.await.expect("task").expect_err("refused");
    assert!(refusal.contains("not a TLS client"), "{refusal}");
}

#[tokio::test]
async fn only_allowed_common_names_get_in() {
    let pki = Pki::new("test CA");
    let mut files = server_files(&pki, "m1");
    files.allowed_common_names = vec!["m2".to_owned(), "m3".to_owned()];
    let server = Arc::new(ServerTls::new("peer", files, Policy::default()).expect("server"));
    let (_, cert, key) = pki.issue("m2");
    let (port, _) = serve_once(server.clone()).await;
    assert_eq!(
        ping(&client(&pki.ca_file, Some((&cert, &key))), port).await,
        Ok("pong:m2".to_owned())
    );
    let (_, cert, key) = pki.issue("intruder");
    let (port, served) = serve_once(server).await;
    assert!(
        ping(&client(&pki.ca_file, Some((&cert, &key))), port)
            .await
            .is_err()
    );
    let refusal = served.await.expect("task").expect_err("refused");
    assert!(refusal.contains("\"intruder\" is not allowed"), "{refusal}");
}

#[tokio::test]
async fn a_revoked_certificate_is_refused() {
    let pki = Pki::new("test CA");
    let (revoked, cert, key) = pki.issue("revoked");
    let crl = pki.path().join("crl.der");
    write_file(
        &crl,
        &pki.ca.revocation_list(&[revoked.serial]).expect("crl"),
        0o644,
    )
    .expect("write");
    let mut files = server_files(&pki, "m1");
    files.crl = Some(crl);
    let server = Arc::new(ServerTls::new("client", files, Policy::default()).expect("server"));
    let (port, served) = serve_once(server.clone()).await;
    assert!(
        ping(&client(&pki.ca_file, Some((&cert, &key))), port)
            .await
            .is_err()
    );
    let refusal = served.await.expect("task").expect_err("refused");
    assert!(refusal.contains("Revoked"), "{refusal}");
    let (_, cert, key) = pki.issue("fine");
    let (port, _) = serve_once(server).await;
    assert_eq!(
        ping(&client(&pki.ca_file, Some((&cert, &key))), port).await,
        Ok("pong:fine".to_owned())
    );
}

#[tokio::test]
async fn rotated_files_are_used_without_a_restart() {
    let pki = Pki::new("test CA");
    let files = server_files(&pki, "m1");
    let server =
        Arc::new(ServerTls::new("client", files.clone(), Policy::default()).expect("server"));
    let (_, cert, key) = pki.issue("alice");
    let (port, _) = serve_once(server.clone()).await;
    assert!(
        ping(&client(&pki.ca_file, Some((&cert, &key))), port)
            .await
            .is_ok()
    );

    // The operator moves the member and its clients to a new CA: new server pair, new bundle.
    let next = Pki::new("next CA");
    let (issued, _, _) = next.issue("m1-rotated");
    write_file(&files.cert, issued.cert_pem.as_bytes(), 0o644).expect("write");
    write_file(&files.key, issued.key_pem.as_bytes(), 0o600).expect("write");
    write_file(&pki.ca_file, next.ca.cert_pem().as_bytes(), 0o644).expect("write");
    let (_, cert, key) = next.issue("alice");
    let (port, _) = serve_once(server.clone()).await;
    assert_eq!(
        ping(&client(&next.ca_file, Some((&cert, &key))), port).await,
        Ok("pong:alice".to_owned())
    );

    // A rotation left half done (a key that is not a key) keeps the last good files.
    write_file(&files.key, b"not a key", 0o600).expect("write");
    let (port, _) = serve_once(server).await;
    assert_eq!(
        ping(&client(&next.ca_file, Some((&cert, &key))), port).await,
        Ok("pong:alice".to_owned())
    );
}
