// One item's live channel, /ws/items/{id}/ (PRODUCT.md §6). Dispatches each server message to the handler
// named by its type, and reconnects with back-off when the connection drops; the snapshot that every
// connection starts with brings the page up to date again.
const MAX_DELAY_MS = 15000;

export class ItemSocket {
  constructor(itemId, handlers) {
    this.url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/items/${itemId}/`;
    this.handlers = handlers;
    this.closed = false;
    this.delay = 500;
    this.open();
  }

  open() {
    this.ws = new WebSocket(this.url);
    this.ws.addEventListener("open", () => {
      this.delay = 500;
      this.handlers.opened?.();
    });
    this.ws.addEventListener("message", (event) => {
      if (this.closed) return;
      const message = JSON.parse(event.data);
      const handler = this.handlers[message.type];
      if (handler) handler(message);
    });
    this.ws.addEventListener("close", () => {
      if (this.closed) return;
      this.handlers.closed?.();
      setTimeout(() => this.closed || this.open(), this.delay);
      this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
    });
  }

  send(message) {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  close() {
    this.closed = true;
    this.ws.close();
  }
}
