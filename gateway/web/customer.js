// The customer's page: my accounts and their balances, open an account, withdraw
// cash, send a payment to another bank, receive one (through the development payment
// rail), transfer (shown at once from the command's answer, then followed live
// through its states with waiting reads), the recent transactions, search, the monthly
// statements (CSV and PDF downloads), an account's history and its balance as of a
// chosen time. Customers bring no cash of their own:
// a teller takes it in (the operator's page).
//
// Every read after a command asks for the version the command answered
// (min_version), so the page never shows data older than what the customer just did.

import { ApiError, api, readAt } from "./api.js";
import { busy, fields, fill, h, notice } from "./dom.js";
import { describe, localToRfc3339, money, nowLocal, parseAmount, reasonInWords, shortId, when } from "./format.js";

const CURRENCIES = ["EUR", "USD", "GBP", "CHF", "SEK", "JPY"];
const SETTLED = new Set(["completed", "failed"]);
const KINDS = {
  deposit: ["Cash in", +1],
  withdrawal: ["Cash out", -1],
  payment_in: ["Payment in", +1],
  payment_out: ["Payment out", -1],
  transfer_debit: ["Transfer out", -1],
  transfer_credit: ["Transfer in", +1],
  refund: ["Refund", +1],
};
const OTHER = "other";

export function customerPage() {
  const stopper = new AbortController();
  const signal = stopper.signal;
  const state = {
    accounts: [], // the customer's accounts, as last read
    selected: null, // the view of the selected account (see accountView)
    transfers: [], // this session's transfers, newest first
    memos: new Map(), // transfer id → memo ("" when none or unknown)
  };

  const accountsList = h("div", { class: "accounts", "data-test": "accounts" });
  const accountsStatus = h("div");
  const detail = h("div", { class: "detail" });
  const transfersList = h("ul", { class: "transfers", "data-test": "transfers" });
  const element = h(
    "div",
    { class: "layout", "data-test": "customer-page" },
    h(
      "div",
      { class: "side" },
      h("section", { class: "card" }, h("h2", {}, "My accounts"), accountsStatus, accountsList),
      openForm(),
    ),
    h("div", { class: "wide" }, detail),
  );
  // shown under the transfer form of whichever account is selected
  const transfersCard = h(
    "section",
    { class: "card" },
    h("h2", {}, "Transfers"),
    h("p", { class: "muted empty" }, "Transfers you make appear here and follow their progress live."),
    transfersList,
  );

  // --- accounts -----------------------------------------------------------------

  async function loadAccounts() {
    try {
      const { items } = await api("GET", "/accounts", undefined, { signal });
      items.forEach(keepAccount);
      renderAccounts();
      if (!state.selected && state.accounts.length) select(state.accounts[0].id);
    } catch (e) {
      if (e.name !== "AbortError") fill(accountsStatus, notice("error", describe(e)));
    }
  }

  /** Keeps an account row unless an older version of what is kept. */
  function keepAccount(row) {
    const { id, owner, currency, status, balance, version } = row;
    const index = state.accounts.findIndex((a) => a.id === id);
    if (index < 0) state.accounts.push({ id, owner, currency, status, balance, version });
    else if (version >= state.accounts[index].version) state.accounts[index] = { id, owner, currency, status, balance, version };
  }

  function renderAccounts() {
    fill(
      accountsList,
      state.accounts.length === 0 && h("p", { class: "muted" }, "No accounts yet: open one below."),
      state.accounts.map((a) =>
        h(
          "button",
          {
            type: "button",
            class: "account",
            "data-test": "account",
            "data-account-id": a.id,
            "aria-current": state.selected?.id === a.id ? "true" : null,
            onclick: () => select(a.id),
          },
          h("span", { class: "account-name" }, `${a.currency} account `, h("span", { class: "mono muted" }, shortId(a.id))),
          h("span", { class: "amount", "data-test": "account-balance" }, money(a.balance, a.currency)),
          a.status !== "open" && h("span", { class: "badge" }, a.status),
        ),
      ),
    );
    state.selected?.refreshTargets();
  }

  function select(id, known) {
    if (state.selected?.id === id) return;
    state.selected = accountView(id);
    fill(detail, state.selected.element);
    renderAccounts();
    if (known) state.selected.show(known);
    else state.selected.load();
  }

  /** An account as the views have it at `minVersion` or later; kept, and shown when selected. */
  async function readAccount(id, minVersion) {
    const account = await readAt(`/accounts/${id}`, minVersion, { signal });
    keepAccount(account);
    renderAccounts();
    if (state.selected?.id === id) state.selected.show(account);
    return account;
  }

  function openForm() {
    const status = h("div");
    const button = h("button", { class: "primary", type: "submit", "data-test": "open-submit" }, "Open account");
    const form = h(
      "form",
      { class: "card", "data-test": "open-form" },
      h("h2", {}, "Open an account"),
      h("div", { class: "row" },
        h("label", {}, "Currency", h("select", { name: "currency", "data-test": "open-currency" }, CURRENCIES.map((c) => h("option", { value: c }, c)))),
      ),
      button,
      status,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const { currency } = fields(form);
      busy(button, status, describe, async () => {
        const opened = await api("POST", "/accounts", { currency }, { signal });
        const account = await readAccount(opened.id, opened.version);
        select(account.id, account);
        form.reset();
        return `Opened ${currency} account ${shortId(opened.id)}`;
      });
    });
    return form;
  }

  // --- one account ------------------------------------------------------------------

  function accountView(id) {
    let current = null; // the detail shown (version, balance, recent_transactions)
    let older = null; // transactions loaded with "Show older"
    const title = h("h2", {}, "Account");
    const idLine = h("p", { class: "mono muted small", "data-test": "account-id" }, id);
    const balance = h("p", { class: "balance", "data-test": "detail-balance" }, "…");
    const transactions = h("ul", { class: "transactions", "data-test": "transactions" });
    const olderButton = h("button", { type: "button", class: "link", hidden: true, onclick: () => loadOlder() }, "Show older");
    const loadStatus = h("div");
    const targets = h("select", { name: "to", "data-test": "transfer-to" });
    const otherId = h("input", { name: "other", placeholder: "Account number of the recipient", class: "mono", hidden: true, "data-test": "transfer-to-other" });
    const showOther = () => (otherId.hidden = targets.value !== OTHER);

    const element = h(
      "div",
      { "data-test": "account-detail", "data-account-id": id },
      h("section", { class: "card" }, title, idLine, balance, loadStatus, moneyForm()),
      transferForm(),
      transfersCard,
      h("section", { class: "card" }, h("h2", {}, "Recent transactions"), transactions, olderButton),
      searchCard(),
      statementsCard(),
      historyCard(),
    );

    async function load() {
      try {
        show(await api("GET", `/accounts/${id}`, undefined, { signal }));
      } catch (e) {
        if (e.name !== "AbortError") fill(loadStatus, notice("error", describe(e)));
      }
    }

    function show(account) {
      if (current && account.version < current.version) return; // an older read answered late
      current = account;
      fill(title, `${account.currency} account`, account.status !== "open" && h("span", { class: "badge" }, account.status));
      fill(balance, money(account.balance, account.currency));
      fill(loadStatus);
      renderTransactions();
      fetchMemos(account.recent_transactions ?? []);
    }

    function renderTransactions() {
      const items = [...(current?.recent_transactions ?? []), ...(older?.items ?? [])];
      fill(transactions, items.length === 0 && h("li", { class: "muted" }, "No transactions yet."), items.map((t) => transactionItem(t)));
      olderButton.hidden = !(older ? older.next_before_version : items.length >= 20);
    }

    function transactionItem(t, test = "transaction") {
      const [label, sign] = KINDS[t.kind] ?? [t.kind, +1];
      const memo = t.transfer_id ? state.memos.get(t.transfer_id) : "";
      return h(
        "li",
        { "data-test": test, "data-version": t.version, "data-kind": t.kind },
        h(
          "div",
          {},
          h("strong", {}, label),
          t.counterparty && h("span", { class: "muted" }, ` ${sign < 0 ? "to" : "from"} `, h("span", { class: "mono" }, shortId(t.counterparty))),
          memo && h("div", { class: "memo", "data-test": "transaction-memo" }, `“${memo}”`),
          h("div", { class: "muted small" }, when(t.recorded_at)),
        ),
        h(
          "div",
          { class: "right" },
          h("div", { class: `amount ${sign < 0 ? "out" : "in"}` }, `${sign < 0 ? "−" : "+"}${money(t.amount, t.currency)}`),
          h("div", { class: "muted small" }, `balance ${money(t.balance_after, t.currency)}`),
        ),
      );
    }

    async function loadOlder() {
      const items = [...(current?.recent_transactions ?? []), ...(older?.items ?? [])];
      const before = older?.next_before_version ?? Math.min(...items.map((t) => t.version));
      try {
        const page = await api("GET", `/accounts/${id}/transactions?limit=20&before_version=${before}`, undefined, { signal });
        older = { items: [...(older?.items ?? []), ...page.items], next_before_version: page.next_before_version };
        renderTransactions();
        fetchMemos(page.items);
      } catch (e) {
        if (e.name !== "AbortError") fill(loadStatus, notice("error", describe(e)));
      }
    }

    /** The memos of transfers in `items` not known yet (one read each, remembered). */
    async function fetchMemos(items) {
      const unknown = [...new Set(items.map((t) => t.transfer_id).filter((t) => t && !state.memos.has(t)))];
      if (unknown.length === 0) return;
      unknown.forEach((t) => state.memos.set(t, ""));
      await Promise.all(
        unknown.map(async (t) => {
          try {
            state.memos.set(t, (await api("GET", `/transfers/${t}`, undefined, { signal })).memo ?? "");
          } catch {
            // someone else's transfer (403) or a server without memos: none shown
          }
        }),
      );
      if (state.selected?.id === id) renderTransactions();
    }

    function moneyForm() {
      const status = h("div", { "data-test": "money-status" });
      const withdraw = h("button", { class: "primary", type: "submit", value: "withdrawals", "data-test": "withdraw-submit" }, "Withdraw");
      const pay = h("button", { type: "submit", value: "payments", "data-test": "payment-submit" }, "Send a payment");
      const receive = h("button", { type: "submit", value: "receive", "data-test": "receive-submit" }, "Receive a payment");
      const form = h(
        "form",
        { class: "inline" },
        h("label", {}, "Amount", h("input", { name: "amount", inputmode: "decimal", placeholder: "0.00", required: true, "data-test": "amount" })),
        h("div", { class: "buttons" }, withdraw, pay, receive),
        status,
      );
      const done = { withdrawals: "Withdrew", payments: "Sent a payment of", receive: "Received a payment of" };
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const route = event.submitter?.value ?? "withdrawals";
        busy(event.submitter ?? withdraw, status, describe, async () => {
          if (!current) throw new Error("The account is still loading");
          const amount = parseAmount(fields(form).amount, current.currency);
          if (route === "receive") {
            await receivePayment(amount);
          } else {
            const answer = await api("POST", `/accounts/${id}/${route}`, { amount, currency: current.currency }, { signal });
            await readAccount(id, answer.version);
          }
          form.reset();
          return `${done[route]} ${money(amount, current.currency)}`;
        });
      });
      return form;
    }

    /**
     * A payment from another bank, as a payment rail posts it: the development rail's
     * token (the dev login, role service) posts the task accounts.payment.receive to
     * the event bus; the account takes it a moment later, which the page waits for.
     */
    async function receivePayment(amount) {
      const rail = await api("POST", "/dev/token", { sub: "dev-rail", role: "service" }, { signal });
      const reference = `dev-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
      await api(
        "POST",
        "/events",
        { type: "accounts.payment.receive", source: "rail", data: { reference, account: id, amount, currency: current.currency } },
        { signal, token: rail.token },
      );
      await readAccount(id, current.version + 1);
    }

    function transferForm() {
      const status = h("div", { "data-test": "transfer-status" });
      targets.addEventListener("change", () => {
        showOther();
        if (!otherId.hidden) otherId.focus();
      });
      const button = h("button", { class: "primary", type: "submit", "data-test": "transfer-submit" }, "Send");
      const form = h(
        "form",
        { class: "card", "data-test": "transfer-form" },
        h("h2", {}, "Transfer"),
        h("label", {}, "To", targets, otherId),
        h("div", { class: "row" },
          h("label", {}, "Amount", h("input", { name: "amount", inputmode: "decimal", placeholder: "0.00", required: true, "data-test": "transfer-amount" })),
          h("label", { class: "grow" }, "Memo (optional)", h("input", { name: "memo", maxlength: 140, placeholder: "What is it for?", "data-test": "transfer-memo" })),
        ),
        button,
        status,
      );
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        busy(button, status, describe, async () => {
          if (!current) throw new Error("The account is still loading");
          const values = fields(form);
          const to = (targets.value === OTHER ? values.other : targets.value).trim();
          if (!to) throw new Error("Choose the account to send to");
          const amount = parseAmount(values.amount, current.currency);
          const body = { from: id, to, amount, currency: current.currency };
          const memo = values.memo.trim();
          if (memo) body.memo = memo; // only when given: a server without memos refuses the field
          const created = await api("POST", "/transfers", body, { signal });
          startTransfer({ ...body, ...created, memo: created.memo ?? memo });
          form.reset();
          showOther();
          return null;
        });
      });
      return form;
    }

    /** The transfer form's choices: my other accounts, or another customer's by its number. */
    function refreshTargets() {
      const chosen = targets.value;
      fill(
        targets,
        state.accounts
          .filter((a) => a.id !== id && a.status === "open")
          .map((a) => h("option", { value: a.id }, `My ${a.currency} account ${shortId(a.id)} (${money(a.balance, a.currency)})`)),
        h("option", { value: OTHER }, "Another customer's account…"),
      );
      if ([...targets.options].some((o) => o.value === chosen)) targets.value = chosen;
      showOther();
    }

    /** Searches this account's transactions: words of a memo, a kind, the other party's account. */
    function searchCard() {
      const results = h("ul", { class: "transactions", "data-test": "search-results" });
      const status = h("div", { "data-test": "search-status" });
      const submit = h("button", { type: "submit", "data-test": "search-submit" }, "Search");
      const more = h("button", { type: "button", class: "link", hidden: true, "data-test": "search-more" }, "Show more");
      let next = null;
      let words = "";
      let order = "newest";
      const find = (cursor) =>
        busy(cursor ? more : submit, status, describe, async () => {
          const query = new URLSearchParams({ account: id, q: words, limit: "10", order });
          if (cursor) query.set("cursor", cursor);
          const page = await api("GET", `/search?${query}`, undefined, { signal });
          page.items.forEach((t) => t.transfer_id && state.memos.set(t.transfer_id, t.memo));
          if (!cursor) fill(results);
          results.append(...page.items.map((t) => transactionItem(t, "search-hit")));
          next = page.next_cursor;
          more.hidden = next == null;
          if (!cursor && page.items.length === 0) return "Nothing found.";
        });
      const form = h(
        "form",
        { class: "inline" },
        h("label", {}, "Find", h("input", { name: "q", required: true, maxlength: 200, placeholder: "rent, deposit, an account number…", "data-test": "search-input" })),
        h(
          "label",
          {},
          "Order",
          h("select", { name: "order", "data-test": "search-order" }, h("option", { value: "newest" }, "Newest first"), h("option", { value: "relevance" }, "Best matches first")),
        ),
        h("div", { class: "buttons" }, submit),
      );
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        words = fields(form).q.trim();
        order = fields(form).order;
        // a new search: the last one's next page is no longer wanted
        next = null;
        more.hidden = true;
        if (words) find(null);
      });
      more.addEventListener("click", () => next && find(next));
      return h("section", { class: "card" }, h("h2", {}, "Search"), form, status, results, more);
    }

    /** The monthly statements the statements job wrote: each month's CSV and PDF. */
    function statementsCard() {
      const list = h("ul", { class: "statements", "data-test": "statements" });
      const status = h("div", { "data-test": "statements-status" });
      const show = h("button", { type: "button", "data-test": "statements-load" }, "Show statements");
      show.addEventListener("click", () =>
        busy(show, status, describe, async () => {
          const page = await api("GET", `/accounts/${id}/statements`, undefined, { signal });
          fill(
            list,
            page.statements.map((s) =>
              h("li", { "data-test": "statement", "data-month": s.month }, h("span", {}, s.month), " ", s.formats.map((f) => download(s.month, f))),
            ),
          );
          if (page.statements.length === 0) return "No statements yet: the bank writes them after each month.";
        }),
      );
      // a file needs the session's token: fetched, then saved from memory
      function download(month, format) {
        const link = h("button", { type: "button", class: "link", "data-test": `statement-${format}` }, format.toUpperCase());
        link.addEventListener("click", () =>
          busy(link, status, describe, async () => {
            const file = await api("GET", `/accounts/${id}/statements/${month}.${format}`, undefined, { signal, blob: true });
            const url = URL.createObjectURL(file);
            const save = h("a", { href: url, download: `statement-${id}-${month}.${format}`, hidden: true });
            document.body.append(save);
            save.click();
            save.remove();
            setTimeout(() => URL.revokeObjectURL(url), 60_000);
          }),
        );
        return link;
      }
      return h("section", { class: "card" }, h("h2", {}, "Statements"), show, status, list);
    }

    function historyCard() {
      const list = h("ol", { class: "history", "data-test": "history" });
      const status = h("div", { "data-test": "history-status" });
      let next = 0;
      const more = h("button", { type: "button", "data-test": "history-load" }, "Show history");
      more.addEventListener("click", () =>
        busy(more, status, historyError, async () => {
          const page = await api("GET", `/accounts/${id}/history?limit=50&after_version=${next}`, undefined, { signal });
          list.append(...page.items.map(historyItem));
          next = page.next_after_version;
          more.textContent = "Show more";
          more.hidden = next == null;
          if (page.items.length === 0) return "No events.";
        }),
      );

      const asOfResult = h("div", { "data-test": "asof-result" });
      const asOfButton = h("button", { type: "submit", "data-test": "asof-submit" }, "Show balance");
      const asOf = h(
        "form",
        { class: "inline" },
        h("label", {}, "Balance as of", h("input", { type: "datetime-local", name: "at", step: 1, required: true, value: nowLocal(), "data-test": "asof-input" })),
        h("div", { class: "buttons" }, asOfButton),
      );
      asOf.addEventListener("submit", (event) => {
        event.preventDefault();
        const at = localToRfc3339(fields(asOf).at);
        busy(asOfButton, asOfResult, historyError, async () => {
          const then = await api("GET", `/accounts/${id}?as_of=${encodeURIComponent(at)}`, undefined, { signal });
          return `${when(at)}: ${money(then.balance, then.currency)} (version ${then.version})`;
        });
      });

      return h(
        "section",
        { class: "card" },
        h("h2", {}, "History"),
        asOf,
        asOfResult,
        h("p", { class: "muted small" }, "Every change to the account, as it was recorded."),
        list,
        more,
        status,
      );
    }

    function historyError(e) {
      if (e instanceof ApiError && e.code === "account_not_found") return "The account did not exist yet at that time.";
      if (e instanceof ApiError && (e.code === "not_found" || e.status === 400 && e.code === "invalid_query")) {
        return "The account's history is not available on this server yet.";
      }
      return describe(e);
    }

    return { id, element, load, show, refreshTargets };
  }

  function historyItem(e) {
    const d = e.data ?? {};
    const parts = [];
    if (d.amount != null && d.currency) parts.push(money(d.amount, d.currency));
    if (d.balance_after != null && d.currency) parts.push(`balance ${money(d.balance_after, d.currency)}`);
    if (d.reason) parts.push(reasonInWords(d.reason));
    if (d.counterparty) parts.push(`with ${shortId(d.counterparty)}`);
    if (d.owner) parts.push(`owner ${d.owner}`);
    return h(
      "li",
      { "data-test": "history-event", "data-type": e.type },
      h("span", { class: "mono muted" }, `v${e.version} `),
      h("strong", {}, e.type),
      parts.length > 0 && ` · ${parts.join(" · ")}`,
      h("div", { class: "muted small" }, `${when(e.recorded_at)} · by ${e.actor || "—"}`),
    );
  }

  // --- transfers --------------------------------------------------------------------

  /** Shows a transfer at once from the command's answer, then follows it to its end. */
  function startTransfer(transfer) {
    const from = state.accounts.find((a) => a.id === transfer.from);
    const to = state.accounts.find((a) => a.id === transfer.to);
    // versions known before it: the accounts will be read at later ones once it settles
    transfer.known = { from: from?.version, to: to?.version };
    transfer.seen = [transfer.state];
    state.memos.set(transfer.id, transfer.memo ?? "");
    state.transfers.unshift(transfer);
    transfersList.prepend(transferItem(transfer));
    follow(transfer);
  }

  function transferItem(t) {
    const mine = state.accounts.some((a) => a.id === t.to);
    return h(
      "li",
      { "data-test": "transfer", "data-transfer-id": t.id, "data-state": t.state, class: `state-${t.state}` },
      h(
        "div",
        {},
        h("strong", {}, money(t.amount, t.currency)),
        h("span", { class: "muted" }, " to ", mine ? "my account " : "", h("span", { class: "mono" }, shortId(t.to))),
        t.memo && h("div", { class: "memo" }, `“${t.memo}”`),
        h("div", { class: "muted small", "data-test": "transfer-steps" }, t.seen.join(" → ")),
        t.error && notice("error", t.error),
      ),
      h("span", { class: "pill", "data-test": "transfer-state" }, stateInWords(t)),
    );
  }

  function stateInWords(t) {
    if (t.state === "completed") return "completed";
    if (t.state === "failed") return `failed: ${reasonInWords(t.failure_reason)}`;
    return `pending: ${t.state}`;
  }

  function renderTransfer(t) {
    transfersList.querySelector(`[data-transfer-id="${t.id}"]`)?.replaceWith(transferItem(t));
  }

  /** Waiting reads, one version further each time (never a busy poll), until it settles. */
  async function follow(t) {
    try {
      while (!SETTLED.has(t.state)) {
        const next = await readAt(`/transfers/${t.id}`, t.version + 1, { waitMs: 10000, signal, attempts: 30 });
        Object.assign(t, next, { memo: next.memo ?? t.memo });
        if (t.seen.at(-1) !== t.state) t.seen.push(t.state);
        renderTransfer(t);
      }
      await Promise.all(settledReads(t));
    } catch (e) {
      if (e.name === "AbortError") return;
      t.error = describe(e);
      renderTransfer(t);
    }
  }

  /** Reads both accounts at versions that include the settled transfer's steps. */
  function settledReads(t) {
    const reads = [];
    // completed: one debit and one credit; failed at version 2: the debit was refused
    // (one event on the source); failed later: debited, then refunded (two)
    const fromSteps = t.state === "failed" && t.version > 2 ? 2 : 1;
    if (t.known.from != null) reads.push(readAccount(t.from, t.known.from + fromSteps));
    if (t.known.to != null && t.state === "completed") reads.push(readAccount(t.to, t.known.to + 1));
    return reads;
  }

  loadAccounts();
  return { element, stop: () => stopper.abort() };
}
