//! A Synod client that speaks only etcd's v3 wire protocol, so it works against Synod and etcd
//! alike. The CLI, the benchmark and the end-to-end tests use it; it must never depend on
//! `synod-core` or `synod-server`, which keeps them honest tests of the wire.
//!
//! [`Client`] holds one gRPC channel to one endpoint and hands out the generated service clients;
//! [`Client::connect_any`] tries endpoints in order. [`ClientError`] renders a server error as
//! etcd's message, the way etcdctl prints it.

use std::sync::Arc;
use std::time::Duration;

pub use synod_api::authpb;
pub use synod_api::etcdserverpb;
use synod_api::etcdserverpb::{
    AuthenticateRequest, auth_client::AuthClient, cluster_client::ClusterClient,
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient,
};
pub use synod_api::mvccpb;
pub use synod_api::v3electionpb;
pub use synod_api::v3lockpb;
pub use synod_tls::{ClientFiles, ClientTls, Policy};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A failure talking to a member.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// An error status from the server; `message` is etcd's text.
    #[error("{message}")]
    Status { code: tonic::Code, message: String },
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Tls(#[from] synod_tls::TlsError),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> ClientError {
        let mut message = if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            status.message().to_owned()
        };
        // A transport failure ("transport error") says what failed only in its sources: a
        // refused client certificate, plaintext against TLS.
        if let Some(source) = std::error::Error::source(&status) {
            let chain = source_chain(source);
            message = if chain.starts_with(&message) {
                chain
            } else {
                format!("{message}: {chain}")
            };
        }
        ClientError::Status {
            code: status.code(),
            message,
        }
    }
}

/// Messages as large as etcd allows on its default send side.
const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// How to reach members: the connection timeout, and TLS for `https://` endpoints (and for
/// endpoints without a scheme when TLS is given, as etcdctl does).
/// With a user and password, the client authenticates once connected and sends the token with
/// every request.
#[derive(Clone, Default)]
pub struct Dial {
    pub timeout: Duration,
    pub tls: Option<Arc<ClientTls>>,
    pub user: Option<(String, String)>,
}

impl From<Duration> for Dial {
    fn from(timeout: Duration) -> Dial {
        Dial {
            timeout,
            ..Dial::default()
        }
    }
}

/// Adds the auth token, if any, to every request (etcd's `token` metadata).
#[derive(Debug, Clone, Default)]
pub struct Token(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the client's token.
pub type Transport = InterceptedService<Channel, Token>;

/// A connection to one member.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: String,
    channel: Channel,
    token: Token,
}

/// Adds `http://` to a bare `host:port` endpoint, as etcdctl accepts both.
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

impl Client {
    /// Connects to one endpoint (`host:port`, `http://host:port` or `https://host:port`).
    pub async fn connect(endpoint: &str, dial: impl Into<Dial>) -> Result<Client, ClientError> {
        let dial = dial.into();
        let connect_error = |message: String| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            message,
        };
        let (url, secure) = match endpoint.strip_prefix("https://") {
            Some(rest) => (format!("http://{rest}"), true),
            None => (
                endpoint_url(endpoint),
                dial.tls.is_some() && !endpoint.contains("://"),
            ),
        };
        let builder = Endpoint::from_shared(url)
            .map_err(|e| connect_error(e.to_string()))?
            .connect_timeout(dial.timeout)
            .timeout(Duration::from_secs(3600))
            .tcp_nodelay(true);
        let connected = if secure {
            let tls = match dial.tls {
                Some(tls) => tls,
                // An https:// endpoint and no TLS flags: the system's CAs, no client certificate.
                None => Arc::new(
                    ClientTls::new(ClientFiles::default(), Policy::default())
                        .map_err(|e| connect_error(e.to_string()))?,
                ),
            };
            // The connector does the TLS on the plain form of the URL (see its docs).
            builder
                .connect_with_connector(tls.connector(dial.timeout))
                .await
        } else {
            builder.connect().await
        };
        let channel = connected
            .map_err(|e| connect_error(format!("cannot connect: {}", source_chain(&e))))?;
        let mut client = Client {
            endpoint: endpoint.to_owned(),
            channel,
            token: Token::default(),
        };
        if let Some((name, password)) = dial.user {
            let authenticated = client
                .auth()
                .authenticate(AuthenticateRequest { name, password })
                .await;
            let token = match authenticated {
                Ok(response) => response.into_inner().token,
                // Credentials for a cluster without auth are not an error (as in etcd's client).
                Err(status) if status.message() == "etcdserver: authentication is not enabled" => {
                    return Ok(client);
                }
                Err(status) => return Err(status.into()),
            };
            let token = token
                .parse()
                .map_err(|_| ClientError::Other("the server sent an unusable token".to_owned()))?;
            client.token = Token(Some(token));
        }
        Ok(client)
    }

    /// Connects to the first endpoint that answers.
    pub async fn connect_any(
        endpoints: &[String],
        dial: impl Into<Dial>,
    ) -> Result<Client, ClientError> {
        let dial = dial.into();
        let mut last = ClientError::Other("no endpoints given".to_owned());
        for endpoint in endpoints {
            match Client::connect(endpoint, dial.clone()).await {
                Ok(client) => return Ok(client),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn transport(&self) -> Transport {
        InterceptedService::new(self.channel.clone(), self.token.clone())
    }

    pub fn kv(&self) -> KvClient<Transport> {
        KvClient::new(self.transport())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub fn watch(&self) -> WatchClient<Transport> {
        WatchClient::new(self.transport()).max_decoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub fn lease(&self) -> LeaseClient<Transport> {
        LeaseClient::new(self.transport())
    }

    pub fn maintenance(&self) -> MaintenanceClient<Transport> {
        MaintenanceClient::new(self.transport()).max_decoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub fn cluster(&self) -> ClusterClient<Transport> {
        ClusterClient::new(self.transport())
    }

    pub fn lock(&self) -> synod_api::v3lockpb::lock_client::LockClient<Transport> {
        synod_api::v3lockpb::lock_client::LockClient::new(self.transport())
    }

    pub fn election(&self) -> synod_api::v3electionpb::election_client::ElectionClient<Transport> {
        synod_api::v3electionpb::election_client::ElectionClient::new(self.transport())
    }

    pub fn auth(&self) -> AuthClient<Transport> {
        AuthClient::new(self.transport())
    }

    /// Synod's `synodpb.Migrate` service (`synod migrate`).
    pub fn migrate(&self) -> synod_api::synodpb::migrate_client::MigrateClient<Transport> {
        synod_api::synodpb::migrate_client::MigrateClient::new(self.transport())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        // Wrappers often repeat their source's text (an I/O error around a TLS error).
        let inner_text = inner.to_string();
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

pub use synod_api::prefix_range_end;

pub mod recipes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end_follows_etcd() {
        assert_eq!(prefix_range_end(b"aa"), b"ab".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }
}
