//! Where stored records live. The records one log entry stores in one dataset are one value, a
//! `RecordBlock` under `recb/<dataset>\0<log index>`: `apply` appends each record's encoding to the
//! block as it stores it (`Txn::append`), and the block reaches sled once, compressed and sealed
//! (`dtm_storage::Cipher::seal_value`). One value per entry instead of one per record is what makes
//! batches cheap to apply and small on disk.
//!
//! Records written by versions before blocks, one per key under `rec/<dataset>\0<index><position>`,
//! are still read, before the blocks (they are older). Either way a record is named by its table key
//! `rec/<dataset>\0<index be64><position be32>` (`tables::record`): page cursors and the `rid/`
//! index hold that key wherever the record is stored.

use dtm_model::state;
use dtm_storage::StateReader;
use dtm_storage::StoreError;
use dtm_storage::Txn;
use prost::Message;
use prost::encoding::WireType;

use crate::lineage::TableRead;
use crate::tables;

/// Blocks read per scan step when listing records (each holds the records of one log entry).
const BLOCKS_PER_STEP: usize = 8;

/// Stores `record` at `position` of its log entry (`record.commit_index`).
pub fn put(txn: &mut Txn<'_>, record: &mut state::StoredRecord, position: u32) -> Result<(), StoreError> {
    record.position = position;
    txn.append_with(tables::record_block(&record.dataset, record.commit_index), |block| {
        prost::encoding::message::encode(1, record, block)
    })
}

/// The record with this table key, wherever it is stored.
pub fn get(t: &impl TableRead, table_key: &[u8]) -> Result<Option<state::StoredRecord>, StoreError> {
    if let Some(r) = t.get_pb::<state::StoredRecord>(table_key)? {
        return Ok(Some(r));
    }
    let Some((dataset, index, position)) = tables::split_record_key(table_key) else { return Ok(None) };
    match t.get_raw(&tables::record_block(dataset, index))? {
        None => Ok(None),
        Some(block) => record_at(&block, position),
    }
}

/// Up to `limit` records of `dataset` after the table key `after` (from the first if None), in
/// commit order, each with its table key.
pub fn scan(
    reader: &StateReader,
    dataset: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, state::StoredRecord)>, StoreError> {
    let mut out = Vec::new();
    let prefix = tables::records_of(dataset);
    for (k, v) in reader.scan(&prefix, after, limit)? {
        out.push((k, state::StoredRecord::decode(v.as_slice())?));
    }
    let (from_index, from_position) = match after.and_then(tables::record_position) {
        Some((index, position)) => (index, Some(position)),
        None => (0, None),
    };
    let visit = |index: u64, block: &[u8], out: &mut Vec<(Vec<u8>, state::StoredRecord)>| {
        for_each_in_block(block, |r| {
            let wanted = index > from_index || from_position.is_none_or(|p| r.position > p);
            if wanted && out.len() < limit {
                out.push((tables::record(dataset, index, r.position), r));
            }
            Ok(out.len() < limit)
        })
    };
    // The block holding the cursor, then those after it.
    let mut after_block = tables::record_block(dataset, from_index);
    if out.len() < limit
        && let Some(block) = reader.get(&after_block)?
    {
        visit(from_index, &block, &mut out)?;
    }
    let blocks = tables::record_blocks_of(dataset);
    while out.len() < limit {
        let rows = reader.scan(&blocks, Some(&after_block), BLOCKS_PER_STEP)?;
        for (k, block) in &rows {
            let Some(index) = tables::record_block_index(k) else { continue };
            visit(index, block, &mut out)?;
        }
        match rows.last() {
            Some((k, _)) if rows.len() == BLOCKS_PER_STEP => after_block = k.clone(),
            _ => break,
        }
    }
    Ok(out)
}

/// Calls `f` with each record of an encoded `RecordBlock`, decoding one at a time; `f` returns
/// false to stop.
fn for_each_in_block(
    mut buf: &[u8],
    mut f: impl FnMut(state::StoredRecord) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    while let Some(record) = next_record(&mut buf)? {
        if !f(state::StoredRecord::decode(record)?)? {
            break;
        }
    }
    Ok(())
}

/// The record at `position` of an encoded `RecordBlock`. Only that record is decoded; the others
/// are skipped field by field.
fn record_at(mut buf: &[u8], position: u32) -> Result<Option<state::StoredRecord>, StoreError> {
    while let Some(record) = next_record(&mut buf)? {
        if position_of(record)? == position {
            return Ok(Some(state::StoredRecord::decode(record)?));
        }
    }
    Ok(None)
}

/// The next record's encoding in a `RecordBlock` (field 1), skipping any other field.
fn next_record<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a [u8]>, StoreError> {
    while !buf.is_empty() {
        let (tag, wire) = prost::encoding::decode_key(buf)?;
        if (tag, wire) == (1, WireType::LengthDelimited) {
            let len = usize::try_from(prost::encoding::decode_varint(buf)?).unwrap_or(usize::MAX);
            if len > buf.len() {
                return Err(StoreError::Invalid("a record block is cut short inside a record".into()));
            }
            let (record, rest) = buf.split_at(len);
            *buf = rest;
            return Ok(Some(record));
        }
        prost::encoding::skip_field(wire, tag, buf, prost::encoding::DecodeContext::default())?;
    }
    Ok(None)
}

/// A `StoredRecord`'s `position` (field 23), read without decoding the rest.
fn position_of(mut record: &[u8]) -> Result<u32, StoreError> {
    let mut position = 0;
    while !record.is_empty() {
        let (tag, wire) = prost::encoding::decode_key(&mut record)?;
        if (tag, wire) == (23, WireType::Varint) {
            position = u32::try_from(prost::encoding::decode_varint(&mut record)?).unwrap_or(u32::MAX);
        } else {
            prost::encoding::skip_field(wire, tag, &mut record, prost::encoding::DecodeContext::default())?;
        }
    }
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, position: u32) -> state::StoredRecord {
        state::StoredRecord {
            id: id.into(),
            dataset: "d".into(),
            commit_index: 7,
            payload_json: format!("{{\"id\":\"{id}\"}}").into_bytes(),
            position,
            ..Default::default()
        }
    }

    fn block(records: &[state::StoredRecord]) -> Vec<u8> {
        state::RecordBlock { records: records.to_vec() }.encode_to_vec()
    }

    #[test]
    fn a_block_is_read_record_by_record_and_by_position() {
        let rs = [record("a", 0), record("b", 2), record("c", 3)];
        let b = block(&rs);
        let mut seen = Vec::new();
        for_each_in_block(&b, |r| {
            seen.push(r);
            Ok(true)
        })
        .expect("read");
        assert_eq!(seen, rs);
        assert_eq!(record_at(&b, 2).expect("read"), Some(rs[1].clone()));
        assert_eq!(record_at(&b, 1).expect("read"), None, "position 1 was a duplicate, not stored");
        assert!(record_at(&b[..b.len() - 3], 3).is_err(), "a cut block is an error, not a missing record");
    }

    #[test]
    fn appended_encodings_are_a_block() {
        let mut appended = Vec::new();
        for r in [record("a", 0), record("b", 1)] {
            prost::encoding::message::encode(1, &r, &mut appended);
        }
        assert_eq!(appended, block(&[record("a", 0), record("b", 1)]));
    }

    /// A dataset with records of both layouts (three one per key, written before blocks, then two
    /// blocks), read in pages of every size from every cursor: the same records in the same order.
    #[test]
    fn records_of_both_layouts_are_listed_in_order_in_pages_of_any_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let applier = std::sync::Arc::new(crate::DtmApplier::default());
        let (_log, sm, reader) =
            dtm_storage::open(dir.path(), &dtm_storage::StoreOptions::for_tests(), applier).expect("open");
        let at =
            |id: &str, index: u64, position: u32| state::StoredRecord { commit_index: index, ..record(id, position) };
        let mut pairs = Vec::new();
        for (id, index, position) in [("o1", 3, 0), ("o2", 3, 1), ("o3", 5, 0)] {
            let mut r = at(id, index, position);
            r.position = 0;
            pairs.push((tables::record("d", index, position), r.encode_to_vec()));
        }
        let blocks = [vec![at("b1", 8, 0), at("b2", 8, 2)], vec![at("b3", 9, 0)]];
        for b in &blocks {
            pairs.push((tables::record_block("d", b[0].commit_index), block(b)));
        }
        // Another dataset's records and blocks around them are not listed.
        pairs.push((tables::record("c", 4, 0), at("x", 4, 0).encode_to_vec()));
        pairs.push((tables::record_block("e", 8), block(&[at("y", 8, 0)])));
        pairs.sort();
        sm.restore(&Default::default(), pairs).expect("restore");

        let ids = |rows: &[(Vec<u8>, state::StoredRecord)]| rows.iter().map(|(_, r)| r.id.clone()).collect::<Vec<_>>();
        let all = scan(&reader, "d", None, 100).expect("scan");
        assert_eq!(ids(&all), ["o1", "o2", "o3", "b1", "b2", "b3"]);
        assert_eq!(all[4].0, tables::record("d", 8, 2), "a block's record is named by its table key");
        for page in 1..=6 {
            let mut seen = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let rows = scan(&reader, "d", after.as_deref(), page).expect("scan");
                assert!(rows.len() <= page);
                seen.extend(ids(&rows));
                match rows.last() {
                    Some((k, _)) => after = Some(k.clone()),
                    None => break,
                }
            }
            assert_eq!(seen, ids(&all), "pages of {page}");
        }
        for (k, r) in &all {
            assert_eq!(get(&reader, k).expect("get").as_ref(), Some(r), "{}", r.id);
        }
        assert_eq!(get(&reader, &tables::record("d", 8, 1)).expect("get"), None);
        assert_eq!(get(&reader, &tables::record("d", 7, 0)).expect("get"), None);
    }
}
