//! Money: an integer count of minor units and an ISO 4217 currency. Never a float.
//!
//! Values are built only through parsing constructors that reject what a bank must
//! not store (zero, negative or oversized amounts, unknown currencies); arithmetic is
//! checked and reports overflow instead of wrapping.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Active ISO 4217 codes (funds and precious metals left out).
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF",
    "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC",
    "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS",
    "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD",
    "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL",
    "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD",
    "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD",
    "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP",
    "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VES",
    "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// Why an amount or currency was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must be a positive integer count of minor units")]
    NotPositive,
    #[error("amount must be an integer count of minor units, not a fraction")]
    NotInteger,
    #[error("amount exceeds the maximum of {max} minor units")]
    TooLarge { max: i64 },
    #[error("currency must be an ISO 4217 code such as EUR")]
    UnknownCurrency,
    #[error("the result would overflow the balance limit")]
    Overflow,
}

/// An ISO 4217 currency code, validated on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Every code the bank holds: the active ISO 4217 codes, sorted.
    pub const CODES: &'static [&'static str] = ISO_4217;

    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        match ISO_4217.binary_search(&code) {
            Ok(_) => {
                let b = code.as_bytes();
                Ok(Currency([b[0], b[1], b[2]]))
            }
            Err(_) => Err(MoneyError::UnknownCurrency),
        }
    }

    pub fn as_str(&self) -> &str {
        // only ever built from an ASCII table entry
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Currency::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

/// A positive amount of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// A positive amount no larger than `max` minor units.
    pub fn new(minor: i64, currency: Currency, max: i64) -> Result<Self, MoneyError> {
        if minor <= 0 {
            return Err(MoneyError::NotPositive);
        }
        if minor > max {
            return Err(MoneyError::TooLarge { max });
        }
        Ok(Money { minor, currency })
    }

    /// Parses an amount as it arrives in JSON (any number) and a currency code.
    pub fn parse(amount: &serde_json::Number, currency: &str, max: i64) -> Result<Self, MoneyError> {
        let minor = amount_from_json(amount, max)?;
        Ok(Money { minor, currency: Currency::parse(currency)? })
    }

    /// Parses an amount as it arrives in JSON in an already known currency.
    pub fn from_json(amount: &serde_json::Number, currency: Currency, max: i64) -> Result<Self, MoneyError> {
        Ok(Money { minor: amount_from_json(amount, max)?, currency })
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

/// Turns a JSON number into minor units: integers only; anything beyond `i64` or
/// `max` is too large, fractions are refused (a float is never money).
pub fn amount_from_json(amount: &serde_json::Number, max: i64) -> Result<i64, MoneyError> {
    if let Some(v) = amount.as_i64() {
        return if v <= 0 {
            Err(MoneyError::NotPositive)
        } else if v > max {
            Err(MoneyError::TooLarge { max })
        } else {
            Ok(v)
        };
    }
    if amount.as_u64().is_some() {
        return Err(MoneyError::TooLarge { max });
    }
    match amount.as_f64() {
        Some(f) if f <= 0.0 => Err(MoneyError::NotPositive),
        Some(f) if f.fract() != 0.0 => Err(MoneyError::NotInteger),
        // a whole number written as a float (5.0, 1e2) is that integer
        Some(f) if f <= max as f64 => Ok(f as i64),
        _ => Err(MoneyError::TooLarge { max }),
    }
}

/// `balance + amount`, refusing overflow.
pub fn checked_credit(balance: i64, amount: i64) -> Result<i64, MoneyError> {
    balance.checked_add(amount).ok_or(MoneyError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> serde_json::Number {
        serde_json::from_str(s).expect("number")
    }

    #[test]
    fn currency_table_is_sorted_for_binary_search() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn parses_positive_integer_amounts_in_known_currencies() {
        let m = Money::parse(&n("5500"), "EUR", 1_000_000).expect("valid");
        assert_eq!((m.minor(), m.currency().as_str()), (5500, "EUR"));
    }

    #[test]
    fn refuses_bad_amounts_and_currencies() {
        assert_eq!(Money::parse(&n("0"), "EUR", 10), Err(MoneyError::NotPositive));
        assert_eq!(Money::parse(&n("-5"), "EUR", 10), Err(MoneyError::NotPositive));
        assert_eq!(Money::parse(&n("11"), "EUR", 10), Err(MoneyError::TooLarge { max: 10 }));
        assert_eq!(Money::parse(&n("1.5"), "EUR", 10), Err(MoneyError::NotInteger));
        assert_eq!(Money::parse(&n("1e30"), "EUR", 10), Err(MoneyError::TooLarge { max: 10 }));
        assert_eq!(Money::parse(&n("18446744073709551615"), "EUR", 10), Err(MoneyError::TooLarge { max: 10 }));
        assert_eq!(Money::parse(&n("5"), "XXX", 10), Err(MoneyError::UnknownCurrency));
        assert_eq!(Money::parse(&n("5.0"), "EUR", 10).map(|m| m.minor()), Ok(5));
        assert_eq!(Money::parse(&n("1e1"), "EUR", 10).map(|m| m.minor()), Ok(10));
        assert_eq!(Money::parse(&n("1e2"), "EUR", 10), Err(MoneyError::TooLarge { max: 10 }));
        assert_eq!(Money::parse(&n("5"), "eur", 10), Err(MoneyError::UnknownCurrency));
    }

    #[test]
    fn credit_overflow_is_an_error() {
        assert_eq!(checked_credit(i64::MAX, 1), Err(MoneyError::Overflow));
        assert_eq!(checked_credit(1, 2), Ok(3));
    }
}
