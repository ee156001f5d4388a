//! The bank's domain, pure: no database, no HTTP, no AWS.
//!
//! * [`aggregate`]: the [`Aggregate`] trait (a synchronous `decide` / `apply`) that the
//!   event store runs, with given/when/then helpers for testing one.
//! * [`money`]: `Money` and `Currency`, built only through parsing constructors.
//! * [`account`]: the `Account` aggregate: its commands, events and rules.
//! * [`transfer`]: the `MoneyTransfer` aggregate: the saga's state machine.
//! * [`ledger`]: the double-entry ledger: the bank's own accounts and the posting each
//!   balance event records.
//!
//! Every service and view-updater depends on this crate, never on each other: an
//! event type is defined once, here.
#![forbid(unsafe_code)]

pub mod account;
pub mod aggregate;
pub mod ledger;
pub mod money;
pub mod transfer;

pub use aggregate::{Aggregate, DomainEvent};
pub use money::{Currency, Money, MoneyError};
