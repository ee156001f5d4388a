//! The OpenAPI document of query-service: generated from the routes' types
//! ([`crate::http::Api`]) and completed with each route's error codes.

use crate::http::{ACCOUNT_ERRORS, LIST_ERRORS, TRANSFER_ERRORS};
use serde_json::Value;
use service_kit::openapi::{RouteErrors, finish};
use utoipa::OpenApi;

pub fn document_json() -> Value {
    let generated = serde_json::to_value(crate::http::Api::openapi()).unwrap_or_default();
    finish(
        generated,
        "query-service",
        "Reads of accounts and transfers from the views, version-aware: with `min_version` an answer waits \
         (up to `wait_ms`) until the view has caught up with a command's answer.",
        &[
            RouteErrors { method: "get", path: "/accounts", codes: LIST_ERRORS },
            RouteErrors { method: "get", path: "/accounts/{id}", codes: ACCOUNT_ERRORS },
            RouteErrors { method: "get", path: "/accounts/{id}/transactions", codes: ACCOUNT_ERRORS },
            RouteErrors { method: "get", path: "/transfers/{id}", codes: TRANSFER_ERRORS },
            RouteErrors { method: "get", path: "/search", codes: crate::search::SEARCH_ERRORS },
            RouteErrors {
                method: "get",
                path: "/accounts/{id}/statements",
                codes: crate::statements::STATEMENT_ERRORS,
            },
            RouteErrors {
                method: "get",
                path: "/accounts/{id}/statements/{file}",
                codes: crate::statements::STATEMENT_ERRORS,
            },
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
