//! The OpenAPI document of query-service.

use serde_json::{Value, json};
use service_kit::openapi::{document, error_responses, with_success};

pub fn document_json() -> Value {
    let wait_params = json!([
        {"name": "min_version", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0},
         "description": "answer only once the view is at this version or later"},
        {"name": "wait_ms", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0},
         "description": "how long to wait for min_version (capped by QUERY_MAX_WAIT_MS); then 409 view_out_of_date"}
    ]);
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}});
    let with = |extra: Value| {
        let mut params = vec![id.clone()];
        params.extend(wait_params.as_array().cloned().unwrap_or_default());
        params.extend(extra.as_array().cloned().unwrap_or_default());
        Value::Array(params)
    };
    let errors = |not_found: &str| {
        error_responses(&[
            ("400", "invalid_id, invalid_query"),
            ("401", "missing_token, invalid_token, token_expired"),
            ("403", "forbidden"),
            ("404", not_found),
            ("409", "view_out_of_date (details: current_version, wanted_version; header Retry-After)"),
        ])
    };
    let body = |schema: &str| json!({"description": "ok", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let paths = json!({
        "/accounts": {"get": {
            "summary": "The caller's accounts (tellers and admins: `owner`'s)",
            "parameters": [{"name": "owner", "in": "query", "required": false, "schema": {"type": "string"}}],
            "responses": with_success(error_responses(&[("401", "missing_token, invalid_token, token_expired"), ("403", "forbidden")]), "200", body("AccountList"))
        }},
        "/accounts/{id}": {"get": {
            "summary": "An account with its 20 newest transactions",
            "parameters": with(json!([])),
            "responses": with_success(errors("account_not_found"), "200", body("Account"))
        }},
        "/accounts/{id}/transactions": {"get": {
            "summary": "An account's transactions, newest first",
            "parameters": with(json!([
                {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                {"name": "before_version", "in": "query", "required": false, "schema": {"type": "integer"},
                 "description": "the cursor: next_before_version of the previous page"}])),
            "responses": with_success(errors("account_not_found"), "200", body("TransactionPage"))
        }},
        "/transfers/{id}": {"get": {
            "summary": "A transfer (its initiator, tellers and admins)",
            "parameters": with(json!([])),
            "responses": with_success(errors("transfer_not_found"), "200", body("Transfer"))
        }}
    });
    let transaction = json!({"type": "object", "properties": {
        "version": {"type": "integer"}, "kind": {"type": "string", "enum": ["deposit", "withdrawal", "transfer_debit", "transfer_credit", "refund"]},
        "amount": {"type": "integer"}, "currency": {"type": "string"}, "balance_after": {"type": "integer"},
        "transfer_id": {"type": ["string", "null"], "format": "uuid"}, "counterparty": {"type": ["string", "null"], "format": "uuid"},
        "recorded_at": {"type": "string", "format": "date-time"}}});
    let account = json!({"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "owner": {"type": "string"}, "currency": {"type": "string"},
        "status": {"type": "string", "enum": ["open", "closed"]}, "balance": {"type": "integer"}, "version": {"type": "integer"},
        "opened_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
        "recent_transactions": {"type": "array", "items": {"$ref": "#/components/schemas/Transaction"}}}});
    let schemas = json!({
        "Transaction": transaction,
        "Account": account,
        "AccountList": {"type": "object", "properties": {"owner": {"type": "string"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/Account"}}}},
        "TransactionPage": {"type": "object", "properties": {"account_id": {"type": "string"}, "version": {"type": "integer"},
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Transaction"}},
            "next_before_version": {"type": ["integer", "null"]}}},
        "Transfer": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}, "version": {"type": "integer"},
            "from": {"type": "string"}, "to": {"type": "string"}, "amount": {"type": "integer"}, "currency": {"type": "string"},
            "state": {"type": "string", "enum": ["initiated", "debited", "refunding", "completed", "failed"]},
            "failure_reason": {"type": ["string", "null"]}, "initiated_by": {"type": "string"},
            "created_at": {"type": "string"}, "updated_at": {"type": "string"}}}
    });
    document("query-service", "Reads of accounts and transfers from the views, version-aware.", paths, schemas)
}
