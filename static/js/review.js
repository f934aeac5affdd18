// The review screen (templates/annotations/review.html).
//
// Two entrances: /review/<domain>/ works through the domain's queue; /items/<id>/ opens one item, read-only
// unless you hold its lease. While you review an item the next one is already claimed ("prefetched"), so a
// decision shows the next item as soon as the server has accepted it. Both leases are kept alive by heartbeat
// while you are active. The draft streams in over the item's live channel (PRODUCT.md §6).
//
// Everything from the server — model output above all — is set as text (textContent, value), never as HTML.
import { api, describeError } from "./api.js";
import { ItemSocket } from "./item_socket.js";
import { wordDiff } from "./worddiff.js";

const boot = JSON.parse(document.getElementById("boot").textContent);
const $ = (id) => document.getElementById(id);
const el = {
  main: $("review"),
  workspace: $("workspace"),
  empty: $("empty"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  notice: $("notice"),
  itemId: $("item-id"),
  itemLink: $("item-link"),
  status: $("status"),
  version: $("version"),
  approvals: $("approvals"),
  viewers: $("viewers"),
  lease: $("lease"),
  input: $("input"),
  metadata: $("metadata"),
  holder: $("holder"),
  editor: $("editor"),
  draftState: $("draft-state"),
  message: $("message"),
  scores: $("scores"),
  diff: $("diff"),
  kept: $("kept"),
  keptText: $("kept-text"),
  rejectDialog: $("reject-dialog"),
  rejectReason: $("reject-reason"),
  rejectError: $("reject-error"),
  help: $("help"),
  buttons: {
    approve: $("approve"),
    reject: $("reject"),
    edit: $("edit"),
    generate: $("generate"),
    cancel: $("cancel"),
    next: $("next"),
  },
};

const HEARTBEAT_MS = Math.min(60, boot.lease_seconds / 3) * 1000;
const EMPTY_RETRY_MS = 5000;
const NOT_CONNECTED = "The live connection is not open yet; try again in a moment.";
const DROPPED = "The live connection dropped; reconnecting…";

// The item on screen: `draft` is the model's draft the diff starts from, `baseline` the text the editor started
// with (the draft, or a first approver's text), `mine` whether we hold its lease.
let current = null;
let upcoming = null; // the prefetched next item (claimed, not yet shown)
let prefetching = null; // the claim in flight, so there is only ever one
let navigating = null; // moving to another item; one move at a time
let socket = null;
let busy = false; // a decision is on its way to the server (until the next item is shown)
let conflict = false; // the server refused a save: the text stays, decisions wait for reload / next
let lastActivity = Date.now();
let emptyTimer = null;
let diffFrame = 0;

// A textarea turns \r\n into \n: compare texts the way the editor holds them.
const normalise = (text) => (text || "").replace(/\r\n?/g, "\n");
const idle = () => Date.now() - lastActivity > boot.lease_seconds * 1000;

// --- showing an item ----------------------------------------------------------

function show(item) {
  const draft = normalise(item.draft);
  current = {
    item,
    version: item.version,
    draft,
    baseline: normalise(item.final_text) || draft,
    mine: isMine(item),
    streaming: ["queued", "generating"].includes(item.status),
    textBeforeStream: null,
  };
  conflict = false;
  el.banner.hidden = true;
  el.kept.hidden = true;
  el.keptText.textContent = "";
  el.empty.hidden = true;
  el.workspace.hidden = false;
  el.itemId.textContent = item.id;
  el.itemLink.href = `/items/${item.id}/`;
  el.input.textContent = item.input;
  showMetadata(item.metadata);
  el.scores.reset();
  el.rejectReason.value = "";
  el.editor.value = current.baseline;
  el.message.textContent = "";
  el.viewers.textContent = "";
  showItemState();
  showDiff();
  connect(item.id);
  el.main.focus();
}

function isMine(item) {
  return item.status === "in_review" && item.lease_owner === boot.user;
}

function showMetadata(metadata) {
  el.metadata.replaceChildren();
  const entries = Object.entries(metadata || {});
  if (!entries.length) {
    const none = document.createElement("dd");
    none.textContent = "none";
    el.metadata.append(none);
  }
  for (const [key, value] of entries) {
    const term = document.createElement("dt");
    term.textContent = key;
    const description = document.createElement("dd");
    description.textContent = typeof value === "string" ? value : JSON.stringify(value);
    el.metadata.append(term, description);
  }
}

function showItemState() {
  if (!current) return;
  const { item, mine, streaming } = current;
  el.status.textContent = item.status;
  el.version.textContent = current.version;
  el.approvals.textContent = `${item.approvals} of ${boot.domain.approvals_required} approvals`;
  el.editor.readOnly = !mine || streaming || conflict;
  el.draftState.textContent = streaming ? "being written…" : mine ? "" : "read-only";
  showLease();
  showHolder();
  const decidable = mine && !streaming && !conflict && !busy && !navigating;
  el.buttons.approve.disabled = !decidable;
  el.buttons.reject.disabled = !decidable;
  el.buttons.edit.disabled = !decidable;
  el.buttons.generate.disabled = !mayRegenerate() || streaming || busy;
  el.buttons.cancel.disabled = !streaming;
  el.buttons.next.disabled = busy || Boolean(navigating) || !boot.may_review;
  showApproveLabel();
}

function showApproveLabel() {
  el.buttons.approve.firstChild.textContent = isEdited() ? "Approve with edits " : "Approve ";
}

function mayRegenerate() {
  const { item, mine } = current;
  if (!boot.may_generate || conflict || item.approvals > 0) return false;
  if (item.status === "in_review") return mine;
  return !["approved", "rejected"].includes(item.status);
}

function showLease() {
  const { item, mine } = current;
  el.lease.textContent =
    mine && item.lease_expires_at
      ? `Your lease runs until ${clock(item.lease_expires_at)}; it is renewed while you work.`
      : "";
}

function showHolder() {
  const { item, mine } = current;
  let text = "";
  if (!mine && item.status === "in_review" && item.lease_owner) {
    const until = item.lease_expires_at ? ` (lease until ${clock(item.lease_expires_at)})` : "";
    text = `${item.lease_owner} is reviewing this item${until}; you see it read-only.`;
  } else if (!mine) {
    text = `This item is ${item.status}; you see it read-only.`;
  }
  el.holder.textContent = text;
  el.holder.hidden = !text;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

function isEdited() {
  return current !== null && el.editor.value !== current.baseline;
}

function showDiff() {
  cancelAnimationFrame(diffFrame);
  diffFrame = 0;
  const parts = wordDiff(current.draft, el.editor.value);
  el.diff.replaceChildren();
  if (parts.every(([tag]) => tag === "equal")) {
    const same = document.createElement("p");
    same.className = "note";
    same.textContent = "No changes to the draft.";
    el.diff.append(same);
    return;
  }
  for (const [tag, text] of parts) {
    const piece = document.createElement(tag === "insert" ? "ins" : tag === "delete" ? "del" : "span");
    piece.textContent = text;
    el.diff.append(piece);
  }
}

// While typing: at most one diff per frame.
function showDiffSoon() {
  if (!diffFrame) diffFrame = requestAnimationFrame(showDiff);
}

function say(text) {
  (el.workspace.hidden ? el.notice : el.message).textContent = text;
}

// Whenever something is about to replace text the reviewer typed, it is set aside beside the item first.
function keepTypedText() {
  if (!current || !(conflict || (current.mine && isEdited()))) return;
  if (el.kept.hidden || !el.keptText.textContent) el.keptText.textContent = el.editor.value;
  el.kept.hidden = false;
}

// --- the live channel -----------------------------------------------------------

function connect(itemId) {
  if (socket) socket.close();
  socket = new ItemSocket(itemId, {
    snapshot: onSnapshot,
    tokens: onTokens,
    done: onDone,
    error: onStreamError,
    presence: (message) => showViewers(message.viewers),
    item: onItemEvent,
    opened: () => {
      if (el.message.textContent === DROPPED) el.message.textContent = "";
    },
    closed: () => say(DROPPED),
  });
}

function showViewers(viewers) {
  el.viewers.textContent = viewers.map((viewer) => viewer.username).join(", ");
}

function onSnapshot(message) {
  showViewers(message.viewers);
  current.item.status = message.status;
  current.item.lease_owner = message.lease_owner;
  current.version = message.version;
  if (current.mine && !isMine(current.item) && !busy) {
    current.mine = false;
    refused("This item left your hands (its lease ended or it was decided elsewhere).");
  }
  if (message.streaming) {
    startStream(message.text);
  } else if (current.streaming || normalise(message.text) !== current.draft) {
    // The draft changed while the page was not listening (or finished in between): take the server's.
    finishStream(message.text);
  }
  showItemState();
}

function startStream(text) {
  if (!current.streaming) {
    keepTypedText();
    current.textBeforeStream = current.draft;
  }
  current.streaming = true;
  el.editor.value = text;
  showItemState();
  showDiff();
}

function onTokens(message) {
  if (message.seq === 1 || !current.streaming) startStream("");
  el.editor.value += message.text;
  el.editor.scrollTop = el.editor.scrollHeight;
}

function finishStream(text) {
  keepTypedText();
  current.streaming = false;
  current.textBeforeStream = null;
  current.draft = normalise(text);
  current.item.draft = text;
  const working = current.item.approvals > 0 ? normalise(current.item.final_text) : "";
  current.baseline = working || current.draft;
  el.editor.value = current.baseline;
  showItemState();
  showDiff();
}

function onDone(message) {
  finishStream(message.text);
  say(`Written by ${message.model_version}.`);
  if (current.mine) el.main.focus();
}

function onStreamError(message) {
  if (current.streaming) {
    // The draft under review is the one before: the failed or cancelled one never replaced it.
    finishStream(current.textBeforeStream ?? current.draft);
  }
  say(message.message);
}

function onItemEvent(message) {
  current.item.status = message.status;
  current.version = message.version;
  if (["queued", "generating"].includes(message.status) && !current.streaming) startStream("");
  if (current.mine && message.status !== "in_review" && !busy) {
    current.mine = false;
    refused("This item left your hands (its lease ended or it was decided elsewhere).");
  } else if (!current.mine) {
    refreshItem(); // the holder, lease and approvals are not in the event
  }
  showItemState();
}

// A read-only viewer's copy of the item, brought up to date after an event.
async function refreshItem() {
  const shown = current;
  const { status, data } = await api(`/api/v1/items/${shown.item.id}/`);
  if (status !== 200 || current !== shown) return;
  Object.assign(shown.item, {
    status: data.status,
    lease_owner: data.lease_owner,
    lease_expires_at: data.lease_expires_at,
    approvals: data.approvals,
    final_text: data.final_text,
  });
  shown.version = data.version;
  showItemState();
}

// --- the queue: claim, prefetch, advance ------------------------------------------

async function claim() {
  const { status, data } = await api("/api/v1/queue/claim/", { method: "POST", body: { domain: boot.domain.slug } });
  if (status === 200) return data;
  if (status === 204) return null;
  throw new Error(describeError(data));
}

function prefetch() {
  if (!boot.may_review || !(current && current.mine)) return;
  if (upcoming || prefetching) return;
  prefetching = claim()
    .then((item) => {
      upcoming = item;
    })
    .catch((error) => say(error.message))
    .finally(() => {
      prefetching = null;
    });
}

// Moving between items — skip, next, reload, the empty-queue poll — one move at a time, from its first
// request to the item shown, so that a double press or a held key never drops a claimed item unseen.
function navigate(move) {
  if (navigating) return navigating;
  navigating = move().finally(() => {
    navigating = null;
    showItemState();
  });
  showItemState();
  return navigating;
}

const advance = (note) => navigate(() => nextItem(note));

async function nextItem(note) {
  boot.mode = "queue";
  if (prefetching) await prefetching;
  let item = upcoming;
  upcoming = null;
  if (!item) {
    try {
      item = await claim();
    } catch (error) {
      showEmpty(error.message);
      return;
    }
  }
  if (item) {
    const queuePath = `/review/${boot.domain.slug}/`;
    if (location.pathname !== queuePath) history.replaceState(null, "", queuePath);
    show(item);
    el.notice.textContent = note || "";
    setTimeout(prefetch); // after the item is on screen
  } else {
    showEmpty(note);
  }
}

function showEmpty(note) {
  current = null;
  if (socket) socket.close();
  socket = null;
  el.workspace.hidden = true;
  el.banner.hidden = true;
  el.empty.hidden = false;
  el.notice.textContent = note || "";
  el.main.focus();
  clearTimeout(emptyTimer);
  // Look again every few seconds while someone is here: an abandoned tab must not take new items.
  const lookAgain = () => {
    if (current !== null) return;
    if (document.hidden || idle()) emptyTimer = setTimeout(lookAgain, EMPTY_RETRY_MS);
    else advance(note);
  };
  emptyTimer = setTimeout(lookAgain, EMPTY_RETRY_MS);
}

// --- decisions --------------------------------------------------------------------

function scores() {
  const chosen = {};
  for (const select of el.scores.querySelectorAll("select")) {
    if (select.value) chosen[select.name] = Number(select.value);
  }
  return chosen;
}

async function decide(body) {
  if (busy || navigating || !current) return false;
  busy = true;
  showItemState();
  const itemId = current.item.id;
  const edited = isEdited();
  const { status, data } = await api(`/api/v1/items/${itemId}/reviews/`, {
    method: "POST",
    body: { ...body, version: current.version, scores: scores() },
  });
  if (status === 201) {
    const verb = body.decision === "approve" ? (edited ? "Approved with your edits" : "Approved") : "Rejected";
    await advance(`${verb}: item ${itemId}.`); // busy until the next item is shown: events of this one are ours
    busy = false;
    showItemState();
    return true;
  }
  busy = false;
  if (status === 409) {
    refused(data.detail || "The server refused the save.");
  } else {
    say(describeError(data));
    showItemState();
  }
  return false;
}

function approve() {
  if (!current || el.buttons.approve.disabled) return;
  const text = el.editor.value;
  if (!text.trim()) {
    say("The approved text may not be blank.");
    return;
  }
  // Unchanged: approve the working text as the server holds it (no needless "edited" from line endings).
  decide(isEdited() ? { decision: "approve", final_text: text } : { decision: "approve" });
}

function openReject() {
  if (!current || el.buttons.reject.disabled) return;
  el.rejectError.textContent = "";
  el.rejectDialog.showModal();
  el.rejectReason.focus();
}

async function submitReject() {
  const reason = el.rejectReason.value.trim();
  if (!reason) {
    el.rejectError.textContent = "A rejection needs a reason.";
    el.rejectReason.focus();
    return;
  }
  el.rejectDialog.close();
  const body = { decision: "reject", reason };
  if (el.editor.value.trim()) body.final_text = el.editor.value; // kept on the review: what the reviewer had
  await decide(body);
}

function edit() {
  if (!current) return;
  if (current.streaming) {
    say("The draft is still being written: wait for it, or press X to cancel it.");
    return;
  }
  if (el.editor.readOnly) {
    say("This item is read-only for you.");
    return;
  }
  el.editor.focus();
  el.editor.setSelectionRange(el.editor.value.length, el.editor.value.length);
}

function regenerate() {
  if (!current || el.buttons.generate.disabled) return;
  if (isEdited() && !window.confirm("Discard your edits and write a new draft?")) return;
  if (!socket.send({ action: "generate" })) {
    say(NOT_CONNECTED);
    return;
  }
  say("");
  el.editor.value = current.baseline; // the edits were discarded on purpose
  startStream(current.draft); // waiting for a worker: read-only, X cancels; the first chunk starts the text
}

function cancelDraft() {
  if (!current || !current.streaming) return;
  if (!socket.send({ action: "cancel" })) say(NOT_CONNECTED);
}

function skip() {
  if (busy || navigating || !boot.may_review) return;
  if (current && current.mine && current.streaming) {
    say("A draft is being written for this item: cancel it (X) before you skip.");
    return;
  }
  if (current && current.mine && isEdited() && !conflict && !window.confirm("Skip this item and drop your edits?")) {
    return;
  }
  navigate(releaseAndNext);
}

async function releaseAndNext() {
  let note = "";
  if (current && current.mine) {
    const itemId = current.item.id;
    const { status, data } = await api(`/api/v1/items/${itemId}/release/`, { method: "POST", body: { skip: true } });
    if (status === 200) note = `Skipped item ${itemId}.`;
    else if (status !== 409) {
      say(describeError(data));
      return;
    }
  }
  await nextItem(note);
}

// --- refused saves: the text stays on screen -------------------------------------

function refused(reason) {
  conflict = true;
  keepTypedText();
  el.bannerText.textContent = `Not saved: ${reason} Your text is still on this page: copy it, or reload the item.`;
  el.banner.hidden = false;
  showItemState();
  $("copy-text").focus();
}

async function copyText() {
  const kept = !el.kept.hidden && el.keptText.textContent;
  const text = kept || el.editor.value;
  try {
    await navigator.clipboard.writeText(text);
    el.notice.textContent = "Your text is on the clipboard.";
  } catch (error) {
    // No clipboard (permission, or a page not served over https): select the text so that Ctrl+C copies it.
    if (kept) {
      window.getSelection().selectAllChildren(el.keptText);
    } else {
      el.editor.readOnly = true;
      el.editor.focus();
      el.editor.select();
    }
    el.notice.textContent = "Press Ctrl+C to copy the selected text.";
  }
}

function reloadItem() {
  if (current && !busy) navigate(reload);
}

async function reload() {
  const shown = current;
  const text = el.keptText.textContent || el.editor.value;
  const edited = Boolean(el.keptText.textContent) || isEdited();
  const chosen = scores();
  const { status, data } = await api(`/api/v1/items/${shown.item.id}/`);
  if (status !== 200) {
    say(describeError(data));
    return;
  }
  show(data);
  for (const [name, value] of Object.entries(chosen)) el.scores.elements[name].value = String(value);
  if (edited) {
    // Never silently lost: if the item is still ours the text goes back into the editor, else it stays beside it.
    if (current.mine && !current.streaming) {
      el.editor.value = text;
      showDiff();
      showItemState();
    } else {
      el.keptText.textContent = text;
      el.kept.hidden = false;
    }
  }
  el.notice.textContent = `Reloaded item ${data.id}: it is ${data.status}.`;
  prefetch();
}

// --- leases: heartbeat while the reviewer is active ------------------------------

async function heartbeat() {
  if (idle()) return; // away: let the leases run out
  const shown = current;
  if (shown && shown.mine && !conflict) {
    const { status, data } = await api(`/api/v1/items/${shown.item.id}/heartbeat/`, { method: "POST" });
    if (current === shown && !busy) {
      if (status === 200) {
        shown.item.lease_expires_at = data.lease_expires_at;
        showLease();
      } else if (status === 409) {
        shown.mine = false;
        refused(data.detail);
      }
    }
  }
  const next = upcoming;
  if (next) {
    const { status } = await api(`/api/v1/items/${next.id}/heartbeat/`, { method: "POST" });
    if (status === 409 && upcoming === next) {
      upcoming = null;
      prefetch();
    }
  }
}

// --- keyboard ---------------------------------------------------------------------

const SHORTCUTS = {
  a: approve,
  r: openReject,
  e: edit,
  g: regenerate,
  x: cancelDraft,
  n: skip,
  c: () => (conflict || !el.kept.hidden) && copyText(),
  l: () => conflict && reloadItem(),
  "?": () => el.help.showModal(),
};

function onKeydown(event) {
  lastActivity = Date.now();
  const target = event.target;
  if (target === el.rejectReason && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submitReject();
    return;
  }
  if (el.rejectDialog.open || el.help.open) return; // the dialogs handle Esc and their own keys
  if (target === el.editor && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    approve();
    return;
  }
  const typing = target.matches("textarea, input, select");
  if (typing && event.key === "Escape") {
    target.blur();
    el.main.focus();
    return;
  }
  if (typing || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  const action = SHORTCUTS[event.key.length === 1 ? event.key.toLowerCase() : event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

// --- wiring -----------------------------------------------------------------------

el.editor.addEventListener("input", () => {
  showDiffSoon();
  showApproveLabel();
});
el.buttons.approve.addEventListener("click", approve);
el.buttons.reject.addEventListener("click", openReject);
el.buttons.edit.addEventListener("click", edit);
el.buttons.generate.addEventListener("click", regenerate);
el.buttons.cancel.addEventListener("click", cancelDraft);
el.buttons.next.addEventListener("click", skip);
$("reject-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submitReject();
});
$("reject-close").addEventListener("click", () => el.rejectDialog.close());
el.rejectDialog.addEventListener("close", () => el.main.focus());
el.help.addEventListener("close", () => el.main.focus());
$("help-button").addEventListener("click", () => el.help.showModal());
$("copy-text").addEventListener("click", copyText);
$("reload-item").addEventListener("click", reloadItem);
$("banner-next").addEventListener("click", skip);
document.addEventListener("keydown", onKeydown);
document.addEventListener("pointerdown", () => {
  lastActivity = Date.now();
});
// Closing or leaving the page with unsaved edits asks first.
window.addEventListener("beforeunload", (event) => {
  if (current && current.mine && isEdited()) event.preventDefault();
});
setInterval(heartbeat, HEARTBEAT_MS);

function start() {
  const [first, second] = boot.items;
  if (boot.mode === "item") {
    show(first);
    prefetch();
  } else if (first) {
    show(first); // a reload resumes the items this reviewer already holds
    upcoming = second || null;
    prefetch();
  } else {
    advance("");
  }
}

start();
