//! A Synod client that speaks only etcd's v3 wire protocol, so it works against Synod and etcd
//! alike. The CLI, the benchmark and the end-to-end tests use it; it must never depend on
//! `synod-core` or `synod-server`, which keeps them honest tests of the wire.
//!
//! [`Client`] holds one gRPC channel to one endpoint and hands out the generated service clients;
//! [`Client::connect_any`] tries endpoints in order. [`ClientError`] renders a server error as
//! etcd's message, the way etcdctl prints it.

use std::time::Duration;

pub use synod_api::etcdserverpb;
use synod_api::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
pub use synod_api::mvccpb;
pub use synod_api::v3electionpb;
pub use synod_api::v3lockpb;
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
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> ClientError {
        let message = if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            status.message().to_owned()
        };
        ClientError::Status {
            code: status.code(),
            message,
        }
    }
}

/// Messages as large as etcd allows on its default send side.
const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// A connection to one member.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: String,
    channel: Channel,
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
    /// Connects to one endpoint (`host:port` or `http://host:port`).
    pub async fn connect(endpoint: &str, dial_timeout: Duration) -> Result<Client, ClientError> {
        let url = endpoint_url(endpoint);
        let connect_error = |message: String| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            message,
        };
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| connect_error(e.to_string()))?
            .connect_timeout(dial_timeout)
            .timeout(Duration::from_secs(3600))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| connect_error(format!("cannot connect: {}", source_chain(&e))))?;
        Ok(Client {
            endpoint: endpoint.to_owned(),
            channel,
        })
    }

    /// Connects to the first endpoint that answers.
    pub async fn connect_any(
        endpoints: &[String],
        dial_timeout: Duration,
    ) -> Result<Client, ClientError> {
        let mut last = ClientError::Other("no endpoints given".to_owned());
        for endpoint in endpoints {
            match Client::connect(endpoint, dial_timeout).await {
                Ok(client) => return Ok(client),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }

    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
    }

    pub fn lock(&self) -> synod_api::v3lockpb::lock_client::LockClient<Channel> {
        synod_api::v3lockpb::lock_client::LockClient::new(self.channel.clone())
    }

    pub fn election(&self) -> synod_api::v3electionpb::election_client::ElectionClient<Channel> {
        synod_api::v3electionpb::election_client::ElectionClient::new(self.channel.clone())
    }
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
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
