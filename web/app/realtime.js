// Socket.IO: live events for the logged-in user, a banner while the connection is lost, and
// a catch-up through GET /api/v1/events?after= once it is back.

import { api, auth } from "./api.js";

const listeners = new Map();
let socket = null;
let lastSeq = null;
let statusListener = () => {};

export function on(event, fn) {
  if (!listeners.has(event)) listeners.set(event, new Set());
  listeners.get(event).add(fn);
  return () => listeners.get(event).delete(fn);
}

// Seqs already handled: a catch-up may repeat what also came live, and live events of
// concurrent writers can arrive slightly out of order, so "seq <= last" is not "seen".
const seen = new Set();
const SEEN_LIMIT = 5000;

function dispatch(event, data) {
  if (data && typeof data.seq === "number") {
    if (seen.has(data.seq)) return;
    seen.add(data.seq);
    if (seen.size > SEEN_LIMIT) seen.delete(seen.values().next().value);
    lastSeq = lastSeq === null ? data.seq : Math.max(lastSeq, data.seq);
  }
  for (const fn of listeners.get(event) || []) {
    try {
      fn(data);
    } catch (err) {
      console.error(`handler of ${event} failed`, err);
    }
  }
  for (const fn of listeners.get("*") || []) fn(event, data);
}

async function catchUp() {
  if (lastSeq === null) return;
  for (;;) {
    const page = await api("/api/v1/events", { query: { after: lastSeq, limit: 500 } });
    for (const item of page.items) {
      dispatch(item.event, { ...item.data, seq: item.seq, session_id: item.session_id });
    }
    if (page.items.length < 500) return;
  }
}

// status: "connecting" | "online" | "offline"
export function onStatus(fn) {
  statusListener = fn;
}

export async function connect() {
  disconnect();
  let io;
  try {
    ({ io } = await import("/vendor/socket.io/socket.io.esm.min.js"));
  } catch (err) {
    console.error("socket.io-client is missing (run make install)", err);
    statusListener("offline");
    return;
  }
  const token = auth.token;
  if (!token) return;
  let wasConnected = false;
  socket = io({
    auth: { token },
    reconnectionDelay: 500,
    reconnectionDelayMax: 3000,
  });
  socket.on("connect", async () => {
    statusListener("online");
    if (wasConnected) {
      try {
        await catchUp();
      } catch (err) {
        console.error("catch-up failed", err);
      }
      dispatch("reconnected", {});
    }
    wasConnected = true;
  });
  socket.on("disconnect", (reason) => {
    if (reason !== "io client disconnect") statusListener("offline");
  });
  socket.on("connect_error", () => statusListener("offline"));
  socket.onAny((event, data) => dispatch(event, data));
}

export function askQr(sessionId) {
  socket?.emit("get-qr", { sessionId });
}

export function disconnect() {
  if (socket) {
    socket.offAny();
    socket.disconnect();
    socket = null;
  }
  lastSeq = null;
  seen.clear();
}
