// A tiny element builder: h("button", { class: "primary", onclick }, "Save").

/**
 * An element with attributes (`on…` functions become listeners, `value` and
 * `checked` are set as properties, null/false attributes are left out) and children
 * (strings, nodes, arrays of them; null and false are skipped).
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value == null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "value" || name === "checked") element[name] = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A message line: kind "error", "ok" or "info". */
export const notice = (kind, text, test) => h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", "data-test": test }, text);

/** A form's fields by name, as strings. */
export const fields = (form) => Object.fromEntries(new FormData(form).entries());

/**
 * Runs `action` for a form's submit with its button disabled, and shows its outcome
 * (thrown errors in words via `describe`) in `status`.
 */
export async function busy(button, status, describe, action) {
  button.disabled = true;
  fill(status);
  try {
    const done = await action();
    if (done) fill(status, notice("ok", done));
  } catch (e) {
    if (e.name !== "AbortError") fill(status, notice("error", describe(e), "error"));
  } finally {
    button.disabled = false;
  }
}
