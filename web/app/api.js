// The REST API: bearer token from sessionStorage, JSON errors turned into ApiError.

const TOKEN_KEY = "wagate.token";
const unauthorizedListeners = new Set();

export const auth = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  save(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
  onUnauthorized(fn) {
    unauthorizedListeners.add(fn);
  },
};

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

// An action runner for one screen: runs `fn`, and shows what went wrong in `status` (cleared
// when the next action starts).
export function actionsReportingTo(status) {
  return async (fn) => {
    status.textContent = "";
    try {
      await fn();
    } catch (err) {
      status.textContent = err instanceof ApiError ? err.message : String(err);
    }
  };
}

function newKey() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

export async function api(path, { method = "GET", body, form, query, idempotent = false } = {}) {
  const headers = {};
  const token = auth.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (form) {
    payload = form;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  if (idempotent) headers["Idempotency-Key"] = newKey();
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
    }
    const qs = params.toString();
    if (qs) url += `?${qs}`;
  }
  let resp;
  try {
    resp = await fetch(url, { method, headers, body: payload });
  } catch (err) {
    throw new ApiError(0, "network", err.message || "network error");
  }
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const error = data?.error || {};
    if (resp.status === 401 && token && !path.endsWith("/auth/login")) {
      for (const fn of unauthorizedListeners) fn();
    }
    throw new ApiError(resp.status, error.code, error.message || resp.statusText, error.details);
  }
  return data;
}

// Media needs the bearer token, so an <img src> can not point at it: fetch into a blob URL.
const blobUrls = new Map();

export async function mediaUrl(path) {
  if (!blobUrls.has(path)) {
    const pending = fetch(path, { headers: { Authorization: `Bearer ${auth.token}` } }).then(
      async (resp) => {
        if (!resp.ok) throw new ApiError(resp.status, "media", resp.statusText);
        return URL.createObjectURL(await resp.blob());
      },
    );
    blobUrls.set(path, pending);
    pending.catch(() => blobUrls.delete(path));
  }
  return blobUrls.get(path);
}

export function forgetMedia() {
  for (const pending of blobUrls.values()) {
    pending.then((url) => URL.revokeObjectURL(url)).catch(() => {});
  }
  blobUrls.clear();
}
