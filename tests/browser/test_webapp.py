#!/usr/bin/env python3
"""The web app in a real browser (Debian's Chromium, driven by Playwright for Python).

A fresh customer signs in and opens two empty accounts (no first deposit, no Deposit
button: customers bring no cash of their own), receives a payment through the dev
payment rail; a teller takes cash in and pays some out at the cash desk; the customer
transfers between the accounts with a memo: the transfer shows as pending at once
(from the command's answer, while every read of it is held back), then completed
without a reload; both balances and the memo follow, and the search box finds it. A
teller starts the month's statements job (a task on the bus); the customer downloads
the account's CSV statement from the page, closing at the balance. A transfer beyond
the balance fails in words. An admin then sees the books balanced and the rivers, and retries an
event parked with SQL until it is gone from the list.

Run by scripts/browser, which starts the system. Environment: GATEWAY_URL,
DATABASE_URL, PSQL (the psql binary), SCREENSHOT_DIR, DOCS_SCREENSHOT_DIR (optional:
customer.png and operator.png are copied there), CHROMIUM.
"""

import csv
import io
import json
import os
import shutil
import urllib.request
import subprocess
import sys
import time
import traceback
import uuid

from playwright.sync_api import expect, sync_playwright

GATEWAY = os.environ["GATEWAY_URL"].rstrip("/")
DATABASE_URL = os.environ["DATABASE_URL"]
PSQL = os.environ.get("PSQL", "psql")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("SCREENSHOT_DIR", "/tmp/bank-browser-screenshots")
DOCS = os.environ.get("DOCS_SCREENSHOT_DIR")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 20_000  # the longest an assertion waits for the page

expect.set_options(timeout=WAIT_MS)


class Run:
    """Steps in order; the first failure ends the run (later steps build on it)."""

    def __init__(self):
        self.passed = self.failed = 0

    def step(self, name, body):
        try:
            body()
        except Exception:
            self.failed += 1
            print(f"FAIL {name}", flush=True)
            traceback.print_exc()
            raise
        self.passed += 1
        print(f"ok   {name}", flush=True)

    def summary(self):
        return f"browser: {self.passed} passed, {self.failed} failed"


def shot(page, name, viewport=DESKTOP):
    page.set_viewport_size(viewport)
    path = os.path.join(SHOTS, name)
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size(DESKTOP)
    return path


def psql(sql):
    out = subprocess.run([PSQL, DATABASE_URL, "-v", "ON_ERROR_STOP=1", "-qtA", "-c", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def call(method, path, token=None, body=None):
    """One request to the gateway's API; the answer's JSON."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(GATEWAY + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


def dev_token(sub, role):
    return call("POST", "/api/dev/token", body={"sub": sub, "role": role})["token"]


def sign_in(page, name, role):
    if page.locator("[data-test=signout]").count():
        page.click("[data-test=signout]")
    page.fill("[data-test=signin-name]", name)
    page.select_option("[data-test=signin-role]", role)
    page.click("[data-test=signin-submit]")
    expect(page.locator("[data-test=signed-in-as]")).to_have_text(f"{name} · {role}")


def refresh_until(page, done):
    """Clicks the operator page's Refresh until `done()` holds, or WAIT_MS passed (the
    caller's expectation then fails with its own message)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not done() and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        page.click("[data-test=ops-refresh]")


def card(page, account_id):
    return page.locator(f"[data-test=account][data-account-id='{account_id}']")


def selected_account(page):
    detail = page.locator("[data-test=account-detail]")
    expect(detail).to_have_count(1)
    return detail.get_attribute("data-account-id")


def main():
    os.makedirs(SHOTS, exist_ok=True)
    run = Run()
    suffix = uuid.uuid4().hex[:8]
    customer, admin, teller = f"web-{suffix}", f"ops-{suffix}", f"desk-{suffix}"
    memo = f"rent for May {suffix}"
    ids = {}
    errors = []

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport=DESKTOP)
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            def sign_in_customer():
                response = page.goto(f"{GATEWAY}/")
                # the page cannot be framed, nor load anything but its own files
                headers = response.headers
                assert "default-src 'self'" in headers.get("content-security-policy", ""), headers
                assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), headers
                assert headers.get("x-content-type-options") == "nosniff", headers
                assert headers.get("referrer-policy") == "no-referrer", headers
                expect(page.locator("[data-test=signin]")).to_be_visible()
                sign_in(page, customer, "customer")
                expect(page.locator("[data-test=customer-page]")).to_be_visible()
                expect(page.locator("[data-test=account]")).to_have_count(0)
            run.step("a fresh customer signs in; the page sends its CSP, nosniff and referrer policy", sign_in_customer)

            def open_accounts():
                # customers bring no cash of their own: no first deposit, no Deposit button
                expect(page.locator("[data-test=open-deposit]")).to_have_count(0)
                page.select_option("[data-test=open-currency]", "EUR")
                page.click("[data-test=open-submit]")
                expect(page.locator("[data-test=account]")).to_have_count(1)
                ids["a"] = selected_account(page)
                expect(card(page, ids["a"]).locator("[data-test=account-balance]")).to_have_text("0.00 EUR")
                expect(page.locator("[data-test=deposit-submit]")).to_have_count(0)
                page.select_option("[data-test=open-currency]", "EUR")
                page.click("[data-test=open-submit]")
                expect(page.locator("[data-test=account]")).to_have_count(2)
                expect(page.locator(f"[data-test=account-detail]:not([data-account-id='{ids['a']}'])")).to_have_count(1)
                ids["b"] = selected_account(page)
                expect(card(page, ids["b"]).locator("[data-test=account-balance]")).to_have_text("0.00 EUR")
                expect(page.locator("[data-test=detail-balance]")).to_have_text("0.00 EUR")
            run.step("opens two empty accounts; there is no Deposit button for a customer", open_accounts)

            def receive_a_payment():
                card(page, ids["a"]).click()
                expect(page.locator(f"[data-test=account-detail][data-account-id='{ids['a']}']")).to_be_visible()
                page.fill("[data-test=amount]", "100.00")
                page.click("[data-test=receive-submit]")
                expect(page.locator("[data-test=money-status]")).to_have_text("Received a payment of 100.00 EUR")
                expect(page.locator("[data-test=detail-balance]")).to_have_text("100.00 EUR")
                expect(page.locator("[data-test=transaction][data-kind=payment_in]")).to_have_count(1)
            run.step("receives a payment of 100.00 EUR through the dev payment rail", receive_a_payment)

            def cash_desk():
                sign_in(page, teller, "teller")
                expect(page.locator("[data-test=operator-page]")).to_be_visible()
                page.fill("[data-test=cash-account]", ids["a"])
                page.fill("[data-test=cash-amount]", "30.00")
                page.click("[data-test=cash-in]")
                expect(page.locator("[data-test=cash-status]")).to_have_text("Took in 30.00 EUR; the balance is 130.00 EUR")
                page.fill("[data-test=cash-amount]", "4.50")
                page.click("[data-test=cash-out]")
                expect(page.locator("[data-test=cash-status]")).to_have_text("Paid out 4.50 EUR; the balance is 125.50 EUR")
                page.fill("[data-test=cash-amount]", "1000.00")
                page.click("[data-test=cash-out]")
                expect(page.locator("[data-test=cash-status] [data-test=error]")).to_have_text("Insufficient funds")
            run.step("a teller takes 30.00 EUR in and pays 4.50 out at the cash desk", cash_desk)

            def customer_sees_the_cash():
                sign_in(page, customer, "customer")
                card(page, ids["a"]).click()
                expect(page.locator("[data-test=detail-balance]")).to_have_text("125.50 EUR")
                expect(page.locator("[data-test=transaction][data-kind=deposit]")).to_have_count(1)
                expect(page.locator("[data-test=transaction][data-kind=withdrawal]")).to_have_count(1)
            run.step("the customer sees the payment and the teller's cash in and out (125.50 EUR)", customer_sees_the_cash)
            shot(page, "customer.png")
            shot(page, "customer-phone.png", PHONE)

            def transfer():
                # every read of a transfer is held back: what shows must come from the POST's answer
                held = []
                is_read = lambda url: "/api/transfers/" in url  # noqa: E731
                page.route(is_read, lambda route: held.append(route) if route.request.method == "GET" else route.continue_())
                page.evaluate("window.notReloaded = true")
                page.select_option("[data-test=transfer-to]", ids["b"])
                page.fill("[data-test=transfer-amount]", "40.00")
                page.fill("[data-test=transfer-memo]", memo)
                page.click("[data-test=transfer-submit]")
                item = page.locator("[data-test=transfer]").first
                expect(item.locator("[data-test=transfer-state]")).to_have_text("pending: initiated")
                expect(item).to_have_attribute("data-state", "initiated")
                page.wait_for_timeout(300)  # the waiting read has gone out, and is held
                assert held, "the app sent no waiting read of the transfer"
                assert all("min_version=2" in r.request.url for r in held), [r.request.url for r in held]
                for route in held:
                    route.continue_()
                page.unroute(is_read)
                expect(item.locator("[data-test=transfer-state]")).to_have_text("completed")
                ids["transfer"] = item.get_attribute("data-transfer-id")
                assert page.evaluate("window.notReloaded === true"), "the page was reloaded"
            run.step("a transfer shows as pending at once, then completed without a reload", transfer)

            def balances():
                expect(card(page, ids["a"]).locator("[data-test=account-balance]")).to_have_text("85.50 EUR")
                expect(card(page, ids["b"]).locator("[data-test=account-balance]")).to_have_text("40.00 EUR")
                expect(page.locator("[data-test=detail-balance]")).to_have_text("85.50 EUR")
                expect(page.locator("[data-test=transaction][data-kind=transfer_debit]")).to_have_count(1)
            run.step("both balances changed (85.50 and 40.00 EUR)", balances)

            run.step("the memo shows in the transactions", lambda: expect(
                page.locator("[data-test=transaction][data-kind=transfer_debit] [data-test=transaction-memo]")
            ).to_have_text(f"“{memo}”"))
            shot(page, "transfer-completed.png")

            def search():
                # the memo's words find the transfer's debit of this account, with its memo
                page.fill("[data-test=search-input]", f"rent {suffix}")
                page.click("[data-test=search-submit]")
                hits = page.locator("[data-test=search-results] [data-test=search-hit]")
                expect(hits).to_have_count(1)
                expect(hits.first).to_have_attribute("data-kind", "transfer_debit")
                expect(hits.first.locator("[data-test=transaction-memo]")).to_have_text(f"“{memo}”")
                # a kind finds the teller's deposit; words found nowhere say so
                page.fill("[data-test=search-input]", "deposit")
                page.click("[data-test=search-submit]")
                expect(hits).to_have_count(1)
                expect(hits.first).to_have_attribute("data-kind", "deposit")
                # best matches first: the transfer's words still find its one debit here
                page.select_option("[data-test=search-order]", "relevance")
                page.fill("[data-test=search-input]", f"rent {suffix}")
                page.click("[data-test=search-submit]")
                expect(hits).to_have_count(1)
                expect(hits.first).to_have_attribute("data-kind", "transfer_debit")
                page.select_option("[data-test=search-order]", "newest")
                page.fill("[data-test=search-input]", f"nothing-{suffix}")
                page.click("[data-test=search-submit]")
                expect(page.locator("[data-test=search-status]")).to_have_text("Nothing found.")
                expect(hits).to_have_count(0)
            run.step("the search box finds the transfer by its memo's words and the deposit by its kind", search)

            def statements():
                # a teller starts this month's statements job for the account (a task on the bus)
                month = time.strftime("%Y-%m", time.gmtime())
                task = {"type": "statements.statement.generate", "source": "browser-test",
                        "data": {"month": month, "account": ids["a"]}}
                call("POST", "/api/events", dev_token(teller, "teller"), task)
                own = dev_token(customer, "customer")
                deadline = time.monotonic() + WAIT_MS / 1000
                written = [{"month": month, "formats": ["csv", "pdf"]}]
                while call("GET", f"/api/accounts/{ids['a']}/statements", own)["statements"] != written:
                    assert time.monotonic() < deadline, "the statements job wrote nothing"
                    time.sleep(0.1)
                page.click("[data-test=statements-load]")
                item = page.locator(f"[data-test=statement][data-month='{month}']")
                expect(item).to_have_count(1)
                with page.expect_download() as download:
                    item.locator("[data-test=statement-csv]").click()
                assert download.value.suggested_filename == f"statement-{ids['a']}-{month}.csv"
                rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
                assert [r["event"] for r in rows] == [
                    "opening_balance", "account.payment_received", "account.deposited", "account.withdrawn",
                    "account.debited", "closing_balance"], rows
                assert rows[4]["memo"] == memo and rows[4]["amount_minor"] == "-4000", rows[4]
                assert rows[-1]["balance_minor"] == "8550", rows[-1]
                expect(item.locator("[data-test=statement-pdf]")).to_have_text("PDF")
            run.step("the customer downloads this month's CSV statement: every movement, closing at 85.50 EUR", statements)

            def refused():
                page.select_option("[data-test=transfer-to]", ids["b"])
                page.fill("[data-test=transfer-amount]", "1000.00")
                page.click("[data-test=transfer-submit]")
                item = page.locator("[data-test=transfer]").first
                expect(item).not_to_have_attribute("data-transfer-id", ids["transfer"])
                expect(item.locator("[data-test=transfer-state]")).to_have_text("failed: insufficient funds")
                expect(card(page, ids["a"]).locator("[data-test=account-balance]")).to_have_text("85.50 EUR")
                expect(card(page, ids["b"]).locator("[data-test=account-balance]")).to_have_text("40.00 EUR")
            run.step("a transfer beyond the balance shows 'failed: insufficient funds'", refused)
            shot(page, "transfer-failed-phone.png", PHONE)

            def bad_input_in_words():
                page.fill("[data-test=amount]", "abc")
                page.click("[data-test=withdraw-submit]")
                expect(page.locator("[data-test=money-status] [data-test=error]")).to_contain_text("Enter an amount")
                page.fill("[data-test=amount]", "500.00")
                page.click("[data-test=withdraw-submit]")
                expect(page.locator("[data-test=money-status] [data-test=error]")).to_have_text("Insufficient funds")
            run.step("errors show in words (a withdrawal beyond the balance: 'Insufficient funds')", bad_input_in_words)

            history_and_as_of(page, run)

            ids["parked"] = park_an_event(ids["a"])

            def operator():
                sign_in(page, admin, "admin")
                expect(page.locator("[data-test=operator-page]")).to_be_visible()
                for river in ("accounts", "transfers", "views"):
                    expect(page.locator(f"[data-test=river][data-river={river}]")).to_be_visible()
                expect(page.locator("[data-test=tailer-behind]").first).to_be_visible()
                expect(page.locator(f"[data-test=dead-letter][data-id='{ids['parked']}']")).to_be_visible()
                # the reconciliation checks every few seconds: the books balance, in EUR too
                books = page.locator("[data-test=ledger-status]")
                refresh_until(page, lambda: "EUR" in page.locator("[data-test=ledger]").inner_text())
                expect(books).to_have_text("The books balance.")
                expect(page.locator("[data-test=ledger]")).to_contain_text("EUR")
            run.step("an admin sees the books balanced, the rivers (accounts, transfers, views), the tailer and the parked event", operator)
            shot(page, "operator.png")
            shot(page, "operator-phone.png", PHONE)

            def search_and_unsettled():
                page.fill("[data-test=events-type]", "account.opened")
                page.fill("[data-test=events-stream]", ids["a"])
                page.click("[data-test=events-submit]")
                expect(page.locator("[data-test=event]")).to_have_count(1)
                expect(page.locator("[data-test=event]")).to_contain_text("account.opened")
                page.fill("[data-test=unsettled-seconds]", "0")
                page.click("[data-test=unsettled-submit]")
                expect(page.locator("[data-test=unsettled]")).to_contain_text("Every transfer older than that has settled.")
            run.step("event search by type and stream; no transfer unsettled", search_and_unsettled)

            def retry():
                row = page.locator(f"[data-test=dead-letter][data-id='{ids['parked']}']")
                row.locator("[data-test=retry]").click()
                refresh_until(page, lambda: row.count() == 0)
                expect(row).to_have_count(0)
                assert psql(f"select status from rapids.river_dead_letters where id = {ids['parked']}") == "resolved"
            run.step("Retry resolves the parked event and it leaves the list", retry)

            def no_script_error():
                assert not errors, errors
            run.step("no script error in the page", no_script_error)
        except Exception:
            try:
                shot(page, "failure.png")
                print(f"the page at the failure: {os.path.join(SHOTS, 'failure.png')}", file=sys.stderr)
            except Exception:
                pass
        finally:
            browser.close()

    if DOCS and run.failed == 0:
        os.makedirs(DOCS, exist_ok=True)
        for name in ("customer.png", "operator.png"):
            shutil.copy(os.path.join(SHOTS, name), os.path.join(DOCS, name))
    print(run.summary())
    return 1 if run.failed else 0


def history_and_as_of(page, run):
    """An account's history and its balance as of a time."""
    def history():
        page.click("[data-test=history-load]")
        events = page.locator("[data-test=history-event]")
        expect(events.first).to_have_attribute("data-type", "account.opened")
        expect(page.locator("[data-test=history-event][data-type='account.debited']")).to_have_count(1)
    run.step("the account's history lists its events, opened first", history)

    # a minute from now: every event so far is at or before it
    later = page.evaluate("""() => { const d = new Date(Date.now() + 60000);
        d.setMinutes(d.getMinutes() - d.getTimezoneOffset()); return d.toISOString().slice(0, 19); }""")
    page.fill("[data-test=asof-input]", later)
    page.click("[data-test=asof-submit]")
    result = page.locator("[data-test=asof-result]")
    run.step("the balance as of a minute from now is today's", lambda: expect(result).to_contain_text("85.50 EUR"))


def park_an_event(account_id):
    """Parks a copy of the account's first event for the views river, as a handler
    failure would: its record is the event's envelope, already handled (so a retry
    resolves it as a duplicate)."""
    stream = str(uuid.UUID(account_id))
    return int(psql(f"""
        insert into rapids.river_dead_letters
            (river, shard_id, sequence_number, stream_id, event_type, version, record, error, attempts)
        select 'views', 'shardId-browser-test', 'browser-test-' || e.position, e.stream_id, e.type, e.version,
               convert_to(json_build_object(
                   'event_id', e.event_id, 'type', e.type, 'stream_id', e.stream_id,
                   'stream_type', e.stream_type, 'version', e.version, 'position', e.position,
                   'schema_version', e.schema_version, 'recorded_at', e.recorded_at, 'data', e.data)::text, 'UTF8'),
               'parked by the browser test', 5
        from es.events e where e.stream_id = '{stream}' and e.version = 1
        returning id"""))


if __name__ == "__main__":
    sys.exit(main())
