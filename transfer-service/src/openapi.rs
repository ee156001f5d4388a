//! The OpenAPI document of transfer-service: generated from the routes' types
//! ([`crate::http::Api`]) and completed with each route's error codes.

use crate::http::{CREATE_ERRORS, READ_ERRORS};
use serde_json::Value;
use service_kit::openapi::{RouteErrors, finish};
use utoipa::OpenApi;

pub fn document_json() -> Value {
    let generated = serde_json::to_value(crate::http::Api::openapi()).unwrap_or_default();
    finish(
        generated,
        "transfer-service",
        "Money transfers between accounts: created here, carried out by the saga over the rapids.",
        &[
            RouteErrors { method: "post", path: "/transfers", codes: CREATE_ERRORS },
            RouteErrors { method: "get", path: "/transfers/{id}", codes: READ_ERRORS },
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
