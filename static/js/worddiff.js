// Word-level diff of the draft against the reviewer's text, for the "Changes" view while they type.
// It mirrors annotations/diffing.py, which computes the diff stored with an approval: the same tokens
// (words and the whitespace between them, so the pieces rebuild both texts exactly) and the same joining
// of a changed run into one deletion followed by one insertion.
const TOKEN = /\s+|\S+/g;
// Above this many cells of the comparison table the middle part is shown as replaced outright.
const MAX_CELLS = 4_000_000;

export function wordDiff(before, after) {
  const a = before.match(TOKEN) || [];
  const b = after.match(TOKEN) || [];
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--;
    endB--;
  }
  const steps = a.slice(0, start).map((token) => ["equal", token]);
  steps.push(...middle(a.slice(start, endA), b.slice(start, endB)));
  steps.push(...a.slice(endA).map((token) => ["equal", token]));
  return joinChangedRuns(steps);
}

// Longest common subsequence over the changed middle: edits are local, so it is small.
function middle(a, b) {
  const n = a.length;
  const m = b.length;
  if (!n || !m || (n + 1) * (m + 1) > MAX_CELLS) {
    return [...a.map((token) => ["delete", token]), ...b.map((token) => ["insert", token])];
  }
  const width = m + 1;
  const lcs = new Uint32Array((n + 1) * width);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i * width + j] = a[i] === b[j] ? lcs[(i + 1) * width + j + 1] + 1 : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
    }
  }
  const steps = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      steps.push(["equal", a[i++]]);
      j++;
    } else if (i < n && (j === m || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1])) {
      steps.push(["delete", a[i++]]);
    } else {
      steps.push(["insert", b[j++]]);
    }
  }
  return steps;
}

// A space kept between two changes joins the change: "is on its way" → "left today" reads as one deletion
// and one insertion, not a word-by-word zip.
function joinChangedRuns(steps) {
  const ops = [];
  let deleted = "";
  let inserted = "";
  const flush = () => {
    if (deleted) ops.push(["delete", deleted]);
    if (inserted) ops.push(["insert", inserted]);
    deleted = "";
    inserted = "";
  };
  steps.forEach(([tag, text], index) => {
    const next = steps[index + 1];
    if (tag === "delete") deleted += text;
    else if (tag === "insert") inserted += text;
    else if ((deleted || inserted) && !text.trim() && next && next[0] !== "equal") {
      deleted += text;
      inserted += text;
    } else {
      flush();
      if (ops.length && ops[ops.length - 1][0] === "equal") ops[ops.length - 1][1] += text;
      else ops.push(["equal", text]);
    }
  });
  flush();
  return ops;
}
