//! The node's own Ed25519 signing key: it signs audit checkpoints (as leader) and the receipts this
//! node gives. Created on first start in `<data dir>/node-signing.key`, sealed with the master key
//! (AES-256-GCM), so a copied data directory without the master key yields nothing. The public
//! half is registered in the replicated state (`RegisterNodeKey`) and kept there forever, so that
//! anyone holding the cluster's public keys can verify old signatures; a wiped node makes a new
//! key and registers it beside the old one.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use ring::signature::Ed25519KeyPair;
use ring::signature::KeyPair;

const FILE: &str = "node-signing.key";
const AAD: &[u8] = b"dtm node signing key v1";

#[derive(Clone)]
pub struct NodeKey {
    pub node_id: u64,
    pair: Arc<Ed25519KeyPair>,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey(node {}, {})", self.node_id, hex::encode(self.public_key()))
    }
}

impl NodeKey {
    /// Loads the key from `data_dir`, or creates and stores one.
    pub fn load_or_create(data_dir: &Path, node_id: u64, master: &dtm_storage::MasterKey) -> anyhow::Result<NodeKey> {
        let path = data_dir.join(FILE);
        let der = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let sealed = hex::decode(text.trim()).with_context(|| format!("{} is not hex text", path.display()))?;
                master
                    .open(AAD, &sealed)
                    .with_context(|| format!("{} does not open with this node's master key", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("no system randomness for the node signing key"))?;
                let sealed = master.seal(AAD, doc.as_ref())?;
                crate::server::write_private(&path, &hex::encode(&sealed), 0o600)?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 key", path.display()))?;
        Ok(NodeKey { node_id, pair: Arc::new(pair) })
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}
