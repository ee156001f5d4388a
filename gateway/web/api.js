// The bank's API at /api on this origin: the session's token, errors as ApiError,
// and waiting reads (min_version) that never show data older than a command's answer.

const SESSION_KEY = "bank.session";
// the views (or the transfer saga) are not at the version yet: ask again, the
// server itself waits up to wait_ms each time
const NOT_YET = new Set(["view_out_of_date", "version_not_reached"]);

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let session = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
const signedOutListeners = [];

export const currentSession = () => session;

export function startSession(s) {
  session = s;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
}

export function endSession() {
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
  signedOutListeners.forEach((f) => f());
}

export const onSignedOut = (f) => signedOutListeners.push(f);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * One request (as the session, or as `token` when given); resolves to the answer's
 * JSON (with `blob`: its body as a Blob, for a file), or throws an ApiError.
 */
export async function api(method, path, body, { signal, token, blob = false } = {}) {
  for (let attempt = 1; ; attempt++) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const bearer = token ?? session?.token;
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    let response;
    try {
      response = await fetch(`/api${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network", "The bank cannot be reached; check the connection and retry.");
    }
    if (response.ok && blob) return response.blob();
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // not JSON: reported below by its status
    }
    if (response.ok) return data;
    const error = data?.error ?? {};
    const retryAfter = Number(response.headers.get("Retry-After")) || 1;
    // refused at the gateway before reaching a service: safe to send again
    if (response.status === 429 && attempt < 4) {
      await sleep(retryAfter * 1000);
      continue;
    }
    if (response.status === 401 && session && !token) endSession();
    throw new ApiError(response.status, error.code ?? `http_${response.status}`, error.message ?? response.statusText, error);
  }
}

/**
 * GET `path` once the read side has reached `minVersion`: the server waits up to
 * `waitMs` each time, and answers 409 when the wait ended first; then wait again.
 */
export async function readAt(path, minVersion, { waitMs = 5000, signal, attempts = 12 } = {}) {
  const query = `${path.includes("?") ? "&" : "?"}min_version=${minVersion}&wait_ms=${waitMs}`;
  for (let attempt = 1; ; attempt++) {
    const started = Date.now();
    try {
      return await api("GET", path + query, undefined, { signal });
    } catch (e) {
      if (!(e instanceof ApiError) || !NOT_YET.has(e.code) || attempt >= attempts) throw e;
      // a server that did not wait (its cap is lower) must not make this a busy loop
      if (Date.now() - started < 500) await sleep(1000);
    }
  }
}
