//! The ledger's invariant as a property: whatever customers, tellers, payment rails and
//! the transfer saga do, in any order, every currency's balances (customers' as the
//! aggregate folds them, the bank's own as the sum of the postings) sum to zero after
//! every step, and `in_transit` holds exactly what the unsettled transfers moved.
//! Pure logic over the aggregates (no store): the integration tests check the same
//! books on Postgres through the reconciliation.
#![allow(clippy::unwrap_used)]

use bank_domain::account::{Account, AccountCommand, AccountEvent, Actor};
use bank_domain::ledger::{self, BankAccount};
use bank_domain::{Aggregate, Currency, Money};
use proptest::prelude::*;
use std::collections::HashMap;
use uuid::Uuid;

const CURRENCIES: [&str; 2] = ["EUR", "USD"];
const ACCOUNTS: usize = 6;

#[derive(Debug, Clone)]
enum Step {
    CashIn {
        account: usize,
        amount: i64,
    },
    CashOut {
        account: usize,
        amount: i64,
        by_teller: bool,
    },
    PaymentIn {
        account: usize,
        amount: i64,
    },
    PaymentOut {
        account: usize,
        amount: i64,
    },
    /// The saga's first step: debit the source.
    Transfer {
        from: usize,
        to: usize,
        amount: i64,
    },
    /// The saga's next step for the oldest open transfer: credit, or (rejected) refund.
    Settle {
        pick: usize,
    },
    Close {
        account: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let account = 0..ACCOUNTS;
    let amount = 1i64..5_000;
    prop_oneof![
        (account.clone(), amount.clone()).prop_map(|(account, amount)| Step::CashIn { account, amount }),
        (account.clone(), amount.clone(), any::<bool>()).prop_map(|(account, amount, by_teller)| Step::CashOut {
            account,
            amount,
            by_teller
        }),
        (account.clone(), amount.clone()).prop_map(|(account, amount)| Step::PaymentIn { account, amount }),
        (account.clone(), amount.clone()).prop_map(|(account, amount)| Step::PaymentOut { account, amount }),
        (account.clone(), account.clone(), amount).prop_map(|(from, to, amount)| Step::Transfer { from, to, amount }),
        (0usize..8).prop_map(|pick| Step::Settle { pick }),
        account.prop_map(|account| Step::Close { account }),
    ]
}

struct Transfer {
    id: Uuid,
    from: Uuid,
    to: Uuid,
    amount: Money,
    /// The credit was rejected: the refund is next.
    refunding: bool,
}

/// The bank: accounts folded by the aggregate, and the bank's own accounts kept from
/// the postings of every event.
struct Books {
    ids: Vec<Uuid>,
    owners: Vec<String>,
    accounts: HashMap<Uuid, Account>,
    bank: HashMap<Uuid, i64>,
    open: Vec<Transfer>,
}

impl Books {
    fn new() -> Self {
        let mut books = Books {
            ids: Vec::new(),
            owners: Vec::new(),
            accounts: HashMap::new(),
            bank: HashMap::new(),
            open: Vec::new(),
        };
        for i in 0..ACCOUNTS {
            let id = Uuid::now_v7();
            let owner = format!("owner{i}");
            let currency = Currency::parse(CURRENCIES[i % 2]).unwrap();
            let open = AccountCommand::Open { owner: owner.clone(), currency, initial_deposit: None, by: teller() };
            books.ids.push(id);
            books.owners.push(owner);
            books.run(id, &open);
        }
        books
    }

    fn money(&self, account: Uuid, amount: i64) -> Money {
        Money::new(amount, self.accounts[&account].currency.unwrap(), i64::MAX).unwrap()
    }

    /// Runs a command; a refusal changes nothing. Returns the events.
    fn run(&mut self, account: Uuid, command: &AccountCommand) -> Vec<AccountEvent> {
        let state = self.accounts.get(&account).cloned().unwrap_or_default();
        let Ok(events) = state.decide(command) else { return Vec::new() };
        let mut state = state;
        for event in &events {
            if let Some(p) = ledger::posting(account, event) {
                for (side, change) in [(p.from, -p.amount), (p.to, p.amount)] {
                    if BankAccount::from_id(side).is_some() {
                        *self.bank.entry(side).or_default() += change;
                    }
                }
            }
            state = state.apply(event);
        }
        self.accounts.insert(account, state);
        events
    }

    fn step(&mut self, step: &Step) {
        match *step {
            Step::CashIn { account, amount } => {
                let id = self.ids[account];
                self.run(id, &AccountCommand::Deposit { amount: self.money(id, amount), by: teller() });
            }
            Step::CashOut { account, amount, by_teller } => {
                let id = self.ids[account];
                let by = if by_teller { teller() } else { self.owner(account) };
                self.run(id, &AccountCommand::Withdraw { amount: self.money(id, amount), by });
            }
            Step::PaymentIn { account, amount } => {
                let id = self.ids[account];
                let reference = Uuid::now_v7().to_string();
                self.run(id, &AccountCommand::ReceivePayment { reference, amount: self.money(id, amount) });
            }
            Step::PaymentOut { account, amount } => {
                let id = self.ids[account];
                let command = AccountCommand::SendPayment {
                    reference: Uuid::now_v7().to_string(),
                    amount: self.money(id, amount),
                    by: self.owner(account),
                };
                self.run(id, &command);
            }
            Step::Transfer { from, to, amount } => {
                let (from, to) = (self.ids[from], self.ids[to]);
                if from == to {
                    return;
                }
                let (id, amount) = (Uuid::now_v7(), self.money(from, amount));
                let events = self.run(from, &AccountCommand::Debit { transfer_id: id, amount, counterparty: to });
                if matches!(events.as_slice(), [AccountEvent::Debited { .. }]) {
                    self.open.push(Transfer { id, from, to, amount, refunding: false });
                }
            }
            Step::Settle { pick } => {
                if self.open.is_empty() {
                    return;
                }
                let t = self.open.remove(pick % self.open.len());
                if t.refunding {
                    let events = self.run(t.from, &AccountCommand::Refund { transfer_id: t.id, amount: t.amount });
                    assert!(
                        matches!(
                            events.as_slice(),
                            [AccountEvent::Refunded { .. } | AccountEvent::RefundDiverted { .. }]
                        ),
                        "a refund always lands: {events:?}"
                    );
                    return;
                }
                let command = AccountCommand::Credit { transfer_id: t.id, amount: t.amount, counterparty: t.from };
                match self.run(t.to, &command).as_slice() {
                    [AccountEvent::Credited { .. }] => {}
                    [AccountEvent::CreditRejected { .. }] => self.open.push(Transfer { refunding: true, ..t }),
                    other => panic!("a credit is taken or rejected: {other:?}"),
                }
            }
            Step::Close { account } => {
                let id = self.ids[account];
                self.run(id, &AccountCommand::Close { by: self.owner(account) });
            }
        }
    }

    fn owner(&self, account: usize) -> Actor {
        Actor { id: self.owners[account].clone(), staff: false }
    }

    /// Per currency, the sum of every balance.
    fn sums(&self) -> HashMap<String, i64> {
        let mut sums: HashMap<String, i64> = HashMap::new();
        for account in self.accounts.values() {
            assert!(account.balance >= 0, "a customer account never overdraws");
            *sums.entry(account.currency_code().to_owned()).or_default() += account.balance;
        }
        for (id, balance) in &self.bank {
            let (_, currency) = BankAccount::from_id(*id).unwrap();
            *sums.entry(currency.as_str().to_owned()).or_default() += balance;
        }
        sums
    }
}

fn teller() -> Actor {
    Actor { id: "tess".into(), staff: true }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_currency_sums_to_zero_after_every_step(steps in prop::collection::vec(step(), 1..120)) {
        let mut books = Books::new();
        for step in &steps {
            books.step(step);
            for (currency, sum) in books.sums() {
                prop_assert_eq!(sum, 0, "{} after {:?}", currency, step);
            }
            for code in CURRENCIES {
                let currency = Currency::parse(code).unwrap();
                let in_transit = books.bank.get(&BankAccount::InTransit.id(currency)).copied().unwrap_or(0);
                let open: i64 =
                    books.open.iter().filter(|t| t.amount.currency() == currency).map(|t| t.amount.minor()).sum();
                prop_assert_eq!(in_transit, open, "in_transit of {}", code);
            }
        }
        // a refund to a closed account went to suspense, not into the closed account
        for (id, account) in &books.accounts {
            if account.status == bank_domain::account::AccountStatus::Closed {
                prop_assert_eq!(account.balance, 0, "closed {} holds nothing", id);
            }
        }
    }
}
