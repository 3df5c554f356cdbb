// The terminal's local wire, mirrored in one place.
//
// The page talks to its own terminal only: an HTTP API for what the person
// does (call, accept, verify...) and one WebSocket (/api/events) on which the
// terminal pushes its events and drives the page's WebRTC. Every message the
// page sends is built here, and every name it receives is listed here, so the
// rest of the page never writes JSON by hand. The Python side of the media
// messages is terminal/browser.py (it validates each one); the HTTP API and
// the events are terminal/control.py.

// Terminal -> page, on the events socket.
export const Incoming = Object.freeze({
  STATUS: "status", // {status}: a snapshot, first on every connection
  CALL: "call", // {call}: a call's public view changed
  PRESENCE: "presence", // {device, party, online}
  LINK: "link", // {connected, detail}: the terminal's link to the line server
  ALARM: "alarm", // {alarm: {id, time_ms, count, call_id, subject, code, title, message, hint}}
  ALARMS: "alarms", // {alarms: [...]}: the open alarms, after some were acknowledged
  PROBLEM: "problem", // {problem: {code, message, hint, about}}: something we sent was refused
  MESSAGE: "message", // {message}: a message was queued, arrived, or its receipts changed
  MESSAGES_UNREAD: "messages.unread", // {unread: {party: n}}
  MESSAGES_READ: "messages.read", // {party, unread}: this person read a conversation
  VERIFIED: "verified", // {device, party}: a peer was marked verified
  ERROR: "error", // {error: {code, message}}: the terminal refused our message
  PAGE_ROLE: "page.role", // {media}: whether this page does the terminal's media
  MEDIA_OPEN: "media.open", // {call_id, attempt, media, ice, offer?}: make an offer, or answer `offer`
  MEDIA_ANSWER: "media.answer", // {call_id, sdp}: the peer's answer to our offer
  MEDIA_REMOTE_CANDIDATE: "media.remote_candidate", // {call_id, candidate, mid, mline}
  MEDIA_LOCAL: "media.local", // {call_id, audio, video}: mute / camera off
  MEDIA_CLOSE: "media.close", // {call_id}: the call ended: release everything
  MEDIA_KEYS: "media.keys", // {call_id, attempt, send?, receive?}: SFrame keys {epoch, audio, video}
  LINETEST: "linetest", // {result} or {progress}: a line test of this site's lines
  SCHEDULE: "schedule", // {talk} or {reminder}: a scheduled talk changed, or is near
  RECORD: "record", // {size, cosigned?}: the record grew, or the other site cosigned it
  STATEMENT: "statement", // {statement}: a joint statement changed
  STATEMENT_RECORDED: "statement.recorded", // {statement, log, size}: in the other's log too
});

// Page -> terminal, on the events socket.
export const Outgoing = Object.freeze({
  hello: () => ({ t: "page.hello" }),
  // `attempt`: which peer connection of the call (media.open's), echoed in each of these.
  description: (callId, sdp, attempt = 0) => ({ t: "media.description", call_id: callId, sdp, attempt }),
  // An RTCIceCandidate, or null at the end of candidates.
  candidate: (callId, candidate, attempt = 0) => ({
    t: "media.candidate",
    call_id: callId,
    attempt,
    candidate: candidate ? candidate.candidate : "",
    mid: candidate?.sdpMid ?? null,
    mline: candidate?.sdpMLineIndex ?? null,
  }),
  // [{algorithm, fingerprint}]: the certificates the peer presented in the DTLS handshake.
  connected: (callId, certificates, attempt = 0) => ({ t: "media.connected", call_id: callId, certificates, attempt }),
  failed: (callId, reason, attempt = 0) => ({ t: "media.failed", call_id: callId, reason: String(reason).slice(0, 300), attempt }),
  stats: (callId, stats, attempt = 0) => ({ t: "media.stats", call_id: callId, stats, attempt }),
  // The peer's frames keep failing the SFrame layer: dropped; the terminal raises the alarm.
  unprotected: (callId, detail, attempt = 0) => ({ t: "media.unprotected", call_id: callId, detail: String(detail).slice(0, 200), attempt }),
});

// core/call.py: CallState, EndReason, MediaKind.
export const CallState = Object.freeze({
  DIALING: "dialing", RINGBACK: "ringback", RINGING: "ringing",
  CONNECTING: "connecting", ACTIVE: "active", RECONNECTING: "reconnecting", ENDED: "ended",
});
export const EndReason = Object.freeze({
  HUNG_UP: "hung_up", REMOTE_HUNG_UP: "remote_hung_up", DECLINED: "declined",
  REJECTED: "rejected", BUSY: "busy", NO_ANSWER: "no_answer", MISSED: "missed",
  UNREACHABLE: "unreachable", NOT_VERIFIED: "not_verified", FAILED: "failed",
  CONNECTION_LOST: "connection_lost", INTERCEPTED: "intercepted",
});
export const MediaKind = Object.freeze({ VIDEO: "video", AUDIO: "audio" });
// core/trust.py: Trust.
export const Trust = Object.freeze({ VERIFIED: "verified", UNVERIFIED: "unverified", CHANGED: "changed" });

class ApiError extends Error {
  constructor(error) {
    super(error.message || "the terminal refused the request");
    this.code = error.code || "unknown";
    this.hint = error.hint || "";
  }
}

// The terminal's HTTP API. The token comes from the URL the terminal printed.
export class TerminalApi {
  constructor(token) {
    this.token = token;
  }

  async #request(method, path, body) {
    const headers = { Authorization: `Bearer ${this.token}` };
    const init = { method, headers, cache: "no-store" };
    if (body instanceof Blob) {
      headers["Content-Type"] = "application/octet-stream";
      init.body = body;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError({ code: "terminal_unreachable", message: "the terminal does not answer",
        hint: "is 'parley terminal' still running?" });
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new ApiError(data.error || { code: `http_${response.status}`, message: `HTTP ${response.status}` });
    }
    return data;
  }

  status() { return this.#request("GET", "/api/status"); }
  peers(party) { return this.#request("GET", `/api/peers/${encodeURIComponent(party)}`); }
  verify(target, safetyNumber) {
    return this.#request("POST", "/api/verify", { target, safety_number: safetyNumber || null });
  }
  placeCall(target, media) { return this.#request("POST", "/api/call", { target, media }); }
  accept(callId) { return this.#callOp(callId, "accept"); }
  decline(callId) { return this.#callOp(callId, "decline"); }
  hangup(callId) { return this.#callOp(callId, "hangup"); }
  setMedia(callId, audio, video) { return this.#callOp(callId, "media", { audio, video }); }
  messages(party) { return this.#request("GET", `/api/messages?party=${encodeURIComponent(party)}&limit=500`); }
  sendMessage(to, text) { return this.#request("POST", "/api/messages", { to, text }); }
  async sendFile(to, file) {
    const query = new URLSearchParams({ to, name: file.name, type: file.type || "application/octet-stream" });
    return this.#request("POST", `/api/messages/file?${query}`, file);
  }
  schedule() { return this.#request("GET", "/api/schedule"); }
  requestTalk(fields) { return this.#request("POST", "/api/schedule", fields); }
  talkAct(talkId, op, fields) {
    return this.#request("POST", `/api/schedule/${encodeURIComponent(talkId)}/${op}`, fields || {});
  }
  record(limit) { return this.#request("GET", `/api/record?limit=${limit || 200}`); }
  recordNote(text) { return this.#request("POST", "/api/record/note", { text }); }
  recordExchange() { return this.#request("POST", "/api/record/exchange", {}); }
  statements() { return this.#request("GET", "/api/statements"); }
  draftStatement(fields) { return this.#request("POST", "/api/statements", fields); }
  editStatement(id, text) {
    return this.#request("POST", `/api/statements/${encodeURIComponent(id)}/edit`, { text });
  }
  signStatement(id, version, sha256) {
    return this.#request("POST", `/api/statements/${encodeURIComponent(id)}/sign`, { version, sha256 });
  }
  // A download's address (the token in it: a link cannot carry a header).
  withToken(path) { return `${path}?token=${encodeURIComponent(this.token)}`; }
  lines(refresh) { return this.#request("GET", `/api/lines${refresh ? "?refresh=1" : ""}`); }
  readMessages(party, upto) { return this.#request("POST", "/api/messages/read", { party, upto }); }
  // A file's download address (the token in it: a link cannot carry a header).
  fileUrl(msgId) { return `/api/files/${encodeURIComponent(msgId)}?token=${encodeURIComponent(this.token)}`; }
  acknowledgeAlarms(ids) {
    return this.#request("POST", "/api/alarms/ack", ids === null ? { all: true } : { ids });
  }
  #callOp(callId, op, body) {
    return this.#request("POST", `/api/calls/${encodeURIComponent(callId)}/${op}`, body);
  }

  // The events socket: onMessage(message) for each parsed message, onClose() once.
  openEvents({ onOpen, onMessage, onClose }) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/api/events?token=${encodeURIComponent(this.token)}`);
    socket.addEventListener("open", () => onOpen());
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message.t === "string") onMessage(message);
    });
    socket.addEventListener("close", () => onClose());
    return {
      send(message) {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
      },
      close() { socket.close(); },
    };
  }
}
