//! The OpenAPI document of transfer-service.

use serde_json::{Value, json};
use service_kit::openapi::{document, error_response, error_responses, with_success};

pub fn document_json() -> Value {
    let transfer = json!({"description": "the transfer", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Transfer"}}}});
    let mut create_errors = error_responses(&[
        (
            "400",
            "malformed_json, invalid_body, invalid_id, invalid_amount, amount_too_large, invalid_currency, invalid_idempotency_key",
        ),
        ("401", "missing_token, invalid_token, token_expired"),
        ("403", "forbidden: the source account is not yours"),
        ("404", "account_not_found (source or target)"),
        ("413", "payload_too_large"),
        ("415", "unsupported_media_type"),
        ("422", "same_account, account_closed, currency_mismatch, idempotency_key_reused"),
    ]);
    create_errors["503"] = error_response("timeout, unavailable");
    let paths = json!({
        "/transfers": {"post": {
            "summary": "Start a transfer from one of the caller's accounts",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TransferRequest"}}}},
            "responses": with_success(create_errors, "201", transfer.clone())
        }},
        "/transfers/{id}": {"get": {
            "summary": "A transfer as the event store has it (its initiator, tellers and admins)",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}},
                {"name": "min_version", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0},
                 "description": "answer only once the transfer is at this version or later"},
                {"name": "wait_ms", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0},
                 "description": "how long to wait for min_version (capped by TRANSFER_MAX_WAIT_MS); then 409 version_not_reached"}],
            "responses": with_success(error_responses(&[("400", "invalid_id, invalid_query"), ("401", "missing_token, invalid_token, token_expired"),
                ("403", "forbidden"), ("404", "transfer_not_found"), ("409", "version_not_reached")]), "200", transfer)
        }}
    });
    let schemas = json!({
        "TransferRequest": {"type": "object", "required": ["from", "to", "amount", "currency"], "additionalProperties": false, "properties": {
            "from": {"type": "string", "format": "uuid"}, "to": {"type": "string", "format": "uuid"},
            "amount": {"type": "integer", "minimum": 1, "description": "minor units"}, "currency": {"type": "string", "example": "EUR"}}},
        "Transfer": {"type": "object", "required": ["id", "version", "from", "to", "amount", "currency", "state"], "properties": {
            "id": {"type": "string", "format": "uuid"}, "version": {"type": "integer"},
            "from": {"type": "string", "format": "uuid"}, "to": {"type": "string", "format": "uuid"},
            "amount": {"type": "integer"}, "currency": {"type": "string"},
            "state": {"type": "string", "enum": ["initiated", "debited", "refunding", "completed", "failed"]},
            "initiated_by": {"type": "string"}, "failure_reason": {"type": ["string", "null"]}}}
    });
    document("transfer-service", "Start money transfers between accounts.", paths, schemas)
}
