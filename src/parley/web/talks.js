// Scheduled talks on the page: request one, answer one, propose another time, and join.
//
// The terminal keeps the talks and their exchange (core.schedule): the page shows each
// talk's time in both parties' zones, its state, the line's last test beside it, and
// offers what the person may do now. Text from elsewhere is set as text only.

import { button, element } from "./dom.js";

const STATE_TEXT = { proposed: "Requested", countered: "Another time proposed",
  confirmed: "Confirmed", tentative: "Tentative", declined: "Declined", cancelled: "Cancelled" };

export class TalkPanel {
  // root: the element holding the request form and [data-testid=talk-list]; act(op, id,
  // fields) and request(fields) go to the terminal; join(party, media) calls.
  constructor(doc, root, actions) {
    this.doc = doc;
    this.root = root;
    this.actions = actions;
    this.list = root.querySelector('[data-testid="talk-list"]');
    this.form = root.querySelector('[data-testid="talk-form"]');
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = (id) => this.form.querySelector(`[data-testid="${id}"]`).value.trim();
      this.actions.request({ party: value("talk-party"), title: value("talk-title"),
        at: value("talk-at") ? `${value("talk-at").replace("T", " ")} ${value("talk-zone")}` : null,
        duration_s: Math.round(Number(value("talk-duration")) * 60) || 3600,
        media: value("talk-media") || "video", agenda: value("talk-agenda") });
    });
  }

  show(view, parties, reminder) {
    const partySelect = this.form.querySelector('[data-testid="talk-party"]');
    if (partySelect.options.length !== parties.length) {
      partySelect.replaceChildren(...parties.map((p) => new Option(p, p)));
    }
    const zoneSelect = this.form.querySelector('[data-testid="talk-zone"]');
    const zones = [...new Set([...(view?.zones || []), "UTC"])];
    if (zoneSelect.options.length !== zones.length) {
      zoneSelect.replaceChildren(...zones.map((z) => new Option(z, z)));
    }
    const banner = this.root.querySelector('[data-testid="talk-reminder"]');
    banner.textContent = reminder ? `Reminder: ${reminder.text}` : "";
    banner.hidden = !reminder;
    const talks = (view && view.talks) || [];
    this.list.replaceChildren(...talks.filter((t) => t.state !== "cancelled" || t.mine)
      .map((t) => this.#talk(t)));
  }

  #el(tag, className, text) {
    return element(this.doc, tag, className, text);
  }

  #button(label, testid, onClick, ghost) {
    return button(this.doc, label, testid, onClick, ghost);
  }

  #talk(talk) {
    const item = this.#el("li", `talk ${talk.state}`);
    item.dataset.testid = "talk";
    item.dataset.talk = talk.talk_id;
    item.dataset.state = talk.state;
    const head = this.#el("div", "talk-head");
    head.append(this.#el("strong", "", talk.title),
      this.#el("span", `talk-state ${talk.state}`, STATE_TEXT[talk.state] || talk.state));
    item.append(head);
    const who = talk.mine ? `with ${talk.with_name}, requested by you` : `requested by ${talk.with_name}`;
    item.append(this.#el("div", "muted small", `${who} · ${talk.media === "audio" ? "voice" : "video"}, ${Math.round(talk.duration_s / 60)} min`));
    const when = this.#el("div", "talk-when", `${talk.when}${talk.until ? ` (${talk.until})` : ""}`);
    when.dataset.testid = "talk-when";
    item.append(when);
    if (talk.counter) {
      const counter = this.#el("div", "talk-counter", `Proposed instead: ${talk.counter_when}${talk.counter.note ? ` -- “${talk.counter.note}”` : ""}`);
      counter.dataset.testid = "talk-counter";
      item.append(counter);
    }
    if (talk.line) {
      const age = talk.line.age_ms === null ? "never tested" : `tested ${Math.round(talk.line.age_ms / 60000)} min ago`;
      item.append(this.#el("div", `small line-${talk.line.status}`, `line ${talk.line.status}, ${age}`));
    }
    const actions = this.#el("div", "talk-actions");
    const id = talk.talk_id;
    const act = (op, fields = {}) => this.actions.act(op, id, fields);
    const propose = () => {
      const input = item.querySelector('[data-testid="talk-counter-at"]');
      if (input.value) act("counter", { at: `${input.value.replace("T", " ")} ${talk.zones[0]}` });
    };
    if (!talk.mine && ["proposed", "tentative", "declined"].includes(talk.state)) {
      actions.append(this.#button("Accept", "talk-accept", () => act("accept")),
        this.#button("Decline", "talk-decline", () => act("decline"), true));
      const input = this.#el("input");
      input.type = "datetime-local";
      input.dataset.testid = "talk-counter-at";
      input.setAttribute("aria-label", `another time, in ${talk.zones[0]}`);
      actions.append(input, this.#button("Propose this time", "talk-propose", propose, true));
    }
    if (talk.mine && talk.state === "countered") {
      actions.append(this.#button("Take their time", "talk-take-counter", () => act("take-counter")),
        this.#button("Keep mine", "talk-decline-counter", () => act("decline-counter"), true));
    }
    if (talk.mine && talk.state !== "cancelled") {
      actions.append(this.#button("Cancel the talk", "talk-cancel", () => act("cancel"), true));
    }
    const now = Date.now();
    const joinable = talk.start_ms === null
      || (talk.start_ms - now < 10 * 60000 && now < talk.start_ms + talk.duration_s * 1000);
    if (talk.state === "confirmed" && joinable) {
      actions.append(this.#button("Join", "talk-join", () => this.actions.join(talk.with, talk.media)));
    }
    item.append(actions);
    return item;
  }
}
