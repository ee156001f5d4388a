//! The double-entry ledger under the accounts. Pure: no I/O.
//!
//! Every movement of money is a posting of one amount in one currency from one account
//! to another, and every account event that changes a balance *is* one posting: its
//! type says which of the bank's own accounts is the other side (a cash deposit comes
//! from `cash`, a transfer's debit goes to `in_transit`, …), so a customer's command
//! touches that customer's stream only.
//!
//! The bank's own accounts ([`BankAccount`], one of each per currency) have no stream:
//! their balances are the sums of the postings against them, kept by the views and by
//! the reconciliation. They may go negative (`cash` is minus what the tellers took
//! in); customer accounts never do. With every balance counted, customers' and the
//! bank's, each currency sums to zero: money never appears from nothing.

use crate::Currency;
use crate::account::AccountEvent;
use uuid::Uuid;

/// The bank's own accounts, one of each per currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BankAccount {
    /// The tellers' desk: cash taken in (deposits) and paid out (withdrawals).
    Cash,
    /// Payments received from other banks through a payment rail.
    Inbound,
    /// Payments sent to other banks.
    Outbound,
    /// Transfers debited from their source and not yet credited or refunded.
    InTransit,
    /// Money an operator must place, e.g. a refund whose source account was closed.
    Suspense,
}

impl BankAccount {
    pub const ALL: [BankAccount; 5] =
        [BankAccount::Cash, BankAccount::Inbound, BankAccount::Outbound, BankAccount::InTransit, BankAccount::Suspense];

    pub fn as_str(self) -> &'static str {
        match self {
            BankAccount::Cash => "cash",
            BankAccount::Inbound => "inbound",
            BankAccount::Outbound => "outbound",
            BankAccount::InTransit => "in_transit",
            BankAccount::Suspense => "suspense",
        }
    }

    fn number(self) -> u128 {
        match self {
            BankAccount::Cash => 1,
            BankAccount::Inbound => 2,
            BankAccount::Outbound => 3,
            BankAccount::InTransit => 4,
            BankAccount::Suspense => 5,
        }
    }

    /// The account's well-known id in `currency`:
    /// `00000000-0000-0000-00KK-000000CCCCCC`, `KK` the kind (01 cash, 02 inbound,
    /// 03 outbound, 04 in_transit, 05 suspense) and `CCCCCC` the currency code's ASCII
    /// bytes (EUR: 455552). Customer accounts are UUIDv7 and never of this form.
    pub fn id(self, currency: Currency) -> Uuid {
        let code = currency.as_str().as_bytes();
        let code = (u128::from(code[0]) << 16) | (u128::from(code[1]) << 8) | u128::from(code[2]);
        Uuid::from_u128((self.number() << 48) | code)
    }

    /// Which of the bank's accounts `id` is, if it is one.
    pub fn from_id(id: Uuid) -> Option<(BankAccount, Currency)> {
        let n = id.as_u128();
        if n >> 56 != 0 || (n >> 24) & 0xff_ffff != 0 {
            return None;
        }
        let kind = BankAccount::ALL.into_iter().find(|k| k.number() == (n >> 48))?;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let currency = Currency::parse(std::str::from_utf8(&bytes).ok()?).ok()?;
        (kind.id(currency) == id).then_some((kind, currency))
    }
}

/// Whether `reference` is a payment reference the bank keeps: 1 to 64 characters of
/// `A-Z a-z 0-9 . _ : / -`.
pub fn valid_reference(reference: &str) -> bool {
    (1..=64).contains(&reference.len()) && reference.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
}

/// One movement: `amount` minor units of `currency` from `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posting {
    pub from: Uuid,
    pub to: Uuid,
    pub amount: i64,
    pub currency: Currency,
}

/// The posting an event of `account`'s stream records, if it moves money. The event's
/// own account is one side (its balance moves by `amount`), the other is the bank's
/// account its type names — except a refund diverted to `suspense`, which moves money
/// between two bank accounts and leaves the closed account's balance as it was.
pub fn posting(account: Uuid, event: &AccountEvent) -> Option<Posting> {
    use BankAccount::*;
    let (from, to, amount, currency) = match event {
        AccountEvent::Deposited { amount, currency, .. } => (Cash.id(*currency), account, *amount, *currency),
        AccountEvent::Withdrawn { amount, currency, .. } => (account, Cash.id(*currency), *amount, *currency),
        AccountEvent::PaymentReceived { amount, currency, .. } => (Inbound.id(*currency), account, *amount, *currency),
        AccountEvent::PaymentSent { amount, currency, .. } => (account, Outbound.id(*currency), *amount, *currency),
        AccountEvent::Debited { amount, currency, .. } => (account, InTransit.id(*currency), *amount, *currency),
        AccountEvent::Credited { amount, currency, .. } | AccountEvent::Refunded { amount, currency, .. } => {
            (InTransit.id(*currency), account, *amount, *currency)
        }
        AccountEvent::RefundDiverted { amount, currency, .. } => {
            (InTransit.id(*currency), Suspense.id(*currency), *amount, *currency)
        }
        AccountEvent::Opened { .. }
        | AccountEvent::Closed {}
        | AccountEvent::DebitRejected { .. }
        | AccountEvent::CreditRejected { .. } => return None,
    };
    Some(Posting { from, to, amount, currency })
}

/// The balance an event says its account holds after it, if it says one.
pub fn balance_after(event: &AccountEvent) -> Option<i64> {
    match event {
        AccountEvent::Deposited { balance_after, .. }
        | AccountEvent::Withdrawn { balance_after, .. }
        | AccountEvent::PaymentReceived { balance_after, .. }
        | AccountEvent::PaymentSent { balance_after, .. }
        | AccountEvent::Debited { balance_after, .. }
        | AccountEvent::Credited { balance_after, .. }
        | AccountEvent::Refunded { balance_after, .. } => Some(*balance_after),
        _ => None,
    }
}

/// The transfer whose money an event moves through `in_transit`, and by how much
/// `in_transit` changes for it.
pub fn in_transit_change(event: &AccountEvent) -> Option<(Uuid, i64)> {
    match event {
        AccountEvent::Debited { transfer_id, amount, .. } => Some((*transfer_id, *amount)),
        AccountEvent::Credited { transfer_id, amount, .. }
        | AccountEvent::Refunded { transfer_id, amount, .. }
        | AccountEvent::RefundDiverted { transfer_id, amount, .. } => Some((*transfer_id, -*amount)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").expect("EUR")
    }

    #[test]
    fn bank_account_ids_are_well_known_and_read_back() {
        assert_eq!(BankAccount::Cash.id(eur()).to_string(), "00000000-0000-0000-0001-000000455552");
        assert_eq!(BankAccount::Suspense.id(eur()).to_string(), "00000000-0000-0000-0005-000000455552");
        for kind in BankAccount::ALL {
            for code in ["EUR", "USD", "JPY"] {
                let currency = Currency::parse(code).expect("code");
                assert_eq!(BankAccount::from_id(kind.id(currency)), Some((kind, currency)));
            }
        }
        assert_eq!(BankAccount::from_id(Uuid::now_v7()), None);
        assert_eq!(BankAccount::from_id(Uuid::nil()), None);
        // a currency code that is not ISO 4217
        assert_eq!(BankAccount::from_id(Uuid::from_u128((1 << 48) | 0x5a5a5a)), None);
    }

    #[test]
    fn every_balance_event_is_one_posting_that_moves_its_account_by_the_amount() {
        let me = Uuid::now_v7();
        let t = Uuid::now_v7();
        let cases = [
            (AccountEvent::Deposited { amount: 5, currency: eur(), balance_after: 5 }, 5),
            (AccountEvent::Withdrawn { amount: 5, currency: eur(), balance_after: 0 }, -5),
            (AccountEvent::PaymentReceived { reference: "r".into(), amount: 5, currency: eur(), balance_after: 5 }, 5),
            (AccountEvent::PaymentSent { reference: "r".into(), amount: 5, currency: eur(), balance_after: 0 }, -5),
            (
                AccountEvent::Debited { transfer_id: t, amount: 5, currency: eur(), balance_after: 0, counterparty: t },
                -5,
            ),
            (
                AccountEvent::Credited {
                    transfer_id: t,
                    amount: 5,
                    currency: eur(),
                    balance_after: 5,
                    counterparty: t,
                },
                5,
            ),
            (AccountEvent::Refunded { transfer_id: t, amount: 5, currency: eur(), balance_after: 5 }, 5),
            (AccountEvent::RefundDiverted { transfer_id: t, amount: 5, currency: eur() }, 0),
        ];
        for (event, own_change) in cases {
            let p = posting(me, &event).expect("a posting");
            assert_ne!(p.from, p.to);
            let change = if p.to == me {
                p.amount
            } else if p.from == me {
                -p.amount
            } else {
                0
            };
            assert_eq!(change, own_change, "{event:?}");
        }
        assert_eq!(posting(me, &AccountEvent::Closed {}), None);
    }

    #[test]
    fn references_are_short_and_plain() {
        assert!(valid_reference("SEPA/2026-12-05:0001"));
        for bad in ["", "with space", "é", &"x".repeat(65), "a\nb"] {
            assert!(!valid_reference(bad), "{bad:?}");
        }
    }
}
