//! `dtm ingest FILE --dataset D`: uploads a file as one batch. The format comes from the extension
//! unless `--format` names it; the file is read once locally for its manifest (record count and
//! SHA-256, sent as `X-Batch-Count` and `X-Batch-SHA256`), then streamed with a progress bar. The
//! receipt is printed as JSON; a refused batch exits non-zero with the API's message.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use anyhow::bail;
use dtm_formats::Columns;
use dtm_formats::Format;
use futures::StreamExt;
use sha2::Digest;
use sha2::Sha256;
use tokio::io::AsyncReadExt;

use crate::client::Client;
use crate::client::Target;

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// The file to upload.
    pub file: PathBuf,
    /// The dataset the records belong to.
    #[arg(long)]
    pub dataset: String,
    /// json, ndjson, csv, xml, parquet or xlsx (default: from the file's extension).
    #[arg(long)]
    pub format: Option<String>,
    /// The source system's API key.
    #[arg(long, env = "DTM_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// `reject`: all or nothing; `continue` (default): store the valid rows, list the others.
    #[arg(long, default_value = "continue")]
    pub on_error: String,
    /// Do not send the manifest headers.
    #[arg(long)]
    pub no_manifest: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub target: Target,
}

/// A local file read at any offset, for counting Parquet and XLSX rows.
struct LocalFile(std::fs::File, u64);

impl dtm_formats::RandomRead for LocalFile {
    fn len(&self) -> u64 {
        self.1
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
}

/// The manifest of a file: rows as the node will count them, and the SHA-256 of its bytes.
fn manifest(path: &std::path::Path, format: Format) -> anyhow::Result<(u64, String, u64)> {
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = std::io::copy(&mut f, &mut hasher)?;
    let file = std::fs::File::open(path)?;
    let mut rows = 0u64;
    let mut sink = |_: dtm_formats::Position, _: dtm_formats::Item| {
        rows += 1;
        std::ops::ControlFlow::Continue(())
    };
    dtm_formats::read_random(format, Arc::new(LocalFile(file, len)), &Columns::default(), &mut sink)
        .with_context(|| format!("{} is not a valid {} file", path.display(), format.name()))?;
    Ok((rows, hex::encode(hasher.finalize()), len))
}

/// The upload request of a batch file, without its body.
fn upload(
    http: &reqwest::Client,
    url: String,
    format: Format,
    api_key: &str,
    idempotency_key: &str,
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", format.media_type())
        .header("x-api-key", api_key)
        .header("idempotency-key", idempotency_key)
        // A large file takes minutes (the answer comes once every row is committed): the server's
        // own bound for a batch, not the CLI client's 30 s for ordinary requests.
        .timeout(crate::limits::BATCH_REQUEST_TIMEOUT)
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let format = match &args.format {
        Some(name) => Format::from_name(name).with_context(|| format!("unknown format `{name}`"))?,
        None => Format::from_extension(&args.file.to_string_lossy())
            .context("cannot tell the format from the file name; use --format")?,
    };
    let client = Client::from_target(&args.target)?;
    let path = args.file.clone();
    let (rows, sha256, len) = if args.no_manifest {
        (0, String::new(), std::fs::metadata(&path)?.len())
    } else {
        tokio::task::spawn_blocking(move || manifest(&path, format)).await??
    };
    // One key for every attempt: a retry on another node returns the first receipt.
    let idempotency_key = format!("ingest-{}", uuid::Uuid::new_v4().simple());
    let mut last_err = None;
    for node in &client.nodes {
        let bar = if args.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(len).with_style(
                indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            )
        };
        let file =
            tokio::fs::File::open(&args.file).await.with_context(|| format!("opening {}", args.file.display()))?;
        let progress = bar.clone();
        let stream = futures::stream::unfold(file, move |mut file| {
            let progress = progress.clone();
            async move {
                let mut buf = vec![0u8; 256 * 1024];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        progress.inc(n as u64);
                        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), file))
                    }
                    Err(e) => Some((Err(e), file)),
                }
            }
        })
        .boxed();
        let url = format!(
            "{}/api/v1/datasets/{}/batches?on_error={}",
            node.trim_end_matches('/'),
            args.dataset,
            args.on_error
        );
        let mut req =
            upload(&client.http, url, format, &args.api_key, &idempotency_key).body(reqwest::Body::wrap_stream(stream));
        if !args.no_manifest {
            req = req.header("x-batch-count", rows.to_string()).header("x-batch-sha256", &sha256);
        }
        bar.set_message("uploading");
        match req.send().await {
            Ok(resp) => {
                bar.finish_and_clear();
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let body: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                println!("{}", serde_json::to_string_pretty(&body)?);
                if status != 201 {
                    let msg = body["error"]["message"].as_str().unwrap_or("the batch was refused");
                    bail!("HTTP {status}: {msg}");
                }
                return Ok(());
            }
            Err(e) => {
                bar.abandon_with_message("failed");
                last_err = Some(anyhow::anyhow!("{node}: {e}"));
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no node answered")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 GB upload takes minutes: `dtm ingest` used to give up after the CLI client's 30 s on
    /// every node in turn while the first went on storing the file.
    #[test]
    fn an_upload_may_take_as_long_as_the_server_allows_a_batch() {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().expect("client");
        let format = Format::from_extension("x.ndjson").expect("ndjson");
        let req = upload(&http, "https://127.0.0.1:1/api/v1/datasets/d/batches".into(), format, "k", "i")
            .build()
            .expect("request");
        assert_eq!(req.timeout(), Some(&crate::limits::BATCH_REQUEST_TIMEOUT));
    }
}
