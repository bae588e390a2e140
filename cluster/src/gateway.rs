//! What gateway commands do to the tables (rate limits per operation group, IP rules, blocks of
//! misbehaving addresses). Deterministic like the rest of `apply`: times come from the command, and
//! a block's expiry is carried in it; each gateway compares it with its own clock.
//!
//! The values are checked by the proposing node (`node/src/gateway/`); `apply` checks only what
//! keeps the tables bounded and well-formed, so a malformed command is rejected the same way on
//! every node.

use dtm_model::LogId;
use dtm_model::state;
use dtm_model::state::gateway_command::Kind;
use dtm_storage::StoreError;
use dtm_storage::Txn;

use crate::tables;

/// Operation groups a rate limit may name.
pub const RATE_LIMIT_GROUPS: [&str; 6] = ["ingest", "batch", "query", "export", "admin", "login"];
/// Entries in one allow or deny list.
pub const IP_RULE_ENTRIES_MAX: usize = 1_000;
/// Credentials with rules of their own.
pub const IP_RULE_CREDENTIALS_MAX: usize = 10_000;
/// Expired blocks removed per block command, so the table does not grow with old blocks and one
/// command's work stays bounded.
pub const EXPIRED_BLOCKS_PRUNED_PER_COMMAND_MAX: usize = 256;
/// Longest text of an address or a reason.
const ADDRESS_TEXT_BYTES_MAX: usize = 64;
const REASON_BYTES_MAX: usize = 256;

use crate::applier::applied;
use crate::applier::rejected;

pub fn apply(
    txn: &mut Txn<'_>,
    _log_id: &LogId,
    now_ms: u64,
    c: &state::GatewayCommand,
) -> Result<state::CommandResponse, StoreError> {
    match &c.kind {
        Some(Kind::Noop(_)) => Ok(applied()),
        Some(Kind::SetRateLimits(c)) => set_rate_limits(txn, c),
        Some(Kind::SetIpRules(c)) => set_ip_rules(txn, c),
        Some(Kind::BlockAddress(c)) => block_address(txn, now_ms, c),
        Some(Kind::UnblockAddress(c)) => unblock_address(txn, c),
        None => Ok(rejected("unsupported_command", "gateway command of an unknown kind")),
    }
}

fn set_rate_limits(txn: &mut Txn<'_>, c: &state::SetRateLimits) -> Result<state::CommandResponse, StoreError> {
    let Some(limits) = &c.limits else { return Ok(rejected("invalid_command", "rate limits missing")) };
    for (group, limit) in &limits.groups {
        if !RATE_LIMIT_GROUPS.contains(&group.as_str()) {
            return Ok(rejected("invalid_command", format!("unknown operation group `{group}`")));
        }
        if limit.per_second == 0 || limit.burst == 0 {
            return Ok(rejected("invalid_command", format!("the `{group}` limit needs per_second and burst above 0")));
        }
    }
    txn.put_msg(tables::GATEWAY_RATE_LIMITS.to_vec(), limits);
    Ok(applied())
}

fn rule_set_ok(set: &state::IpRuleSet) -> bool {
    set.allow.len() <= IP_RULE_ENTRIES_MAX
        && set.deny.len() <= IP_RULE_ENTRIES_MAX
        && set.allow.iter().chain(&set.deny).all(|e| e.len() <= ADDRESS_TEXT_BYTES_MAX)
}

fn set_ip_rules(txn: &mut Txn<'_>, c: &state::SetIpRules) -> Result<state::CommandResponse, StoreError> {
    let Some(rules) = &c.rules else { return Ok(rejected("invalid_command", "IP rules missing")) };
    let within_bounds = rules.credentials.len() <= IP_RULE_CREDENTIALS_MAX
        && rules.global.iter().chain(rules.credentials.values()).all(rule_set_ok);
    if !within_bounds {
        return Ok(rejected("invalid_command", "too many IP rules"));
    }
    txn.put_msg(tables::GATEWAY_IP_RULES.to_vec(), rules);
    Ok(applied())
}

fn block_address(
    txn: &mut Txn<'_>,
    now_ms: u64,
    c: &state::BlockAddress,
) -> Result<state::CommandResponse, StoreError> {
    let Some(block) = &c.block else { return Ok(rejected("invalid_command", "block missing")) };
    if block.address.parse::<std::net::IpAddr>().is_err() || block.reason.len() > REASON_BYTES_MAX {
        return Ok(rejected("invalid_command", "a block needs an IP address and a short reason"));
    }
    prune_expired_blocks(txn, now_ms)?;
    let key = tables::gateway_block(&block.address);
    // Several nodes may detect the same address at once: the block that lasts longest stays.
    let longer = txn.get_msg::<state::AddressBlock>(&key)?.is_none_or(|old| old.expires_at_ms < block.expires_at_ms);
    if longer {
        txn.put_msg(key, block);
    }
    Ok(applied())
}

fn unblock_address(txn: &mut Txn<'_>, c: &state::UnblockAddress) -> Result<state::CommandResponse, StoreError> {
    let key = tables::gateway_block(&c.address);
    if txn.get(&key)?.is_none() {
        return Ok(rejected("not_found", format!("`{}` is not blocked", c.address)));
    }
    txn.remove(key);
    Ok(applied())
}

/// Removes blocks that expired before the command's time (the proposer's clock, carried in the
/// command), at most `EXPIRED_BLOCKS_PRUNED_PER_COMMAND_MAX`.
fn prune_expired_blocks(txn: &mut Txn<'_>, now_ms: u64) -> Result<(), StoreError> {
    let mut end = tables::GATEWAY_BLOCK.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut removed = 0;
    let mut start = tables::GATEWAY_BLOCK.to_vec();
    // Pages through the table; bounded by the table's size and by the prune limit.
    loop {
        let page = txn.scan_range(&start, &end, 1_024)?;
        let Some((last_key, _)) = page.last() else { return Ok(()) };
        let mut next = last_key.clone();
        next.push(0);
        for (k, v) in &page {
            let expired = <state::AddressBlock as prost::Message>::decode(v.as_slice())
                .map_or(true, |b| b.expires_at_ms <= now_ms);
            if expired {
                txn.remove(k.clone());
                removed += 1;
                if removed >= EXPIRED_BLOCKS_PRUNED_PER_COMMAND_MAX {
                    return Ok(());
                }
            }
        }
        if page.len() < 1_024 {
            return Ok(());
        }
        start = next;
    }
}
