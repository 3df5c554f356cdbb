// The page's DOM: finds the elements once and updates them in place from the
// app's state. Text goes in through textContent only; nothing here talks to
// the terminal or to WebRTC.

import { ConversationView } from "./messages.js";
import { CallState, EndReason, MediaKind, Trust } from "./protocol.js";

// "Tue 19:42 in Europe/Moscow (GMT+3)": the time in another party's zone, as the browser's
// own time-zone data gives it.
export function localTime(zone, now = new Date()) {
  try {
    const time = new Intl.DateTimeFormat("en-GB", { timeZone: zone, weekday: "short",
      hour: "2-digit", minute: "2-digit" }).format(now);
    const offset = new Intl.DateTimeFormat("en-GB", { timeZone: zone, timeZoneName: "shortOffset" })
      .formatToParts(now).find((part) => part.type === "timeZoneName");
    return `${time} in ${zone}${offset ? ` (${offset.value})` : ""}`;
  } catch {
    return "";
  }
}

const ALARMS_SHOWN = 10;
const STATE_TEXT = {
  [CallState.DIALING]: "Calling…",
  [CallState.RINGBACK]: "Ringing…",
  [CallState.RINGING]: "Incoming call",
  [CallState.CONNECTING]: "Connecting and checking the encryption…",
  [CallState.ACTIVE]: "In call",
  [CallState.RECONNECTING]: "Connection lost: reconnecting…",
  [CallState.ENDED]: "Call ended",
};

const END_TEXT = {
  [EndReason.HUNG_UP]: "you hung up",
  [EndReason.REMOTE_HUNG_UP]: "the other side hung up",
  [EndReason.DECLINED]: "the other side declined",
  [EndReason.REJECTED]: "you declined",
  [EndReason.BUSY]: "the other side is busy",
  [EndReason.NO_ANSWER]: "no answer",
  [EndReason.MISSED]: "missed",
  [EndReason.UNREACHABLE]: "the other side's terminal is not reachable",
  [EndReason.NOT_VERIFIED]: "refused: a key is not verified",
  [EndReason.FAILED]: "the connection failed",
  [EndReason.CONNECTION_LOST]: "the connection was lost and did not come back",
  [EndReason.INTERCEPTED]: "INTERCEPTED",
};

const TRUST_TEXT = {
  [Trust.VERIFIED]: "verified",
  [Trust.UNVERIFIED]: "not verified",
  [Trust.CHANGED]: "KEY CHANGED",
};

function byId(root, testid) {
  const element = root.querySelector(`[data-testid="${testid}"]`);
  if (!element) throw new Error(`the page has no ${testid}`);
  return element;
}

function formatDuration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = String(Math.floor((total % 3600) / 60)).padStart(2, "0");
  const seconds = String(total % 60).padStart(2, "0");
  return hours > 0 ? `${hours}:${minutes}:${seconds}` : `${minutes}:${seconds}`;
}

function endText(reason) {
  return END_TEXT[reason] || reason || "";
}

export class View {
  // actions: callbacks into the app, named after what the person does.
  constructor(doc, actions) {
    this.doc = doc;
    this.actions = actions;
    const $ = (testid) => byId(doc, testid);
    this.el = {
      me: $("me"), myFingerprint: $("my-fingerprint"), link: $("link-state"),
      mediaRole: $("media-role"), pageError: $("page-error"),
      parties: $("parties"), noLines: $("no-lines"),
      alarmsPanel: $("alarms-panel"), alarmList: $("alarm-list"), alarmCount: $("alarm-count"),
      alarmAckAll: $("alarm-ack-all"),
      home: $("home-pane"), verify: $("verify-pane"), call: $("call-pane"),
      messagesPane: $("messages-pane"), messagesParty: $("messages-party"),
      recordPane: $("record-pane"), statementPane: $("statement-pane"),
      messagesClose: $("messages-close"), callMessages: $("call-messages"),
      verifyParty: $("verify-party"), verifyPartyAgain: $("verify-party-again"),
      verifyDevices: $("verify-devices"), verifyClose: $("verify-close"),
      callDirection: $("call-direction"), callPeer: $("call-peer"), callState: $("call-state"),
      verifiedBadge: $("verified-badge"), unverifiedBadge: $("unverified-badge"), timer: $("call-timer"),
      mediaProtection: $("media-protection"),
      sasPanel: $("sas-panel"), sas: $("sas"), sasCompact: $("sas-compact"), sasLabel: $("sas-label"),
      callFailed: $("call-failed"), callFailedTitle: $("call-failed-title"), callFailedDetail: $("call-failed-detail"),
      stage: $("stage"), remoteVideo: $("remote-video"), localVideo: $("local-video"),
      voiceOnly: $("voice-only"), stageWaiting: $("stage-waiting"), remoteMedia: $("remote-media"),
      mute: $("mute"), camera: $("camera"), hangup: $("hangup"), callClose: $("call-close"),
      qRtt: $("q-rtt"), qJitter: $("q-jitter"), qLoss: $("q-loss"), qBitrate: $("q-bitrate"),
      qResolution: $("q-resolution"), qFrames: $("q-frames"), qLayer: $("q-layer"),
      incoming: $("incoming"), incomingPeer: $("incoming-peer"), incomingDetail: $("incoming-detail"),
      incomingAccept: $("incoming-accept"), incomingDecline: $("incoming-decline"),
      alarm: $("alarm"), alarmTitle: $("alarm-title"), alarmMessage: $("alarm-message"),
      alarmHint: $("alarm-hint"), alarmCode: $("alarm-code"), alarmAck: $("alarm-ack"),
    };
    const conversationActions = {
      send: (party, text) => actions.sendMessage(party, text),
      sendFile: (party, file) => actions.sendFile(party, file),
      downloadUrl: (msgId) => actions.fileUrl(msgId),
    };
    this.conversation = new ConversationView(doc, $("conversation"), conversationActions);
    this.callConversation = new ConversationView(doc, this.el.callMessages, conversationActions);
    this.partyTemplate = doc.getElementById("party-template");
    this.deviceTemplate = doc.getElementById("device-template");
    this.partyItems = new Map(); // party -> <li>
    this.shownIncoming = null;
    this.shownAlarm = null;
    this.remoteAttached = null;
    this.localAttached = null;
    this.#wire();
  }

  #wire() {
    const { el, actions } = this;
    el.verifyClose.addEventListener("click", () => actions.closeVerify());
    el.messagesClose.addEventListener("click", () => actions.closeMessages());
    el.mute.addEventListener("click", () => actions.toggleMute());
    el.camera.addEventListener("click", () => actions.toggleCamera());
    el.hangup.addEventListener("click", () => actions.hangup());
    el.callClose.addEventListener("click", () => actions.closeCall());
    el.sasCompact.addEventListener("click", () => actions.sasConfirmed());
    el.incomingAccept.addEventListener("click", () => actions.accept());
    el.incomingDecline.addEventListener("click", () => actions.decline());
    el.alarmAck.addEventListener("click", () => actions.acknowledgeAlarm());
    el.alarmAckAll.addEventListener("click", () => actions.acknowledgeAlarms(null));
    this.doc.addEventListener("keydown", (event) => {
      if (!el.alarm.hidden) {
        if (event.key === "Escape") actions.acknowledgeAlarm();
        return;
      }
      if (!el.incoming.hidden) {
        if (event.key === "Escape") actions.decline();
        return;
      }
      const typing = event.target instanceof HTMLInputElement
        || event.target instanceof HTMLTextAreaElement;
      if (typing || event.ctrlKey || event.metaKey || event.altKey || el.call.hidden) return;
      if (event.key === "m" || event.key === "M") actions.toggleMute();
      if (event.key === "v" || event.key === "V") actions.toggleCamera();
    });
  }

  // -- the frame ------------------------------------------------------------------------

  showIdentity(status) {
    this.el.me.textContent = status.device;
    this.el.myFingerprint.textContent = `key ${status.fingerprint}`;
  }

  showLink(text, up) {
    this.el.link.textContent = text;
    this.el.link.dataset.up = String(up);
  }

  showMediaRole(isMediaPage, media) {
    this.el.mediaRole.hidden = isMediaPage && media !== "robot";
    this.el.mediaRole.textContent = media === "robot"
      ? "This terminal's robot does the calls' audio and video (a test pattern and a tone), not this browser. This page shows the calls and controls the robot."
      : "Another tab of this terminal does the calls' audio and video. Use that tab, or reload this one to take over.";
  }

  showPageError(text) {
    this.el.pageError.textContent = text || "";
    this.el.pageError.hidden = !text;
  }

  showPane(name) {
    this.el.home.hidden = name !== "home";
    this.el.verify.hidden = name !== "verify";
    this.el.call.hidden = name !== "call";
    this.el.messagesPane.hidden = name !== "messages";
    this.el.recordPane.hidden = name !== "record";
    this.el.statementPane.hidden = name !== "statement";
  }

  // -- messages --------------------------------------------------------------------------

  showMessages(party, messages) {
    this.el.messagesParty.textContent = party;
    this.conversation.show(party, messages);
  }

  // Beside a call: the conversation with the party called, as it comes.
  showCallMessages(party, messages) {
    this.el.callMessages.hidden = !party;
    if (party) this.callConversation.show(party, messages);
  }

  focusMessages() { this.conversation.focus(); }

  showUnread(unread) {
    for (const [party, item] of this.partyItems) {
      const badge = byId(item, "unread");
      const count = unread[party] || 0;
      badge.hidden = count === 0;
      badge.textContent = count ? String(count) : "";
      byId(item, "messages-button").setAttribute(
        "aria-label", `Messages with ${party}${count ? `, ${count} unread` : ""}`);
    }
  }

  // -- lines and parties ----------------------------------------------------------------

  // parties: [{party, devices: [...], error}] in display order.
  showParties(parties) {
    this.el.noLines.hidden = parties.length > 0;
    const keep = new Set(parties.map((p) => p.party));
    for (const [party, item] of this.partyItems) {
      if (!keep.has(party)) {
        item.remove();
        this.partyItems.delete(party);
      }
    }
    for (const entry of parties) {
      let item = this.partyItems.get(entry.party);
      if (!item) {
        item = this.#newPartyItem(entry.party);
        this.partyItems.set(entry.party, item);
      }
      this.el.parties.append(item); // keeps the order given
      this.#fillParty(item, entry);
    }
  }

  #newPartyItem(party) {
    const item = this.partyTemplate.content.firstElementChild.cloneNode(true);
    item.dataset.party = party;
    byId(item, "party-name").textContent = party;
    for (const [testid, action] of [["call-button", () => this.actions.call(party, MediaKind.VIDEO)],
      ["voice-call-button", () => this.actions.call(party, MediaKind.AUDIO)],
      ["verify-button", () => this.actions.openVerify(party)],
      ["messages-button", () => this.actions.openMessages(party)]]) {
      const button = byId(item, testid);
      button.dataset.party = party;
      button.addEventListener("click", action);
    }
    byId(item, "call-button").setAttribute("aria-label", `Video call ${party}`);
    byId(item, "voice-call-button").setAttribute("aria-label", `Voice call ${party}`);
    byId(item, "verify-button").setAttribute("aria-label", `Safety number of ${party}`);
    return item;
  }

  #fillParty(item, entry) {
    // The terminal sums the party up (trust, warning); this only shows it.
    const { devices, trust, warning: text } = entry;
    const online = devices.some((d) => d.online);
    const presence = byId(item, "presence");
    presence.dataset.online = String(online);
    presence.textContent = online ? "online" : "offline";
    const trustEl = byId(item, "trust");
    trustEl.dataset.trust = trust || "none";
    trustEl.textContent = trust ? TRUST_TEXT[trust] : "no device";
    item.dataset.trust = trust || "none";
    const warning = byId(item, "party-warning");
    warning.textContent = text || entry.error;
    warning.hidden = !warning.textContent;
    // Its principal as the line host registered it, and the time there now.
    byId(item, "party-display").textContent = entry.display && entry.display !== entry.party
      ? entry.display : "";
    const time = byId(item, "party-time");
    time.textContent = entry.timezone ? localTime(entry.timezone) : "";
    time.dataset.zone = entry.timezone || "";
  }

  // -- verification ---------------------------------------------------------------------

  showVerification(party, devices, errors) {
    this.el.verifyParty.textContent = party;
    this.el.verifyPartyAgain.textContent = party;
    const container = this.el.verifyDevices;
    const existing = new Map([...container.children].map((node) => [node.dataset.device, node]));
    const keep = new Set(devices.map((d) => d.device));
    for (const [device, node] of existing) if (!keep.has(device)) node.remove();
    if (devices.length === 0) {
      container.textContent = `${party} has no enrolled device yet.`;
      return;
    }
    for (const node of [...container.childNodes]) if (node.nodeType === Node.TEXT_NODE) node.remove();
    for (const device of devices) {
      let node = existing.get(device.device);
      if (!node) {
        node = this.deviceTemplate.content.firstElementChild.cloneNode(true);
        node.dataset.device = device.device;
        const form = byId(node, "verify-form");
        form.addEventListener("submit", (event) => {
          event.preventDefault();
          this.actions.markVerified(device.device, byId(node, "typed-number").value.trim());
        });
        container.append(node);
      }
      byId(node, "device-id").textContent = device.device;
      const trust = byId(node, "device-trust");
      trust.dataset.trust = device.trust;
      trust.textContent = TRUST_TEXT[device.trust] || device.trust;
      byId(node, "device-online").textContent = device.online ? "online" : "offline";
      byId(node, "key-changed-warning").hidden = device.trust !== Trust.CHANGED;
      byId(node, "pinned-fingerprint").textContent = device.verified_fingerprint || "";
      node.dataset.trust = device.trust;
      // Twelve groups of five, in three rows of four: easy to read aloud.
      const number = byId(node, "safety-number");
      number.replaceChildren(...device.safety_number.split(" ").map((group) => {
        const span = this.doc.createElement("span");
        span.textContent = group;
        return span;
      }));
      number.setAttribute("aria-label", `safety number ${device.safety_number}`);
      const qr = byId(node, "safety-qr");
      if (qr.getAttribute("src") !== device.safety_qr) qr.setAttribute("src", device.safety_qr);
      byId(node, "device-fingerprint").textContent = device.fingerprint;
      const button = byId(node, "mark-verified");
      button.textContent = device.trust === Trust.VERIFIED ? "Verified ✓ (verify again)" : "Mark verified";
      const error = byId(node, "verify-error");
      const message = errors.get(device.device);
      error.textContent = message || "";
      error.hidden = !message;
    }
  }

  focusVerification() {
    const first = this.el.verifyDevices.querySelector('[data-testid="mark-verified"]');
    (first || this.el.verifyClose).focus();
  }

  // -- the call -------------------------------------------------------------------------

  // call: the terminal's CallInfo; media: the CallMedia or null; ui: {sasCompact, now}.
  showCall(call, media, ui) {
    const { el } = this;
    const ended = call.state === CallState.ENDED;
    const intercepted = ended && call.end_reason === EndReason.INTERCEPTED;
    el.call.dataset.state = call.state;
    el.call.dataset.reason = call.end_reason || "";
    el.callDirection.textContent = call.direction === "outgoing" ? "Call with" : "Call from";
    el.callPeer.textContent = call.peer;
    el.callState.dataset.state = call.state;
    el.callState.dataset.reason = call.end_reason || "";
    el.callState.textContent = ended ? `${STATE_TEXT[call.state]}: ${endText(call.end_reason)}` : STATE_TEXT[call.state];
    el.verifiedBadge.hidden = !(call.verified && !ended);
    el.unverifiedBadge.hidden = !(call.state === CallState.ACTIVE && !call.verified);
    el.unverifiedBadge.textContent = `Not verified: press Safety number beside ${call.peer_party} and compare it with its operator`;
    // core/sframe.py: every frame sealed end to end inside DTLS-SRTP, or DTLS-SRTP alone.
    const layered = call.media_protection === "sframe+dtls-srtp";
    el.mediaProtection.hidden = ended;
    el.mediaProtection.dataset.protection = call.media_protection || "";
    el.mediaProtection.classList.toggle("ok", layered);
    el.mediaProtection.classList.toggle("warn", !layered);
    el.mediaProtection.textContent = layered
      ? "Media: end to end (SFrame, post-quantum keys) inside DTLS-SRTP"
      : "Media NOT protected end to end: DTLS-SRTP only";
    el.timer.textContent = this.#timerText(call, ui.now);

    const showSas = Boolean(call.sas) && !ended;
    el.sasPanel.hidden = !showSas;
    el.sasPanel.classList.toggle("compact", ui.sasCompact);
    el.sas.textContent = call.sas || "";
    // A reconnection with another certificate changes the code: it is said, to be read again.
    el.sasPanel.classList.toggle("changed", Boolean(call.sas_changed));
    el.sasPanel.dataset.changed = String(Boolean(call.sas_changed));
    el.sasLabel.textContent = call.sas_changed
      ? "The code changed when the connection was restored. Read the new code aloud: the other side must see the same digits:"
      : "Read this code aloud. The other side must see the same digits:";

    el.callFailed.hidden = !(intercepted || (ended && call.alarm));
    el.callFailed.classList.toggle("danger", intercepted);
    el.callFailedTitle.textContent = intercepted
      ? "INTERCEPTED: someone tampered with this call. It was hung up and no media was played."
      : `The call ended: ${endText(call.end_reason)}`;
    el.callFailedDetail.textContent = call.alarm || "";

    const video = call.media === MediaKind.VIDEO;
    el.voiceOnly.hidden = video || ended;
    el.stageWaiting.textContent = ended ? `Call ended: ${endText(call.end_reason)}`
      : call.state !== CallState.ACTIVE ? STATE_TEXT[call.state]
        : media ? "" : this.robot ? "The robot sends a test pattern and a tone in this call; its media is not played here."
          : "This call's audio and video are in another tab of this terminal.";
    // Remote media plays only once the terminal has checked the handshake (state active).
    this.#attach(el.remoteVideo, call.state === CallState.ACTIVE && media ? media.remoteStream : null, "remoteAttached");
    this.#attach(el.localVideo, !ended && video && media && media.localStream ? media.localStream : null, "localAttached");
    el.localVideo.hidden = !video || ended || !call.local_video;
    el.remoteVideo.classList.toggle("off", !video || !call.remote_video);

    el.mute.setAttribute("aria-pressed", String(!call.local_audio));
    el.mute.textContent = call.local_audio ? "Mute" : "Unmute";
    el.camera.setAttribute("aria-pressed", String(!call.local_video));
    el.camera.textContent = call.local_video ? "Camera off" : "Camera on";
    el.mute.hidden = ended;
    el.camera.hidden = !video || ended;
    el.hangup.hidden = ended;
    el.callClose.hidden = !ended;
    const remote = [];
    if (!ended && call.state === CallState.ACTIVE) {
      if (!call.remote_audio) remote.push(`${call.peer_party} has muted the microphone`);
      if (video && !call.remote_video) remote.push(`${call.peer_party} has turned the camera off`);
    }
    el.remoteMedia.textContent = remote.join(" · ");
  }

  #timerText(call, now) {
    if (call.state === CallState.ACTIVE && call.active_ms) return formatDuration(now - call.active_ms);
    if (call.state === CallState.ENDED && call.active_ms && call.ended_ms) return formatDuration(call.ended_ms - call.active_ms);
    return "";
  }

  #attach(video, stream, slot) {
    if (this[slot] === stream) return;
    this[slot] = stream;
    video.srcObject = stream;
    if (stream) video.play().catch(() => {});
  }

  focusCall() {
    if (!this.el.hangup.hidden) this.el.mute.focus();
    else this.el.callClose.focus();
  }

  showQuality(stats) {
    const { el } = this;
    const dash = "–";
    if (!stats) {
      for (const node of [el.qRtt, el.qJitter, el.qLoss, el.qBitrate, el.qResolution, el.qFrames, el.qLayer]) node.textContent = dash;
      return;
    }
    const video = stats.video || {};
    const audio = stats.audio || {};
    const jitter = video.jitter_ms ?? audio.jitter_ms;
    el.qRtt.textContent = stats.rtt_ms != null ? `${stats.rtt_ms} ms` : dash;
    el.qJitter.textContent = jitter != null ? `${jitter} ms` : dash;
    el.qLoss.textContent = stats.loss_pct != null ? `${stats.loss_pct} %` : dash;
    el.qBitrate.textContent = stats.bitrate_in_kbps != null ? `${Math.round(stats.bitrate_in_kbps)} / ${Math.round(stats.bitrate_out_kbps)} kbit/s` : dash;
    el.qResolution.textContent = video.frame_width ? `${video.frame_width}×${video.frame_height}${video.fps ? ` @ ${Math.round(video.fps)} fps` : ""}` : dash;
    el.qFrames.textContent = video.frames_decoded != null ? String(video.frames_decoded) : dash;
    // The SFrame layer's counts (sframe-worker.js): frames opened, and dropped (never played).
    const opened = (audio.sframe_opened ?? 0) + (video.sframe_opened ?? 0);
    const dropped = (audio.sframe_dropped ?? 0) + (video.sframe_dropped ?? 0);
    el.qLayer.textContent = audio.sframe_opened != null ? `${opened} / ${dropped}` : dash;
  }

  // -- incoming calls and alarms ----------------------------------------------------------

  showIncoming(call) {
    const { el } = this;
    if (!call) {
      el.incoming.hidden = true;
      this.shownIncoming = null;
      return;
    }
    el.incomingPeer.textContent = call.peer;
    el.incomingDetail.textContent = `${call.media === MediaKind.AUDIO ? "Voice call" : "Video call"}, ${call.peer_trust === Trust.VERIFIED ? "key verified" : "KEY NOT VERIFIED"}`;
    if (this.shownIncoming !== call.call_id) {
      this.shownIncoming = call.call_id;
      el.incoming.hidden = false;
      el.incomingAccept.focus();
    }
  }

  showAlarm(alarm) {
    const { el } = this;
    if (!alarm) {
      el.alarm.hidden = true;
      this.shownAlarm = null;
      return;
    }
    el.alarmTitle.textContent = alarm.title;
    el.alarmMessage.textContent = alarm.message;
    el.alarmHint.textContent = alarm.hint || "";
    el.alarmCode.textContent = alarm.code;
    if (this.shownAlarm !== alarm) {
      this.shownAlarm = alarm;
      el.alarm.hidden = false;
      el.alarmAck.focus();
    }
  }

  // Every open alarm stays listed until an operator acknowledges it (the newest first;
  // past ALARMS_SHOWN, a count of the rest).
  showAlarmList(alarms) {
    const { el, doc, actions } = this;
    el.alarmsPanel.hidden = alarms.length === 0;
    el.alarmCount.textContent = alarms.length > 1 ? `(${alarms.length})` : "";
    el.alarmAckAll.hidden = alarms.length < 2;
    const shown = alarms.slice(-ALARMS_SHOWN).reverse();
    const items = shown.map((alarm) => {
      const item = doc.createElement("li");
      item.dataset.testid = "open-alarm";
      item.dataset.code = alarm.code;
      const head = doc.createElement("strong");
      const times = alarm.count > 1 ? ` ×${alarm.count}` : "";
      head.textContent = `${alarm.title}${times}`;
      const when = doc.createElement("span");
      when.className = "alarm-when";
      when.textContent = ` ${new Date(alarm.time_ms).toLocaleString()}`;
      const text = doc.createElement("p");
      text.textContent = alarm.message;
      const ack = doc.createElement("button");
      ack.type = "button";
      ack.className = "small";
      ack.dataset.testid = "alarm-acknowledge";
      ack.textContent = "Acknowledge";
      ack.addEventListener("click", () => actions.acknowledgeAlarms([alarm.id]));
      item.append(head, when, text, ack);
      return item;
    });
    if (alarms.length > shown.length) {
      const more = doc.createElement("li");
      more.className = "alarm-more";
      more.textContent = `…and ${alarms.length - shown.length} older ones, open until acknowledged`;
      items.push(more);
    }
    el.alarmList.replaceChildren(...items);
  }
}
