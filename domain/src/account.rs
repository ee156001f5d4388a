//! The `Account` aggregate: open, deposit, withdraw, close. Pure: no I/O.
//!
//! Rules: amounts are positive and in the account's currency; no overdraft; a closed
//! account takes nothing; an account closes only at a zero balance. Who may act is a
//! rule of the account too: cash comes in only through staff (tellers and admins: a
//! deposit, or an initial deposit on opening); the owner or staff take cash out; the
//! owner sends payments out and closes; payments come in from a payment rail (the
//! service checks the rail's role). Every event that moves money is one balanced
//! posting against one of the bank's own accounts: see [`crate::ledger`].
//!
//! The transfer saga's steps (debit, credit, refund) come from the saga, not from a
//! person: they are checked against the account's state only, and a step the account
//! cannot take is recorded as a rejection event (the saga reacts to it), not an error.

use crate::money::checked_credit;
use crate::{Aggregate, Currency, DomainEvent, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Everything that can happen to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    #[serde(rename = "account.opened")]
    Opened { owner: String, currency: Currency },
    #[serde(rename = "account.deposited")]
    Deposited { amount: i64, currency: Currency, balance_after: i64 },
    #[serde(rename = "account.withdrawn")]
    Withdrawn { amount: i64, currency: Currency, balance_after: i64 },
    #[serde(rename = "account.closed")]
    Closed {},
    /// A payment from another bank, posted by a payment rail (`inbound` → account),
    /// once per the rail's reference.
    #[serde(rename = "account.payment_received")]
    PaymentReceived { reference: String, amount: i64, currency: Currency, balance_after: i64 },
    /// A payment to another bank, sent by the owner (account → `outbound`).
    #[serde(rename = "account.payment_sent")]
    PaymentSent { reference: String, amount: i64, currency: Currency, balance_after: i64 },
    /// The source side of a transfer.
    #[serde(rename = "account.debited")]
    Debited { transfer_id: Uuid, amount: i64, currency: Currency, balance_after: i64, counterparty: Uuid },
    #[serde(rename = "account.debit_rejected")]
    DebitRejected { transfer_id: Uuid, reason: RejectReason },
    /// The target side of a transfer.
    #[serde(rename = "account.credited")]
    Credited { transfer_id: Uuid, amount: i64, currency: Currency, balance_after: i64, counterparty: Uuid },
    #[serde(rename = "account.credit_rejected")]
    CreditRejected { transfer_id: Uuid, reason: RejectReason },
    /// A debited amount given back after the credit was rejected.
    #[serde(rename = "account.refunded")]
    Refunded { transfer_id: Uuid, amount: i64, currency: Currency, balance_after: i64 },
    /// A refund for an account closed meanwhile: the money goes from `in_transit` to
    /// `suspense` for an operator to place; the closed account's balance stays as it was.
    #[serde(rename = "account.refund_diverted")]
    RefundDiverted { transfer_id: Uuid, amount: i64, currency: Currency },
}

/// Why an account did not take its step of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    InsufficientFunds,
    AccountClosed,
    CurrencyMismatch,
    BalanceLimit,
}

impl RejectReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::InsufficientFunds => "insufficient_funds",
            RejectReason::AccountClosed => "account_closed",
            RejectReason::CurrencyMismatch => "currency_mismatch",
            RejectReason::BalanceLimit => "balance_limit",
        }
    }
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "account.opened",
            AccountEvent::Deposited { .. } => "account.deposited",
            AccountEvent::Withdrawn { .. } => "account.withdrawn",
            AccountEvent::Closed {} => "account.closed",
            AccountEvent::PaymentReceived { .. } => "account.payment_received",
            AccountEvent::PaymentSent { .. } => "account.payment_sent",
            AccountEvent::Debited { .. } => "account.debited",
            AccountEvent::DebitRejected { .. } => "account.debit_rejected",
            AccountEvent::Credited { .. } => "account.credited",
            AccountEvent::CreditRejected { .. } => "account.credit_rejected",
            AccountEvent::Refunded { .. } => "account.refunded",
            AccountEvent::RefundDiverted { .. } => "account.refund_diverted",
        }
    }
}

/// The event types that change a balance (the account's transactions).
pub const BALANCE_EVENTS: &[&str] = &[
    "account.deposited",
    "account.withdrawn",
    "account.payment_received",
    "account.payment_sent",
    "account.debited",
    "account.credited",
    "account.refunded",
];

/// The event types that credit their account (the others of [`BALANCE_EVENTS`] debit it).
pub const CREDIT_EVENTS: &[&str] =
    &["account.deposited", "account.payment_received", "account.credited", "account.refunded"];

/// Who asks for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    /// Tellers and admins: they take cash in and out for any account.
    pub staff: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    Open {
        owner: String,
        currency: Currency,
        /// Cash taken in at opening: staff only.
        initial_deposit: Option<Money>,
        by: Actor,
    },
    /// Cash in at the desk (`cash` → account): staff only.
    Deposit {
        amount: Money,
        by: Actor,
    },
    /// Cash out (account → `cash`): the owner or staff, never overdrawing.
    Withdraw {
        amount: Money,
        by: Actor,
    },
    /// A payment from another bank (`inbound` → account). Posted by a payment rail;
    /// exactly once per reference is the caller's idempotency record.
    ReceivePayment {
        reference: String,
        amount: Money,
    },
    /// A payment to another bank (account → `outbound`): the owner only, never overdrawing.
    SendPayment {
        reference: String,
        amount: Money,
        by: Actor,
    },
    Close {
        by: Actor,
    },
    /// The saga takes a transfer's amount from its source.
    Debit {
        transfer_id: Uuid,
        amount: Money,
        counterparty: Uuid,
    },
    /// The saga gives a transfer's amount to its target.
    Credit {
        transfer_id: Uuid,
        amount: Money,
        counterparty: Uuid,
    },
    /// The saga gives a debited amount back to the source.
    Refund {
        transfer_id: Uuid,
        amount: Money,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account already exists")]
    AlreadyOpened,
    #[error("no such account")]
    NotFound,
    #[error("this account belongs to someone else")]
    NotOwner,
    #[error("only tellers and admins take cash in")]
    StaffOnly,
    #[error("the account is closed")]
    Closed,
    #[error("the account holds {account}, not {given}")]
    CurrencyMismatch { account: Currency, given: Currency },
    #[error("insufficient funds: the balance is {balance}, {requested} was requested")]
    InsufficientFunds { balance: i64, requested: i64 },
    #[error("the balance must be zero to close the account, it is {balance}")]
    BalanceNotZero { balance: i64 },
    #[error("the balance would exceed the largest amount an account can hold")]
    BalanceLimit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    #[default]
    Unopened,
    Open,
    Closed,
}

impl AccountStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AccountStatus::Unopened => "unopened",
            AccountStatus::Open => "open",
            AccountStatus::Closed => "closed",
        }
    }
}

/// The state of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub status: AccountStatus,
    pub owner: String,
    pub currency: Option<Currency>,
    pub balance: i64,
}

impl Account {
    /// The account's currency; only `None` before it is opened.
    pub fn currency_code(&self) -> &str {
        self.currency.as_ref().map(Currency::as_str).unwrap_or("")
    }

    fn open_for(&self, by: &Actor, staff_allowed: bool, amount: Option<&Money>) -> Result<Currency, AccountError> {
        let currency = self.existing()?;
        if self.owner != by.id && !(staff_allowed && by.staff) {
            return Err(AccountError::NotOwner);
        }
        self.takes(currency, amount)
    }

    /// The currency of an account that exists (opened, maybe closed since).
    fn existing(&self) -> Result<Currency, AccountError> {
        match (self.status, self.currency) {
            (AccountStatus::Unopened, _) | (_, None) => Err(AccountError::NotFound),
            (_, Some(currency)) => Ok(currency),
        }
    }

    /// Whether the account, open, takes `amount` (in its currency).
    fn takes(&self, currency: Currency, amount: Option<&Money>) -> Result<Currency, AccountError> {
        if self.status == AccountStatus::Closed {
            return Err(AccountError::Closed);
        }
        if let Some(amount) = amount
            && amount.currency() != currency
        {
            return Err(AccountError::CurrencyMismatch { account: currency, given: amount.currency() });
        }
        Ok(currency)
    }
}

impl Account {
    /// The balance after taking `amount` in (refused past the largest balance).
    fn credited(&self, amount: &Money) -> Result<i64, AccountError> {
        checked_credit(self.balance, amount.minor()).map_err(|_| AccountError::BalanceLimit)
    }

    /// The balance after paying `amount` out (never below zero).
    fn debited(&self, amount: &Money) -> Result<i64, AccountError> {
        if amount.minor() > self.balance {
            return Err(AccountError::InsufficientFunds { balance: self.balance, requested: amount.minor() });
        }
        Ok(self.balance - amount.minor())
    }

    /// Whether a saga step may move `amount` here: the account's currency, or why not
    /// (a reason to record, or an error when there is no such account).
    fn saga_step(&self, amount: &Money) -> Result<Currency, Result<RejectReason, AccountError>> {
        let Some(currency) = self.currency.filter(|_| self.status != AccountStatus::Unopened) else {
            return Err(Err(AccountError::NotFound));
        };
        if self.status == AccountStatus::Closed {
            return Err(Ok(RejectReason::AccountClosed));
        }
        if amount.currency() != currency {
            return Err(Ok(RejectReason::CurrencyMismatch));
        }
        Ok(currency)
    }
}

impl Aggregate for Account {
    const STREAM_TYPE: &'static str = "account";
    const SNAPSHOT_SCHEMA_VERSION: i16 = 1;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner, currency, initial_deposit, by } => {
                if self.status != AccountStatus::Unopened {
                    return Err(AccountError::AlreadyOpened);
                }
                if *owner != by.id && !by.staff {
                    return Err(AccountError::NotOwner);
                }
                let mut events = vec![AccountEvent::Opened { owner: owner.clone(), currency: *currency }];
                if let Some(deposit) = initial_deposit {
                    if !by.staff {
                        return Err(AccountError::StaffOnly);
                    }
                    if deposit.currency() != *currency {
                        return Err(AccountError::CurrencyMismatch { account: *currency, given: deposit.currency() });
                    }
                    events.push(AccountEvent::Deposited {
                        amount: deposit.minor(),
                        currency: *currency,
                        balance_after: deposit.minor(),
                    });
                }
                Ok(events)
            }
            AccountCommand::Deposit { amount, by } => {
                if !by.staff {
                    return Err(AccountError::StaffOnly);
                }
                let currency = self.open_for(by, true, Some(amount))?;
                let balance_after = self.credited(amount)?;
                Ok(vec![AccountEvent::Deposited { amount: amount.minor(), currency, balance_after }])
            }
            AccountCommand::ReceivePayment { reference, amount } => {
                let currency = self.takes(self.existing()?, Some(amount))?;
                let balance_after = self.credited(amount)?;
                Ok(vec![AccountEvent::PaymentReceived {
                    reference: reference.clone(),
                    amount: amount.minor(),
                    currency,
                    balance_after,
                }])
            }
            AccountCommand::SendPayment { reference, amount, by } => {
                let currency = self.open_for(by, false, Some(amount))?;
                let balance_after = self.debited(amount)?;
                Ok(vec![AccountEvent::PaymentSent {
                    reference: reference.clone(),
                    amount: amount.minor(),
                    currency,
                    balance_after,
                }])
            }
            AccountCommand::Withdraw { amount, by } => {
                let currency = self.open_for(by, true, Some(amount))?;
                let balance_after = self.debited(amount)?;
                Ok(vec![AccountEvent::Withdrawn { amount: amount.minor(), currency, balance_after }])
            }
            AccountCommand::Close { by } => {
                self.open_for(by, false, None)?;
                if self.balance != 0 {
                    return Err(AccountError::BalanceNotZero { balance: self.balance });
                }
                Ok(vec![AccountEvent::Closed {}])
            }
            AccountCommand::Debit { transfer_id, amount, counterparty } => {
                let transfer_id = *transfer_id;
                let rejected = |reason| Ok(vec![AccountEvent::DebitRejected { transfer_id, reason }]);
                let currency = match self.saga_step(amount) {
                    Ok(currency) => currency,
                    Err(reason) => return rejected(reason?),
                };
                if amount.minor() > self.balance {
                    return rejected(RejectReason::InsufficientFunds);
                }
                Ok(vec![AccountEvent::Debited {
                    transfer_id,
                    amount: amount.minor(),
                    currency,
                    balance_after: self.balance - amount.minor(),
                    counterparty: *counterparty,
                }])
            }
            AccountCommand::Credit { transfer_id, amount, counterparty } => {
                let transfer_id = *transfer_id;
                let rejected = |reason| Ok(vec![AccountEvent::CreditRejected { transfer_id, reason }]);
                let currency = match self.saga_step(amount) {
                    Ok(currency) => currency,
                    Err(reason) => return rejected(reason?),
                };
                let Ok(balance_after) = checked_credit(self.balance, amount.minor()) else {
                    return rejected(RejectReason::BalanceLimit);
                };
                Ok(vec![AccountEvent::Credited {
                    transfer_id,
                    amount: amount.minor(),
                    currency,
                    balance_after,
                    counterparty: *counterparty,
                }])
            }
            AccountCommand::Refund { transfer_id, amount } => {
                // the money left this account and comes back; if the owner closed the
                // account meanwhile it goes to `suspense` for an operator to place
                // (money is never dropped), so only a broken invariant stops it
                let currency = self.currency.ok_or(AccountError::NotFound)?;
                if amount.currency() != currency {
                    return Err(AccountError::CurrencyMismatch { account: currency, given: amount.currency() });
                }
                if self.status == AccountStatus::Closed {
                    return Ok(vec![AccountEvent::RefundDiverted {
                        transfer_id: *transfer_id,
                        amount: amount.minor(),
                        currency,
                    }]);
                }
                let balance_after = self.credited(amount)?;
                Ok(vec![AccountEvent::Refunded {
                    transfer_id: *transfer_id,
                    amount: amount.minor(),
                    currency,
                    balance_after,
                }])
            }
        }
    }

    fn apply(mut self, event: &AccountEvent) -> Self {
        match event {
            AccountEvent::Opened { owner, currency } => {
                self.status = AccountStatus::Open;
                self.owner = owner.clone();
                self.currency = Some(*currency);
            }
            AccountEvent::Closed {} => self.status = AccountStatus::Closed,
            // every event that moves this account's money says its balance after
            other => {
                if let Some(balance_after) = crate::ledger::balance_after(other) {
                    self.balance = balance_after;
                }
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::given;

    fn eur() -> Currency {
        Currency::parse("EUR").expect("EUR")
    }
    fn usd() -> Currency {
        Currency::parse("USD").expect("USD")
    }
    fn money(minor: i64, currency: Currency) -> Money {
        Money::new(minor, currency, i64::MAX).expect("valid amount")
    }
    fn alice() -> Actor {
        Actor { id: "alice".into(), staff: false }
    }
    fn bob() -> Actor {
        Actor { id: "bob".into(), staff: false }
    }
    fn teller() -> Actor {
        Actor { id: "tom".into(), staff: true }
    }
    fn opened() -> AccountEvent {
        AccountEvent::Opened { owner: "alice".into(), currency: eur() }
    }
    fn deposited(amount: i64, balance_after: i64) -> AccountEvent {
        AccountEvent::Deposited { amount, currency: eur(), balance_after }
    }

    #[test]
    fn opening_records_the_owner_and_currency() {
        given::<Account>(&[])
            .when(&AccountCommand::Open { owner: "alice".into(), currency: eur(), initial_deposit: None, by: alice() })
            .then_events(&[opened()]);
    }

    #[test]
    fn opening_with_a_deposit_records_both() {
        let state = given::<Account>(&[])
            .when(&AccountCommand::Open {
                owner: "alice".into(),
                currency: eur(),
                initial_deposit: Some(money(1000, eur())),
                by: teller(),
            })
            .then_events(&[opened(), deposited(1000, 1000)]);
        assert_eq!((state.balance, state.status), (1000, AccountStatus::Open));
    }

    #[test]
    fn opening_twice_is_refused() {
        given::<Account>(&[opened()])
            .when(&AccountCommand::Open { owner: "alice".into(), currency: eur(), initial_deposit: None, by: alice() })
            .then_error(&AccountError::AlreadyOpened);
    }

    #[test]
    fn an_initial_deposit_in_another_currency_is_refused() {
        given::<Account>(&[])
            .when(&AccountCommand::Open {
                owner: "alice".into(),
                currency: eur(),
                initial_deposit: Some(money(5, usd())),
                by: teller(),
            })
            .then_error(&AccountError::CurrencyMismatch { account: eur(), given: usd() });
    }

    #[test]
    fn deposits_add_to_the_balance() {
        let state = given::<Account>(&[opened(), deposited(100, 100)])
            .when(&AccountCommand::Deposit { amount: money(50, eur()), by: teller() })
            .then_events(&[deposited(50, 150)]);
        assert_eq!(state.balance, 150);
    }

    #[test]
    fn only_staff_take_cash_in_not_even_the_owner() {
        given::<Account>(&[opened()])
            .when(&AccountCommand::Deposit { amount: money(50, eur()), by: teller() })
            .then_events(&[deposited(50, 50)]);
        for by in [alice(), bob()] {
            given::<Account>(&[opened()])
                .when(&AccountCommand::Deposit { amount: money(50, eur()), by })
                .then_error(&AccountError::StaffOnly);
        }
    }

    #[test]
    fn an_initial_deposit_is_staffs_and_a_customer_opens_only_for_themselves() {
        given::<Account>(&[])
            .when(&AccountCommand::Open {
                owner: "alice".into(),
                currency: eur(),
                initial_deposit: Some(money(1000, eur())),
                by: alice(),
            })
            .then_error(&AccountError::StaffOnly);
        given::<Account>(&[])
            .when(&AccountCommand::Open { owner: "alice".into(), currency: eur(), initial_deposit: None, by: bob() })
            .then_error(&AccountError::NotOwner);
    }

    #[test]
    fn payments_come_in_once_posted_and_go_out_never_overdrawing() {
        let received = AccountEvent::PaymentReceived {
            reference: "rail-1".into(),
            amount: 70,
            currency: eur(),
            balance_after: 70,
        };
        given::<Account>(&[opened()])
            .when(&AccountCommand::ReceivePayment { reference: "rail-1".into(), amount: money(70, eur()) })
            .then_events(std::slice::from_ref(&received));
        given::<Account>(&[opened(), received.clone()])
            .when(&AccountCommand::SendPayment { reference: "out-1".into(), amount: money(71, eur()), by: alice() })
            .then_error(&AccountError::InsufficientFunds { balance: 70, requested: 71 });
        given::<Account>(&[opened(), received.clone()])
            .when(&AccountCommand::SendPayment { reference: "out-1".into(), amount: money(70, eur()), by: teller() })
            .then_error(&AccountError::NotOwner);
        given::<Account>(&[opened(), received])
            .when(&AccountCommand::SendPayment { reference: "out-1".into(), amount: money(70, eur()), by: alice() })
            .then_events(&[AccountEvent::PaymentSent {
                reference: "out-1".into(),
                amount: 70,
                currency: eur(),
                balance_after: 0,
            }]);
        given::<Account>(&[opened(), AccountEvent::Closed {}])
            .when(&AccountCommand::ReceivePayment { reference: "rail-2".into(), amount: money(1, eur()) })
            .then_error(&AccountError::Closed);
    }

    #[test]
    fn a_refund_to_a_closed_account_goes_to_suspense() {
        let t = Uuid::now_v7();
        given::<Account>(&[opened(), AccountEvent::Closed {}])
            .when(&AccountCommand::Refund { transfer_id: t, amount: money(5, eur()) })
            .then_events(&[AccountEvent::RefundDiverted { transfer_id: t, amount: 5, currency: eur() }]);
    }

    #[test]
    fn deposits_in_another_currency_are_refused() {
        given::<Account>(&[opened()])
            .when(&AccountCommand::Deposit { amount: money(50, usd()), by: teller() })
            .then_error(&AccountError::CurrencyMismatch { account: eur(), given: usd() });
    }

    #[test]
    fn a_deposit_that_overflows_the_balance_is_refused() {
        given::<Account>(&[opened(), deposited(i64::MAX, i64::MAX)])
            .when(&AccountCommand::Deposit { amount: money(1, eur()), by: teller() })
            .then_error(&AccountError::BalanceLimit);
    }

    #[test]
    fn withdrawals_never_overdraw() {
        given::<Account>(&[opened(), deposited(100, 100)])
            .when(&AccountCommand::Withdraw { amount: money(101, eur()), by: alice() })
            .then_error(&AccountError::InsufficientFunds { balance: 100, requested: 101 });
        let state = given::<Account>(&[opened(), deposited(100, 100)])
            .when(&AccountCommand::Withdraw { amount: money(100, eur()), by: alice() })
            .then_events(&[AccountEvent::Withdrawn { amount: 100, currency: eur(), balance_after: 0 }]);
        assert_eq!(state.balance, 0);
    }

    #[test]
    fn the_owner_or_a_teller_withdraws_a_stranger_does_not() {
        given::<Account>(&[opened(), deposited(100, 100)])
            .when(&AccountCommand::Withdraw { amount: money(1, eur()), by: teller() })
            .then_events(&[AccountEvent::Withdrawn { amount: 1, currency: eur(), balance_after: 99 }]);
        given::<Account>(&[opened(), deposited(100, 100)])
            .when(&AccountCommand::Withdraw { amount: money(1, eur()), by: bob() })
            .then_error(&AccountError::NotOwner);
    }

    #[test]
    fn commands_on_an_unopened_account_find_nothing() {
        given::<Account>(&[])
            .when(&AccountCommand::Deposit { amount: money(1, eur()), by: teller() })
            .then_error(&AccountError::NotFound);
        given::<Account>(&[]).when(&AccountCommand::Close { by: alice() }).then_error(&AccountError::NotFound);
    }

    #[test]
    fn closing_needs_a_zero_balance_and_then_nothing_moves() {
        given::<Account>(&[opened(), deposited(5, 5)])
            .when(&AccountCommand::Close { by: alice() })
            .then_error(&AccountError::BalanceNotZero { balance: 5 });
        let closed = given::<Account>(&[opened()])
            .when(&AccountCommand::Close { by: alice() })
            .then_events(&[AccountEvent::Closed {}]);
        assert_eq!(closed.status, AccountStatus::Closed);
        given::<Account>(&[opened(), AccountEvent::Closed {}])
            .when(&AccountCommand::Deposit { amount: money(1, eur()), by: teller() })
            .then_error(&AccountError::Closed);
        given::<Account>(&[opened(), AccountEvent::Closed {}])
            .when(&AccountCommand::Close { by: alice() })
            .then_error(&AccountError::Closed);
    }

    #[test]
    fn events_round_trip_through_the_store_encoding() {
        let withdrawn = AccountEvent::Withdrawn { amount: 5, currency: eur(), balance_after: 0 };
        for event in [opened(), deposited(5, 5), withdrawn, AccountEvent::Closed {}] {
            let (event_type, data) = crate::aggregate::encode(&event).expect("encodes");
            assert_eq!(event_type, event.event_type());
            let back: AccountEvent = crate::aggregate::decode(&event_type, data).expect("decodes");
            assert_eq!(back, event);
        }
    }

    #[test]
    fn unknown_fields_in_stored_events_are_ignored() {
        let data = serde_json::json!({"amount": 5, "currency": "EUR", "balance_after": 5, "channel": "atm"});
        let event: AccountEvent = crate::aggregate::decode("account.deposited", data).expect("decodes");
        assert_eq!(event, deposited(5, 5));
    }
}
