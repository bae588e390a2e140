//! Checkpoint signatures through `apply` and the verifier (F8, A1.8; issue 7 acceptance point 3):
//! a checkpoint signed by a key that is not a registered cluster key is refused by `apply` and by
//! the verifier; a verification that continues from an earlier pass reaches the same verdict as a
//! full one, including signatures that arrived after the checkpoint was first verified.

#[path = "common/store.rs"]
mod store;

use store::Store;

use dtm_cluster::audit::TrustedKeys;
use dtm_cluster::audit::Verifier;
use dtm_cluster::tables;
use dtm_model::state;
use dtm_model::state::audit_command::Kind as A;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use ring::signature::Ed25519KeyPair;
use ring::signature::KeyPair;

impl Store {
    async fn apply(&mut self, kind: Kind) -> state::CommandResponse {
        self.apply_at(1_000 + self.index + 1, kind).await
    }

    async fn control(&mut self, kind: A) -> state::CommandResponse {
        self.apply(Kind::AuditControl(state::AuditCommand { kind: Some(kind) })).await
    }

    async fn events(&mut self, n: usize) {
        let events = (0..n)
            .map(|i| state::AuditEvent {
                principal: "admin:t1".into(),
                operation: format!("op{i}"),
                count: 1,
                ..Default::default()
            })
            .collect();
        let r = self.apply(Kind::Audit(state::AuditEvents { events })).await;
        assert!(!rejected(&r), "{r:?}");
    }

    /// The size of the last checkpoint closed.
    fn last_checkpoint(&self) -> state::AuditCheckpoint {
        let head: state::AuditHead = self.reader.get_msg(tables::AUDIT_HEAD).expect("read").expect("head");
        self.checkpoint(head.last_checkpoint_size)
    }

    fn checkpoint(&self, size: u64) -> state::AuditCheckpoint {
        self.reader.get_msg(&tables::audit_checkpoint(size)).expect("read").expect("checkpoint exists")
    }
}

fn rejected(r: &state::CommandResponse) -> bool {
    matches!(r.result, Some(Reply::Rejected(_)))
}

fn new_key() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key")
}

fn register(node_id: u64, key: &Ed25519KeyPair) -> A {
    A::RegisterNodeKey(state::RegisterNodeKey {
        key: Some(state::NodeKey { node_id, public_key: key.public_key().as_ref().to_vec(), ..Default::default() }),
    })
}

fn sign(node_id: u64, key: &Ed25519KeyPair, cp: &state::AuditCheckpoint) -> A {
    A::SignCheckpoints(state::SignCheckpoints {
        signed: vec![state::SignedCheckpoint {
            size: cp.size,
            signature: Some(state::CheckpointSignature {
                node_id,
                public_key: key.public_key().as_ref().to_vec(),
                signature: key.sign(&dtm_cluster::audit::checkpoint_message(cp)).as_ref().to_vec(),
                signed_at_ms: 5,
            }),
        }],
    })
}

#[tokio::test]
async fn apply_refuses_a_checkpoint_signature_by_a_key_that_is_not_a_cluster_key() {
    let mut s = Store::open();
    let (cluster_key, foreign) = (new_key(), new_key());
    assert!(!rejected(&s.control(register(1, &cluster_key)).await));
    s.events(10).await;
    assert!(!rejected(&s.control(A::CloseCheckpoint(state::CloseCheckpoint {})).await));
    // Registering the key is itself an entry: 11 entries.
    let cp = s.last_checkpoint();
    assert_eq!(cp.size, 11);
    assert!(cp.signatures.is_empty());

    // A foreign key, under another node id and under the registered node's id: refused, not stored.
    for node_id in [9, 1] {
        let r = s.control(sign(node_id, &foreign, &cp)).await;
        match &r.result {
            Some(Reply::Rejected(x)) => assert_eq!(x.code, "invalid_signature", "{x:?}"),
            other => panic!("a foreign key's signature was accepted: {other:?}"),
        }
        assert!(s.checkpoint(11).signatures.is_empty(), "a refused signature was stored");
    }
    // A registered key's signature over other content: refused too.
    let mut forged = cp.clone();
    forged.merkle_root = vec![0; 32];
    let mut bad = sign(1, &cluster_key, &forged);
    if let A::SignCheckpoints(sc) = &mut bad {
        sc.signed[0].size = 11;
    }
    assert!(rejected(&s.control(bad).await));
    assert!(s.checkpoint(11).signatures.is_empty());

    // The registered key's signature is kept, and the trail verifies with it.
    assert!(!rejected(&s.control(sign(1, &cluster_key, &cp)).await));
    assert_eq!(s.checkpoint(11).signatures.len(), 1);
    let r = dtm_cluster::audit::verify_reader(&s.reader, TrustedKeys::default(), |_| {}).expect("verify");
    assert!(r.ok(), "{:?}", r.problem);
    assert_eq!((r.entries, r.checkpoints, r.signed_checkpoints, r.unsigned_tail), (11, 1, 1, 0));

    // Pinned keys that lack the signer: the checkpoint is named.
    let pinned = TrustedKeys { keys: vec![(1, foreign.public_key().as_ref().to_vec())] };
    let p = dtm_cluster::audit::verify_reader(&s.reader, pinned, |_| {}).expect("verify").problem.expect("refused");
    assert_eq!((p.seq, p.kind.as_str()), (11, "signature"), "{p:?}");
    assert!(p.message.contains("not a cluster key"), "{p:?}");
}

#[tokio::test]
async fn a_continuing_verification_agrees_with_a_full_one() {
    let mut s = Store::open();
    let key = new_key();
    s.control(register(1, &key)).await;
    s.events(5).await;
    s.control(A::CloseCheckpoint(state::CloseCheckpoint {})).await;
    let cp5 = s.last_checkpoint();
    s.control(sign(1, &key, &cp5)).await;
    s.events(3).await;
    s.control(A::CloseCheckpoint(state::CloseCheckpoint {})).await;

    let mut v = Verifier::new(TrustedKeys::default());
    let first = dtm_cluster::audit::verify_reader_live(&s.reader, &mut v, |_| {}).expect("verify");
    assert!(first.ok(), "{:?}", first.problem);
    assert_eq!((first.entries, first.checkpoints, first.signed_checkpoints, first.unsigned_tail), (9, 2, 1, 3));

    // The second checkpoint is signed after it was verified, and the chain grows by 4 entries.
    let cp8 = s.last_checkpoint();
    s.control(sign(1, &key, &cp8)).await;
    s.events(4).await;
    let next = dtm_cluster::audit::verify_reader_live(&s.reader, &mut v, |_| {}).expect("verify");
    let full = dtm_cluster::audit::verify_reader(&s.reader, TrustedKeys::default(), |_| {}).expect("verify");
    assert!(next.ok() && full.ok(), "{:?} {:?}", next.problem, full.problem);
    assert_eq!(
        (next.entries, next.checkpoints, next.signed_checkpoints, next.unsigned_tail),
        (full.entries, full.checkpoints, full.signed_checkpoints, full.unsigned_tail)
    );
    assert_eq!((next.entries, next.signed_checkpoints, next.unsigned_tail), (13, 2, 4));
    assert_eq!((&next.head_hash, &next.merkle_root), (&full.head_hash, &full.merkle_root));
}

/// The connection log (C4) counts a submission under the source it was made for, whoever made it:
/// a source key, an OAuth client or a data-entry user; a refused one as a failure with its cause.
#[tokio::test]
async fn the_connection_log_counts_submissions_under_their_source() {
    let mut s = Store::open();
    let submission = |principal: &str, key_id: &str| state::Submission {
        dataset: "etx".into(),
        source: "moj".into(),
        principal: principal.into(),
        key_id: key_id.into(),
        request_bytes: 100,
        received_at_ms: 1_000,
        ..Default::default()
    };
    let ingest = state::IngestBatch {
        submissions: vec![
            submission("source:moj/k1", "k1"),
            submission("client:portal", ""),
            submission("user:an", ""),
        ],
    };
    s.apply(Kind::Ingest(ingest)).await;
    let day: state::ConnectionDay = s
        .reader
        .get_msg(&tables::connection_day("moj", dtm_cluster::audit::vietnam_day(1_000)))
        .expect("read")
        .expect("the day is counted");
    assert_eq!((day.requests, day.bytes_in), (3, 300), "{day:?}");
    // The dataset is unknown, so each submission failed, and the cause is named.
    assert_eq!(day.failures, 3, "{day:?}");
    assert_eq!(day.causes.values().sum::<u64>(), 3, "{day:?}");
    // The three entries were stored as one block and verify.
    let r = dtm_cluster::audit::verify_reader(&s.reader, TrustedKeys::default(), |_| {}).expect("verify");
    assert!(r.ok() && r.entries == 3, "{r:?}");
    assert_eq!(s.reader.scan(tables::AUDIT_ENTRY, None, 10).expect("scan").len(), 1, "one block");
}
