// The banking web app: sign in (dev login), then the customer's pages or the
// operator's, by the token's role. Plain ES modules served by the gateway at /app/.

import { api, currentSession, endSession, onSignedOut, startSession } from "./api.js";
import { busy, fields, fill, h } from "./dom.js";
import { describe } from "./format.js";
import { customerPage } from "./customer.js";
import { operatorPage } from "./operator.js";

const main = document.getElementById("main");
const who = document.getElementById("who");
// the page shown now; stopped (its waits aborted, timers cleared) when another is shown
let page = null;

function show() {
  page?.stop();
  page = null;
  const session = currentSession();
  if (!session) {
    fill(who);
    fill(main, signIn());
    return;
  }
  fill(
    who,
    h("span", { "data-test": "signed-in-as" }, `${session.sub} · ${session.role}`),
    h("button", { class: "link", type: "button", "data-test": "signout", onclick: endSession }, "Sign out"),
  );
  page = session.role === "customer" ? customerPage() : operatorPage();
  fill(main, page.element);
}

function signIn() {
  const status = h("div");
  const button = h("button", { class: "primary", type: "submit", "data-test": "signin-submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", "data-test": "signin" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Development sign-in: any name, any role."),
    h("label", {}, "Name", h("input", { name: "sub", required: true, autocomplete: "username", pattern: "[A-Za-z0-9_.@\\-]{1,64}", "data-test": "signin-name" })),
    h(
      "label",
      {},
      "Role",
      h(
        "select",
        { name: "role", "data-test": "signin-role" },
        h("option", { value: "customer" }, "Customer"),
        h("option", { value: "teller" }, "Teller (operator)"),
        h("option", { value: "admin" }, "Admin (operator)"),
      ),
    ),
    button,
    status,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const { sub, role } = fields(form);
    busy(button, status, describe, async () => {
      const { token } = await api("POST", "/dev/token", { sub: sub.trim(), role });
      startSession({ token, sub: sub.trim(), role });
      show();
    });
  });
  return form;
}

// a 401 anywhere (an expired token) ends the session: back to sign-in
onSignedOut(show);
show();
