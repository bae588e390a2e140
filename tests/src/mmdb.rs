// A hand-written MaxMind DB for the country-restriction tests (A4.1). The gateway's unit test
// includes this file (`include!`), the process tests use `dtm_tests::mmdb`.

/// A minimal MaxMind DB (IPv4, 24-bit records) mapping `1.0.0.0/8` to `{"country_code":
/// "VN"}` and `8.0.0.0/8` to `{"country": {"iso_code": "US"}}`, written by hand from the
/// format specification (the `maxminddb` crate only reads).
pub fn tiny_mmdb() -> Vec<u8> {
    fn string(s: &str) -> Vec<u8> {
        let mut v = vec![0x40 | s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }
    fn uint(kind: u8, value: u64) -> Vec<u8> {
        let bytes = value.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let data = &bytes[skip..];
        let mut v = match kind {
            5 | 6 => vec![(kind << 5) | data.len() as u8],
            ext => vec![data.len() as u8, ext - 7],
        };
        v.extend_from_slice(data);
        v
    }
    fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut v = vec![0xE0 | entries.len() as u8];
        for (k, val) in entries {
            v.extend(string(k));
            v.extend_from_slice(val);
        }
        v
    }
    let vn = map(&[("country_code", string("VN"))]);
    let us = map(&[("country", map(&[("iso_code", string("US"))]))]);
    let entries = [(1u8, 0usize), (8u8, vn.len())]; // (first octet, data offset) of each /8
    let mut data = vn;
    data.extend_from_slice(&us);
    #[derive(Clone, Copy)]
    enum Rec {
        Node(usize),
        Empty,
        Data(usize),
    }
    let mut nodes = vec![[Rec::Empty, Rec::Empty]];
    for (octet, offset) in entries {
        let mut n = 0;
        for i in 0..8 {
            let bit = usize::from((octet >> (7 - i)) & 1);
            if i == 7 {
                nodes[n][bit] = Rec::Data(offset);
            } else if let Rec::Node(m) = nodes[n][bit] {
                n = m;
            } else {
                nodes.push([Rec::Empty, Rec::Empty]);
                let m = nodes.len() - 1;
                nodes[n][bit] = Rec::Node(m);
                n = m;
            }
        }
    }
    let node_count = nodes.len() as u32;
    let mut tree = Vec::new();
    for rec in nodes.iter().flatten() {
        let value = match *rec {
            Rec::Node(m) => m as u32,
            Rec::Empty => node_count,
            Rec::Data(offset) => node_count + 16 + offset as u32,
        };
        tree.extend_from_slice(&value.to_be_bytes()[1..]);
    }
    let mut db = tree;
    db.extend_from_slice(&[0u8; 16]);
    db.extend_from_slice(&data);
    db.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    db.extend(map(&[
        ("binary_format_major_version", uint(5, 2)),
        ("binary_format_minor_version", uint(5, 0)),
        ("build_epoch", uint(9, 1_700_000_000)),
        ("database_type", string("DTM-Test-Country")),
        ("description", map(&[])),
        ("ip_version", uint(5, 4)),
        ("languages", vec![0x00, 0x04]),
        ("node_count", uint(6, node_count as u64)),
        ("record_size", uint(5, 24)),
    ]));
    db
}
