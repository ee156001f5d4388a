//! The OpenAPI document of account-service: generated from the routes' types
//! ([`crate::http::Api`]) and completed with each route's error codes.

use crate::history::HISTORY_ERRORS;
use crate::http::{CLOSE_ERRORS, COMMAND_ERRORS, OPEN_ERRORS, READ_ERRORS};
use serde_json::Value;
use service_kit::openapi::{RouteErrors, finish};
use utoipa::OpenApi;

pub fn document_json() -> Value {
    let generated = serde_json::to_value(crate::http::Api::openapi()).unwrap_or_default();
    finish(
        generated,
        "account-service",
        "Open accounts, deposit, withdraw, close; read an account now or as it was, its events and its transfers, \
         exactly, from the event store. Amounts are integers in minor units.",
        &[
            RouteErrors { method: "post", path: "/accounts", codes: OPEN_ERRORS },
            RouteErrors { method: "get", path: "/accounts/{id}", codes: READ_ERRORS },
            RouteErrors { method: "post", path: "/accounts/{id}/deposits", codes: COMMAND_ERRORS },
            RouteErrors { method: "post", path: "/accounts/{id}/withdrawals", codes: COMMAND_ERRORS },
            RouteErrors { method: "post", path: "/accounts/{id}/payments", codes: COMMAND_ERRORS },
            RouteErrors { method: "post", path: "/accounts/{id}/close", codes: CLOSE_ERRORS },
            RouteErrors { method: "get", path: "/accounts/{id}/history", codes: HISTORY_ERRORS },
            RouteErrors { method: "get", path: "/accounts/{id}/transfers", codes: HISTORY_ERRORS },
        ],
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_complete() {
        service_kit::openapi::check_and_print(&super::document_json());
    }
}
