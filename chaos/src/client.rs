//! The cluster's HTTPS API as the chaos suite uses it: admin calls with the bootstrap token,
//! membership changes, setup, writes as a source, complete linearizable reads and digests. Every
//! request has a timeout, so a paused or cut-off node costs a bounded wait.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use serde_json::json;

use crate::cluster::Cluster;
use crate::cluster::Node;
use crate::cluster::eventually;
use crate::error::ChaosError;
use crate::error::Result;
use crate::limits::CLUSTER_CHANGE_TIMEOUT_MS;
use crate::limits::CONNECT_TIMEOUT_MS;
use crate::limits::READ_PAGE_RECORDS_MAX;
use crate::limits::READ_PAGES_MAX;
use crate::limits::READ_TIMEOUT_MS;
use crate::limits::WRITE_TIMEOUT_MS;

impl Cluster {
    /// Adds node `id` as a voter through the API of another running node, retrying until the
    /// cluster accepts (a leader change may interrupt it).
    pub async fn join(&self, id: u64) -> Result<()> {
        let n = &self.nodes[&id];
        let body = json!({"id": id, "http_addr": n.http_addr, "grpc_addr": n.grpc_addr,
                          "site": format!("site-{id}"), "voter": true});
        let last = Mutex::new(String::new());
        let result = eventually(&format!("node {id} to join"), CLUSTER_CHANGE_TIMEOUT_MS, || async {
            for via in self.ids().into_iter().filter(|v| *v != id && self.is_up(*v)) {
                match self.admin(reqwest::Method::POST, via, "/api/v1/cluster/nodes", Some(body.clone())).await {
                    Ok((201, _)) => return Some(()),
                    Ok((s, v)) => set(&last, format!("HTTP {s}: {v}")),
                    Err(e) => set(&last, e.to_string()),
                }
            }
            None
        })
        .await;
        result.map_err(|e| ChaosError::Node { node: id, detail: format!("{e}; last answer: {}", get(&last)) })
    }

    /// Removes node `id` from the membership through another running node.
    pub async fn remove(&self, id: u64) -> Result<()> {
        let path = format!("/api/v1/cluster/nodes/{id}");
        let last = Mutex::new(String::new());
        let result = eventually(&format!("node {id} to be removed"), CLUSTER_CHANGE_TIMEOUT_MS, || async {
            for via in self.ids().into_iter().filter(|v| *v != id && self.is_up(*v)) {
                match self.admin(reqwest::Method::DELETE, via, &path, None).await {
                    Ok((s, _)) if (200..300).contains(&s) || s == 404 => return Some(()),
                    Ok((s, v)) => set(&last, format!("HTTP {s}: {v}")),
                    Err(e) => set(&last, e.to_string()),
                }
            }
            None
        })
        .await;
        result.map_err(|e| ChaosError::Node { node: id, detail: format!("{e}; last answer: {}", get(&last)) })
    }

    pub fn url(&self, id: u64) -> String {
        self.nodes.get(&id).map(Node::url).unwrap_or_default()
    }

    /// An admin request with the bootstrap token; answers the status and the JSON body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        node: u64,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let what = format!("{method} {path} on node {node}");
        let mut req = self
            .http
            .request(method, format!("{}{}", self.url(node), path))
            .bearer_auth(&self.admin_token)
            .timeout(Duration::from_millis(READ_TIMEOUT_MS));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|source| ChaosError::Http { what: what.clone(), source })?;
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// Registers a source and returns its API key.
    pub async fn create_source(&self, node: u64, id: &str) -> Result<String> {
        let (s, v) =
            self.admin(reqwest::Method::POST, node, "/api/v1/sources", Some(json!({"id": id, "name": id}))).await?;
        if s != 201 {
            return Err(ChaosError::Api { what: "creating a source".into(), status: s, body: v.to_string() });
        }
        v["api_key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ChaosError::Malformed { what: "source answer".into(), detail: format!("no api_key in {v}") })
    }

    pub async fn create_dataset(&self, node: u64, definition: Value) -> Result<()> {
        let (s, v) = self.admin(reqwest::Method::POST, node, "/api/v1/datasets", Some(definition)).await?;
        if s != 201 {
            return Err(ChaosError::Api { what: "creating a dataset".into(), status: s, body: v.to_string() });
        }
        Ok(())
    }

    /// Posts records as a source: status, body, and whether the answer was an idempotent replay.
    pub async fn post(
        &self,
        node: u64,
        dataset: &str,
        api_key: &str,
        body: &Value,
        idempotency_key: &str,
    ) -> std::result::Result<(u16, Value, bool), reqwest::Error> {
        let resp = self
            .http
            .post(format!("{}/api/v1/datasets/{dataset}/records", self.url(node)))
            .header("x-api-key", api_key)
            .header("idempotency-key", idempotency_key)
            .timeout(Duration::from_millis(WRITE_TIMEOUT_MS))
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        Ok((status, resp.json().await.unwrap_or(Value::Null), replayed))
    }

    /// Every record of `dataset` on `node`, read with `consistency=linearizable`, all pages.
    pub async fn records(&self, node: u64, dataset: &str) -> Result<Vec<Value>> {
        Ok(self.records_at(node, dataset).await?.0)
    }

    /// Like `records`, with the log indexes the pages were answered at (one per page), so that a
    /// caller can tell whether the whole read saw one state.
    pub async fn records_at(&self, node: u64, dataset: &str) -> Result<(Vec<Value>, BTreeSet<u64>)> {
        let mut indexes = BTreeSet::new();
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..READ_PAGES_MAX {
            let mut path =
                format!("/api/v1/datasets/{dataset}/records?limit={READ_PAGE_RECORDS_MAX}&consistency=linearizable");
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let (s, v) = self.admin(reqwest::Method::GET, node, &path, None).await?;
            if s != 200 {
                return Err(ChaosError::Api {
                    what: format!("reading {dataset} on node {node}"),
                    status: s,
                    body: v.to_string(),
                });
            }
            out.extend(v["records"].as_array().cloned().unwrap_or_default());
            indexes.extend(v["as_of_index"].as_u64());
            match v["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => return Ok((out, indexes)),
            }
        }
        Err(ChaosError::Malformed { what: "record pages".into(), detail: format!("more than {READ_PAGES_MAX} pages") })
    }

    /// The dataset's aggregate digest on `node` (linearizable): `(as_of_index, sha256)`.
    pub async fn digest(&self, node: u64, dataset: &str) -> Result<(u64, String)> {
        let path = format!("/api/v1/datasets/{dataset}/aggregates/digest?consistency=linearizable");
        let (s, v) = self.admin(reqwest::Method::GET, node, &path, None).await?;
        match (s, v["as_of_index"].as_u64(), v["sha256"].as_str()) {
            (200, Some(i), Some(h)) => Ok((i, h.to_string())),
            _ => Err(ChaosError::Api {
                what: format!("digest of {dataset} on node {node}"),
                status: s,
                body: v.to_string(),
            }),
        }
    }

    pub async fn status(&self, node: u64) -> Result<Value> {
        let (s, v) = self.admin(reqwest::Method::GET, node, "/api/v1/cluster", None).await?;
        if s != 200 {
            return Err(ChaosError::Api { what: "cluster status".into(), status: s, body: v.to_string() });
        }
        Ok(v)
    }

    /// The leader as some up node reports it, if that leader is up too.
    pub async fn leader(&self) -> Option<u64> {
        for id in self.ids().into_iter().filter(|i| self.is_up(*i)) {
            if let Ok(v) = self.status(id).await
                && let Some(l) = v["leader_id"].as_u64()
                && self.is_up(l)
            {
                return Some(l);
            }
        }
        None
    }

    pub async fn wait_leader(&self) -> Result<u64> {
        eventually("a leader", CLUSTER_CHANGE_TIMEOUT_MS, || self.leader()).await
    }
}

fn set(slot: &Mutex<String>, v: String) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = v;
}

fn get(slot: &Mutex<String>) -> String {
    slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

pub fn https_client(ca_pem: &[u8]) -> Result<reqwest::Client> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| ChaosError::Malformed { what: "CA certificate".into(), detail: e.to_string() })?;
        roots.add(c).map_err(|e| ChaosError::Malformed { what: "CA certificate".into(), detail: e.to_string() })?;
    }
    let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(WRITE_TIMEOUT_MS))
        .build()
        .map_err(|source| ChaosError::Http { what: "building the HTTPS client".into(), source })
}
