/**
 * Plan files in the browser: Load Plan's "upload plan" button (a file from the user's computer into ComfyUI's
 * input/planx/, chosen on the node at once; a file that is not a plan is refused on the spot, saying what it
 * is), and Save Plan's line naming the file it wrote with a link to it. Functions that take what they need of
 * ComfyUI as arguments; nothing runs on import.
 */
import { el } from "./panels.js";

export const LOAD_PLAN = "PlanX_LoadPlan";
export const SAVE_PLAN = "PlanX_SavePlan";
export const UPLOADS = "planx";  // input/planx/, as nodes/plan_files.py lists it
const PLACEHOLDER = /^\(no plan files yet/;

/** Why a file's text is not a plan (the server's words), or null when it looks like one. */
export function notAPlan(text, name) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (exc) {
    return `${name} cannot be read as JSON (${String(exc.message).slice(0, 120)}); pick a .plan.json file that Save Plan wrote`;
  }
  if (data && typeof data === "object" && !Array.isArray(data) && "keyframes" in data) return null;
  let what = "JSON without keyframes";
  if (data && typeof data === "object" && "nodes" in data && "links" in data) what = "a ComfyUI workflow";
  else if (data && typeof data === "object" && Object.keys(data).length
    && Object.values(data).every((v) => v && typeof v === "object" && "class_type" in v)) what = "a ComfyUI API prompt";
  return `${name} is not a Plan-X plan: it is ${what}. Pick a .plan.json file that Plan-X Save Plan wrote `
    + "(in ComfyUI's output folder, under planx/), or upload one with the button";
}

/** "5 keyframes, 64x64, 17 frames at 8 fps" for a plan dict. */
export function planSummary(plan) {
  const n = plan?.keyframes?.length ?? 0;
  const v = plan?.video ?? {};
  return `${n} keyframe${n === 1 ? "" : "s"}, ${v.width}x${v.height}, ${v.num_frames} frames at ${v.fps} fps`;
}

/** The Load Plan node's panel: an upload button (with a hidden file input) and a message line. */
export function buildUploadPanel(onFile) {
  const input = el("input", { type: "file", accept: ".json,application/json", style: "display: none",
    "data-role": "plan-file-input" });
  const button = el("button", { type: "button", text: "upload plan…", "data-action": "upload-plan",
    title: "put a .plan.json from your computer into ComfyUI's input/planx/ folder and pick it" });
  const message = el("div", { "data-role": "plan-file-message", text: "or drop a .plan.json on this node" });
  const root = el("div", { className: "planx-file", "data-role": "plan-upload" }, [button, message, input]);
  button.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const file = input.files?.[0];
    input.value = "";
    if (file) onFile(file);
  });
  return { root, button, message, input };
}

/** Show `text` on a panel's message line (red when `bad`). */
export function say(panel, text, bad = false) {
  panel.message.textContent = text;
  panel.message.title = text;
  panel.message.classList.toggle("bad", !!bad);
}

/**
 * Upload `file` for a Load Plan node: check it is a plan, POST it to /upload/image (type input, subfolder
 * planx, overwriting a file of the same name), then add it to the node's plan_file list and pick it.
 * `post(formData)` returns the server's JSON ({name, subfolder}) or throws. Returns {ok, name} or {ok, reason}.
 */
export async function uploadPlan(node, panel, file, post) {
  const text = await file.text();
  const reason = notAPlan(text, file.name);
  if (reason) {
    say(panel, reason, true);
    return { ok: false, reason };
  }
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("type", "input");
  form.append("subfolder", UPLOADS);
  form.append("overwrite", "true");
  let saved;
  try {
    saved = await post(form);
  } catch (exc) {
    const message = `Could not upload ${file.name}: ${exc?.message ?? exc}`;
    say(panel, message, true);
    return { ok: false, reason: message };
  }
  const name = saved.subfolder ? `${saved.subfolder}/${saved.name}` : saved.name;
  const widget = node.widgets?.find((w) => w.name === "plan_file");
  if (widget) {
    const values = widget.options?.values;
    if (Array.isArray(values)) {
      for (let i = values.length - 1; i >= 0; i--) if (PLACEHOLDER.test(values[i])) values.splice(i, 1);
      if (!values.includes(name)) values.push(name);
      values.sort();
    }
    widget.value = name;
    widget.callback?.(name);
  }
  say(panel, `Uploaded ${name}: ${planSummary(JSON.parse(text))}`);
  node.graph?.setDirtyCanvas?.(true, true);
  return { ok: true, name };
}

/** The Save Plan node's panel: the file it wrote, what it holds, and a link to open or download it. */
export function buildSavedPanel() {
  const message = el("div", { "data-role": "saved-plan", text: "Run the workflow to write the plan file" });
  return { root: el("div", { className: "planx-file", "data-role": "plan-saved" }, [message]), message };
}

export function showSaved(panel, saved, url) {
  const path = saved.subfolder ? `${saved.subfolder}/${saved.filename}` : saved.filename;
  const link = el("a", { href: url, target: "_blank", text: path, download: saved.filename, "data-role": "saved-link" });
  panel.message.replaceChildren("Wrote output/", link, el("br"), saved.summary ?? "");
  panel.message.title = `output/${path}`;
}
