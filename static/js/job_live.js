// A fine-tune job's admin page: live progress from /ws/jobs/{id}/ (text only, never HTML). The page reloads
// once when the job ends, so that the loss curve and the evaluation report are drawn from the final data.
const root = document.getElementById("job-live");
if (root) {
  const progress = document.getElementById("job-progress");
  const summary = document.getElementById("job-summary");
  const detail = document.getElementById("job-detail");
  const finished = ["succeeded", "failed", "cancelled"];
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/jobs/${root.dataset.jobId}/`);
  socket.addEventListener("message", (event) => {
    const job = JSON.parse(event.data);
    if (job.type === "error") return;
    progress.max = Math.max(job.total_steps, 1);
    progress.value = job.step;
    summary.textContent = `${job.status}${job.outcome ? ` (${job.outcome})` : ""} · step ${job.step} of ${job.total_steps}`;
    const parts = [];
    if (job.stage) parts.push(job.stage);
    if (job.loss !== null) parts.push(`loss ${job.loss.toFixed(4)}`);
    if (job.tokens_per_second) parts.push(`${job.tokens_per_second.toFixed(0)} tokens/s`);
    if (job.eta_seconds && !finished.includes(job.status)) parts.push(`about ${Math.ceil(job.eta_seconds)} s left`);
    if (job.error) parts.push(job.error);
    detail.textContent = parts.join(" · ");
    if (finished.includes(job.status) && !finished.includes(root.dataset.status)) location.reload();
  });
}
