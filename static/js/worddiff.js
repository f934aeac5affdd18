// Word-level diff of the draft against the reviewer's text, for the "Changes" view while they type.
// It mirrors annotations/diffing.py, which computes the diff stored with an approval: the same tokens
// (a word with the whitespace after it, so the pieces rebuild both texts exactly), aligned on their words
// alone, and the same joining of a changed run into one deletion followed by one insertion.
// Whitespace spelled out as Python's str.isspace() has it (JavaScript's \s differs slightly), in both files.
const SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const TOKEN = new RegExp(`[${SPACE}]+|[^${SPACE}]+[${SPACE}]*`, "g");
const LEADING_WORD = new RegExp(`^[^${SPACE}]*`);
// Above this many cells of the comparison table the middle part is shown as replaced outright.
const MAX_CELLS = 4_000_000;

export function wordDiff(before, after) {
  const a = before.match(TOKEN) || [];
  const b = after.match(TOKEN) || [];
  const wordsA = a.map(word);
  const wordsB = b.map(word);
  let start = 0;
  while (start < a.length && start < b.length && wordsA[start] === wordsB[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && wordsA[endA - 1] === wordsB[endB - 1]) {
    endA--;
    endB--;
  }
  const steps = [];
  const same = (i, j) => steps.push(...sameWord(a[i], b[j]));
  for (let i = 0; i < start; i++) same(i, i);
  for (const [tag, i, j] of middle(wordsA, wordsB, start, endA, endB)) {
    if (tag === "equal") same(i, j);
    else steps.push(tag === "delete" ? ["delete", a[i]] : ["insert", b[j]]);
  }
  for (let k = 0; k < a.length - endA; k++) same(endA + k, endB + k);
  return joinChangedRuns(steps);
}

// A token's word: "" for a run of whitespace (only the text's opening one is a token of its own).
function word(token) {
  return token.match(LEADING_WORD)[0];
}

// One word in both texts: equal, and its following whitespace too unless that changed.
function sameWord(before, after) {
  const shared = word(before);
  const spaceBefore = before.slice(shared.length);
  const spaceAfter = after.slice(shared.length);
  if (spaceBefore === spaceAfter) return [["equal", before]];
  return [["equal", shared], ["delete", spaceBefore], ["insert", spaceAfter]].filter(([, text]) => text);
}

// Longest common subsequence of the words in the changed middle (edits are local, so it is small):
// [tag, index in a, index in b] steps.
function middle(a, b, start, endA, endB) {
  const n = endA - start;
  const m = endB - start;
  const steps = [];
  if (!n || !m || (n + 1) * (m + 1) > MAX_CELLS) {
    for (let i = start; i < endA; i++) steps.push(["delete", i, -1]);
    for (let j = start; j < endB; j++) steps.push(["insert", -1, j]);
    return steps;
  }
  const width = m + 1;
  const lcs = new Uint32Array((n + 1) * width);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i * width + j] =
        a[start + i] === b[start + j]
          ? lcs[(i + 1) * width + j + 1] + 1
          : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
    }
  }
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[start + i] === b[start + j]) {
      steps.push(["equal", start + i++, start + j++]);
    } else if (i < n && (j === m || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1])) {
      steps.push(["delete", start + i++, -1]);
    } else {
      steps.push(["insert", -1, start + j++]);
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
    else if ((deleted || inserted) && !word(text) && next && next[0] !== "equal") {
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
