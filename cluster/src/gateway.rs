//! What gateway commands do to the tables (rate limits per operation group, IP rules, blocks of
//! misbehaving addresses). Deterministic like the rest of `apply`: times come from the command.

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::command_response::Result as Reply;
use dtm_model::state::gateway_command::Kind;
use dtm_storage::StoreError;
use dtm_storage::Txn;

pub fn apply(
    _txn: &mut Txn<'_>,
    _log_id: &LogId,
    _now_ms: u64,
    c: &state::GatewayCommand,
) -> Result<state::CommandResponse, StoreError> {
    match &c.kind {
        Some(Kind::Noop(_)) => Ok(state::CommandResponse { result: Some(Reply::Applied(state::Applied {})) }),
        None => Ok(state::CommandResponse {
            result: Some(Reply::Rejected(state::Rejected {
                code: "unsupported_command".into(),
                message: "gateway command of an unknown kind".into(),
            })),
        }),
    }
}
