//! Group commit. Concurrent submissions on a node wait in one bounded queue; a single loop drains it
//! into batches bounded by submissions, records and bytes, and proposes each batch as one log entry,
//! with up to `GroupCommitOptions::in_flight_max` batches in flight. Batches form naturally while
//! earlier ones commit; a lone submission waits at most `linger` for company, and only when at least
//! `linger_after_in_flight` other batches are already in flight (so a single client, or a source
//! beside one other busy source, pays no linger). A submission larger than
//! `records_max` still goes alone in its own entry: a request is never split.

use std::sync::Arc;
use std::time::Instant;

use dtm_model::state;
use dtm_model::state::command::Kind;
use dtm_model::state::command_response::Result as Reply;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::error::ClusterError;
use crate::limits::*;
use crate::node::Writer;

type Reply1 = Result<state::SubmissionResult, ClusterError>;

struct Pending {
    sub: state::Submission,
    records: usize,
    bytes: usize,
    reply: oneshot::Sender<Reply1>,
}

#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    pub(crate) fn start(writer: Arc<Writer>, opts: GroupCommitOptions) -> Self {
        let (tx, rx) = mpsc::channel(GROUP_COMMIT_QUEUE_DEPTH);
        tokio::spawn(run(rx, writer, opts));
        Batcher { tx }
    }

    /// Queues a submission; a full queue is `Overloaded` at once (the API answers 429), so nothing
    /// waits unboundedly and nothing accepted is dropped.
    pub(crate) async fn submit(&self, sub: state::Submission) -> Reply1 {
        let records = sub.records.len();
        let bytes = sub.records.iter().map(|r| r.payload_json.len() + r.id.len()).sum::<usize>() + 128;
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Pending { sub, records, bytes, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClusterError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ClusterError::Stopped("group commit stopped".into()),
        })?;
        rx.await.map_err(|_| ClusterError::Stopped("group commit dropped the request".into()))?
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>, writer: Arc<Writer>, opts: GroupCommitOptions) {
    let in_flight = Arc::new(Semaphore::new(opts.in_flight_max));
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        // Batches in flight besides this one.
        let others = opts.in_flight_max - in_flight.available_permits() - 1;
        let busy = others >= opts.linger_after_in_flight;
        let linger_until = Instant::now() + opts.linger;
        let (mut records, mut bytes) = (first.records, first.bytes);
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_SUBMISSIONS_MAX {
            let next = match rx.try_recv() {
                Ok(p) => p,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if !busy || Instant::now() >= linger_until {
                        break;
                    }
                    match tokio::time::timeout_at(linger_until.into(), rx.recv()).await {
                        Ok(Some(p)) => p,
                        _ => break,
                    }
                }
            };
            if records + next.records > opts.records_max || bytes + next.bytes > GROUP_COMMIT_BYTES_MAX {
                carry = Some(next);
                break;
            }
            records += next.records;
            bytes += next.bytes;
            batch.push(next);
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            commit(&writer, batch).await;
            drop(permit);
        });
    }
}

async fn commit(writer: &Writer, batch: Vec<Pending>) {
    let (subs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.sub, p.reply)).unzip();
    let proposed_at_ms = subs.first().map(|s| s.received_at_ms).unwrap_or(0);
    let cmd = state::Command {
        actor: None,
        version: dtm_model::COMMAND_SET_VERSION,
        proposed_at_ms,
        origin_node: writer.id,
        kind: Some(Kind::Ingest(state::IngestBatch { submissions: subs })),
    };
    let outcome = writer.write(cmd).await;
    match outcome {
        Ok((state::CommandResponse { result: Some(Reply::Ingest(r)) }, _)) if r.results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(r.results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok((other, _)) => {
            let msg = match other.result {
                Some(Reply::Rejected(r)) => format!("{}: {}", r.code, r.message),
                _ => "the state machine answered an unexpected response to an ingest batch".to_string(),
            };
            tracing::error!(%msg, "ingest batch");
            for reply in replies {
                let _ = reply.send(Err(ClusterError::Internal(msg.clone())));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.duplicate()));
            }
        }
    }
}
