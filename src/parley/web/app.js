// The person's page: one App object holds the state the terminal told us and
// the calls' media, and renders the view from them.
//
// The terminal is the authority on everything: lines, keys and trust, calls
// and their states, the SAS, alarms. The page shows what it is told, sends
// what the person does to the terminal's API, and does the WebRTC the
// terminal asks for (media.js). It never decides that a call is verified.

import { LinePanel } from "./lines.js";
import { TalkPanel } from "./talks.js";
import { RecordPanel } from "./record.js";
import { CallMedia } from "./media.js";
import { CallState, Incoming, Outgoing, TerminalApi } from "./protocol.js";
import { Ringer } from "./ring.js";
import { View } from "./view.js";

const RECONNECT_MS = 2000;
const SAMPLE_MS = 1000;
const CLOCK_MS = 20000;
const LINES_MS = 30000; // the lines' view is asked for again this often (ages move on)
export const KEEP_ENDED_CALLS = 50; // the terminal's MAX_ENDED_CALLS

// An error from the terminal, in the page's own words: a sentence, and where the fix is a
// button of this page, that button -- not the command a terminal's operator would type.
const PAGE_HINTS = {
  not_verified: "Press Safety number beside the party and compare it with its operator out of band.",
  key_changed: "Press Safety number beside the party and compare the new number with its operator before you mark it verified.",
};

export function pageError(err) {
  const message = err.message ? err.message[0].toUpperCase() + err.message.slice(1) : "Something failed";
  const hint = PAGE_HINTS[err.code] || err.hint;
  return hint ? `${message}. ${hint[0].toUpperCase()}${hint.slice(1)}` : `${message}.`;
}

function emptyParty(party) {
  return { party, trust: null, warning: "", devices: [], error: "" };
}

// With several nodes of the line host (--failover-server), which one this terminal is on.
function nodeNote(status) {
  const servers = status?.servers || [];
  if (servers.length < 2) return "";
  return ` to ${status.server} (node ${servers.indexOf(status.server) + 1} of ${servers.length})`;
}

class App {
  constructor(doc, token) {
    this.token = token;
    this.api = new TerminalApi(token);
    this.view = new View(doc, this.#actions());
    this.linePanel = new LinePanel(doc, doc.querySelector('[data-testid="line-tests"]'));
    this.talkView = null;
    this.reminder = null;
    this.talkPanel = new TalkPanel(doc, doc.querySelector('[data-testid="talks"]'), {
      request: (fields) => this.#attempt(async () => {
        await this.api.requestTalk(fields);
        await this.#loadTalks();
      }),
      act: (op, talkId, fields) => this.#attempt(async () => {
        await this.api.talkAct(talkId, op, fields);
        await this.#loadTalks();
      }),
      join: (party, media) => this.#actions().call(party, media),
    });
    this.recordView = null; // {record, entries}, as the terminal sent them
    this.statementList = [];
    this.statementId = null; // the statement whose pane is open
    this.recordSoon = null;
    this.recordPanel = new RecordPanel(doc, {
      draft: (fields) => this.#attempt(async () => {
        const st = await this.api.draftStatement(fields);
        this.recordPanel.draftSent();
        this.statementId = st.statement;
        this.pane = "statement";
        await this.#loadRecord();
      }),
      edit: (id, text) => this.#attempt(async () => {
        await this.api.editStatement(id, text);
        await this.#loadRecord();
      }),
      sign: (id, version, sha256) => this.#attempt(async () => {
        await this.api.signStatement(id, version, sha256);
        await this.#loadRecord();
      }),
      note: (text) => this.#attempt(async () => {
        await this.api.recordNote(text);
        await this.#loadRecord();
      }),
      exchange: () => this.#attempt(async () => {
        await this.api.recordExchange();
        await this.#loadRecord();
      }),
      open: (pane, id) => {
        this.notice = "";
        this.pane = pane;
        this.statementId = id;
        this.#loadRecord();
      },
      close: () => {
        this.statementId = null;
        this.pane = this.#focusedLiveCall() ? "call" : "home";
        this.render();
      },
      url: (path) => this.api.withToken(path),
    });
    this.linesSoon = null;
    this.ringer = new Ringer();
    this.events = null;
    this.status = null;
    this.terminalUp = false;
    this.isMediaPage = true;
    this.parties = new Map(); // party -> {party, trust, warning, devices, error}
    this.calls = new Map(); // call_id -> the terminal's CallInfo
    this.media = new Map(); // call_id -> CallMedia
    this.certificates = new Map(); // call_id -> RTCCertificate, for all its peer connections
    this.stats = new Map(); // call_id -> last quality sample
    this.alarms = [];
    this.pendingAlarm = null;
    this.pane = "home";
    this.shownPane = null;
    this.focusCallId = null;
    this.verifyParty = null;
    this.verifyErrors = new Map(); // device -> message
    this.sasCompact = new Set(); // call ids whose SAS the person confirmed
    this.notice = "";
    this.conversations = new Map(); // party -> Map(msg_id -> message), as the terminal sent them
    this.unread = {}; // party -> messages not yet read here
    this.messagesParty = null; // the party whose Messages pane is open
    this.reading = new Set(); // parties whose read receipts are on their way
    this.loading = new Map(); // party -> messages the events brought while its list loads
  }

  start() {
    if (!this.token) {
      this.view.showPageError("This address lacks its access token. Open the exact address the terminal printed (the line that starts with 'ui: ').");
      return;
    }
    this.#connect();
    setInterval(() => this.#tick(), SAMPLE_MS);
    setInterval(() => this.#loadLines(false), LINES_MS);
    setInterval(() => this.render(), CLOCK_MS); // the other parties' local time moves on
    // A conversation on screen counts as read only while someone can see the page.
    document.addEventListener("visibilitychange", () => this.render());
  }

  // -- the events socket ----------------------------------------------------------------

  #connect() {
    this.events = this.api.openEvents({
      onOpen: () => {
        this.terminalUp = true;
        this.notice = "";
        this.render();
      },
      onMessage: (message) => this.#onMessage(message),
      onClose: () => {
        const wasUp = this.terminalUp;
        this.terminalUp = false;
        // The terminal fails the calls whose media this page held; let go of them here too.
        for (const media of this.media.values()) media.close();
        this.media.clear();
        this.notice = wasUp
          ? "Lost the connection to the terminal. Retrying…"
          : "Cannot reach the terminal. If it was restarted, open the new address it printed.";
        this.render();
        setTimeout(() => this.#connect(), RECONNECT_MS);
      },
    });
  }

  #send(message) {
    if (this.events) this.events.send(message);
  }

  #onMessage(message) {
    switch (message.t) {
      case Incoming.STATUS: return this.#onStatus(message.status);
      case Incoming.CALL: return this.#onCall(message.call);
      case Incoming.PRESENCE: return this.#onPresence(message);
      case Incoming.LINK: return this.#onLink(message.connected);
      case Incoming.ALARM: return this.#onAlarm(message.alarm);
      case Incoming.ALARMS:
        this.alarms = message.alarms;
        return this.render();
      case Incoming.MESSAGE: return this.#onMessageEvent(message.message);
      case Incoming.MESSAGES_UNREAD:
      case Incoming.MESSAGES_READ:
        this.unread = message.unread;
        return this.render();
      case Incoming.PROBLEM:
        this.notice = `Not delivered: ${message.problem.message}.${message.problem.hint ? ` ${message.problem.hint}` : ""}`;
        return this.render();
      case Incoming.VERIFIED: return this.#refreshParty(message.party);
      case Incoming.ERROR:
        this.notice = `The terminal refused a message from this page: ${message.error.message}`;
        return this.render();
      case Incoming.PAGE_ROLE:
        this.isMediaPage = message.media;
        return this.render();
      case Incoming.MEDIA_OPEN: return this.#mediaOpen(message);
      case Incoming.MEDIA_ANSWER: return this.#withMedia(message, (m) => m.applyAnswer(message.sdp));
      case Incoming.MEDIA_REMOTE_CANDIDATE:
        return this.#withMedia(message, (m) => m.addRemoteCandidate(message.candidate, message.mid, message.mline));
      case Incoming.MEDIA_LOCAL: return this.#withMedia(message, (m) => m.setLocal(message.audio, message.video));
      case Incoming.MEDIA_CLOSE: return this.#mediaClose(message.call_id);
      case Incoming.MEDIA_KEYS: return this.#withMedia(message, (m) => {
        if ((message.attempt ?? 0) === m.attempt) m.setKeys(message.send, message.receive);
      });
      case Incoming.LINETEST:
        if (message.result) this.#linesSoon();
        return undefined;
      case Incoming.SCHEDULE:
        if (message.reminder) this.reminder = message.reminder;
        // A reminder of a talk that was moved or cancelled since is not shown any more.
        if (message.talk && this.reminder && message.talk.talk_id === this.reminder.talk.talk_id
            && message.talk.state !== "confirmed") this.reminder = null;
        return this.#loadTalks();
      case Incoming.RECORD:
      case Incoming.STATEMENT:
      case Incoming.STATEMENT_RECORDED:
        return this.#recordChanged();
      default: return undefined;
    }
  }

  // A result came: show it (once, however many events came together).
  #linesSoon() {
    if (this.linesSoon) return;
    this.linesSoon = setTimeout(() => {
      this.linesSoon = null;
      this.#loadLines(false);
    }, 300);
  }

  // The record or a statement changed: look again (once, however many events came).
  #recordChanged() {
    if (this.recordSoon) return;
    this.recordSoon = setTimeout(() => {
      this.recordSoon = null;
      this.#loadRecord();
    }, 200);
  }

  async #loadRecord() {
    try {
      const [record, statements] = await Promise.all([
        this.api.record(this.pane === "record" ? 500 : 1), this.api.statements()]);
      this.recordView = record;
      this.statementList = statements.statements;
    } catch (err) {
      // the events socket tells the person if the terminal went away
    }
    this.render();
  }

  async #loadTalks() {
    try {
      this.talkView = await this.api.schedule();
    } catch (err) {
      // the events socket tells the person if the terminal went away
    }
    this.render();
  }

  async #loadLines(refresh) {
    try {
      this.linePanel.show(await this.api.lines(refresh));
    } catch (err) {
      // the events socket tells the person if the terminal went away
    }
  }

  #onStatus(status) {
    this.status = status;
    this.#loadLines(true);
    this.#loadTalks();
    this.#loadRecord();
    this.unread = status.unread || {};
    for (const party of this.conversations.keys()) this.#loadMessages(party);
    this.alarms = status.alarms || [];
    this.calls = new Map(status.calls.map((call) => [call.call_id, call]));
    const live = status.calls.filter((call) => call.state !== CallState.ENDED && !this.#ringingHere(call));
    if (live.length) this.#focusCall(live[live.length - 1].call_id);
    // Only a terminal whose media is the browser's takes this page as its media page.
    if (status.media === "browser") this.#send(Outgoing.hello());
    else this.isMediaPage = true;
    this.render();
    this.#refreshParties();
  }

  #onCall(call) {
    // A new SAS after a reconnection is read again: the panel shows it large once more
    // (every time it changes).
    const before = this.calls.get(call.call_id);
    if (before && before.sas && call.sas !== before.sas) this.sasCompact.delete(call.call_id);
    this.calls.set(call.call_id, call);
    if (call.state !== CallState.ENDED && !this.#ringingHere(call)) this.#focusCall(call.call_id);
    this.#forgetOldCalls();
    this.render();
  }

  // A tab left open for weeks keeps only the newest ended calls, as the terminal does.
  #forgetOldCalls() {
    const ended = [...this.calls.values()].filter((c) => c.state === CallState.ENDED && c.call_id !== this.focusCallId);
    for (const call of ended.slice(0, Math.max(0, ended.length - KEEP_ENDED_CALLS))) {
      this.calls.delete(call.call_id);
      this.stats.delete(call.call_id);
      this.sasCompact.delete(call.call_id);
    }
  }

  #onPresence({ device, party, online }) {
    const entry = this.parties.get(party);
    const known = entry && entry.devices.find((d) => d.device === device);
    if (known) known.online = online;
    else if (entry) this.#refreshParty(party);
    this.render();
  }

  async #onLink(connected) {
    if (this.status) this.status.connected = connected;
    this.render();
    if (connected) {
      try {
        this.status = await this.api.status();
      } catch {
        // the events socket will tell us if the terminal went away
      }
      this.#refreshParties();
    }
  }

  // The terminal keeps every alarm until an operator acknowledges it; the same one
  // again comes with its count raised, and takes over the screen only the first time.
  #onAlarm(alarm) {
    const known = this.alarms.findIndex((a) => a.id === alarm.id);
    if (known >= 0) this.alarms[known] = alarm;
    else {
      this.alarms.push(alarm);
      this.pendingAlarm = alarm;
    }
    this.render();
    this.#refreshParties(); // a changed key shows in the list at once
  }

  // -- messages --------------------------------------------------------------------------

  // fresh: it came on the event stream (the latest word on it). A message as a request's
  // answer gave it may arrive after the events that moved it on: it never replaces them.
  #onMessageEvent(message, fresh = true) {
    let conversation = this.conversations.get(message.party);
    if (!conversation) {
      conversation = new Map();
      this.conversations.set(message.party, conversation);
    }
    if (!fresh && conversation.has(message.msg_id)) return;
    conversation.set(message.msg_id, message);
    if (fresh) this.loading.get(message.party)?.set(message.msg_id, message);
    this.render();
  }

  async #loadMessages(party) {
    const meanwhile = new Map();
    this.loading.set(party, meanwhile);
    try {
      const got = await this.api.messages(party);
      // The list, then what the events said since it was asked for (they are newer).
      this.conversations.set(party, new Map([...got.messages.map((m) => [m.msg_id, m]),
        ...meanwhile]));
      this.unread = got.unread;
    } catch (err) {
      this.notice = `Could not load the messages with ${party}: ${err.message}`;
    } finally {
      if (this.loading.get(party) === meanwhile) this.loading.delete(party);
    }
    this.render();
  }

  #messagesOf(party) {
    const conversation = this.conversations.get(party);
    if (!conversation) return [];
    return [...conversation.values()].sort((a, b) => (a.order ?? 0) - (b.order ?? 0));
  }

  // A conversation on the screen of a page the person is looking at has been read.
  #markRead(party) {
    if (!party || !this.unread[party] || this.reading.has(party)) return;
    if (document.visibilityState !== "visible") return;
    this.reading.add(party);
    // Read as far as what this page has shown: never a message that arrived since.
    const upto = Math.max(0, ...this.#messagesOf(party).map((m) => m.order ?? 0));
    this.api.readMessages(party, upto).catch(() => {}).finally(() => this.reading.delete(party));
  }

  // -- parties ---------------------------------------------------------------------------

  #refreshParties() {
    for (const party of this.status?.lines || []) this.#refreshParty(party);
  }

  async #refreshParty(party) {
    const previous = this.parties.get(party);
    try {
      const listing = await this.api.peers(party);
      this.parties.set(party, { ...listing, error: "" });
    } catch (err) {
      this.parties.set(party, { ...(previous || emptyParty(party)), error: err.message });
    }
    this.render();
  }

  // -- media -----------------------------------------------------------------------------

  async #mediaOpen(message) {
    const callId = message.call_id;
    const attempt = message.attempt ?? 0; // which peer connection of the call: echoed back
    // One certificate per call, for each of its peer connections: a reconnection presents
    // the fingerprint already signed, and the SAS stays the same. Kept as a promise at
    // once, so that two opens in a row share it.
    if (!this.certificates.has(callId)) {
      this.certificates.set(callId, RTCPeerConnection.generateCertificate({ name: "ECDSA", namedCurve: "P-256" }));
      while (this.certificates.size > KEEP_ENDED_CALLS) this.certificates.delete(this.certificates.keys().next().value);
    }
    const media = new CallMedia(message, {
      onCandidate: (candidate) => this.#send(Outgoing.candidate(callId, candidate, attempt)),
      onConnected: (certificates) => this.#send(Outgoing.connected(callId, certificates, attempt)),
      onFailed: (reason) => this.#send(Outgoing.failed(callId, reason, attempt)),
      onTrack: () => this.render(),
      onUnprotected: (detail) => this.#send(Outgoing.unprotected(callId, detail, attempt)),
    });
    // Registered before anything is awaited: a media.close meanwhile closes this one.
    this.media.get(callId)?.close();
    this.media.set(callId, media);
    try {
      media.certificate = await this.certificates.get(callId);
      if (media.closed) return;
      const sdp = await media.open(message.offer);
      if (!media.closed) this.#send(Outgoing.description(callId, sdp, attempt));
    } catch (err) {
      if (!media.closed) this.#send(Outgoing.failed(callId, err.message, attempt));
    }
    this.render();
  }

  #withMedia(message, operation) {
    const media = this.media.get(message.call_id);
    if (media) operation(media);
  }

  #mediaClose(callId) {
    const media = this.media.get(callId);
    if (media) media.close();
    this.media.delete(callId);
    this.render();
  }

  async #tick() {
    for (const [callId, media] of this.media) {
      try {
        const sample = await media.sample();
        if (!sample) continue;
        this.stats.set(callId, sample);
        this.#send(Outgoing.stats(callId, sample, media.attempt));
      } catch {
        // a peer connection closing under us; the next tick has nothing to sample
      }
    }
    this.render();
  }

  // -- what the person does --------------------------------------------------------------

  #actions() {
    return {
      call: (party, kind) => this.#attempt(async () => {
        const call = await this.api.placeCall(party, kind);
        this.calls.set(call.call_id, call);
        this.#focusCall(call.call_id);
      }),
      accept: () => this.#attempt(async () => {
        const ringing = this.#ringingCall();
        if (!ringing) return;
        const call = await this.api.accept(ringing.call_id);
        this.calls.set(call.call_id, call);
        this.#focusCall(call.call_id);
      }),
      decline: () => this.#attempt(async () => {
        const ringing = this.#ringingCall();
        if (ringing) this.calls.set(ringing.call_id, await this.api.decline(ringing.call_id));
      }),
      hangup: () => this.#attempt(async () => {
        if (this.focusCallId) this.calls.set(this.focusCallId, await this.api.hangup(this.focusCallId));
      }),
      toggleMute: () => this.#attempt(async () => {
        const call = this.#focusedLiveCall();
        if (call) this.calls.set(call.call_id, await this.api.setMedia(call.call_id, !call.local_audio, call.local_video));
      }),
      toggleCamera: () => this.#attempt(async () => {
        const call = this.#focusedLiveCall();
        if (call && call.media === "video") {
          this.calls.set(call.call_id, await this.api.setMedia(call.call_id, call.local_audio, !call.local_video));
        }
      }),
      closeCall: () => {
        this.notice = "";
        this.focusCallId = null;
        this.pane = this.verifyParty ? "verify" : "home";
        this.render();
      },
      sasConfirmed: () => {
        if (this.focusCallId) this.sasCompact.add(this.focusCallId);
        this.render();
      },
      openMessages: (party) => {
        this.notice = "";
        this.messagesParty = party;
        this.pane = "messages";
        if (!this.conversations.has(party)) this.#loadMessages(party);
        this.render();
      },
      closeMessages: () => {
        this.messagesParty = null;
        this.pane = this.#focusedLiveCall() ? "call" : "home";
        this.render();
      },
      sendMessage: (party, text) => this.#attempt(async () => {
        this.#onMessageEvent(await this.api.sendMessage(party, text), false);
      }),
      sendFile: (party, file) => this.#attempt(async () => {
        this.#onMessageEvent(await this.api.sendFile(party, file), false);
      }),
      fileUrl: (msgId) => this.api.fileUrl(msgId),
      openVerify: (party) => {
        this.notice = "";
        this.verifyParty = party;
        this.pane = "verify";
        this.render();
        this.#refreshParty(party);
      },
      closeVerify: () => {
        this.notice = "";
        this.verifyParty = null;
        this.pane = this.#focusedLiveCall() ? "call" : "home";
        this.render();
      },
      markVerified: (device, typed) => this.#attempt(async () => {
        try {
          await this.api.verify(device, typed);
          this.verifyErrors.delete(device);
        } catch (err) {
          this.verifyErrors.set(device, err.hint ? `${err.message}. ${err.hint}` : err.message);
        }
        await this.#refreshParty(this.verifyParty);
      }),
      acknowledgeAlarm: () => {
        this.pendingAlarm = null;
        this.render();
      },
      // An operator's acknowledgement (a record, not a dismissal): ids, or null for all.
      acknowledgeAlarms: (ids) => this.#attempt(async () => {
        await this.api.acknowledgeAlarms(ids);
        this.alarms = this.alarms.filter((a) => ids !== null && !ids.includes(a.id));
      }),
    };
  }

  async #attempt(operation) {
    try {
      this.notice = "";
      await operation();
    } catch (err) {
      this.notice = pageError(err);
    }
    this.render();
  }

  #focusCall(callId) {
    this.focusCallId = callId;
    this.pane = "call";
  }

  #focusedLiveCall() {
    const call = this.calls.get(this.focusCallId);
    return call && call.state !== CallState.ENDED ? call : null;
  }

  #ringingHere(call) {
    return call.direction === "incoming" && call.state === CallState.RINGING;
  }

  #ringingCall() {
    return [...this.calls.values()].find((c) => this.#ringingHere(c)) || null;
  }

  // -- rendering -------------------------------------------------------------------------

  render() {
    const { view, status } = this;
    if (status) view.showIdentity(status);
    if (!this.terminalUp) view.showLink("terminal not reachable", false);
    else if (status && !status.connected) view.showLink("line server: NOT CONNECTED", false);
    else view.showLink("line server: connected" + nodeNote(status), true);
    view.robot = status?.media === "robot";
    view.showMediaRole(this.isMediaPage, status?.media);
    view.showPageError(this.notice);
    const order = status?.lines || [];
    view.showParties(order.map((party) => this.parties.get(party) || emptyParty(party)));
    view.showAlarmList(this.alarms);
    this.talkPanel.show(this.talkView, order, this.reminder);
    this.recordPanel.showSidebar(this.recordView?.record, this.statementList, order);
    view.showUnread(this.unread);

    const call = this.calls.get(this.focusCallId);
    const pane = this.pane === "call" && !call ? "home" : this.pane;
    view.showPane(pane);
    if (pane === "messages" && this.messagesParty) {
      view.showMessages(this.messagesParty, this.#messagesOf(this.messagesParty));
      this.#markRead(this.messagesParty);
    }
    if (pane === "record") this.recordPanel.showRecord(this.recordView);
    if (pane === "statement") {
      this.recordPanel.showStatement(this.statementList.find((s) => s.statement === this.statementId), status?.party);
    }
    if (pane === "verify" && this.verifyParty) {
      view.showVerification(this.verifyParty, this.parties.get(this.verifyParty)?.devices || [], this.verifyErrors);
    }
    if (call) {
      view.showCall(call, this.media.get(call.call_id) || null, {
        sasCompact: this.sasCompact.has(call.call_id), now: Date.now(),
      });
      view.showQuality(this.stats.get(call.call_id) || null);
      // Messages from the party on the line show beside the call, without leaving it.
      const live = call.state !== CallState.ENDED;
      if (live && !this.conversations.has(call.peer_party)) {
        this.conversations.set(call.peer_party, new Map());
        this.#loadMessages(call.peer_party);
      }
      view.showCallMessages(live ? call.peer_party : null, this.#messagesOf(call.peer_party));
      if (live && pane === "call") this.#markRead(call.peer_party);
    }
    if (pane !== this.shownPane) {
      this.shownPane = pane;
      if (pane === "call") view.focusCall();
      if (pane === "verify") view.focusVerification();
      if (pane === "messages") view.focusMessages();
    }

    const ringing = this.#ringingCall();
    view.showIncoming(ringing);
    if (ringing) this.ringer.start();
    else this.ringer.stop();
    view.showAlarm(this.pendingAlarm);
  }
}

const app = new App(document, new URLSearchParams(location.search).get("token"));
app.start();
