//! Shared fixtures for the unit tests: the example definition of the brief and an in-memory
//! reference table.

use std::collections::BTreeMap;

use serde_json::Map;
use serde_json::Value;
use serde_json::json;

use crate::CompiledDataset;
use crate::DatasetDef;
use crate::References;

/// The monthly e-transaction statistics definition used throughout the tests.
pub fn etx_monthly_json() -> Value {
    json!({
        "id": "etx_monthly",
        "title": "E-transaction statistics, monthly",
        "description": "Số giao dịch điện tử theo tháng",
        "owner": "Bộ KH&CN",
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "agency": {"type": "string"},
                "period": {"type": "string"},
                "channel": {"enum": ["web", "mobile", "counter"]},
                "transactions": {"type": "integer", "minimum": 0},
                "failed": {"type": "integer", "minimum": 0},
                "citizen_id": {"type": "string"},
                "email": {"type": "string"},
                "note": {"type": "string"}
            },
            "required": ["agency", "period", "channel", "transactions"]
        },
        "key": ["agency", "period", "channel"],
        "time_field": "period",
        "dimensions": ["agency", "channel"],
        "measures": {"transactions": "sum", "failed": "sum"},
        "units": {"transactions": "transactions", "failed": "transactions"},
        "masking": {"citizen_id": "partial", "email": "hash", "note": "redact"},
        "classification": "internal",
        "priority": "normal",
        "rules": [
            {"field": "failed", "op": "<=", "other": "transactions", "message": "failed cannot exceed transactions"},
            {"field": "period", "op": "between", "value": ["2020-01", "2035-12"]},
            {"field": "province", "in_reference": "provinces"}
        ],
        "lookups": [{"field": "province", "reference": "provinces", "add": {"region": "region", "province_name": "name"}}],
        "reference": {"key": "code"}
    })
}

pub fn etx_monthly() -> DatasetDef {
    DatasetDef::parse(&etx_monthly_json()).unwrap()
}

pub fn compiled() -> CompiledDataset {
    CompiledDataset::compile(etx_monthly(), 1).unwrap()
}

pub fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// Reference tables in memory: dataset → key → record.
#[derive(Default)]
pub struct MapRefs(pub BTreeMap<String, BTreeMap<String, Map<String, Value>>>);

impl MapRefs {
    pub fn provinces() -> MapRefs {
        let mut table = BTreeMap::new();
        table.insert("01".to_string(), obj(json!({"code": "01", "name": "Hà Nội", "region": "Đồng bằng sông Hồng"})));
        table.insert("79".to_string(), obj(json!({"code": "79", "name": "TP Hồ Chí Minh", "region": "Đông Nam Bộ"})));
        let mut all = BTreeMap::new();
        all.insert("provinces".to_string(), table);
        MapRefs(all)
    }
}

impl References for MapRefs {
    fn get(&self, dataset: &str, key: &str) -> Option<Map<String, Value>> {
        self.0.get(dataset)?.get(key).cloned()
    }
}
