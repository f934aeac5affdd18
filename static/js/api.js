// JSON calls to the API from a signed-in page: the session cookie authenticates, the CSRF token goes in a header.
const csrfToken = () => document.getElementById("csrf").value;

// Returns {status, data}; a network failure is status 0 with a message, so callers handle one shape.
export async function api(path, { method = "GET", body, keepalive = false } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      keepalive,
    });
  } catch (error) {
    return { status: 0, data: { detail: "The server cannot be reached; check your connection." } };
  }
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch (error) {
    data = { detail: `The server answered ${response.status}.` };
  }
  return { status: response.status, data };
}

// "Invalid input: final_text." plus the field messages, for people.
export function describeError(data) {
  const fields = Object.entries(data.errors || {}).map(([field, messages]) => `${field}: ${[].concat(messages).join(" ")}`);
  return [data.detail || "Something went wrong.", ...fields].join(" ");
}
