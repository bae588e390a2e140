//! Record ids. A record posted through the pipeline is named after its submission: `<submission
//! id>.<n>`, where the submission id is 32 lowercase hex digits (time, then random) and `n` the record's
//! place in the submission, counted from 0 in decimal. `apply` then stores one location per
//! submission (`rsub/`) instead of one index key per record, and finds a record by its id from the
//! submission's location plus `n`. Ids of any other shape (records stored before this scheme) are
//! found through the per-record index (`rid/`), which `apply` still writes for them.

/// The id of the `n`th record of submission `submission`.
pub fn of(submission: &str, n: usize) -> String {
    format!("{submission}.{n}")
}

/// A new submission id: 32 lowercase hex digits, the first 12 the time in milliseconds and the rest
/// random, so that ids made one after the other sort together and their `rsub/` keys land side by
/// side in the store (an insert at a random place in a large tree costs several times more).
pub fn new_submission() -> String {
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
            & 0xffff_ffff_ffff;
    let random = uuid::Uuid::new_v4().as_u128() >> 48;
    format!("{now_ms:012x}{random:020x}")
}

/// Splits an id of the submission scheme into its submission id and place; `None` for any other id.
pub fn split(id: &str) -> Option<(&str, u32)> {
    let (submission, n) = id.rsplit_once('.')?;
    let well_formed = submission.len() == 32
        && submission.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !n.is_empty()
        && n.len() <= 9
        && n.bytes().all(|b| b.is_ascii_digit())
        && (n == "0" || !n.starts_with('0'));
    if !well_formed {
        return None;
    }
    Some((submission, n.parse().ok()?))
}

/// An id of the submission scheme packed as its submission's 16 bytes and its place (None for
/// any other id): what the natural-key index stores instead of the 36-character id.
pub fn pack(id: &str) -> Option<([u8; 16], u32)> {
    let (submission, n) = split(id)?;
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(submission, &mut bytes).ok()?;
    Some((bytes, n))
}

/// The id `pack` packed (None when `submission` is not 16 bytes).
pub fn unpack(submission: &[u8], n: u32) -> Option<String> {
    (submission.len() == 16).then(|| of(&hex::encode(submission), n as usize))
}

/// The submission id shared by `ids` when they are exactly `<s>.0`, `<s>.1`, … in order.
pub fn common_submission<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut common = None;
    for (i, id) in ids.into_iter().enumerate() {
        let (s, n) = split(id)?;
        if n as usize != i || common.is_some_and(|c| c != s) {
            return None;
        }
        common = Some(s);
    }
    common
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_other_shapes_are_not_taken_for_them() {
        let s = new_submission();
        assert_eq!(split(&of(&s, 0)), Some((s.as_str(), 0)));
        assert_eq!(split(&of(&s, 4711)), Some((s.as_str(), 4711)));
        for other in [
            "00000000-0000-4000-8000-000000000001",
            "abc.1",
            &format!("{s}.01"),
            &format!("{s}.-1"),
            &format!("{s}."),
            &format!("{}.1", s.to_uppercase()),
            &format!("{s}.12345678901"),
        ] {
            assert_eq!(split(other), None, "{other}");
            assert_eq!(pack(other), None, "{other}");
        }
        for id in [of(&s, 0), of(&s, 4711), of(&"0".repeat(32), 999_999_999)] {
            let (bytes, n) = pack(&id).expect("packs");
            assert_eq!(unpack(&bytes, n).as_deref(), Some(id.as_str()), "packed ids come back exactly");
        }
        assert_eq!(unpack(&[1; 15], 0), None);
    }

    #[test]
    fn a_common_submission_needs_every_id_in_order() {
        let s = new_submission();
        let ids: Vec<String> = (0..3).map(|n| of(&s, n)).collect();
        assert_eq!(common_submission(ids.iter().map(String::as_str)), Some(s.as_str()));
        let swapped = [ids[1].as_str(), ids[0].as_str()];
        assert_eq!(common_submission(swapped), None);
        let mixed = [ids[0].as_str(), "00000000-0000-4000-8000-000000000001"];
        assert_eq!(common_submission(mixed), None);
        let other = new_submission();
        assert_eq!(common_submission([ids[0].as_str(), &of(&other, 1)]), None);
        assert_eq!(common_submission([]), None);
    }
}
