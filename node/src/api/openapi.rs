//! The OpenAPI 3 description of the REST API (`GET /api/v1/openapi.json`) and Swagger UI
//! (`/api/docs`, assets compiled into the binary by `utoipa-swagger-ui`'s `vendored` feature, so
//! nothing is fetched at build or run time).
//!
//! The document is written from the table `OPERATIONS` rather than derived from handler
//! annotations: the handlers read their bodies by hand (size limits, JSON depth, content types), so
//! the table is where the contract is stated. Adding an endpoint to `router` means adding one row
//! here; `tests::every_routed_path_is_described` compares the two.

use std::sync::Arc;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::Map;
use serde_json::Value;
use serde_json::json;

/// One operation of the API.
struct Op {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    /// Who may call it (also in the description); empty for anyone.
    who: &'static str,
    /// Query parameters, by name from `query_param`.
    query: &'static [&'static str],
    /// The request body's schema (a component name), if any, and its media type.
    body: Option<(&'static str, &'static str)>,
    /// The success status and its schema (a component name; `None` for no body).
    ok: (u16, Option<&'static str>),
    /// Error statuses besides the ones every operation can answer (`COMMON_ERRORS`).
    errors: &'static [u16],
}

/// Statuses any operation can answer: bad input, credentials, roles, unknown things, the
/// gateway's URL and header limits, rate limits and unavailability.
const COMMON_ERRORS: [u16; 8] = [400, 401, 403, 404, 414, 429, 431, 503];
const JSON: &str = "application/json";
const ADMIN: &str = "admin";
const ALERTS_READ_WHO: &str = "admin, operator or auditor";
const ALERTS_CHANGE_WHO: &str = "admin or operator";
/// F5: `crate::live::MONITORING_READ`.
const MONITORING_WHO: &str = "admin, operator, auditor or analyst";

const fn op(method: &'static str, path: &'static str, tag: &'static str, summary: &'static str) -> Op {
    Op { method, path, tag, summary, who: "", query: &[], body: None, ok: (200, Some("Object")), errors: &[] }
}

const OPERATIONS: &[Op] = &[
    Op { ok: (200, Some("Health")), ..op("get", "/api/v1/health", "cluster", "The process runs") },
    Op {
        ok: (200, Some("Health")),
        ..op("get", "/api/v1/ready", "cluster", "The node can serve reads and forward writes")
    },
    Op {
        who: "any signed-in role",
        ok: (200, Some("ClusterStatus")),
        ..op("get", "/api/v1/cluster", "cluster", "Leader, term and members")
    },
    Op {
        who: ADMIN,
        body: Some(("AddNode", JSON)),
        ok: (201, Some("Object")),
        errors: &[409, 413, 415, 422],
        ..op("post", "/api/v1/cluster/nodes", "cluster", "Add a running, empty node (learner, then voter)")
    },
    Op { who: ADMIN, errors: &[409], ..op("delete", "/api/v1/cluster/nodes/{id}", "cluster", "Remove a member") },
    Op {
        who: ADMIN,
        body: Some(("SourceDefinition", JSON)),
        ok: (201, Some("SourceCreated")),
        errors: &[409, 413, 415, 422],
        ..op("post", "/api/v1/sources", "catalog", "Register a source system; answers its first API key, shown once")
    },
    Op { who: ADMIN, errors: &[409], ..op("delete", "/api/v1/sources/{id}", "catalog", "Remove a source system") },
    Op {
        who: ADMIN,
        ok: (201, Some("KeyIssued")),
        errors: &[409],
        ..op("post", "/api/v1/sources/{id}/keys", "catalog", "Issue another API key")
    },
    Op { who: ADMIN, ..op("delete", "/api/v1/sources/{id}/keys/{key_id}", "catalog", "Revoke an API key") },
    Op {
        who: ADMIN,
        body: Some(("DatasetDefinition", JSON)),
        ok: (201, Some("DatasetCreated")),
        errors: &[409, 413, 415, 422],
        ..op("post", "/api/v1/datasets", "catalog", "Define a dataset (or its next version)")
    },
    Op {
        who: "any role or scope",
        query: &["version"],
        ..op("get", "/api/v1/datasets/{id}", "catalog", "A dataset's definition, metadata and versions")
    },
    Op {
        who: ADMIN,
        body: Some(("DatasetDefinition", JSON)),
        ok: (201, Some("DatasetCreated")),
        errors: &[409, 413, 415, 422],
        ..op("post", "/api/v1/datasets/{id}/versions", "catalog", "Propose the next version of a dataset")
    },
    Op {
        who: "any role or scope",
        query: &["version"],
        ..op("get", "/api/v1/datasets/{id}/schema", "catalog", "A dataset's JSON Schema")
    },
    Op {
        who: "any role or scope",
        query: &["version"],
        ..op("get", "/api/v1/datasets/{id}/schema.xsd", "catalog", "The XSD of a dataset's XML form")
    },
    Op {
        who: "analyst, auditor, admin; scope records:read",
        query: &["limit", "after"],
        ..op("get", "/api/v1/datasets/{id}/conflicts", "catalog", "The reconciliation queue")
    },
    Op {
        who: "source key; scope records:write; data-entry user with ?source=",
        query: &["schema_version", "source"],
        body: Some(("Records", JSON)),
        ok: (201, Some("SubmitAnswer")),
        errors: &[409, 413, 415, 422],
        ..op("post", "/api/v1/datasets/{id}/records", "records", "Submit records in real time (all-or-nothing)")
    },
    Op {
        who: "source key; scope records:write; data-entry user with ?source=",
        query: &["on_error", "source"],
        body: Some(("BatchFile", "application/octet-stream")),
        ok: (201, Some("BatchReceipt")),
        errors: &[409, 413, 415, 422],
        ..op(
            "post",
            "/api/v1/datasets/{id}/batches",
            "records",
            "Upload a batch (JSON, NDJSON, CSV, XML, Parquet, XLSX by Content-Type)",
        )
    },
    Op {
        who: "the batch's source, auditor, admin",
        ok: (200, Some("BatchReceipt")),
        ..op("get", "/api/v1/batches/{batch_id}", "records", "A batch's receipt and reconciliation")
    },
    Op {
        who: "analyst, admin; scope records:read",
        query: &["limit", "after", "consistency", "format", "as_of_index", "as_of"],
        ok: (200, Some("RecordsPage")),
        errors: &[413],
        ..op(
            "get",
            "/api/v1/datasets/{id}/records",
            "records",
            "Stored records, paged; or an export (format=csv|xlsx|json|xml|docx)",
        )
    },
    Op {
        who: "analyst, auditor, admin; scope aggregates:read",
        query: &["interval", "group_by", "from", "to", "consistency", "format", "as_of_commit", "as_of_index", "as_of"],
        ok: (200, Some("Aggregates")),
        errors: &[422],
        ..op(
            "get",
            "/api/v1/datasets/{id}/aggregates",
            "aggregates",
            "Aggregates by time bucket and dimensions; or an export",
        )
    },
    Op {
        who: "analyst, auditor, admin; scope aggregates:read",
        query: &["consistency"],
        ok: (200, Some("Digest")),
        ..op(
            "get",
            "/api/v1/datasets/{id}/aggregates/digest",
            "aggregates",
            "SHA-256 over the dataset's aggregate state",
        )
    },
    Op {
        who: "analyst, auditor, admin; scope records:read or audit:read",
        query: &["bucket", "interval", "consistency"],
        errors: &[422],
        ..op(
            "get",
            "/api/v1/datasets/{id}/aggregates/lineage",
            "lineage",
            "The batches and real-time sources behind aggregate cells (bucket and <dimension>=<value> filters)",
        )
    },
    Op {
        who: "the source that sent the record, or admin",
        query: &["source", "schema_version"],
        body: Some(("Correction", JSON)),
        ok: (201, Some("SubmitAnswer")),
        errors: &[409, 413, 415, 422],
        ..op(
            "post",
            "/api/v1/datasets/{id}/records/{record_id}/corrections",
            "records",
            "Correct a record: stored as its next version, replacing its contribution to the aggregates",
        )
    },
    Op {
        who: "analyst, auditor, admin; scope records:read or audit:read",
        query: &["as_of_index", "as_of"],
        errors: &[422],
        ..op(
            "get",
            "/api/v1/lineage/records/{id}",
            "lineage",
            "Where a record came from: source, channel, batch, node, schema version, transformations, versions",
        )
    },
    Op {
        who: "analyst, auditor, admin; scope records:read or audit:read",
        query: &["from", "to", "realtime"],
        ok: (200, Some("OpenLineageEvents")),
        ..op(
            "get",
            "/api/v1/lineage/openlineage",
            "lineage",
            "Batch ingestion runs as OpenLineage RunEvents (START, COMPLETE or FAIL); format=ndjson for JSON lines",
        )
    },
    Op { who: "admin, operator", ..op("get", "/api/v1/pipeline", "cluster", "The source actors on this node") },
    Op {
        who: "admin, operator",
        ..op("get", "/api/v1/keys", "cluster", "Data-encryption keys of this node (ids and epochs, never key material)")
    },
    Op { who: ADMIN, ..op("post", "/api/v1/keys/rotate", "cluster", "Start using a new data-encryption key") },
    Op {
        who: "admin, operator",
        ok: (200, Some("BackupStream")),
        ..op(
            "get",
            "/api/v1/backup",
            "cluster",
            "This node's tables as of one applied log index, streamed for `dtm backup create` (writes go on)",
        )
    },
    Op {
        who: "admin, operator",
        body: Some(("DrillReport", JSON)),
        ok: (201, Some("Object")),
        ..op("post", "/api/v1/drills", "cluster", "Record a disaster-recovery drill's report in the audit trail")
    },
    // Performance and connection reports, compliance (issue 10; A5.3, F4, C8-C9, S2; docs/reports.md).
    Op {
        who: "admin, auditor",
        query: &["kind", "after", "limit"],
        ..op("get", "/api/v1/reports", "reports", "Stored performance and connection reports, paged")
    },
    Op {
        who: "admin, auditor",
        query: &["from", "to", "format"],
        ..op("get", "/api/v1/reports/performance", "reports", "System-performance report of a period, computed now")
    },
    Op {
        who: "admin, auditor (people, not OAuth clients)",
        body: Some(("Object", JSON)),
        ok: (201, Some("Object")),
        errors: &[413, 415],
        ..op("post", "/api/v1/reports/performance", "reports", "Compute and store a system-performance report")
    },
    Op {
        who: "admin, auditor",
        query: &["year", "from", "to", "format"],
        ..op("get", "/api/v1/reports/connections", "reports", "Annual connection report (C8, C9), computed now")
    },
    Op {
        who: "admin, auditor (people, not OAuth clients)",
        body: Some(("Object", JSON)),
        ok: (201, Some("Object")),
        errors: &[413, 415],
        ..op("post", "/api/v1/reports/connections", "reports", "Compute and store a connection report")
    },
    Op {
        who: "admin, auditor",
        query: &["format"],
        ..op("get", "/api/v1/reports/{id}", "reports", "A stored report as JSON, CSV, XLSX or DOCX")
    },
    Op {
        who: "admin, auditor",
        query: &["backup_max_age_s"],
        ..op("get", "/api/v1/compliance", "reports", "Check the cluster against the checkable requirements")
    },
    Op {
        who: "admin, operator, auditor",
        ..op("get", "/api/v1/compliance/facts", "reports", "Every member's retention, encryption and backup facts")
    },
    Op {
        who: ADMIN,
        ..op(
            "post",
            "/api/v1/keys/reencrypt",
            "cluster",
            "Re-encrypt what older data keys sealed on this node and retire them",
        )
    },
    Op { who: ADMIN, ..op("get", "/api/v1/gateway/limits", "gateway", "Rate limits per operation group") },
    Op {
        who: ADMIN,
        body: Some(("Object", JSON)),
        errors: &[413, 415],
        ..op("put", "/api/v1/gateway/limits", "gateway", "Replace the cluster's rate limits")
    },
    Op { who: ADMIN, ..op("get", "/api/v1/gateway/ip-rules", "gateway", "IP allow and deny rules") },
    Op {
        who: ADMIN,
        body: Some(("Object", JSON)),
        errors: &[413, 415],
        ..op("put", "/api/v1/gateway/ip-rules", "gateway", "Replace the IP rules")
    },
    Op { who: ADMIN, ..op("get", "/api/v1/gateway/blocks", "gateway", "Automatically blocked addresses") },
    Op { who: ADMIN, ..op("delete", "/api/v1/gateway/blocks/{ip}", "gateway", "Lift a block") },
    // Monitoring (issue 10, F5, A5.1; docs/monitoring.md).
    Op { who: MONITORING_WHO, ..op("get", "/api/v1/monitoring/live", "monitoring", "This node's live statistics") },
    Op {
        who: MONITORING_WHO,
        ..op("get", "/api/v1/monitoring/nodes", "monitoring", "Every member's live statistics and reachability")
    },
    Op {
        who: MONITORING_WHO,
        ..op("get", "/api/v1/monitoring/probes", "monitoring", "This node's latest synthetic probe results")
    },
    // Alerts (issue 10, A5.2, F5; docs/alerts.md).
    Op { who: ALERTS_READ_WHO, ..op("get", "/api/v1/alerts", "alerts", "Alerts firing now") },
    Op {
        who: ALERTS_READ_WHO,
        query: &["from", "to", "rule", "subject", "after", "limit"],
        ..op("get", "/api/v1/alerts/history", "alerts", "Alert transitions and their notifications, in time order")
    },
    Op { who: ALERTS_READ_WHO, ..op("get", "/api/v1/alerts/metrics", "alerts", "Metrics alert rules can name") },
    Op { who: ALERTS_READ_WHO, ..op("get", "/api/v1/alerts/rules", "alerts", "Alert rules") },
    Op { who: ALERTS_READ_WHO, ..op("get", "/api/v1/alerts/rules/{id}", "alerts", "An alert rule") },
    Op {
        who: ALERTS_CHANGE_WHO,
        body: Some(("Object", JSON)),
        errors: &[409, 413, 415],
        ..op("put", "/api/v1/alerts/rules/{id}", "alerts", "Create or replace an alert rule")
    },
    Op { who: ALERTS_CHANGE_WHO, ..op("delete", "/api/v1/alerts/rules/{id}", "alerts", "Delete an alert rule") },
    Op { who: ALERTS_READ_WHO, ..op("get", "/api/v1/alerts/channels", "alerts", "Notification channels") },
    Op { who: ALERTS_READ_WHO, ..op("get", "/api/v1/alerts/channels/{id}", "alerts", "A notification channel") },
    Op {
        who: ALERTS_CHANGE_WHO,
        body: Some(("Object", JSON)),
        errors: &[409, 413, 415],
        ..op("put", "/api/v1/alerts/channels/{id}", "alerts", "Create or replace an e-mail or webhook channel")
    },
    Op {
        who: ALERTS_CHANGE_WHO,
        ..op("delete", "/api/v1/alerts/channels/{id}", "alerts", "Delete a notification channel")
    },
    Op {
        who: ALERTS_CHANGE_WHO,
        ..op("post", "/api/v1/alerts/channels/{id}/test", "alerts", "Send a test message through a channel, once")
    },
    Op {
        body: Some(("Login", JSON)),
        errors: &[413, 415, 422],
        ..op("post", "/api/v1/auth/login", "identity", "Sign in (session cookie and CSRF token)")
    },
    Op {
        who: "session",
        ok: (204, None),
        ..op("post", "/api/v1/auth/logout", "identity", "End the session on every node")
    },
    Op { who: "any credential", ..op("get", "/api/v1/auth/me", "identity", "Who is calling") },
    Op { who: "session", ..op("post", "/api/v1/auth/totp/enroll", "identity", "Start TOTP enrollment") },
    Op {
        who: "session",
        body: Some(("Object", JSON)),
        errors: &[413, 415, 422],
        ..op("post", "/api/v1/auth/totp/confirm", "identity", "Confirm TOTP enrollment; answers recovery codes")
    },
    Op { ..op("get", "/api/v1/auth/jwks", "identity", "The key DTM's access tokens are signed with") },
    Op {
        query: &["consistency"],
        ok: (200, Some("NodeKeys")),
        ..op("get", "/api/v1/audit/keys", "audit", "The nodes' public signing keys (receipts, audit checkpoints)")
    },
    Op {
        who: ADMIN,
        body: Some(("Object", JSON)),
        ok: (201, Some("Object")),
        errors: &[409, 413, 415, 422],
        ..op("post", "/api/v1/users", "identity", "Create a user")
    },
    Op { who: ADMIN, ..op("get", "/api/v1/users", "identity", "List users") },
    Op {
        who: ADMIN,
        ok: (204, None),
        ..op("delete", "/api/v1/users/{name}", "identity", "Disable a user and end its sessions")
    },
    Op {
        who: "admin, or the user itself",
        body: Some(("Object", JSON)),
        ok: (204, None),
        errors: &[413, 415, 422],
        ..op("post", "/api/v1/users/{name}/password", "identity", "Change a password")
    },
    Op {
        who: ADMIN,
        body: Some(("Object", JSON)),
        ok: (201, Some("Object")),
        errors: &[413, 415, 422],
        ..op("post", "/api/v1/oauth/clients", "identity", "Register an OAuth client; answers its secret, shown once")
    },
    Op { who: ADMIN, ..op("delete", "/api/v1/oauth/clients/{id}", "identity", "Revoke an OAuth client") },
    Op {
        who: "admin, auditor; scope audit:read",
        query: &["after", "limit", "kind"],
        ..op("get", "/api/v1/security/events", "identity", "Replicated security events")
    },
    Op {
        who: "admin, auditor; scope audit:read",
        query: &["after", "limit"],
        ..op("get", "/api/v1/audit/chain", "audit", "Raw audit entries (base64 of the stored bytes) up to the head")
    },
    Op {
        who: "admin, auditor; scope audit:read",
        query: &["after", "limit"],
        ..op("get", "/api/v1/audit/checkpoints", "audit", "Audit checkpoints with their signatures, and the node keys")
    },
    Op {
        who: "admin, auditor; scope audit:read",
        ..op("get", "/api/v1/audit/status", "audit", "This node's last verification of its own audit trail")
    },
    Op {
        who: "admin, auditor; scope audit:read",
        query: &["from", "to", "principal", "operation", "target", "after", "limit", "consistency"],
        ok: (200, Some("AuditPage")),
        ..op(
            "get",
            "/api/v1/audit",
            "audit",
            "The audit trail, oldest first, paged; each entry with its hash and the previous hash",
        )
    },
    Op {
        who: "admin, auditor; scope audit:read",
        query: &["consistency"],
        ..op("get", "/api/v1/audit/head", "audit", "Size, head hash, Merkle root and last checkpoint of the trail")
    },
    Op {
        who: "admin, auditor; scope audit:read",
        query: &["format", "from", "to", "principal", "operation", "target", "consistency"],
        ok: (200, Some("AuditPage")),
        errors: &[422],
        ..op("get", "/api/v1/audit/export", "audit", "The selected audit entries as JSON lines, CSV, XLSX or DOCX")
    },
    Op {
        who: "admin, auditor",
        body: Some(("AuditReportRequest", JSON)),
        ok: (201, Some("Object")),
        errors: &[413, 415],
        ..op("post", "/api/v1/audit/reports", "audit", "Compute and store an access, change or export report")
    },
    Op {
        who: "admin, auditor; scope audit:read",
        query: &["kind", "after", "consistency"],
        ..op("get", "/api/v1/audit/reports", "audit", "Stored audit reports (monthly ones included)")
    },
    Op {
        who: "admin, auditor; scope audit:read",
        query: &["format"],
        ..op("get", "/api/v1/audit/reports/{id}", "audit", "An audit report as JSON, CSV, XLSX or DOCX")
    },
    Op {
        who: "admin, auditor, the source itself; scope audit:read",
        query: &["from", "to", "consistency"],
        ..op("get", "/api/v1/sources/{id}/connections", "audit", "A source's connection log per day (C4)")
    },
    // Reporting regime (issue 9, C2(b)): `reporting/api.rs`, docs/reporting.md.
    Op {
        who: ADMIN,
        body: Some(("Object", JSON)),
        errors: &[413, 415],
        ..op("put", "/api/v1/datasets/{id}/obligation", "reporting", "Set a dataset's reporting obligation")
    },
    Op {
        who: "admin, operator, auditor, data-entry of a listed agency",
        ..op("get", "/api/v1/datasets/{id}/obligation", "reporting", "A dataset's reporting obligation")
    },
    Op {
        who: "data-entry",
        ..op("get", "/api/v1/reporting/due", "reporting", "The reports due for the user's agency")
    },
    Op {
        who: "admin, operator, auditor",
        query: &["dataset", "period", "format"],
        ..op("get", "/api/v1/reporting/status", "reporting", "Submitted, draft, missing and late reports (JSON or CSV)")
    },
    Op {
        who: "data-entry",
        errors: &[422],
        ..op(
            "get",
            "/api/v1/reporting/forms/{dataset}/{period}",
            "reporting",
            "The report form generated from the schema",
        )
    },
    Op {
        who: "data-entry",
        errors: &[422],
        ..op("get", "/api/v1/reporting/drafts/{dataset}/{period}", "reporting", "A report's saved draft")
    },
    Op {
        who: "data-entry",
        body: Some(("Object", JSON)),
        errors: &[409, 413, 415, 422],
        ..op("put", "/api/v1/reporting/drafts/{dataset}/{period}", "reporting", "Save a report's draft")
    },
    Op {
        who: "data-entry (own agency), admin, operator, auditor",
        query: &["agency"],
        ..op(
            "get",
            "/api/v1/reporting/submissions/{dataset}/{period}",
            "reporting",
            "A submitted report and its versions",
        )
    },
    Op {
        who: "data-entry",
        body: Some(("Object", JSON)),
        ok: (201, Some("Object")),
        errors: &[409, 413, 415, 422],
        ..op("post", "/api/v1/reporting/submissions/{dataset}/{period}", "reporting", "Submit or correct a report")
    },
    Op {
        body: Some(("TokenRequest", "application/x-www-form-urlencoded")),
        ok: (200, Some("Token")),
        errors: &[413, 415],
        ..op("post", "/oauth2/token", "identity", "OAuth 2.0 client-credentials grant")
    },
    Op { ok: (200, Some("Object")), ..op("get", "/api/v1/openapi.json", "meta", "This document") },
];

fn query_param(name: &str) -> Value {
    let (schema, description) = match name {
        "version" => (json!({"type": "integer", "minimum": 1}), "a version of the definition (default the latest)"),
        "schema_version" => (json!({"type": "integer", "minimum": 1}), "validate against this version"),
        "source" => (json!({"type": "string"}), "the source a data-entry user submits for"),
        "limit" => (json!({"type": "integer", "minimum": 1, "maximum": 1000}), "page size"),
        "after" => (json!({"type": "string"}), "the `next` cursor of the previous page"),
        "consistency" => (
            json!({"type": "string", "enum": ["local", "linearizable"]}),
            "`linearizable`: answer once this node has caught up with the leader",
        ),
        "dataset" => (json!({"type": "string"}), "a dataset id"),
        "period" => (json!({"type": "string"}), "a reporting period (2026-03, 2026-Q1, 2026)"),
        "agency" => (json!({"type": "string"}), "an agency id"),
        "format" => (
            json!({"type": "string", "enum": ["json", "csv", "xlsx", "xml", "docx"]}),
            "an export of everything (records: up to the export limit) in this format",
        ),
        "interval" => {
            (json!({"type": "string", "enum": ["hour", "day", "week", "month", "quarter", "year"]}), "time bucket")
        }
        "group_by" => (json!({"type": "string"}), "comma-separated dimensions"),
        "from" | "to" => {
            (json!({"type": "string"}), "a time point (2026, 2026-Q3, 2026-07, 2026-W29, 2026-07-14, RFC 3339)")
        }
        "kind" => (json!({"type": "string"}), "an event kind (audit reports: access, change or export)"),
        "principal" | "operation" | "target" => {
            (json!({"type": "string", "maxLength": 512}), "exact, or a prefix with a trailing `*`")
        }
        "as_of_index" => (json!({"type": "integer", "minimum": 0}), "read as things stood at this log index"),
        "realtime" => (json!({"type": "boolean"}), "also real-time records, one run per source, dataset and day"),
        "as_of_commit" => {
            (json!({"type": "integer", "minimum": 0}), "aggregates recomputed as they stood at this log index")
        }
        "as_of" => (
            json!({"type": "string", "format": "date-time"}),
            "read as things stood when the dataset's last record received at or before this time was committed",
        ),
        "bucket" => {
            (json!({"type": "string"}), "a time bucket as the aggregates answer names it (2026-07, 2026-Q3, …)")
        }
        "year" => (json!({"type": "string", "pattern": "^[0-9]{4}$"}), "a calendar year in Vietnam time"),
        "backup_max_age_s" => (json!({"type": "integer", "minimum": 1}), "largest age of the newest backup, seconds"),
        "on_error" => (
            json!({"type": "string", "enum": ["continue", "reject"]}),
            "`reject`: all or nothing; `continue` (default): store the valid rows",
        ),
        _ => (json!({"type": "string"}), ""),
    };
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The media types an export can answer in, besides JSON.
/// The audit export's JSON lines.
const AUDIT_LINES: &str = "application/x-ndjson";
const EXPORT_TYPES: [&str; 4] = [
    "text/csv",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/xml",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
];

fn operation(o: &Op) -> Value {
    let mut params: Vec<Value> = o
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    params.extend(o.query.iter().map(|q| query_param(q)));
    // The audit trail's exports and reports have formats of their own.
    if o.path.starts_with("/api/v1/audit/") || o.path.starts_with("/api/v1/reports") {
        let formats = if o.path.ends_with("/export") {
            ["jsonl", "csv", "xlsx", "docx"]
        } else {
            ["json", "csv", "xlsx", "docx"]
        };
        params.iter_mut().filter(|p| p["name"] == "format").for_each(|p| p["schema"]["enum"] = json!(formats));
    }
    let mut responses = Map::new();
    let (status, schema) = o.ok;
    let mut ok = json!({"description": "success"});
    if let Some(s) = schema {
        let mut content = Map::new();
        let media = if s == "BackupStream" { "application/vnd.dtm.backup-stream" } else { JSON };
        content.insert(media.into(), json!({"schema": schema_ref(s)}));
        if o.query.contains(&"format") {
            // The audit trail's exports and reports have formats of their own (no XML; JSON lines).
            let audit: &[&str] = if o.path.ends_with("/audit/export") {
                &[AUDIT_LINES, EXPORT_TYPES[0], EXPORT_TYPES[1], EXPORT_TYPES[3]]
            } else {
                &[EXPORT_TYPES[0], EXPORT_TYPES[1], EXPORT_TYPES[3]]
            };
            let report = o.path.starts_with("/api/v1/audit/") || o.path.starts_with("/api/v1/reports");
            let types: &[&str] = if report { audit } else { &EXPORT_TYPES };
            for t in types {
                content.insert((*t).into(), json!({"schema": {"type": "string", "format": "binary"}}));
            }
        }
        ok["content"] = Value::Object(content);
    }
    if o.path.ends_with("/records") && o.method == "post" {
        ok["headers"] = json!({"Idempotent-Replayed": {"schema": {"type": "string"}, "description": "`true` on a replayed answer"}});
    }
    responses.insert(status.to_string(), ok);
    let mut errors: Vec<u16> = COMMON_ERRORS.iter().chain(o.errors).copied().collect();
    errors.sort_unstable();
    errors.dedup();
    for e in errors {
        let mut r = json!({"description": error_description(e), "content": {JSON: {"schema": schema_ref("Error")}}});
        if matches!(e, 429 | 503) {
            r["headers"] = json!({"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}});
        }
        responses.insert(e.to_string(), r);
    }
    let mut v = json!({
        "tags": [o.tag],
        "summary": o.summary,
        "operationId": operation_id(o),
        "parameters": params,
        "responses": responses,
    });
    if o.who.is_empty() {
        v["security"] = json!([]);
    } else {
        v["description"] = json!(format!("Who: {}.", o.who));
    }
    if let Some((schema, media)) = o.body {
        v["requestBody"] = json!({"required": true, "content": {media: {"schema": schema_ref(schema)}}});
    }
    if o.path.ends_with("/records")
        && o.method == "post"
        && let Some(p) = v["parameters"].as_array_mut()
    {
        p.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
                          "schema": {"type": "string", "minLength": 1, "maxLength": 200}}));
        p.push(json!({"name": "X-Schema-Version", "in": "header", "required": false,
                          "schema": {"type": "integer", "minimum": 1}}));
    }
    v
}

fn operation_id(o: &Op) -> String {
    let mut id = o.method.to_string();
    for part in o.path.trim_start_matches("/api/v1").split(['/', '-', '.', '_']).filter(|s| !s.is_empty()) {
        let part = part.trim_start_matches('{').trim_end_matches('}');
        let mut c = part.chars();
        if let Some(f) = c.next() {
            id.push(f.to_ascii_uppercase());
            id.extend(c);
        }
    }
    id
}

fn error_description(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "missing or invalid credentials",
        403 => "the credential lacks the role or scope, or the address is refused",
        404 => "no such thing",
        409 => "conflict (a concurrent change, or an idempotency key reused with another body)",
        413 => "body too large, or too many records",
        414 => "URL too long",
        415 => "unsupported content type",
        422 => "invalid content; one detail per problem",
        429 => "rate limited or the source is busy; retry after Retry-After",
        431 => "headers too large",
        503 => "no quorum, shutting down or overloaded; retry after Retry-After",
        _ => "error",
    }
}

fn components() -> Value {
    let obj = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
    let int = json!({"type": "integer", "minimum": 0});
    let string = json!({"type": "string"});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let mut v = json!({
        "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "a source system's API key"},
            "bearer": {"type": "http", "scheme": "bearer", "description": "an admin token (dtma.…) or a JWT from /oauth2/token or an OpenID Connect issuer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "__Host-dtm_session", "description": "a session from /api/v1/auth/login; state-changing requests also send X-CSRF-Token"}
        },
        "schemas": {
            "Object": {"type": "object"},
            "Error": obj(json!({"error": obj(json!({
                "code": {"type": "string", "description": "stable, for programs"},
                "message": {"type": "string", "description": "for people"},
                "details": {"type": "array", "items": {"type": "object", "properties": {
                    "record": {"type": "integer"}, "field": {"type": "string"}, "message": {"type": "string"}}}}
            }), &["code", "message"])}), &["error"]),
            "Health": obj(json!({"status": string, "node_id": int}), &["status"]),
            "ClusterStatus": obj(json!({"leader_id": {"type": "integer", "nullable": true}, "term": int,
                "members": {"type": "array", "items": obj(json!({"id": int, "site": string, "http": string,
                    "grpc": string, "voter": {"type": "boolean"},
                    "applied_index": {"type": "integer", "nullable": true},
                    "catching_up": {"type": "boolean", "nullable": true,
                        "description": "started without data and not yet caught up with a leader: does not vote"}}), &["id"])},
                "sites": {"type": "array", "items": obj(json!({"site": string, "voters": int, "learners": int,
                    "survives_loss": {"type": "boolean"}}), &["site"])},
                "warnings": strings}), &["members"]),
            "AddNode": obj(json!({"id": int, "http_addr": string, "grpc_addr": string, "site": string,
                "voter": {"type": "boolean"}}), &["id", "http_addr", "grpc_addr"]),
            "SourceDefinition": obj(json!({"id": string, "name": string, "agency": string, "form": string,
                "allowed_datasets": strings}), &["id"]),
            "SourceCreated": obj(json!({"id": string, "api_key": string, "commit_index": int}), &["api_key"]),
            "KeyIssued": obj(json!({"api_key": string, "key_id": string}), &["api_key"]),
            "DatasetDefinition": {"type": "object", "required": ["id", "schema"], "properties": {
                "id": string, "title": string, "schema": {"type": "object"}, "key": strings, "time_field": string,
                "dimensions": strings, "measures": {"type": "object", "additionalProperties": {"type": "string",
                    "enum": ["sum", "min", "max", "avg"]}},
                "masking": {"type": "object", "additionalProperties": {"type": "string"}},
                "classification": string, "priority": string}},
            "DatasetCreated": obj(json!({"id": string, "version": int, "commit_index": int}), &["id", "version"]),
            "Records": {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}, "maxItems": 10000}]},
            "SubmitAnswer": obj(json!({"accepted": int, "ids": strings, "commit_index": int, "schema_version": int,
                "stored": int, "duplicates": int, "conflicts": int,
                "outcomes": {"type": "array", "items": {"type": "string", "enum": ["stored", "duplicate", "conflict", "corrected"]}},
                "receipt": schema_ref("Receipt")}),
                &["accepted", "ids", "commit_index"]),
            "RecordsPage": obj(json!({"dataset": string, "as_of_index": int, "total": int,
                "next": {"type": "string", "nullable": true},
                "truncated": {"type": "boolean", "description": "exports only: more records than the export limit"},
                "records": {"type": "array", "items": obj(json!({"id": string, "source": string, "commit_index": int,
                    "received_at_ms": int, "data": {"type": "object"}, "schema_version": int, "classification": string,
                    "priority": string, "version": int, "previous_id": string, "conflict": {"type": "boolean"},
                    "channel": string, "masked_fields": strings, "enriched_fields": strings}), &["id", "data"])}}),
                &["dataset", "as_of_index", "records"]),
            "Aggregates": obj(json!({"dataset": string, "as_of_index": int, "interval": string, "group_by": strings,
                "rows": {"type": "array", "items": obj(json!({"bucket": string, "count": int}), &["bucket", "count"])}}),
                &["as_of_index", "rows"]),
            "Digest": obj(json!({"dataset": string, "as_of_index": int, "sha256": string}), &["as_of_index", "sha256"]),
            "BackupStream": {"type": "string", "format": "binary", "description": "frames of a length (4 bytes, big-endian) and bytes: a JSON header, the snapshot meta, the tables in parts, then an empty frame (docs/operations.md)"},
            "DrillReport": {"type": "object", "required": ["scenario"], "properties": {
                "scenario": {"type": "string", "enum": ["leader-loss", "site-loss", "partition", "full-restore"]},
                "rto_ms": {"type": "integer", "nullable": true}, "rpo_records": {"type": "integer", "nullable": true},
                "passed": {"type": "boolean"}}},
            "BatchFile": {"type": "string", "format": "binary", "description": "the file; its format follows Content-Type; X-Batch-Count and X-Batch-SHA256 optional"},
            "BatchReceipt": obj(json!({"batch_id": string, "status": string, "accepted": int, "rejected": int,
                "errors": {"type": "array", "items": {"type": "object"}}, "commit_index": int,
                "receipt": schema_ref("Receipt")}), &["batch_id"]),
            "Login": obj(json!({"username": string, "password": string, "totp": string, "recovery_code": string}),
                &["username", "password"]),
            "TokenRequest": obj(json!({"grant_type": {"type": "string", "enum": ["client_credentials"]}, "scope": string,
                "client_id": string, "client_secret": string}), &["grant_type"]),
            "Token": obj(json!({"access_token": string, "token_type": string, "expires_in": int, "scope": string}),
                &["access_token", "token_type"])
        }
    });
    lineage_components(&mut v["schemas"]);
    audit_components(&mut v["schemas"]);
    v
}

/// Schemas of the audit trail's pages and reports (issue 7), apart from `components`'s `json!`.
fn audit_components(schemas: &mut Value) {
    let (int, string) = (json!({"type": "integer", "minimum": 0}), json!({"type": "string"}));
    let entry = json!({"type": "object", "required": ["seq", "at_ms", "principal", "operation", "hash", "prev_hash"],
        "properties": {"seq": int, "at": string, "at_ms": int, "principal": string, "organisation": string,
            "client_ip": string, "operation": string, "target": string, "outcome": string, "status": int,
            "channel": string, "node_id": int, "request_id": string, "records": int, "bytes_in": int, "count": int,
            "detail": {"description": "JSON, or null"}, "log_index": int,
            "hash": {"type": "string", "description": "SHA-256, hex"}, "prev_hash": {"type": "string"}}});
    schemas["AuditPage"] = json!({"type": "object", "required": ["entries"], "properties": {
        "as_of_index": int, "examined": int, "entries": {"type": "array", "items": entry},
        "next": {"type": "string", "nullable": true, "description": "pass as `after` for the next page"}}});
    schemas["AuditReportRequest"] = json!({"type": "object", "required": ["kind", "from", "to"], "properties": {
        "kind": {"type": "string", "enum": ["access", "change", "export"]},
        "from": {"type": "string", "description": "RFC 3339, or a day, month or year in Vietnam time"},
        "to": {"type": "string", "description": "exclusive; a day, month or year counts whole"}}});
}

/// Schemas of the lineage and versions endpoints (issue 7), kept apart from `components`'s one
/// `json!` (it is at the macro's recursion limit).
fn lineage_components(schemas: &mut Value) {
    schemas["Correction"] = json!({"type": "object", "required": ["record", "reason"], "properties": {
        "record": {"type": "object", "description": "the corrected record, validated like a new one"},
        "reason": {"type": "string", "minLength": 1, "maxLength": 2000}}});
    schemas["OpenLineageEvents"] = json!({"type": "array", "items": {"type": "object", "description":
        "an OpenLineage RunEvent (https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent)"}});
}

/// The schemas of receipts and node keys, added to `components()` (whose one `json!` is at the
/// macro recursion limit).
fn receipt_schemas(components: &mut Value) {
    components["schemas"]["Receipt"] = receipt_schema();
    let int = json!({"type": "integer", "minimum": 0});
    let string = json!({"type": "string"});
    let key = json!({"type": "object", "required": ["node_id", "public_key"], "properties": {
        "node_id": int, "public_key": {"type": "string", "description": "32-byte Ed25519 public key, lowercase hex"},
        "registered_at": string, "registered_at_ms": int, "log_index": int}});
    components["schemas"]["NodeKeys"] = json!({"type": "object", "required": ["keys"], "properties": {
        "as_of_index": int, "keys": {"type": "array", "items": key}}});
}

/// The signed receipt (`crate::receipt::Receipt`; docs/api.md, "Receipts").
fn receipt_schema() -> Value {
    let int = json!({"type": "integer", "minimum": 0});
    let string = json!({"type": "string"});
    let counts = ["received", "accepted", "stored", "duplicates", "conflicts", "rejected"];
    json!({
        "type": "object",
        "description": "Signed by the answering node's Ed25519 key over the canonical payload of docs/api.md; verify with `dtm receipt verify`. Absent when the batch did not complete.",
        "additionalProperties": false,
        "required": ["version", "kind", "source", "dataset", "request_id", "content_sha256", "counts", "commit_index",
                     "received_at", "received_at_ms", "node_id", "public_key", "signature"],
        "properties": {
            "version": {"type": "string", "enum": [crate::receipt::VERSION]},
            "kind": {"type": "string", "enum": ["records", "batch"]},
            "source": string, "dataset": string, "request_id": string,
            "batch_id": {"type": "string", "description": "batches only"},
            "content_sha256": {"type": "string", "description": "SHA-256 of the submitted bytes, lowercase hex"},
            "counts": {"type": "object", "additionalProperties": false, "required": counts,
                       "properties": counts.iter().map(|c| (c.to_string(), int.clone())).collect::<Map<_, _>>()},
            "ids": {"type": "array", "items": string, "description": "records only: the answer's ids, in order"},
            "commit_index": int,
            "received_at": {"type": "string", "format": "date-time"},
            "received_at_ms": int,
            "node_id": int,
            "public_key": {"type": "string", "description": "the signing node's Ed25519 public key, lowercase hex"},
            "signature": {"type": "string", "description": "Ed25519 signature, lowercase hex"}
        }
    })
}

/// The whole document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut paths = Map::new();
        for o in OPERATIONS {
            let entry = paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
            entry[o.method] = operation(o);
        }
        let tags: Vec<Value> = ["cluster", "catalog", "records", "aggregates", "lineage", "gateway", "identity", "audit", "meta"]
            .iter()
            .map(|t| json!({"name": t}))
            .collect();
        let mut components = components();
        receipt_schemas(&mut components);
        json!({
            "openapi": "3.0.3",
            "info": {
                "title": "DTM: national e-transaction data cluster",
                "version": "1",
                "description": "Every node serves the whole API. Errors are JSON {\"error\": {\"code\", \"message\", \"details\"}}. \
                    SOAP (/soap/v1, WSDL at /soap/v1?wsdl) and gRPC (dtm.v1.Ingest on the gRPC port) bind the same record submission."
            },
            "servers": [{"url": "/"}],
            "security": [{"apiKey": []}, {"bearer": []}, {"session": []}],
            "tags": tags,
            "paths": paths,
            "components": components,
        })
    })
}

pub async fn get_openapi() -> Response {
    let mut resp = axum::Json(document()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn swagger_config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    CONFIG.get_or_init(|| Arc::new(utoipa_swagger_ui::Config::new(["/api/v1/openapi.json"]))).clone()
}

/// `/api/docs`: Swagger UI's page (relative asset links need the trailing slash).
pub async fn swagger_ui_root(uri: axum::http::Uri) -> Response {
    if !uri.path().ends_with('/') {
        return axum::response::Redirect::permanent("/api/docs/").into_response();
    }
    serve_swagger("")
}

pub async fn swagger_ui(Path(file): Path<String>) -> Response {
    serve_swagger(&file)
}

fn serve_swagger(file: &str) -> Response {
    match utoipa_swagger_ui::serve(file, swagger_config()) {
        Ok(Some(f)) => {
            let mut resp = (StatusCode::OK, f.bytes.into_owned()).into_response();
            if let Ok(ct) = HeaderValue::from_str(&f.content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            if f.gzpipped {
                resp.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            resp
        }
        Ok(None) => super::error::ApiError::not_found("no such file").into_response(),
        Err(e) => super::error::ApiError::internal(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_unique_and_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for o in OPERATIONS {
            assert!(seen.insert((o.method, o.path)), "{} {} twice", o.method, o.path);
            assert!(o.path.starts_with('/'));
        }
        let doc = document();
        assert_eq!(
            doc["paths"]["/api/v1/datasets/{id}/records"]["post"]["responses"]["201"]["content"][JSON]["schema"]["$ref"],
            "#/components/schemas/SubmitAnswer"
        );
        for (_, path) in doc["paths"].as_object().expect("paths") {
            for (_, op) in path.as_object().expect("operations") {
                for r in op["responses"].as_object().expect("responses").values() {
                    if let Some(s) = r["content"][JSON]["schema"]["$ref"].as_str() {
                        let name = s.rsplit('/').next().expect("name");
                        assert!(doc["components"]["schemas"][name].is_object(), "{name} is not defined");
                    }
                }
            }
        }
    }

    #[test]
    fn every_routed_path_is_described() {
        let source = include_str!("mod.rs");
        let doc = document();
        for line in source.lines().map(str::trim).filter(|l| l.starts_with(".route(\"/")) {
            let path = line.trim_start_matches(".route(\"").split('"').next().expect("path");
            let full = if path.starts_with("/oauth2") || path.starts_with("/api/docs") || path.starts_with("/soap") {
                path.to_string()
            } else {
                format!("/api/v1{path}")
            };
            // F5: `/metrics` is Prometheus's text format for scrapers, not part of the REST API.
            if full.starts_with("/api/docs") || path == "/metrics" {
                continue;
            }
            assert!(doc["paths"][&full].is_object(), "{full} is routed but not in the OpenAPI document");
        }
    }
}
