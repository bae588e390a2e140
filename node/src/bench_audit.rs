//! `dtm audit bench --entries N`: how fast `dtm audit verify --data-dir` checks a trail. Builds a
//! store the way a node does — `AuditEvents` commands (4,096 events each, about 400 bytes an entry)
//! applied through `DtmApplier` and `StateMachineStore`, a checkpoint closed every 4,096 entries and
//! signed by a registered Ed25519 node key — then times `verify_reader` over it (the same function
//! the CLI runs) and prints entries per second. `--dir` keeps the store (with `master.key`) for
//! timing the CLI itself: `dtm audit verify --data-dir DIR --master-key-file DIR/master.key`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use dtm_cluster::audit::TrustedKeys;
use dtm_model::state;
use dtm_model::state::command::Kind;
use openraft::storage::RaftStateMachine;
use ring::signature::KeyPair;

/// Events per applied command (the cluster's own bound).
const EVENTS_PER_COMMAND: usize = dtm_cluster::audit::EVENTS_PER_COMMAND_MAX;

#[derive(clap::Args, Debug)]
pub struct BenchAuditArgs {
    /// Audit entries to create and verify.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u64,
    /// Build the store here and keep it (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn command(kind: Kind, at_ms: u64) -> state::Command {
    state::Command {
        version: dtm_model::COMMAND_SET_VERSION,
        proposed_at_ms: at_ms,
        origin_node: 1,
        actor: None,
        kind: Some(kind),
    }
}

fn control(kind: state::audit_command::Kind, at_ms: u64) -> state::Command {
    command(Kind::AuditControl(state::AuditCommand { kind: Some(kind) }), at_ms)
}

/// A realistic event: a source's ingest request with its detail.
fn event(i: u64, at_ms: u64) -> state::AuditEvent {
    state::AuditEvent {
        principal: format!("source:moj/key-{}", i % 7),
        organisation: "Ministry of Justice".into(),
        client_ip: format!("10.0.{}.{}", (i / 256) % 256, i % 256),
        request_id: format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15),
        operation: "records.ingest".into(),
        target: "dataset/etx_monthly".into(),
        outcome: "ok".into(),
        at_ms,
        node_id: 1 + i % 3,
        channel: "rest".into(),
        count: 1,
        bytes_in: 900 + i % 100,
        status: 201,
        records: 1,
        detail_json: format!(r#"{{"source":"moj","records":1,"stored":1,"duplicates":0,"commit_index":{i}}}"#)
            .into_bytes(),
        ..Default::default()
    }
}

pub async fn run(args: BenchAuditArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let store_dir = dir.join("store");
    anyhow::ensure!(!store_dir.exists(), "{} exists already: give an empty --dir", store_dir.display());
    std::fs::create_dir_all(&store_dir)?;
    let key_text = dtm_storage::MasterKey::generate_text()?;
    crate::server::write_private(&dir.join(crate::certs::MASTER_KEY_FILE), &key_text, 0o600)?;
    let master = dtm_storage::MasterKey::parse(&key_text)?;
    let opts = dtm_storage::StoreOptions { master_key: Some(master.clone()), ..Default::default() };
    let started = Instant::now();
    {
        let (_log, mut sm, reader) =
            dtm_storage::open(&store_dir, &opts, Arc::new(dtm_cluster::DtmApplier::default()))?;
        build(&mut sm, &reader, args.entries).await?;
    }
    let built = started.elapsed();
    eprintln!("built {} audit entries in {:.1} s; verifying…", args.entries, built.as_secs_f64());
    let reader = crate::audit_verify::open_store(&dir, master)?;
    let started = Instant::now();
    let report =
        tokio::task::spawn_blocking(move || dtm_cluster::audit::verify_reader(&reader, TrustedKeys::default(), |_| {}))
            .await??;
    let took = started.elapsed();
    anyhow::ensure!(report.ok(), "the benchmark's own trail does not verify: {:?}", report.problem);
    // One more entry than asked for: registering the signing key is audited too.
    anyhow::ensure!(report.entries == args.entries + 1, "verified {} entries of {}", report.entries, args.entries + 1);
    let rate = report.entries as f64 / took.as_secs_f64();
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!(
        "audit verify: {} entries, {} checkpoints ({} signed) in {:.2} s = {:.0} entries/s ({:.1} M/min); {profile} build, {} CPUs",
        report.entries,
        report.checkpoints,
        report.signed_checkpoints,
        took.as_secs_f64(),
        rate,
        rate * 60.0 / 1e6,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if args.dir.is_some() {
        println!(
            "store kept: dtm audit verify --data-dir {} --master-key-file {}",
            dir.display(),
            dir.join(crate::certs::MASTER_KEY_FILE).display()
        );
    }
    Ok(())
}

/// Applies `entries` audit events with checkpoints and their signatures, as a cluster would.
async fn build(
    sm: &mut dtm_storage::StateMachineStore,
    reader: &dtm_storage::StateReader,
    entries: u64,
) -> anyhow::Result<()> {
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("no randomness for a signing key"))?;
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pk = key.public_key().as_ref().to_vec();
    let mut index = 0u64;
    let mut apply = |cmd: state::Command| {
        index += 1;
        dtm_model::Entry {
            log_id: openraft::LogId::new(openraft::LeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(cmd),
        }
    };
    let register = state::audit_command::Kind::RegisterNodeKey(state::RegisterNodeKey {
        key: Some(state::NodeKey { node_id: 1, public_key: pk.clone(), ..Default::default() }),
    });
    sm.apply(vec![apply(control(register, 1))]).await.context("registering the key")?;
    let mut made = 0u64;
    let mut signed_size = 0u64;
    while made < entries {
        let n = (entries - made).min(EVENTS_PER_COMMAND as u64);
        let at_ms = 1_795_000_000_000 + made;
        let events = (made..made + n).map(|i| event(i, at_ms)).collect();
        let replies = sm.apply(vec![apply(command(Kind::Audit(state::AuditEvents { events }), at_ms))]).await?;
        anyhow::ensure!(
            replies.iter().all(|r| !matches!(r.result, Some(state::command_response::Result::Rejected(_)))),
            "events refused: {replies:?}"
        );
        made += n;
        // Sign the checkpoint the applier closed (every CHECKPOINT_EVERY_ENTRIES entries).
        let head = reader.get_msg::<state::AuditHead>(dtm_cluster::tables::AUDIT_HEAD)?.unwrap_or_default();
        if head.last_checkpoint_size > signed_size {
            signed_size = head.last_checkpoint_size;
            sign(sm, reader, &mut apply, &key, &pk, signed_size).await?;
        }
    }
    Ok(())
}

async fn sign(
    sm: &mut dtm_storage::StateMachineStore,
    reader: &dtm_storage::StateReader,
    apply: &mut impl FnMut(state::Command) -> dtm_model::Entry,
    key: &ring::signature::Ed25519KeyPair,
    pk: &[u8],
    size: u64,
) -> anyhow::Result<()> {
    let cp = reader.get_msg::<state::AuditCheckpoint>(&dtm_cluster::tables::audit_checkpoint(size))?;
    let Some(cp) = cp else { anyhow::bail!("no checkpoint of size {size} was closed") };
    let signature = key.sign(&dtm_cluster::audit::checkpoint_message(&cp)).as_ref().to_vec();
    let signed = state::SignCheckpoints {
        signed: vec![state::SignedCheckpoint {
            size,
            signature: Some(state::CheckpointSignature {
                node_id: 1,
                public_key: pk.to_vec(),
                signature,
                signed_at_ms: cp.at_ms,
            }),
        }],
    };
    let kind = state::audit_command::Kind::SignCheckpoints(signed);
    sm.apply(vec![apply(control(kind, cp.at_ms))]).await?;
    Ok(())
}
