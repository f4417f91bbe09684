//! What the server knows of a request's connection, attached to every request it serves: the
//! client's address and, on a TLS connection under `--client-cert-auth`, its certificate's CN.

/// The CN of a verified client certificate, attached to every request of a TLS connection by
/// the server when `--client-cert-auth` is on.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub common_name: String,
}

/// The address a request's connection comes from, attached by the server.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddress(pub std::net::SocketAddr);

/// The remote address of a gRPC request, if the server attached one.
pub fn remote_of<T>(request: &tonic::Request<T>) -> Option<std::net::SocketAddr> {
    request.extensions().get::<RemoteAddress>().map(|r| r.0)
}

/// Marks a request that came over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Secure;
