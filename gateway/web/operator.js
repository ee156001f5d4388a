// The operator's page (tellers and admins): the cash desk (cash in and out of any
// account); the books as the reconciliation last checked them; the rivers with their
// shards, leases, checkpoints and lag; the tailer's lag; parked events with a retry;
// transfers not settled after N seconds; a search of the events. It refreshes itself
// every few seconds while it is open, and on the Refresh button.

import { api } from "./api.js";
import { busy, fields, fill, h, notice } from "./dom.js";
import { describe, money, parseAmount, shortId, when } from "./format.js";

const REFRESH_MS = 5000;

export function operatorPage() {
  const stopper = new AbortController();
  const signal = stopper.signal;
  const rivers = h("div", { "data-test": "rivers" });
  const tailer = h("div", { "data-test": "tailer" });
  const parked = h("div", { "data-test": "dead-letters" });
  const books = h("div", { "data-test": "ledger" });
  const status = h("div");
  const refresh = h("button", { type: "button", "data-test": "ops-refresh", onclick: () => load() }, "Refresh");
  const updated = h("span", { class: "muted small" });

  const element = h(
    "div",
    { class: "ops", "data-test": "operator-page" },
    h("div", { class: "toolbar" }, h("h1", {}, "Operations"), updated, refresh),
    status,
    h("div", { class: "layout even" },
      cashDesk(),
      h("section", { class: "card" }, h("h2", {}, "The books"), books),
    ),
    h("section", { class: "card" }, h("h2", {}, "Rivers"), rivers),
    h("div", { class: "layout even" },
      h("section", { class: "card" }, h("h2", {}, "Tailer"), tailer),
      h("section", { class: "card" }, h("h2", {}, "Parked events"), parked),
    ),
    unsettledCard(),
    eventsCard(),
  );

  /** Rivers, tailer and parked events, read together. */
  async function load() {
    refresh.disabled = true;
    try {
      const [r, t, d, l] = await Promise.all([
        api("GET", "/ops/rivers", undefined, { signal }),
        api("GET", "/ops/tailer", undefined, { signal }),
        api("GET", "/ops/dead-letters", undefined, { signal }),
        api("GET", "/ops/ledger", undefined, { signal }),
      ]);
      fill(books, ledger(l));
      fill(rivers, r.items.length ? r.items.map(riverBlock) : h("p", { class: "muted" }, "No rivers."));
      fill(tailer, tailerTable(t.items));
      fill(parked, deadLetters(d.items));
      fill(status);
      fill(updated, `updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      if (e.name !== "AbortError") fill(status, notice("error", describe(e), "error"));
    } finally {
      refresh.disabled = false;
    }
  }

  function riverBlock(r) {
    return h(
      "div",
      { class: "river", "data-test": "river", "data-river": r.river },
      h(
        "h3",
        {},
        r.river,
        r.managed && h("span", { class: "badge" }, "built-in"),
        r.dead_letters > 0 && h("span", { class: "badge warn" }, `${r.dead_letters} parked`),
      ),
      h("p", { class: "muted small" }, r.topics.length ? `topics: ${r.topics.join(", ")}` : "no topics"),
      table(
        ["shard", "owner", "lease", "checkpoint", "lag"],
        r.shards.map((s) => [
          h("span", { class: "mono" }, s.shard_id, s.parent_shard_id && h("span", { class: "muted" }, ` ← ${s.parent_shard_id}`)),
          s.owner ?? h("span", { class: "muted" }, "none"),
          lease(s),
          s.finished_at ? `finished ${when(s.finished_at)}` : h("span", { class: "mono", title: s.checkpoint ?? "" }, s.checkpoint ? `…${s.checkpoint.slice(-10)}` : "none yet"),
          lag(s),
        ]),
        "No shards leased yet.",
      ),
    );
  }

  const lease = (s) => {
    if (!s.lease_expires_at) return h("span", { class: "muted" }, "—");
    const seconds = Math.round((new Date(s.lease_expires_at) - Date.now()) / 1000);
    return seconds >= 0 ? `${seconds} s left` : h("span", { class: "warn" }, `expired ${-seconds} s ago`);
  };

  const lag = (s) => {
    if (s.millis_behind == null) return h("span", { class: "muted" }, "—");
    const age = s.lag_reported_at ? Math.round((Date.now() - new Date(s.lag_reported_at)) / 1000) : null;
    return h("span", { class: s.millis_behind > 10000 ? "warn" : null }, `${s.millis_behind} ms`, age != null && h("span", { class: "muted small" }, ` (${age} s ago)`));
  };

  const tailerTable = (items) =>
    table(
      ["source", "position", "latest", "behind", "updated"],
      items.map((t) => [t.source, t.position, t.latest_position, h("span", { class: t.events_behind > 1000 ? "warn" : null, "data-test": "tailer-behind" }, `${t.events_behind} events`), when(t.updated_at)]),
      "No tailer has reported yet.",
    );

  function deadLetters(items) {
    if (items.length === 0) return h("p", { class: "muted", "data-test": "no-dead-letters" }, "Nothing parked.");
    return h(
      "ul",
      { class: "parked" },
      items.map((d) => {
        const retryStatus = h("span");
        const retry = h("button", { type: "button", "data-test": "retry", disabled: d.status === "retry" }, d.status === "retry" ? "Retry requested" : "Retry");
        retry.addEventListener("click", () =>
          busy(retry, retryStatus, describe, async () => {
            await api("POST", `/ops/dead-letters/${d.id}/retry`, undefined, { signal });
            await load(); // the river picks it up within a few seconds; the refresh shows it gone
          }),
        );
        return h(
          "li",
          { "data-test": "dead-letter", "data-id": d.id, "data-stream-id": d.stream_id ?? "" },
          h(
            "div",
            {},
            h("strong", {}, d.event_type ?? "unknown event"),
            h("span", { class: "muted" }, ` on ${d.river}`),
            h("div", { class: "small" }, h("span", { class: "mono", title: d.stream_id }, shortId(d.stream_id)), d.version != null && ` v${d.version}`, ` · ${d.attempts} attempts · ${d.status} · ${when(d.parked_at)}`),
            h("div", { class: "small error-text" }, d.error),
          ),
          h("div", { class: "right" }, retry, retryStatus),
        );
      }),
    );
  }

  /** Cash taken in or paid out at the desk: a posting between the bank's cash and the account. */
  function cashDesk() {
    const result = h("div", { "data-test": "cash-status" });
    const cashIn = h("button", { class: "primary", type: "submit", value: "deposits", "data-test": "cash-in" }, "Cash in");
    const cashOut = h("button", { type: "submit", value: "withdrawals", "data-test": "cash-out" }, "Cash out");
    const form = h(
      "form",
      { class: "inline", "data-test": "cash-desk" },
      h("label", {}, "Account", h("input", { name: "account", class: "mono", required: true, placeholder: "account id", "data-test": "cash-account" })),
      h("label", {}, "Amount", h("input", { name: "amount", inputmode: "decimal", placeholder: "0.00", required: true, "data-test": "cash-amount" })),
      h("div", { class: "buttons" }, cashIn, cashOut),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const route = event.submitter?.value ?? "deposits";
      busy(event.submitter ?? cashIn, result, describe, async () => {
        const { account, amount } = fields(form);
        const id = account.trim();
        const { currency } = await api("GET", `/accounts/${id}`, undefined, { signal });
        const minor = parseAmount(amount, currency);
        const answer = await api("POST", `/accounts/${id}/${route}`, { amount: minor, currency }, { signal });
        form.querySelector("[name=amount]").value = "";
        return `${route === "deposits" ? "Took in" : "Paid out"} ${money(minor, currency)}; the balance is ${money(answer.balance, currency)}`;
      });
    });
    return h("section", { class: "card" }, h("h2", {}, "Cash desk"), form, result);
  }

  /** The reconciliation's report: each currency's sum of balances, in transit, differences. */
  function ledger(l) {
    const currencies = Object.keys(l.imbalance);
    return h(
      "div",
      {},
      h(
        "p",
        { "data-test": "ledger-status", "data-balanced": String(l.balanced), class: l.balanced ? "" : "error-text" },
        l.balanced ? "The books balance." : "The books do not balance.",
      ),
      h("p", { class: "muted small" }, `${l.events} events checked${l.checked_at ? `, last ${when(l.checked_at)}` : ""}`),
      table(
        ["currency", "sum of balances", "in transit", "open transfers"],
        currencies.map((c) => [
          c,
          money(l.imbalance[c], c),
          money(l.in_transit[c]?.balance ?? 0, c),
          String(l.in_transit[c]?.open_transfers ?? 0),
        ]),
        "No money has moved yet.",
      ),
      l.findings.length > 0 &&
        table(
          ["kind", "account", "transfer", "detail"],
          l.findings.map((f) => [
            f.kind,
            f.account_id ? h("span", { class: "mono", title: f.account_id }, shortId(f.account_id)) : "",
            f.transfer_id ? h("span", { class: "mono", title: f.transfer_id }, shortId(f.transfer_id)) : "",
            f.detail,
          ]),
          "",
        ),
    );
  }

  function unsettledCard() {
    const result = h("div", { "data-test": "unsettled" });
    const button = h("button", { type: "submit", "data-test": "unsettled-submit" }, "Show");
    const form = h(
      "form",
      { class: "inline" },
      h("label", {}, "Not settled after (seconds)", h("input", { name: "seconds", type: "number", min: 0, value: "30", required: true, "data-test": "unsettled-seconds" })),
      h("div", { class: "buttons" }, button),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      busy(button, result, describe, async () => {
        const { items } = await api("GET", `/ops/unsettled?older_than_s=${Number(fields(form).seconds)}`, undefined, { signal });
        fill(
          result,
          table(
            ["transfer", "state", "from → to", "amount", "age", "by"],
            items.map((t) => [
              h("span", { class: "mono", title: t.id }, shortId(t.id)),
              t.state,
              h("span", { class: "mono" }, `${shortId(t.from_account)} → ${shortId(t.to_account)}`),
              money(t.amount, t.currency),
              `${Math.round(t.age_s)} s`,
              t.initiated_by,
            ]),
            "Every transfer older than that has settled.",
          ),
        );
      });
    });
    return h("section", { class: "card" }, h("h2", {}, "Unsettled transfers"), form, result);
  }

  function eventsCard() {
    const result = h("div", { "data-test": "events" });
    const more = h("button", { type: "button", hidden: true }, "Show more");
    const button = h("button", { class: "primary", type: "submit", "data-test": "events-submit" }, "Search");
    let query = "";
    let after = null;
    const form = h(
      "form",
      { class: "inline" },
      h("label", {}, "Type", h("input", { name: "type", placeholder: "account.deposited", "data-test": "events-type" })),
      h("label", {}, "Source", h("input", { name: "source", placeholder: "account", "data-test": "events-source" })),
      h("label", {}, "Stream", h("input", { name: "stream", placeholder: "stream id", class: "mono", "data-test": "events-stream" })),
      h("div", { class: "buttons" }, button),
    );
    const list = h("ul", { class: "events" });

    async function page() {
      const answer = await api("GET", `/events?limit=50${query}${after != null ? `&after=${after}` : ""}`, undefined, { signal });
      list.append(...answer.items.map(eventItem));
      after = answer.next_after;
      more.hidden = after == null;
      if (list.children.length === 0) return "No events match.";
    }

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const params = new URLSearchParams(Object.entries(fields(form)).filter(([, v]) => v.trim()).map(([k, v]) => [k, v.trim()]));
      query = params.size ? `&${params}` : "";
      after = null;
      fill(list);
      busy(button, result, describe, page);
    });
    more.addEventListener("click", () => busy(more, result, describe, page));
    return h("section", { class: "card" }, h("h2", {}, "Events"), form, list, more, result);
  }

  const eventItem = (e) =>
    h(
      "li",
      { "data-test": "event", "data-type": e.type },
      h("div", {}, h("span", { class: "mono muted" }, `#${e.position} `), h("strong", {}, e.type), h("span", { class: "muted" }, ` from ${e.source}`)),
      h("div", { class: "small" }, h("span", { class: "mono", title: e.stream_id }, shortId(e.stream_id)), e.version != null && ` v${e.version}`, ` · ${when(e.recorded_at)}`),
      h("details", {}, h("summary", { class: "small" }, "data"), h("pre", {}, JSON.stringify({ data: e.data, metadata: e.metadata }, null, 2))),
    );

  load();
  const timer = setInterval(() => document.visibilityState === "visible" && load(), REFRESH_MS);
  return {
    element,
    stop() {
      clearInterval(timer);
      stopper.abort();
    },
  };
}

/** A table that turns into stacked rows on a phone; `empty` when there are no rows. */
function table(headings, rows, empty) {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) => h("td", { "data-label": headings[i] }, c))))),
  );
}
