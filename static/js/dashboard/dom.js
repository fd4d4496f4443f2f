// Small helpers every dashboard module uses. Everything shown comes from DICOM headers, the FHIR server or a model,
// so it is text: these build nodes with textContent, never HTML.

export const $ = (id) => document.getElementById(id);
export const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
export const text = (v) => (v === null || v === undefined ? "" : String(v));
export const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

export function el(tag, className, content) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (content !== undefined) node.textContent = content;
  return node;
}

export function titleCase(value) {
  return text(value).replace(/_/g, " ").replace(/\b\p{L}/gu, (c) => c.toUpperCase());
}

/** The element of `root` marked data-field="name" (the card template's slots). */
export function field(root, name) {
  return root.querySelector(`[data-field="${name}"]`);
}
