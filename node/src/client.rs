//! The CLI's HTTPS client for talking to a running cluster: node URLs, CA and token come from
//! `--node`/`--ca-cert`/`--token` (or `DTM_*`), or from a `demo.json` given with `--cluster`. A node
//! that does not answer is skipped for the next one.

use std::path::PathBuf;

use anyhow::Context;
use anyhow::bail;
use reqwest::Method;
use serde_json::Value;

#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Any node's HTTPS address, e.g. https://127.0.0.1:8443 (repeatable).
    #[arg(long = "node", env = "DTM_NODE", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// The cluster CA certificate (PEM).
    #[arg(long, env = "DTM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Admin or analyst bearer token.
    #[arg(long, env = "DTM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A demo.json: node URLs, CA and admin token are taken from it.
    #[arg(long, env = "DTM_CLUSTER")]
    pub cluster: Option<PathBuf>,
}

pub struct Client {
    pub nodes: Vec<String>,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Client {
    pub fn from_target(t: &Target) -> anyhow::Result<Client> {
        let mut nodes = t.nodes.clone();
        let mut ca = t.ca_cert.clone();
        let mut token = t.token.clone();
        if let Some(path) = &t.cluster {
            let demo: Value =
                serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
            if nodes.is_empty() {
                nodes = demo["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n["http"].as_str().map(str::to_string))
                    .collect();
            }
            ca = ca.or_else(|| demo["ca_cert"].as_str().map(PathBuf::from));
            token = token.or_else(|| demo["admin_token"].as_str().map(str::to_string));
        }
        if nodes.is_empty() {
            bail!("no node given: use --node URL or --cluster demo.json");
        }
        let ca = ca.context("no CA certificate given: use --ca-cert FILE or --cluster demo.json")?;
        let ca_pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        Ok(Client { nodes, token, http: crate::tls::https_client(&ca_pem)? })
    }

    /// Sends the request to the first node that answers; returns status and JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let mut last_err = None;
        for node in &self.nodes {
            let mut req = self.http.request(method.clone(), format!("{}{}", node.trim_end_matches('/'), path));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    return Ok((status, v));
                }
                Err(e) => last_err = Some(anyhow::anyhow!("{node}: {e}")),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no node answered")))
    }

    /// Like `call`, but a non-2xx answer is an error carrying the API's message.
    pub async fn expect(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, v) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            let msg = v["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            bail!("HTTP {status}: {msg}");
        }
        Ok(v)
    }
}
