// A conversation with one party: its messages, in the order the terminal shows them, and
// a composer. The same view serves the Messages pane and the panel beside a call.
//
// Everything here comes from the terminal (the messages, their receipts, a file's
// progress); the page only shows it. A message's text is the other side's words: it is
// only ever set as text, never as markup.

const STATUS_TEXT = { queued: "Waiting to be sent", sent: "Sent", delivered: "Delivered",
  read: "Read", failed: "Not sent" };

function sizeText(bytes) {
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (bytes >= 1e3) return `${Math.round(bytes / 1e3)} kB`;
  return `${bytes} bytes`;
}

// sent -> delivered (to every device) -> read (by someone there); or waiting, or failed.
// Only for what this device sent: a copy of what another of our own devices sent has none.
export function messageStatus(message) {
  if (!message.outgoing || message.mine === false) return null;
  if (message.state === "failed") return "failed";
  const deliveries = message.deliveries || [];
  if (deliveries.length && deliveries.some((d) => d.read_ms)) return "read";
  if (deliveries.length && deliveries.every((d) => d.delivered_ms)) return "delivered";
  return message.state === "queued" ? "queued" : "sent";
}

export class ConversationView {
  // root: an element holding [data-testid=message-list] and a composer form.
  constructor(doc, root, actions) {
    this.doc = doc;
    this.root = root;
    this.actions = actions; // {send(party, text), sendFile(party, file), downloadUrl(msgId)}
    this.party = null;
    this.list = root.querySelector('[data-testid="message-list"]');
    this.empty = root.querySelector('[data-testid="no-messages"]');
    this.text = root.querySelector('[data-testid="message-text"]');
    this.file = root.querySelector('[data-testid="message-file"]');
    this.items = new Map(); // msg_id -> <li>
    const form = root.querySelector('[data-testid="composer"]');
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = this.text.value;
      if (this.party && text.trim()) {
        this.actions.send(this.party, text);
        this.text.value = "";
      }
    });
    this.text.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) { // Shift+Enter: a new line
        event.preventDefault();
        form.requestSubmit();
      }
    });
    this.file.addEventListener("change", () => {
      const chosen = this.file.files && this.file.files[0];
      if (this.party && chosen) this.actions.sendFile(this.party, chosen);
      this.file.value = "";
    });
  }

  focus() { this.text.focus(); }

  // messages: the party's, oldest first.
  show(party, messages) {
    if (party !== this.party) {
      this.party = party;
      this.items.clear();
      this.list.replaceChildren();
    }
    const atBottom = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    for (const message of messages) {
      let item = this.items.get(message.msg_id);
      if (!item) {
        item = this.doc.createElement("li");
        item.dataset.testid = "message";
        item.dataset.msgId = message.msg_id;
        this.items.set(message.msg_id, item);
      }
      this.list.append(item); // keeps the terminal's order
      this.#fill(item, message);
    }
    if (this.empty) this.empty.hidden = messages.length > 0;
    if (atBottom) this.list.scrollTop = this.list.scrollHeight;
  }

  #fill(item, message) {
    const d = this.doc;
    const status = messageStatus(message);
    item.className = `message ${message.outgoing ? "outgoing" : "incoming"} kind-${message.kind}`;
    item.dataset.state = message.state;
    item.dataset.status = status || "";
    const head = d.createElement("p");
    head.className = "message-head";
    const when = new Date(message.time_ms).toLocaleString();
    const who = !message.outgoing ? message.sender
      : message.mine === false ? `You, on ${message.sender}` : "You";
    head.textContent = message.kind === "lost" ? when
      : `${who} · ${when}${message.late ? " · came late, after it was declared lost" : ""}`;
    if (message.late) item.classList.add("late");
    const parts = [head];
    if (message.kind === "lost") {
      const notice = d.createElement("p");
      notice.className = "message-lost";
      notice.dataset.testid = "message-lost";
      notice.textContent = message.text;
      parts.push(notice);
    } else if (message.kind === "file") {
      parts.push(this.#file(message));
    }
    if (message.kind !== "lost" && message.text) {
      const text = d.createElement("p");
      text.className = "message-text";
      text.dataset.testid = "message-body";
      text.textContent = message.text;
      parts.push(text);
    }
    if (status) {
      const line = d.createElement("p");
      line.className = "message-status";
      line.dataset.testid = "message-status";
      line.dataset.status = status;
      const devices = (message.deliveries || []).map((x) => x.device).join(", ");
      line.textContent = STATUS_TEXT[status] + (status === "failed" && message.error
        ? `: ${message.error}` : devices && status !== "queued" ? ` · ${devices}` : "");
      parts.push(line);
    }
    item.replaceChildren(...parts);
  }

  #file(message) {
    const d = this.doc;
    const f = message.file;
    const box = d.createElement("div");
    box.className = "file";
    box.dataset.testid = "message-file-card";
    const name = d.createElement("p");
    name.className = "file-name";
    name.textContent = `${f.name} · ${sizeText(f.size)}`;
    box.append(name);
    const ours = message.outgoing && message.mine !== false; // this device's own copy
    const whole = ours ? message.state !== "queued" || f.done >= f.chunks
      : message.state === "complete";
    if (!whole || (ours && message.state === "queued")) {
      const bar = d.createElement("progress");
      bar.dataset.testid = "file-progress";
      bar.max = Math.max(1, f.chunks);
      bar.value = f.done;
      bar.setAttribute("aria-label", `${ours ? "sent" : "received"} ${f.done} of ${f.chunks} parts`);
      box.append(bar);
    }
    if (message.state === "corrupt") {
      const bad = d.createElement("p");
      bad.className = "form-error";
      bad.textContent = "It arrived damaged (its checksum does not match) and is not offered.";
      box.append(bad);
    } else if (ours || message.state === "complete") {
      const link = d.createElement("a");
      link.dataset.testid = "file-download";
      link.href = this.actions.downloadUrl(message.msg_id);
      link.download = f.name;
      link.textContent = "Download";
      box.append(link);
    }
    return box;
  }
}
