//! The error body every service answers a failure with:
//! `{"error": {"code": "...", "message": "...", <details>...}}`. The services build it
//! from their `ErrorCode`s (service-kit owns each code's string and status); clients
//! read it with these types.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code, a message for people, and the code's details
/// (e.g. `current_version` and `wanted_version` of `view_out_of_date`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_details_are_the_fields_beside_code_and_message() -> serde_json::Result<()> {
        let wire = json!({"error": {"code": "view_out_of_date", "message": "retry later",
            "current_version": 3, "wanted_version": 5}});
        let body: ErrorBody = serde_json::from_value(wire.clone())?;
        assert_eq!(body.error.code, "view_out_of_date");
        assert_eq!(body.error.details.get("wanted_version"), Some(&json!(5)));
        assert_eq!(body.error.details.len(), 2);
        assert_eq!(serde_json::to_value(&body)?, wire);
        Ok(())
    }
}
