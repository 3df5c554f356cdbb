// The agreed record and joint statements on the page.
//
// The terminal keeps the log, witnesses the other site's and keeps the statements
// (core.record, core.statement). The page shows the log as a timeline and who
// cosigned it how far, and a statement's flow: a draft, the other side's edits as a
// diff, "Sign this version" -- which names the version *and the hash* of exactly what
// is on the screen, so that nothing else can be signed -- and the final state with
// both signatures. Text from elsewhere is set as text only.

// A line diff (longest common subsequence): [{op: " " | "-" | "+", line}].
import { button, element } from "./dom.js";

export function lineDiff(before, after) {
  const a = before.split("\n");
  const b = after.split("\n");
  const n = a.length;
  const m = b.length;
  const len = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      len[i][j] = a[i] === b[j] ? len[i + 1][j + 1] + 1 : Math.max(len[i + 1][j], len[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      out.push({ op: " ", line: a[i] });
      i += 1;
      j += 1;
    } else if (len[i + 1][j] >= len[i][j + 1]) {
      out.push({ op: "-", line: a[i] });
      i += 1;
    } else {
      out.push({ op: "+", line: b[j] });
      j += 1;
    }
  }
  while (i < n) out.push({ op: "-", line: a[i++] });
  while (j < m) out.push({ op: "+", line: b[j++] });
  return out;
}

function when(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export class RecordPanel {
  // actions: draft(fields), edit(id, text), sign(id, version, sha256), note(text),
  // exchange(), open(pane, statementId), close(), url(path) -> an address with the token.
  constructor(doc, actions) {
    this.doc = doc;
    this.actions = actions;
    const $ = (testid) => doc.querySelector(`[data-testid="${testid}"]`);
    this.el = {
      summary: $("record-summary"), open: $("record-open"),
      list: $("statement-list"), form: $("statement-form"),
      pane: $("record-pane"), entries: $("record-entries"), witnesses: $("record-witnesses"),
      forks: $("record-forks"), noteForm: $("record-note-form"), close: $("record-close"),
      exchange: $("record-exchange"),
      stPane: $("statement-pane"), stTitle: $("statement-title"), stState: $("statement-state"),
      stText: $("statement-text"), stDiff: $("statement-diff"), stVersions: $("statement-versions"),
      stAttachments: $("statement-attachments"),
      stActions: $("statement-actions"), stClose: $("statement-close"),
    };
    this.el.open.addEventListener("click", () => actions.open("record", null));
    this.el.close.addEventListener("click", () => actions.close());
    this.el.stClose.addEventListener("click", () => actions.close());
    this.el.exchange.addEventListener("click", () => actions.exchange());
    this.el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = (id) => this.el.form.querySelector(`[data-testid="${id}"]`).value;
      actions.draft({ party: value("statement-party"), title: value("statement-new-title").trim(),
        text: value("statement-new-text") });
    });
    this.el.noteForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = this.el.noteForm.querySelector('[data-testid="record-note"]');
      if (input.value.trim()) actions.note(input.value.trim());
      input.value = "";
    });
    this.shownStatement = null; // [id, version] whose edit box is on the screen
  }

  // A draft went: the form is emptied and folded away.
  draftSent() {
    this.el.form.reset();
    const details = this.el.form.closest("details");
    if (details) details.open = false;
  }

  #el(tag, className, text) {
    return element(this.doc, tag, className, text);
  }

  #button(label, testid, onClick, ghost) {
    return button(this.doc, label, testid, onClick, ghost);
  }

  // The sidebar: the log's summary, the statements, the draft form.
  showSidebar(record, statements, parties) {
    if (record) {
      const cosigned = record.cosigned.map((c) => `${c.by} up to ${c.size}`).join(", ");
      this.el.summary.textContent = `${record.size} entries; ${cosigned ? `cosigned by ${cosigned}` : "not cosigned yet"}`
        + (record.forks.length ? `; ${record.forks.length} FORK(S) detected` : "");
      this.el.summary.classList.toggle("danger-text", record.forks.length > 0);
    }
    const select = this.el.form.querySelector('[data-testid="statement-party"]');
    if (select.options.length !== parties.length) {
      select.replaceChildren(...parties.map((p) => new Option(p, p)));
    }
    this.el.list.replaceChildren(...(statements || []).map((st) => {
      const item = this.#el("li", "statement-item");
      item.dataset.testid = "statement";
      item.dataset.statement = st.statement;
      const link = this.#button(st.title, "statement-open", () => this.actions.open("statement", st.statement), true);
      item.append(link, this.#el("div", "muted small", this.#stateText(st)));
      return item;
    }));
  }

  #stateText(st) {
    if (st.final !== null) {
      return `Final (version ${st.final})${st.in_both_logs ? ", in both logs" : ", waiting for the other log's proof"}`;
    }
    if (st.signed_by_me) return `Signed by you: waiting for ${st.with_name}`;
    if (st.my_turn) return `Your turn: edit or sign version ${st.latest}`;
    return `With ${st.with_name}: their turn`;
  }

  showRecord(view) {
    if (!view) return;
    const { record, entries } = view;
    this.el.witnesses.replaceChildren(
      this.#el("li", "", `This log (${record.site}): ${record.size} entries`),
      ...record.cosigned.map((c) => this.#el("li", "", `Cosigned by ${c.by} up to entry ${c.size}`)),
      ...record.witnessed.map((w) => this.#el("li", "", `You witness ${w.log}: cosigned up to entry ${w.size}`)));
    this.el.forks.replaceChildren(...record.forks.map((f) => {
      const item = this.#el("li", "fork", `The log of ${f.log} was rewritten: ${f.why}. Both signed checkpoints are kept as evidence.`);
      item.dataset.testid = "record-fork";
      return item;
    }));
    this.el.entries.replaceChildren(...entries.map((e) => {
      const item = this.#el("li", `entry ${e.entry.type || ""}`);
      item.dataset.testid = "record-entry";
      item.dataset.type = e.entry.type || "";
      item.append(this.#el("span", "entry-index", `#${e.index}`),
        this.#el("span", "entry-time muted small", e.entry.time_ms ? when(e.entry.time_ms) : ""),
        this.#el("span", "entry-text", e.text));
      return item;
    }));
  }

  showStatement(st, myParty) {
    if (!st) return;
    const latest = st.versions[st.versions.length - 1];
    this.el.stPane.dataset.statement = st.statement;
    this.el.stTitle.textContent = latest.title;
    this.el.stState.textContent = this.#stateText(st);
    this.el.stState.dataset.final = String(st.final !== null);
    this.el.stText.textContent = latest.text;
    this.el.stText.dataset.version = String(latest.version);
    this.el.stText.dataset.sha256 = latest.sha256;
    this.el.stAttachments.replaceChildren(...latest.attachments.map((a) => {
      const item = this.#el("li", "small", `${a.name} (${a.size} bytes), SHA-256 ${a.sha256}`);
      item.dataset.testid = "statement-attachment";
      return item;
    }));
    this.el.stAttachments.hidden = !latest.attachments.length;
    // The other side's edit, as a diff against the version before it.
    const before = st.versions.length > 1 ? st.versions[st.versions.length - 2] : null;
    this.el.stDiff.replaceChildren();
    this.el.stDiff.hidden = !before;
    if (before) {
      this.el.stDiff.append(this.#el("p", "muted small", `Changes in version ${latest.version} (by ${latest.by}) from version ${before.version}:`));
      // Everything that is signed: the title and the attachments as well as the text.
      const changed = (op, text, testid) => {
        const line = this.#el("div", `diff-line ${op === "+" ? "added" : "removed"}`, `${op} ${text}`);
        line.dataset.testid = testid;
        this.el.stDiff.append(line);
      };
      if (before.title !== latest.title) {
        changed("-", `title: ${before.title}`, "diff-removed");
        changed("+", `title: ${latest.title}`, "diff-added");
      }
      const names = (v) => v.attachments.map((a) => `attachment: ${a.name} (SHA-256 ${a.sha256})`);
      for (const gone of names(before).filter((n) => !names(latest).includes(n))) changed("-", gone, "diff-removed");
      for (const added of names(latest).filter((n) => !names(before).includes(n))) changed("+", added, "diff-added");
      for (const part of lineDiff(before.text, latest.text)) {
        const line = this.#el("div", `diff-line ${part.op === "+" ? "added" : part.op === "-" ? "removed" : ""}`, `${part.op} ${part.line}`);
        if (part.op !== " ") line.dataset.testid = part.op === "+" ? "diff-added" : "diff-removed";
        this.el.stDiff.append(line);
      }
    }
    this.el.stVersions.replaceChildren(...st.versions.map((v) => {
      const signers = v.signatures.length ? `, signed by ${v.signatures.join(" and ")}` : "";
      const item = this.#el("li", "small", `Version ${v.version} by ${v.by}, ${when(v.time_ms)}, sha256 ${v.sha256.slice(0, 16)}…${signers}`);
      item.dataset.testid = "statement-version";
      return item;
    }));
    const key = `${st.statement}:${latest.version}:${st.final}:${st.signed_by_me}`;
    if (this.shownStatement === key) return; // keep what the person is typing
    this.shownStatement = key;
    const actions = this.el.stActions;
    actions.replaceChildren();
    if (st.final !== null) {
      const signed = this.#el("p", "final", `Final: version ${st.final}, signed by ${latest.signatures.join(" and ")}.`);
      signed.dataset.testid = "statement-final";
      actions.append(signed);
      const pdf = this.#el("a", "button small", "Printable copy (PDF)");
      pdf.href = this.actions.url(`/api/statements/${encodeURIComponent(st.statement)}/pdf`);
      pdf.dataset.testid = "statement-pdf";
      const bundle = this.#el("a", "button ghost small", "Bundle for offline checking");
      bundle.href = this.actions.url(`/api/statements/${encodeURIComponent(st.statement)}/bundle`);
      bundle.dataset.testid = "statement-bundle";
      actions.append(pdf, bundle);
      return;
    }
    if (!st.signed_by_me) {
      // What is signed is what is shown: the version and hash drawn with this button go
      // with its click (a newer version draws a new button).
      const { version, sha256 } = latest;
      const sign = this.#button(`Sign version ${version} as shown`, "statement-sign",
        () => this.actions.sign(st.statement, version, sha256));
      actions.append(sign, this.#el("p", "muted small", `Signing names this version's SHA-256: ${latest.sha256}`));
    } else {
      actions.append(this.#el("p", "muted", `Signed by you. Waiting for ${st.with_name} to sign, or to edit it.`));
    }
    if (st.my_turn) {
      const form = this.#el("form", "statement-edit");
      const area = this.#el("textarea");
      area.rows = 6;
      area.maxLength = 20000;
      area.value = latest.text;
      area.dataset.testid = "statement-edit-text";
      area.setAttribute("aria-label", "Your edit of this version");
      const submit = this.#el("button", "small", "Propose this edit");
      submit.type = "submit";
      submit.dataset.testid = "statement-edit-send";
      form.append(area, submit);
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.actions.edit(st.statement, area.value);
      });
      actions.append(form);
    } else if (latest.by.split("/")[0] === myParty && !st.signed_by_me) {
      actions.append(this.#el("p", "muted small", `${st.with_name} edits or signs it next.`));
    }
  }
}
