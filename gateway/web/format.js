// Money, times and errors in words.

import { ApiError } from "./api.js";

// Error codes (and a transfer's failure reasons) as a customer reads them; any
// other code shows the server's own message.
const MESSAGES = {
  insufficient_funds: "Insufficient funds",
  account_closed: "The account is closed",
  currency_mismatch: "The accounts are in different currencies",
  balance_not_zero: "Only an empty account can be closed",
  balance_limit_exceeded: "The balance would go over the account's limit",
  balance_limit: "The balance would go over the account's limit",
  same_account: "Choose another account to send to",
  account_not_found: "There is no such account",
  transfer_not_found: "There is no such transfer",
  forbidden: "You may not do this",
  invalid_amount: "Enter an amount greater than zero",
  amount_too_large: "The amount is too large",
  invalid_currency: "Choose a currency such as EUR",
  invalid_memo: "The memo is too long (140 characters at most)",
  invalid_id: "That is not an account number",
  rate_limited: "Too many requests; wait a moment and retry",
  upstream_unavailable: "The bank is not reachable right now; retry shortly",
  unavailable: "The bank is busy; retry shortly",
  timeout: "The bank took too long to answer; retry",
  view_out_of_date: "The bank is still catching up; retry shortly",
  version_not_reached: "The bank is still catching up; retry shortly",
  token_expired: "Your session has expired; sign in again",
  invalid_token: "Your session is not valid; sign in again",
  missing_token: "Sign in first",
  not_found: "This is not available on this server yet",
  internal: "Something went wrong at the bank; retry later",
};

/** An error (ApiError or other) as a sentence. */
export function describe(error) {
  if (error instanceof ApiError) return MESSAGES[error.code] ?? error.message;
  return error?.message ?? String(error);
}

/** A failure reason in words, lower case: "insufficient funds". */
export function reasonInWords(code) {
  const words = MESSAGES[code] ?? String(code ?? "unknown reason").replaceAll("_", " ");
  return words.charAt(0).toLowerCase() + words.slice(1);
}

/** Digits after the point of a currency's minor unit (EUR 2, JPY 0, KWD 3). */
export function fractionDigits(currency) {
  try {
    return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
  } catch {
    return 2;
  }
}

/** Minor units as text, without floating point: money(123456, "EUR") is "1,234.56 EUR". */
export function money(minor, currency) {
  const digits = fractionDigits(currency);
  const text = String(Math.abs(minor)).padStart(digits + 1, "0");
  const whole = text.slice(0, text.length - digits).replace(/\B(?=(\d{3})+$)/g, ",");
  const fraction = digits ? `.${text.slice(text.length - digits)}` : "";
  return `${minor < 0 ? "−" : ""}${whole}${fraction} ${currency}`;
}

/** "12.5" in EUR is 1250 minor units; throws an Error in words when it is not an amount. */
export function parseAmount(text, currency) {
  const digits = fractionDigits(currency);
  const match = String(text).trim().replace(",", ".").match(/^(\d+)(?:\.(\d*))?$/);
  if (!match || (match[2] ?? "").length > digits) {
    throw new Error(digits ? `Enter an amount such as 12.50 (at most ${digits} decimals)` : "Enter a whole amount such as 12");
  }
  const minor = Number(match[1] + (match[2] ?? "").padEnd(digits, "0"));
  if (!Number.isSafeInteger(minor)) throw new Error("The amount is too large");
  if (minor === 0) throw new Error("Enter an amount greater than zero");
  return minor;
}

/** An RFC 3339 time in the reader's locale. */
export const when = (rfc3339) => (rfc3339 ? new Date(rfc3339).toLocaleString() : "—");

/** A datetime-local input's value (local time) as RFC 3339 in UTC. */
export const localToRfc3339 = (value) => new Date(value).toISOString();

/** Now, as a datetime-local input's value (seconds precision). */
export function nowLocal() {
  const d = new Date();
  d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
  return d.toISOString().slice(0, 19);
}

/** The last characters of an id (a UUIDv7 begins with its time, alike for ids made
 * together; it ends in random bits), enough to tell accounts apart on screen. */
export const shortId = (id) => (id ? `…${String(id).slice(-8)}` : "—");
