// The line tests of this site's lines, as this terminal verified them.
//
// Each line: green, amber or red, the last test's age and reasons, who signed it,
// a bar per test for the latest ones and a bar per day for 90 days -- and what the
// line server shows, with the terminal's verdict on it. The terminal computes all
// of it from results it checked itself (both signatures, with keys verified here);
// the page only draws it. Text from elsewhere is only ever set as text.

const WORD = { green: "Green", amber: "Amber", red: "Red" };

export function ageText(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s >= 86400) return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${s} s`;
}

export class LinePanel {
  // root: the element that holds [data-testid=line-test-list].
  constructor(doc, root) {
    this.doc = doc;
    this.root = root;
    this.list = root.querySelector('[data-testid="line-test-list"]');
  }

  // view: the terminal's /api/lines answer; now: Date.now() at the terminal's clock.
  show(view) {
    const lines = (view && view.lines) || [];
    this.root.hidden = lines.length === 0;
    this.list.replaceChildren(...lines.map((line) => this.#line(line)));
  }

  #el(tag, className, text) {
    const el = this.doc.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  #line(line) {
    const item = this.#el("li", `line-test ${line.status}`);
    item.dataset.testid = "line-test";
    item.dataset.line = line.line;
    item.dataset.status = line.status;
    const head = this.#el("div", "line-test-head");
    const dot = this.#el("span", `dot ${line.status}`);
    dot.setAttribute("aria-hidden", "true");
    const name = this.#el("span", "line-name", line.line.replace(":", " ⇄ "));
    const state = this.#el("span", `line-state ${line.status}`, WORD[line.status] || line.status);
    state.dataset.testid = "line-test-status";
    head.append(dot, name, state);
    item.append(head);
    const age = line.age_ms === null ? "never tested"
      : `last test ${ageText(line.age_ms)} ago`;
    item.append(this.#el("div", "muted small", age));
    if (line.reasons.length && !(line.age_ms === null && line.reasons.join() === "never tested")) {
      const reasons = this.#el("ul", "line-reasons");
      reasons.dataset.testid = "line-test-reasons";
      for (const reason of line.reasons) reasons.append(this.#el("li", "", reason));
      item.append(reasons);
    }
    if (line.last) {
      const signed = this.#el("div", "small line-signed",
        `✓ signed by ${line.last.signed_by.join(" and ")}, both verified here`);
      signed.dataset.testid = "line-test-signed";
      item.append(signed);
    }
    item.append(this.#bars("Latest tests", line.recent.map((r) => [r.status,
      `${ageText(Date.now() - r.ended_ms)} ago: ${r.status}${r.reasons.length ? ` (${r.reasons.join("; ")})` : ""}`])));
    item.append(this.#bars("90 days", line.daily.map((s, i) => [s,
      `${90 - i} days ago: ${s || "no result"}`])));
    const server = line.server;
    if (server) {
      const said = this.#el("div", `small line-server${server.problem ? " problem" : ""}`,
        server.problem ? `The line server shows ${server.status}, but: ${server.problem}`
          : `The line server shows the same: ${server.status}.`);
      said.dataset.testid = "line-test-server";
      if (server.problem) said.setAttribute("role", "alert");
      item.append(said);
    }
    return item;
  }

  #bars(label, bars) {
    const wrap = this.#el("div", "bars-wrap");
    wrap.append(this.#el("div", "muted small", label));
    const strip = this.#el("div", "bars");
    strip.setAttribute("role", "img");
    strip.setAttribute("aria-label", `${label}: ${bars.filter(([s]) => s).length} results`);
    for (const [status, title] of bars) {
      const bar = this.#el("span", `bar ${status || "none"}`);
      bar.title = title;
      strip.append(bar);
    }
    wrap.append(strip);
    return wrap;
  }
}
