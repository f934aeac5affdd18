// The live channel of one item (PRODUCT.md §6). Everything from the server is set as text, never as HTML:
// model output is untrusted.
const root = document.getElementById("item-live");
const draft = document.getElementById("draft");
const statusEl = document.getElementById("status");
const viewersEl = document.getElementById("viewers");
const messageEl = document.getElementById("message");
const scheme = location.protocol === "https:" ? "wss" : "ws";
const socket = new WebSocket(`${scheme}://${location.host}/ws/items/${root.dataset.itemId}/`);

socket.addEventListener("message", (event) => {
  const message = JSON.parse(event.data);
  switch (message.type) {
    case "snapshot":
      draft.textContent = message.text;
      statusEl.textContent = message.status;
      showViewers(message.viewers);
      break;
    case "tokens":
      if (message.seq === 1) draft.textContent = ""; // a new draft (or a restarted one) starts
      draft.textContent += message.text;
      break;
    case "done":
      draft.textContent = message.text;
      messageEl.textContent = `Written by ${message.model_version}.`;
      break;
    case "error":
      messageEl.textContent = message.message;
      break;
    case "presence":
      showViewers(message.viewers);
      break;
    case "item":
      statusEl.textContent = message.status;
      break;
  }
});
socket.addEventListener("close", () => { messageEl.textContent = "Disconnected; reload to reconnect."; });

function showViewers(viewers) {
  viewersEl.textContent = viewers.map((viewer) => viewer.username).join(", ");
}

document.getElementById("generate").addEventListener("click", () => {
  messageEl.textContent = "";
  socket.send(JSON.stringify({ action: "generate" }));
});
document.getElementById("cancel").addEventListener("click", () => socket.send(JSON.stringify({ action: "cancel" })));
