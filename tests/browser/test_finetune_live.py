"""A model manager watches a fine-tune job run live in the admin, in real Chromium, against `sora_serve`:
Daphne, the training worker (the tiny model), the embedded Redis. Progress arrives over /ws/jobs/{id}/;
when the job ends the page shows the loss curve and the evaluation report."""

import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.browser.conftest import CHROMIUM_FLAGS
from tests.test_demo import http_json, running_stack

pytestmark = [pytest.mark.slow, pytest.mark.browser]

RUN = {"epochs": 30, "learning_rate": 0.01, "batch_size": 4, "lora_rank": 8, "checkpoint_every": 50}
# Every change the page makes to the progress line, as it happens.
RECORD_SUMMARIES = """() => {
    const summary = document.getElementById("job-summary");
    window.summaries = [summary.textContent];
    new MutationObserver(() => window.summaries.push(summary.textContent))
        .observe(summary, {childList: true, characterData: true, subtree: true});
}"""


def token(base: str, username: str) -> str:
    return http_json(f"{base}/api/v1/auth/token/", {"username": username, "password": f"{username}-demo"})[1]["token"]


def steps_of(summaries: list[str]) -> list[int]:
    return [int(line.split("step ")[1].split(" ")[0]) for line in summaries if "step " in line]


def test_a_manager_watches_a_fine_tune_job_live_in_the_admin(tmp_path, tiny_model_dir):
    with running_stack(tmp_path, tiny_model_dir) as stack, sync_playwright() as playwright:
        reviewer, manager = token(stack.base, "reviewer"), token(stack.base, "manager")
        for _ in range(30):
            status, item = http_json(f"{stack.base}/api/v1/queue/claim/", {"domain": "customer_service"}, reviewer)
            assert status == 200
            status, _ = http_json(
                f"{stack.base}/api/v1/items/{item['id']}/reviews/",
                {"decision": "approve", "version": item["version"], "final_text": "Kind regards, the team."},
                reviewer,
            )
            assert status == 201
        status, job = http_json(
            f"{stack.base}/api/v1/finetune-jobs/", {"domain": "customer_service", "hyperparameters": RUN}, manager
        )
        assert status == 201, job

        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        page = browser.new_page()
        violations = []
        page.on("console", lambda m: "Content Security Policy" in m.text and violations.append(m.text))
        page.goto(f"{stack.base}/admin/login/")
        page.fill("#id_username", "manager")
        page.fill("#id_password", "manager-demo")
        page.click("input[type=submit]")
        page.goto(f"{stack.base}/admin/models_app/finetunejob/{job['id']}/change/")
        page.evaluate(RECORD_SUMMARIES)
        live = []
        for _ in range(1200):  # up to two minutes: training steps moving on the page, without a reload
            live = page.evaluate("window.summaries || []")
            if len(set(steps_of(live))) >= 2:  # stage messages (general answers, evaluation) repeat one step
                break
            page.wait_for_timeout(100)
        # The page reloads itself once the job has ended, then draws the final curve and report.
        expect(page.locator("#job-loss")).to_be_visible(timeout=120_000)
        expect(page.locator("#job-summary")).to_contain_text("succeeded", timeout=30_000)
        report = page.text_content(".field-evaluation_report")
        browser.close()
        _, finished = http_json(f"{stack.base}/api/v1/finetune-jobs/{job['id']}/", token=manager)

    assert finished["status"] == "succeeded", finished["error"]
    assert len(live) >= 4 and any("running" in line for line in live), live  # progress arrived as it happened
    steps = steps_of(live)
    assert steps == sorted(steps) and steps[-1] > steps[0], live
    assert "edit distance" in report and "Promote:" in report
    assert violations == []
