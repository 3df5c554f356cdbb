// Small element helpers shared by the page's panels. Text from elsewhere is set as text only.

export function element(doc, tag, className, text) {
  const el = doc.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

export function button(doc, label, testid, onClick, ghost) {
  const el = element(doc, "button", ghost ? "ghost small" : "small", label);
  el.type = "button";
  el.dataset.testid = testid;
  el.addEventListener("click", onClick);
  return el;
}
