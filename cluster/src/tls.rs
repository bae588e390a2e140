//! Mutual TLS between nodes. Every node holds a certificate signed by the cluster CA; the gRPC
//! server asks every caller for a certificate, refuses one from another CA at the handshake, and the
//! node-to-node service refuses a caller that presented none (see `service.rs`). The port stays open
//! to callers without a certificate only for services meant for source systems.

use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Identity;
use tonic::transport::ServerTlsConfig;

/// PEM material of one node.
#[derive(Clone)]
pub struct NodeTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl NodeTls {
    /// tonic's own TLS for the gRPC server (the node terminates TLS itself instead, to reload its
    /// certificate: `node/src/tls.rs` `grpc_server_config`; kept for tools and tests).
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}
