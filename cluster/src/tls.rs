//! Mutual TLS between nodes. Every node holds a certificate signed by the cluster CA; the gRPC
//! server (TLS terminated by the node, `node/src/tls.rs` `grpc_server_config`) asks every caller for a certificate, refuses one from another CA at the handshake, and the
//! node-to-node service refuses a caller that presented none (see `service.rs`). The port stays open
//! to callers without a certificate only for services meant for source systems.

use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Identity;

/// PEM material of one node.
#[derive(Clone)]
pub struct NodeTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl NodeTls {
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}
