//! The HTTP contract of the bank's services, as types: what each route takes and
//! answers. The services derive their OpenAPI documents from these types (utoipa
//! `ToSchema` / `IntoParams`, used by their `#[utoipa::path]` handlers) and decode
//! requests with them; `bank-client` sends and reads the same types, so the server
//! and its clients cannot drift apart.
//!
//! * [`accounts`]: account-service (the command side of accounts).
//! * [`transfers`]: transfer-service (creating and reading transfers).
//! * [`views`]: query-service (the read side: accounts, transactions, transfers).
//! * [`ErrorBody`]: the error body every service answers with.
//!
//! Requests derive `Serialize` and `Deserialize`, replies too; the serde attributes
//! are the wire format, the `schema`/`param` attributes the documented bounds. The
//! names of the types are the OpenAPI component names, so a rename changes the
//! documents. Depends on no web framework and, unless the `sqlx` feature is on
//! (query-service only), on no database driver.

#![forbid(unsafe_code)]

pub mod accounts;
mod error;
pub mod transfers;
pub mod views;

pub use error::{ErrorBody, ErrorDetail};

/// The highest stream version (a version is an `int4` in the event store).
pub const MAX_VERSION: i64 = i32::MAX as i64;

/// The schema of a currency field: one of the codes the bank holds.
pub fn currency_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .enum_values(Some(bank_domain::Currency::CODES.iter().copied()))
        .description(Some("an ISO 4217 code"))
        .build()
}

/// An optional `expected_version`: a whole number from 0 to [`MAX_VERSION`], written
/// as an integer or as a float without a fraction (`7.0`); null or absent is none.
pub fn optional_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    use serde::Deserialize;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    let whole = n
        .as_i64()
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() <= MAX_VERSION as f64).map(|f| f as i64));
    whole.and_then(|v| i32::try_from(v).ok()).filter(|v| *v >= 0).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!("a version is a whole number from 0 to {MAX_VERSION}, not {n}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "optional_version")]
        v: Option<i32>,
    }

    fn v(json: &str) -> Result<Option<i32>, String> {
        serde_json::from_str::<Body>(json).map(|b| b.v).map_err(|e| e.to_string())
    }

    #[test]
    fn a_version_is_a_whole_number_in_range_written_either_way() {
        assert_eq!(v(r#"{}"#), Ok(None));
        assert_eq!(v(r#"{"v": null}"#), Ok(None));
        assert_eq!(v(r#"{"v": 7}"#), Ok(Some(7)));
        assert_eq!(v(r#"{"v": 7.0}"#), Ok(Some(7)));
        assert_eq!(v(r#"{"v": 2147483647}"#), Ok(Some(i32::MAX)));
        for bad in ["-1", "7.5", "2147483648", "1e300", "\"7\""] {
            assert!(v(&format!(r#"{{"v": {bad}}}"#)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_currency_schema_lists_the_banks_codes() {
        let schema = serde_json::to_value(currency_schema()).unwrap_or_default();
        let codes = schema["enum"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(codes, bank_domain::Currency::CODES.len());
        assert!(schema["enum"].as_array().into_iter().flatten().any(|c| c == "EUR"));
    }
}
