"""The whole annotation loop in a real browser (Playwright driving Debian's Chromium) against a real server:
the admin creates a project on the admin page and imports 20 pairs plus calibration and anchor pairs; two
annotators pass calibration and label on their page, one with the keyboard, one with clicks; the dashboard page
shows Cohen's kappa; the export trains a reward model through the real `rlhfkit reward train` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rlhfkit.feedback.annotate.app import serve_in_background
from rlhfkit.feedback.annotate.db import open_database
from rlhfkit.feedback.annotate.service import create_admin

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"{CHROMIUM} not installed (`bash scripts/test-setup.sh` installs it)"
)

GOOD = "Lovely"  # every pair has one response starting with this: the one a careful annotator picks


def review_rows(n: int, prefix: str, answers: bool = False) -> list[dict]:
    """Pairs where the good review is response a on even rows and b on odd ones, so careful labels vary."""
    rows = []
    for i in range(n):
        good, bad = (
            f"{GOOD} stay {i}: the room was spotless and the staff kind.",
            f"Awful stay {i}: the room was dirty.",
        )
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        row = {
            "id": f"{prefix}{i}",
            "prompt": f"We stayed at the {prefix}{i} hotel last week.",
            "response_a": a,
            "response_b": b,
        }
        if answers:
            row["answer"] = "a" if i % 2 == 0 else "b"
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def server(tmp_path):
    db = str(tmp_path / "annotate.sqlite")
    database = open_database(db, create=True)
    with database.session() as s:
        token = create_admin(s, "ada")
        s.commit()
    database.close()
    process, base = serve_in_background(db)
    yield {"base": base, "admin": token, "db": db}
    process.terminate()
    process.wait(timeout=10)


def label_everything(page, link: str, decide, use_keyboard: bool) -> list[str]:
    """Open the annotator's link and label until the queue is empty; returns the prompts seen, in order."""
    page.goto(link)
    # selectors, not wait_for_function: the page's Content-Security-Policy forbids the eval that one needs
    page.wait_for_selector("body[data-state]", state="attached")
    assert page.locator("#rubric h3").inner_text() == "Which review helps a traveller more?"
    seen = []
    while page.evaluate("document.body.dataset.state") == "assignment":
        assignment = page.evaluate("document.body.dataset.assignment")
        prompt, left = page.locator("#prompt").inner_text(), page.locator("#left").inner_text()
        pick_left = decide(prompt, left.startswith(GOOD))
        if use_keyboard:
            page.keyboard.press("1" if pick_left else "2")
            if len(seen) % 5 == 0:
                page.fill("#rationale", "more specific")
                page.locator("#rationale").press("Control+Enter")
            else:
                page.keyboard.press("Enter")
        else:
            page.click(f"#choices button[data-choice={'left' if pick_left else 'right'}]")
            page.click("#submit")
        page.wait_for_selector(
            f'body:not([data-assignment="{assignment}"]), body:not([data-state="assignment"])', state="attached"
        )
        seen.append(prompt)
    return seen


def test_admin_and_two_annotators_in_the_browser_then_reward_training_on_the_export(server, tmp_path):
    from playwright.sync_api import sync_playwright

    base, admin = server["base"], server["admin"]
    files = {
        "main": write_rows(tmp_path / "reviews.jsonl", review_rows(20, "main-")),
        "calibration": write_rows(tmp_path / "calibration.jsonl", review_rows(3, "cal-", answers=True)),
        "anchor": write_rows(tmp_path / "anchors.jsonl", review_rows(2, "anchor-", answers=True)),
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # a fresh, empty profile
        try:
            admin_page = browser.new_context().new_page()
            admin_page.goto(f"{base}/admin#token={admin}")
            admin_page.wait_for_selector("body[data-ready='1']")
            assert "token=" not in admin_page.url  # the token leaves the address bar at once
            form = admin_page.locator("#create-form")
            form.locator("input[name=name]").fill("reviews")
            form.locator("textarea[name=rubric]").fill(
                "# Which review helps a traveller more?\n- prefer **specific** details"
            )
            form.locator("input[name=criteria]").fill("helpfulness")
            form.locator("input[name=overlap]").fill("2")
            form.locator("input[name=anchor_rate]").fill("0.1")
            admin_page.click("#create-button")
            admin_page.wait_for_selector("#manage:not([hidden])")
            for role, path in files.items():
                admin_page.set_input_files("#pairs-file", str(path))
                admin_page.select_option("#pairs-role", role)
                admin_page.click("#pairs-import")
                admin_page.wait_for_selector(
                    f"#message:has-text('Imported {len(path.read_text().splitlines())} {role} pairs')"
                )
            assert admin_page.locator("#projects tbody tr").first.inner_text().split("\t")[:4] == [
                "reviews",
                "20",
                "3",
                "2",
            ]
            links = {}
            for name in ("ann", "bob"):
                admin_page.fill("#invite-name", name)
                admin_page.click("#invite-button")
                links[name] = admin_page.locator(f".invite-link[data-annotator={name}]").get_attribute("href")
            assert links["ann"] != links["bob"]

            # ann: careful, keyboard; bob: careful except on three main pairs, clicks
            ann = label_everything(
                browser.new_context().new_page(), links["ann"], lambda prompt, left_good: left_good, use_keyboard=True
            )
            slips = {"main-3 ", "main-8 ", "main-15 "}
            bob = label_everything(
                browser.new_context().new_page(),
                links["bob"],
                lambda prompt, left_good: left_good != any(s in prompt for s in slips),
                use_keyboard=False,
            )
            for seen in (ann, bob):
                assert all("cal-" in p for p in seen[:3])  # calibration first
                assert sum("main-" in p for p in seen) == 20 and sum("anchor-" in p for p in seen) >= 2

            admin_page.goto(f"{base}/admin/reviews/dashboard")  # same tab: the admin token is still in sessionStorage
            admin_page.wait_for_selector("body[data-ready='1']")
            kappa_row = admin_page.locator("#kappa-pairs tbody tr").first.inner_text().split("\t")
            board = httpx.get(
                f"{base}/api/projects/reviews/dashboard", headers={"Authorization": f"Bearer {admin}"}
            ).json()
            kappa = board["agreement"]["cohen_kappa"]["ann|bob"]
            assert kappa_row == [
                "ann / bob",
                "23",
                f"{board['agreement']['percent_agreement']['ann|bob']:.3f}",
                f"{kappa:.3f}",
            ]
            assert 0.5 < kappa < 1  # three disagreements in 23 shared pairs
            agreement_text = admin_page.locator("#agreement").inner_text()
            assert f"Cohen's kappa (mean over annotator pairs)\t{kappa:.3f}" in agreement_text
            assert "Fleiss' kappa" in agreement_text and "Krippendorff's alpha" in agreement_text
            people = admin_page.locator("#annotators tbody").inner_text()
            assert "ann\t" in people and "passed (100%)" in people
        finally:
            browser.close()

    export = tmp_path / "export" / "preferences.jsonl"
    env = {**os.environ, "RLHFKIT_NO_PROGRESS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhfkit.cli",
            "annotate",
            "export",
            "--project",
            "reviews",
            "--out",
            str(export),
            "--db",
            server["db"],
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # the 3 slips split those pairs 1-1 (no majority, left out); 17 main + 3 calibration pairs remain
    assert "wrote 20 preference pairs" in result.stdout and "3 without a majority" in result.stdout
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert all(r["chosen"].startswith(GOOD) for r in rows) and all(
        set(r["metadata"]["votes"]) == {"ann", "bob"} for r in rows
    )

    run_dir = tmp_path / "reward"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhfkit.cli",
            "reward",
            "train",
            f"data={export}",
            f"output_dir={run_dir}",
            "max_steps=3",
            "batch_size=4",
            "eval_every=3",
            "log_every=1",
            "val_fraction=0.25",
            "threads=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_pairs"] + summary["val_pairs"] == 20 and summary["steps_run"] == 3
    assert (run_dir / "model" / "config.json").is_file()
