//! The OpenAPI document of account-service.

use serde_json::{Value, json};
use service_kit::openapi::{document, error_response, error_responses as errors, with_success as with_ok};

pub fn document_json() -> Value {
    let id_param =
        json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}]);
    let idem = json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}});
    let account = json!({"description": "the account after the command", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Account"}}}});
    let mut command_errors = errors(&[
        (
            "400",
            "malformed_json, invalid_body, invalid_id, invalid_amount, amount_too_large, invalid_currency, invalid_idempotency_key",
        ),
        ("401", "missing_token, invalid_token, token_expired"),
        ("403", "forbidden: not your account"),
        ("404", "account_not_found"),
        ("409", "version_conflict"),
        ("413", "payload_too_large"),
        ("415", "unsupported_media_type"),
        (
            "422",
            "insufficient_funds, account_closed, currency_mismatch, balance_not_zero, balance_limit_exceeded, idempotency_key_reused",
        ),
    ]);
    let amount_body = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AmountRequest"}}}});
    command_errors["503"] = error_response("timeout, unavailable");
    let paths = json!({
        "/accounts": {"post": {
            "summary": "Open an account for the caller",
            "parameters": [idem],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenRequest"}}}},
            "responses": with_ok(command_errors.clone(), "201", account.clone())
        }},
        "/accounts/{id}": {"get": {
            "summary": "The account as the event store has it, with its 20 newest transactions",
            "parameters": id_param,
            "responses": with_ok(errors(&[("400", "invalid_id"), ("401", "missing_token, invalid_token, token_expired"), ("403", "forbidden"), ("404", "account_not_found")]),
                "200", json!({"description": "the account", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AccountDetail"}}}}))
        }},
        "/accounts/{id}/deposits": {"post": {
            "summary": "Deposit (the owner, or a teller for anyone)",
            "parameters": [id_param[0], idem], "requestBody": amount_body,
            "responses": with_ok(command_errors.clone(), "200", account.clone())
        }},
        "/accounts/{id}/withdrawals": {"post": {
            "summary": "Withdraw (the owner only; never below zero)",
            "parameters": [id_param[0], idem], "requestBody": amount_body,
            "responses": with_ok(command_errors.clone(), "200", account.clone())
        }},
        "/accounts/{id}/close": {"post": {
            "summary": "Close (the owner only; at a zero balance)",
            "parameters": [id_param[0], idem],
            "responses": with_ok(command_errors, "200", account)
        }}
    });
    let schemas = json!({
        "OpenRequest": {"type": "object", "required": ["currency"], "additionalProperties": false, "properties": {
            "currency": {"type": "string", "example": "EUR"},
            "initial_deposit": {"type": "integer", "minimum": 0, "description": "minor units"}}},
        "AmountRequest": {"type": "object", "required": ["amount", "currency"], "additionalProperties": false, "properties": {
            "amount": {"type": "integer", "minimum": 1, "description": "minor units"},
            "currency": {"type": "string", "example": "EUR"},
            "expected_version": {"type": "integer", "description": "refuse with 409 unless the account is at this version"}}},
        "Account": {"type": "object", "required": ["id", "version", "owner", "currency", "status", "balance"], "properties": {
            "id": {"type": "string", "format": "uuid"}, "version": {"type": "integer"}, "owner": {"type": "string"},
            "currency": {"type": "string"}, "status": {"type": "string", "enum": ["open", "closed"]},
            "balance": {"type": "integer", "description": "minor units"}}},
        "AccountDetail": {"allOf": [{"$ref": "#/components/schemas/Account"}, {"type": "object", "properties": {
            "recent_transactions": {"type": "array", "items": {"type": "object", "properties": {
                "kind": {"type": "string", "enum": ["credit", "debit"]}, "type": {"type": "string"},
                "amount": {"type": "integer"}, "currency": {"type": "string"}, "balance_after": {"type": "integer"},
                "transfer_id": {"type": ["string", "null"]}, "version": {"type": "integer"},
                "recorded_at": {"type": "string", "format": "date-time"}}}}}}]}
    });
    document("account-service", "Open accounts, deposit, withdraw, close.", paths, schemas)
}
