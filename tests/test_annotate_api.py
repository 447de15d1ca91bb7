"""The annotation app's API, on SQLite and on PostgreSQL (a throwaway cluster started for the session).

Each test drives the app the way its users do: an admin creates a project and imports pairs, annotators fetch
their queue and submit labels, the admin reads the dashboard and exports. Checked: calibration gating and
overrides, randomised sides, anchors, dynamic sampling, idempotent submissions, agreement numbers, exports that
the rest of rlhfkit reads, machine judgments, and every forbidden access.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rlhfkit.data.records import load_records, write_jsonl
from rlhfkit.feedback.agreement import agreement_report
from rlhfkit.feedback.annotate.app import create_app
from rlhfkit.feedback.annotate.db import open_database
from rlhfkit.feedback.annotate.service import create_admin

# ------------------------------------------------------------------------------------------ PostgreSQL


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").is_file() and (candidate / "initdb").is_file():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster: initdb into a temporary folder, pg_ctl start on a free port (as the postgres
    user when the tests run as root, since the server refuses root), stopped and removed afterwards."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `bash scripts/test-setup.sh` installs them")
    root = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = next(
            (u for u in ("postgres", "nobody") if subprocess.run(["id", "-u", u], capture_output=True).returncode == 0),
            None,
        )
        runuser = shutil.which("runuser")
        if user is None or runuser is None:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(
                "running as root with no 'postgres' or 'nobody' user (or no runuser) to run the PostgreSQL server as"
            )
        shutil.chown(root, user)
        prefix = [runuser, "-u", user, "--"]
    data, log, port = root / "data", root / "server.log", _free_port()
    init = subprocess.run(
        prefix + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed, PostgreSQL cannot run here: {init.stderr.strip()[-300:]}")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    start = subprocess.run(
        prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"],
        capture_output=True,
        text=True,
    )
    if start.returncode != 0:
        detail = log.read_text()[-300:] if log.is_file() else start.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {detail.strip()}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-W", "stop"], capture_output=True
        )
        for _ in range(200):  # pg_ctl's own wait polls once a second; this is quicker
            if not (data / "postmaster.pid").exists():
                break
            time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """An empty store made once by the migrations; each test gets a copy (faster than migrating every time)."""
    path = tmp_path_factory.mktemp("template") / "annotate.sqlite"
    open_database(str(path), create=True).close()
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_server):
    import psycopg

    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as connection:
        connection.execute('CREATE DATABASE "annotate_template"')
    open_database(f"{postgres_server}/annotate_template", create=True).close()
    return "annotate_template"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A migrated, empty store: a SQLite file, or a database on the throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        path = tmp_path / "annotate.sqlite"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield str(path)
        return
    import psycopg

    server, template = request.getfixturevalue("postgres_server"), request.getfixturevalue("postgres_template")
    name = f"annotate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    yield f"{server}/{name}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -------------------------------------------------------------------------------------------- harness


def pair_rows(n: int, prefix: str = "p", answer: str | None = None) -> list[dict]:
    """Pairs whose response a is the good one ("Good ..."), so a careful annotator's choice is predictable."""
    rows = []
    for i in range(n):
        row = {
            "id": f"{prefix}{i}",
            "prompt": f"We stayed at hotel number {prefix}{i} last week.",
            "response_a": f"Good: the room {i} was clean and the staff were lovely.",
            "response_b": f"Bad: the room {i} was dirty.",
        }
        if answer:
            row["answer"] = answer
        rows.append(row)
    return rows


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def side_of(item: dict, wanted: str) -> str:
    """The side ('left'/'right') on which the response starting with `wanted` ('Good' or 'Bad') is shown."""
    return "left" if item["left"].startswith(wanted) else "right"


class Harness:
    def __init__(self, client: TestClient, admin_token: str, db):
        self.client, self.admin, self.db = client, {"Authorization": f"Bearer {admin_token}"}, db

    def project(self, name="p1", **settings) -> str:
        response = self.client.post(
            "/api/projects",
            json={"name": name, "rubric": "# Pick the better review\nPrefer **helpful** ones.", **settings},
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        return name

    def pairs(self, project: str, rows: list[dict], role: str = "main"):
        response = self.client.post(
            f"/api/projects/{project}/pairs",
            json={"jsonl": jsonl(rows), "filename": f"{role}.jsonl", "role": role},
            headers=self.admin,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def invite(self, project: str, name: str) -> dict:
        response = self.client.post(f"/api/projects/{project}/annotators", json={"name": name}, headers=self.admin)
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def next(self, project: str, who: dict) -> dict:
        response = self.client.post(f"/api/projects/{project}/next", headers=who)
        assert response.status_code == 200, response.text
        return response.json()

    def submit(self, project: str, who: dict, item: dict, choice: str, **extra):
        return self.client.post(
            f"/api/projects/{project}/assignments/{item['id']}/judgment", json={"choice": choice, **extra}, headers=who
        )

    def label_all(self, project: str, who: dict, decide, limit: int | None = None) -> list[dict]:
        """Fetch and submit until the queue gives nothing (or `limit` items); `decide(item) -> side`. Returns the
        items."""
        seen = []
        while limit is None or len(seen) < limit:
            result = self.next(project, who)
            if result["state"] != "assignment":
                return seen
            item = result["assignment"]
            response = self.submit(project, who, item, decide(item))
            assert response.status_code == 200, response.text
            seen.append(item)
            assert len(seen) < 500, "the queue never runs dry"
        return seen

    def dashboard(self, project: str) -> dict:
        response = self.client.get(f"/api/projects/{project}/dashboard", headers=self.admin)
        assert response.status_code == 200, response.text
        return response.json()

    def judgments(self, project: str) -> list[dict]:
        response = self.client.get(f"/api/projects/{project}/judgments", headers=self.admin)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def app_harness(db_url):
    database = open_database(db_url)
    with database.session() as s:
        token = create_admin(s, "ada")
        s.commit()
    app = create_app(database, max_request_bytes=16 * 1024, max_rationale=200)
    with TestClient(app) as client:
        yield Harness(client, token, database)
    database.close()


def good(item):
    return side_of(item, "Good")


def bad(item):
    return side_of(item, "Bad")


# ---------------------------------------------------------------------------------------------- tests


def test_migrated_schema_matches_the_models(db_url):
    """The store the migrations made (the template every test copies) has exactly the models' tables and columns."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from rlhfkit.feedback.annotate.models import Base

    database = open_database(db_url)
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    database.close()
    assert differences == []
    # opening it again (what serve does on every start) upgrades nothing and keeps working
    open_database(db_url).close()


def test_calibration_gates_the_main_queue_and_an_override_is_recorded(app_harness):
    h = app_harness
    project = h.project(agreement_threshold=0.65, anchor_rate=0)
    h.pairs(project, pair_rows(3, "cal", answer="a"), role="calibration")
    h.pairs(project, pair_rows(4))
    careful, careless = h.invite(project, "careful"), h.invite(project, "careless")

    first = h.next(project, careful)
    assert first["state"] == "assignment" and first["assignment"]["phase"] == "calibration"
    assert first["calibration"]["state"] == "in_progress" and first["calibration"]["total"] == 3
    # the same open item comes back until it is answered (a reload shows the same sides)
    assert h.next(project, careful)["assignment"] == first["assignment"]

    calibration_items = h.label_all(project, careful, good, limit=3)
    assert len(calibration_items) == 3 and all(i["phase"] == "calibration" for i in calibration_items)
    opened = h.next(project, careful)
    assert opened["state"] == "assignment" and opened["assignment"]["phase"] == "labelling"
    assert opened["calibration"]["state"] == "passed" and opened["calibration"]["agreement"] == 1.0

    # two of three wrong: 33% < 65%, the queue stays closed
    for _ in range(3):
        item = h.next(project, careless)["assignment"]
        assert item["phase"] == "calibration"
        choice = good(item) if item["prompt"].endswith("cal0 last week.") else bad(item)
        assert h.submit(project, careless, item, choice).status_code == 200
    closed = h.next(project, careless)
    assert closed["state"] == "calibration_failed" and closed["assignment"] is None
    assert closed["calibration"]["agreement"] == pytest.approx(1 / 3)

    response = h.client.post(
        f"/api/projects/{project}/annotators/careless/override", json={"reason": "retrained in person"}, headers=h.admin
    )
    assert response.status_code == 200 and response.json()["state"] == "overridden"
    assert h.next(project, careless)["state"] == "assignment"
    board = h.dashboard(project)
    assert board["overrides"] == [
        {
            "annotator": "careless",
            "admin": "ada",
            "reason": "retrained in person",
            "agreement": pytest.approx(1 / 3),
            "at": board["overrides"][0]["at"],
        }
    ]
    people = {p["name"]: p for p in board["annotators"]}
    assert (
        people["careful"]["calibration"]["state"] == "passed"
        and people["careless"]["calibration"]["state"] == "overridden"
    )


def test_calibration_without_known_answers_uses_the_other_annotators_majority(app_harness):
    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(2, "cal"), role="calibration")  # no known answers
    h.pairs(project, pair_rows(2))
    people = [h.invite(project, name) for name in ("ann", "bob", "cy")]
    h.label_all(project, people[0], good, limit=2)
    waiting = h.next(project, people[0])
    assert waiting["state"] == "waiting" and waiting["calibration"]["agreement"] is None  # nobody else yet
    h.label_all(project, people[1], good, limit=2)
    h.label_all(project, people[2], bad, limit=2)
    # ann against the majority of bob and cy: no strict majority (1-1), so still waiting; bob likewise
    assert h.next(project, people[0])["state"] == "waiting"
    fourth = h.invite(project, "dee")
    h.label_all(project, fourth, good, limit=2)
    assert h.next(project, people[0])["state"] == "assignment"  # bob and dee agree with ann
    assert h.next(project, people[2])["state"] == "calibration_failed"  # cy disagrees with everyone


def test_sides_are_randomised_per_assignment_and_left_right_map_back_to_the_pair(app_harness):
    h = app_harness
    project = h.project(overlap=2, anchor_rate=0)
    h.pairs(project, pair_rows(20))
    first, second = h.invite(project, "first"), h.invite(project, "second")
    h.label_all(project, first, lambda item: "left")
    h.label_all(project, second, good)
    rows = h.judgments(project)
    assert len(rows) == 40
    shown = Counter(r["shown_first"] for r in rows)
    assert shown["a"] >= 8 and shown["b"] >= 8  # random sides (about 20 each; fewer than 8 has odds below 1 in 10,000)
    for row in rows:
        if row["annotator"] == "first":
            assert row["choice"] == row["shown_first"]  # "left" is whatever response was on the left
        else:
            assert row["choice"] == "a"  # the good response is a, whatever side it was on
    board = h.dashboard(project)
    assert board["position_bias"]["decisive"] == 40
    assert board["position_bias"]["left_share"] == pytest.approx((20 + shown_left(rows, "second")) / 40)
    people = {p["name"]: p for p in board["annotators"]}
    assert people["first"]["position_bias"]["left_share"] == 1.0


def shown_left(rows, annotator):
    return sum(r["choice"] == r["shown_first"] for r in rows if r["annotator"] == annotator)


def test_a_resubmitted_judgment_is_idempotent(app_harness):
    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(3))
    who = h.invite(project, "ann")
    item = h.next(project, who)["assignment"]
    first = h.submit(project, who, item, "left", rationale="clearer")
    again = h.submit(project, who, item, "left", rationale="clearer")
    changed = h.submit(project, who, item, "right")
    assert first.status_code == again.status_code == changed.status_code == 200
    assert first.json() == again.json() == changed.json()
    assert first.json()["choice"] == "left"
    assert len(h.judgments(project)) == 1
    mine = h.client.get(f"/api/projects/{project}/my-judgments", headers=who).json()
    assert [(m["choice"], m["rationale"]) for m in mine] == [("left", "clearer")]


def test_anchors_are_mixed_into_every_batch_and_tracked_per_annotator(app_harness):
    h = app_harness
    project = h.project(overlap=1, anchor_rate=0.2, batch_size=5, anchor_window=2)
    h.pairs(project, pair_rows(3, "anc", answer="a"), role="anchor")
    h.pairs(project, pair_rows(16))
    who = h.invite(project, "ann")
    # right on the first anchors, wrong on the later ones: accuracy falls (drift)
    anchors_seen = []

    def decide(item):
        if "anc" in item["prompt"]:
            anchors_seen.append(item)
            return good(item) if len(anchors_seen) <= 2 else bad(item)
        return good(item)

    items = h.label_all(project, who, decide)
    assert len(items) == 16 + len(anchors_seen)
    # one anchor in each batch of 5 main-queue items, and never shown as anything but a normal item
    for start in range(0, len(items) - len(items) % 5, 5):
        assert sum("anc" in i["prompt"] for i in items[start : start + 5]) == 1
    assert all(i["phase"] == "labelling" for i in items)
    # 16 main pairs need 4 batches of 4 + 1 anchor (the last anchor only if it comes before the last main pair);
    # with 3 anchor pairs, the fourth batch has none: an anchor never comes round again
    assert len(anchors_seen) == 3 and len({i["prompt"] for i in anchors_seen}) == 3
    person = h.dashboard(project)["annotators"][0]
    assert person["anchor_judgments"] == len(anchors_seen) and person["anchor_accuracy"] == pytest.approx(
        2 / len(anchors_seen)
    )
    assert [t["accuracy"] for t in person["anchor_trend"]] == [1.0, 0.0] and person["drift"] == -1.0
    # anchors are quality control, not data: not in the judgments export
    assert all(not r["pair_id"].startswith("anc") for r in h.judgments(project))


def test_disputed_and_low_confidence_pairs_get_more_judgments_up_to_the_cap(app_harness):
    h = app_harness
    project = h.project(overlap=2, max_judgments=4, anchor_rate=0, dispute_below=0.6, margin_below=0.5)
    rows = pair_rows(3)
    rows[2]["reward_margin"] = 0.1  # p2: the reward model is unsure
    h.pairs(project, rows)
    people = [h.invite(project, f"ann{i}") for i in range(6)]
    # alternate annotators disagree on p0 and p1; everyone agrees on p2
    for i, who in enumerate(people):
        h.label_all(
            project, who, lambda item, i=i: good(item) if (i % 2 == 0 or "p2 " in item["prompt"]) else bad(item)
        )
    counts = Counter(r["pair_id"] for r in h.judgments(project))
    # p0, p1: 1-1 after two votes (disputed) -> 3 -> 2-1 is a 67% majority, settled; p2: margin 0.1 < 0.5 -> overlap + 1
    assert counts == {"p0": 3, "p1": 3, "p2": 3}
    board = h.dashboard(project)
    assert board["progress"]["resampled"] == 3 and board["progress"]["complete"] == 3

    capped = h.project("capped", overlap=2, max_judgments=3, anchor_rate=0, dispute_below=0.9)
    h.pairs(capped, pair_rows(1))
    for i, decide in enumerate([good, bad, lambda item: "tie", lambda item: "both_bad", good]):
        h.label_all(capped, h.invite(capped, f"c{i}"), decide)
    assert len(h.judgments(capped)) == 3  # always disputed, but never more than max_judgments


def test_dashboard_numbers_are_rlhfkits_agreement_metrics_and_the_export_is_accepted(app_harness, tmp_path):
    h = app_harness
    project = h.project(overlap=3, anchor_rate=0)
    h.pairs(project, pair_rows(12))
    plans = {"ann": lambda i: "a", "bob": lambda i: "a" if i % 4 else "b", "cy": lambda i: "a" if i % 3 else "tie"}
    for name, plan in plans.items():
        who = h.invite(project, name)

        def decide(item, plan=plan):
            i = int(item["prompt"].split("number p")[1].split()[0])
            choice = plan(i)
            return (
                ("left" if item["left"].startswith("Good") else "right")
                if choice == "a"
                else ("right" if item["left"].startswith("Good") else "left")
                if choice == "b"
                else choice
            )

        h.label_all(project, who, decide)
    board = h.dashboard(project)
    raw = tmp_path / "judgments.jsonl"
    write_jsonl(raw, h.judgments(project))
    report = agreement_report(raw)
    for key in ("raw_agreement", "mean_cohen_kappa", "fleiss_kappa", "krippendorff_alpha", "cohen_kappa"):
        assert board["agreement"][key] == pytest.approx(report[key])
    assert set(board["agreement"]["cohen_kappa"]) == {"ann|bob", "ann|cy", "bob|cy"}

    response = h.client.get(f"/api/projects/{project}/export.jsonl", headers=h.admin)
    assert response.status_code == 200
    out = tmp_path / "prefs.jsonl"
    out.write_text(response.text)
    pairs = load_records(out, "preference")
    # p0 got a, b and tie: no majority, left out; every other pair has at least 2 of 3 votes for a
    assert [p.id for p in pairs] == [f"p{i}" for i in range(1, 12)] and all(p.chosen.startswith("Good") for p in pairs)
    assert pairs[2].metadata["votes"] == {"ann": "a", "bob": "a", "cy": "tie"} and pairs[2].metadata[
        "agreement"
    ] == pytest.approx(2 / 3, abs=1e-4)
    assert json.loads(response.headers["X-Export-Counts"])["no_majority"] == 1
    exported = agreement_report(out)  # `rlhfkit agreement` reads the export's metadata.votes
    assert exported["items"] == 11 and exported["annotator_names"] == ["ann", "bob", "cy"]


def test_export_leaves_out_ties_both_bad_and_split_pairs_and_counts_them(app_harness, tmp_path):
    from rlhfkit.feedback.annotate.service import export_preferences, get_project

    h = app_harness
    project = h.project(overlap=2, max_judgments=2, anchor_rate=0, criteria=["helpfulness", "harmlessness"])
    h.pairs(project, pair_rows(5))
    plan = {"p0": ("a", "a"), "p1": ("b", "b"), "p2": ("tie", "tie"), "p3": ("both_bad", "both_bad"), "p4": ("a", "b")}
    for k in range(2):
        who = h.invite(project, f"ann{k}")

        def decide(item, k=k):
            choice = plan[item["prompt"].split("number ")[1].split()[0]][k]
            return {"a": good(item), "b": bad(item)}.get(choice, choice)

        for _ in range(5):
            item = h.next(project, who)["assignment"]
            response = h.submit(
                project, who, item, decide(item), criteria={"helpfulness": decide(item), "harmlessness": "tie"}
            )
            assert response.status_code == 200, response.text
    with h.db.session() as s:
        pairs, counts = export_preferences(s, get_project(s, project))
    assert counts == {"exported": 2, "unlabelled": 0, "no_majority": 1, "tie": 1, "both_bad": 1}
    by_id = {p.id: p for p in pairs}
    assert by_id["p0"].chosen.startswith("Good") and by_id["p1"].chosen.startswith("Bad")
    assert by_id["p1"].metadata["votes"] == {"ann0": "b", "ann1": "b"} and by_id["p1"].metadata["agreement"] == 1.0
    assert by_id["p0"].metadata["criteria"] == {"helpfulness": "a", "harmlessness": "tie"}
    # the criteria become the pairs' labels, in chosen/rejected terms: one reward-model head per criterion
    assert by_id["p0"].labels == by_id["p1"].labels == {"helpfulness": "chosen", "harmlessness": "tie"}


def test_machine_judgments_are_stored_apart_and_compared_with_the_human_majority(app_harness):
    h = app_harness
    project = h.project(overlap=2, anchor_rate=0)
    h.pairs(project, pair_rows(6))
    machine = [
        {"pair_id": f"p{i}", "annotator": "judge-1", "choice": "a", "shown_first": "b", "annotator_kind": "ai"}
        for i in range(6)
    ]
    machine += [{"pair_id": f"p{i}", "annotator": "sim-0", "choice": "a" if i % 2 else "b"} for i in range(6)]
    response = h.client.post(
        f"/api/projects/{project}/machine-judgments",
        json={"jsonl": jsonl(machine), "filename": "judge.jsonl", "kind": "panel"},
        headers=h.admin,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"imported": 12, "already_stored": 0, "annotators": ["judge-1", "sim-0"]}
    again = h.client.post(
        f"/api/projects/{project}/machine-judgments",
        json={"jsonl": jsonl(machine), "filename": "judge.jsonl"},
        headers=h.admin,
    )
    assert again.json()["imported"] == 0 and again.json()["already_stored"] == 12
    # machine judgments do not fill the human overlap: each person still gets all 6 pairs
    for name in ("ann", "bob"):
        who = h.invite(project, name)
        assert len(h.label_all(project, who, lambda item: good(item) if "p5" not in item["prompt"] else bad(item))) == 6
    board = h.dashboard(project)
    assert board["progress"]["human_judgments"] == 12 and board["progress"]["machine_judgments"] == 12
    machines = {m["name"]: m for m in board["machine_annotators"]}
    assert machines["judge-1"]["kind"] == "ai" and machines["sim-0"]["kind"] == "panel"
    assert machines["judge-1"]["shared_with_human_majority"] == 6
    assert machines["judge-1"]["agreement_with_human_majority"] == pytest.approx(5 / 6)
    assert machines["sim-0"]["agreement_with_human_majority"] == pytest.approx(2 / 6)
    assert machines["judge-1"]["kappa_with_human_majority"] is not None
    assert set(board["agreement"]["annotator_names"]) == {"ann", "bob"}  # human agreement is among people only
    kinds = Counter(r["annotator_kind"] for r in h.judgments(project))
    assert kinds == {"human": 12, "ai": 6, "panel": 6}


def test_forbidden_accesses(app_harness):
    h = app_harness
    project = h.project(anchor_rate=0)
    other = h.project("other", anchor_rate=0)
    h.pairs(project, pair_rows(4))
    h.pairs(other, pair_rows(2))
    ann, bob = h.invite(project, "ann"), h.invite(project, "bob")
    stranger = h.invite(other, "stranger")
    item = h.next(project, ann)["assignment"]
    c = h.client

    # no token, a wrong token
    assert c.get("/api/projects", headers={}).status_code == 401
    assert c.post(f"/api/projects/{project}/next").status_code == 401
    assert (
        c.get(f"/api/projects/{project}/dashboard", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    )
    # an annotator on every admin endpoint
    admin_calls = [
        ("get", "/api/projects", None),
        ("post", "/api/projects", {"name": "mine"}),
        ("post", f"/api/projects/{project}/pairs", {"jsonl": jsonl(pair_rows(1, "x"))}),
        ("post", f"/api/projects/{project}/margins", {"jsonl": ""}),
        ("post", f"/api/projects/{project}/machine-judgments", {"jsonl": ""}),
        ("get", f"/api/projects/{project}/annotators", None),
        ("post", f"/api/projects/{project}/annotators", {"name": "eve"}),
        ("post", f"/api/projects/{project}/annotators/ann/override", {"reason": "me"}),
        ("get", f"/api/projects/{project}/dashboard", None),
        ("get", f"/api/projects/{project}/judgments", None),
        ("get", f"/api/projects/{project}/export.jsonl", None),
    ]
    for method, path, body in admin_calls:
        response = c.request(method.upper(), path, json=body, headers=ann)
        assert response.status_code == 403, (method, path, response.status_code)
    # annotator B cannot see or answer A's assignment, nor read A's labels
    assert c.get(f"/api/projects/{project}/assignments/{item['id']}", headers=bob).status_code == 404
    assert (
        c.post(
            f"/api/projects/{project}/assignments/{item['id']}/judgment", json={"choice": "left"}, headers=bob
        ).status_code
        == 404
    )
    assert h.submit(project, ann, item, "left").status_code == 200
    assert c.get(f"/api/projects/{project}/my-judgments", headers=bob).json() == []
    assert len(c.get(f"/api/projects/{project}/my-judgments", headers=ann).json()) == 1
    assert h.judgments(project)[0]["annotator"] == "ann"  # ...and the admin can
    # a token of another project
    for method, path in [
        ("get", f"/api/projects/{project}"),
        ("get", f"/api/projects/{project}/me"),
        ("post", f"/api/projects/{project}/next"),
        ("get", f"/api/projects/{project}/assignments/{item['id']}"),
        ("get", f"/api/projects/{project}/my-judgments"),
    ]:
        assert c.request(method.upper(), path, headers=stranger).status_code == 403, path
    assert (
        c.post(
            f"/api/projects/{project}/assignments/{item['id']}/judgment", json={"choice": "left"}, headers=stranger
        ).status_code
        == 403
    )
    assert c.post("/api/projects/nonexistent/next", headers=stranger).status_code == 403  # no hint about what exists
    # the admin is not an annotator
    assert c.post(f"/api/projects/{project}/next", headers=h.admin).status_code == 403
    # nothing above changed any label
    assert len(h.judgments(project)) == 1 and h.judgments(other) == []


# a body that passes validation for each API route that takes one, so a refusal is the rights check, not a 422
ROUTE_BODIES = {
    ("POST", "/api/projects"): {"name": "mine"},
    ("POST", "/api/projects/{name}/pairs"): {"jsonl": jsonl(pair_rows(1, "x"))},
    ("POST", "/api/projects/{name}/margins"): {"jsonl": json.dumps({"pair_id": "p0", "margin": 0.5})},
    ("POST", "/api/projects/{name}/machine-judgments"): {
        "jsonl": json.dumps({"pair_id": "p0", "annotator": "j", "choice": "a"})
    },
    ("POST", "/api/projects/{name}/annotators"): {"name": "eve"},
    ("POST", "/api/projects/{name}/annotators/{annotator}/override"): {"reason": "me"},
    ("POST", "/api/projects/{name}/assignments/{assignment_id}/judgment"): {"choice": "left"},
}
ANNOTATOR_ROUTES = {
    "/api/projects/{name}/me",
    "/api/projects/{name}/next",
    "/api/projects/{name}/assignments/{assignment_id}",
    "/api/projects/{name}/assignments/{assignment_id}/judgment",
    "/api/projects/{name}/my-judgments",
}
EITHER_ROUTES = {"/api/whoami", "/api/projects/{name}"}


def test_every_api_route_checks_rights(app_harness):
    """Every API route the app has, including any added later: no token or an unknown one is 401; an annotator on
    an admin route and an admin on an annotator route are 403; none of it changes the store."""
    from fastapi.routing import APIRoute

    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(2))
    ann = h.invite(project, "ann")
    item = h.next(project, ann)["assignment"]
    values = {"name": project, "annotator": "ann", "assignment_id": str(item["id"])}
    routes = [
        (method, route.path, route.body_field is not None)
        for route in h.client.app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/api/")
        for method in sorted(route.methods)
    ]
    assert len(routes) >= 18
    nobody, unknown = {}, {"Authorization": "Bearer not-a-token"}
    for method, path, takes_body in routes:
        url = path.format(**values)
        body = ROUTE_BODIES.get((method, path))
        assert body is not None or not takes_body, f"add a valid body for {method} {path} to ROUTE_BODIES"
        for headers in (nobody, unknown):
            assert h.client.request(method, url, json=body, headers=headers).status_code == 401, (method, path, headers)
        if path in ANNOTATOR_ROUTES:
            assert h.client.request(method, url, json=body, headers=h.admin).status_code == 403, (method, path)
        elif path not in EITHER_ROUTES:
            assert h.client.request(method, url, json=body, headers=ann).status_code == 403, (method, path)
    assert [p["name"] for p in h.client.get("/api/projects", headers=h.admin).json()] == [project]
    assert [a["name"] for a in h.client.get(f"/api/projects/{project}/annotators", headers=h.admin).json()] == ["ann"]
    assert h.judgments(project) == [] and h.dashboard(project)["overrides"] == []


def test_tokens_are_stored_hashed(app_harness):
    import hashlib

    from sqlalchemy import select

    from rlhfkit.feedback.annotate.models import Admin, Annotator

    h = app_harness
    project = h.project()
    token = h.invite(project, "ann")["Authorization"].split()[1]
    with h.db.session() as s:
        stored = s.scalars(select(Annotator.token_hash)).all() + s.scalars(select(Admin.token_hash)).all()
    assert hashlib.sha256(token.encode()).hexdigest() in stored and token not in stored


def test_request_limits_and_bad_input_get_clear_errors(app_harness):
    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(2))
    who = h.invite(project, "ann")
    item = h.next(project, who)["assignment"]

    too_big = h.submit(project, who, item, "left", rationale="x" * 20_000)  # 16 KiB request limit in this app
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    long = h.submit(project, who, item, "left", rationale="x" * 300)  # 200-character rationale limit
    assert (
        long.status_code == 422 and long.json()["detail"] == "rationale is 300 characters long; at most 200 are allowed"
    )
    assert h.submit(project, who, item, "sideways").status_code == 422
    assert h.submit(project, who, item, "left", criteria={"honesty": "left"}).status_code == 422
    assert h.judgments(project) == []  # none of those stored anything
    assert h.submit(project, who, item, "left").status_code == 200

    # imports may be larger than ordinary requests (their own limit)
    big = pair_rows(120, "big")
    assert len(jsonl(big)) > 16 * 1024
    assert h.pairs(project, big)["imported"] == 120

    bad = pair_rows(3, "q")
    bad[1]["response_b"] = 7
    response = h.client.post(
        f"/api/projects/{project}/pairs", json={"jsonl": jsonl(bad), "filename": "batch.jsonl"}, headers=h.admin
    )
    assert response.status_code == 422
    assert (
        response.json()["detail"]
        == "batch.jsonl:2: field 'response_b': expected a string or a list of messages, got integer"
    )
    duplicate = h.client.post(
        f"/api/projects/{project}/pairs",
        json={"jsonl": jsonl(pair_rows(1)), "filename": "again.jsonl"},
        headers=h.admin,
    )
    assert (
        duplicate.status_code == 422
        and duplicate.json()["detail"] == "again.jsonl:1: field 'id': pair 'p0' is already in project 'p1'"
    )
    anchors = h.client.post(
        f"/api/projects/{project}/pairs", json={"jsonl": jsonl(pair_rows(1, "z")), "role": "anchor"}, headers=h.admin
    )
    assert anchors.status_code == 422 and "field 'answer'" in anchors.json()["detail"]
    judged = h.client.post(
        f"/api/projects/{project}/machine-judgments",
        json={"jsonl": jsonl([{"pair_id": "nope", "annotator": "j", "choice": "a"}]), "filename": "j.jsonl"},
        headers=h.admin,
    )
    assert (
        judged.status_code == 422
        and judged.json()["detail"] == "j.jsonl:1: field 'pair_id': no pair 'nope' in project 'p1'"
    )
    human = h.client.post(
        f"/api/projects/{project}/machine-judgments",
        json={"jsonl": jsonl([{"pair_id": "p0", "annotator": "ann", "choice": "a"}])},
        headers=h.admin,
    )
    assert human.status_code == 422 and "'ann' is a human annotator" in human.json()["detail"]
    missing = h.client.get("/api/projects/nope/dashboard", headers=h.admin)
    assert missing.status_code == 404 and missing.json()["detail"].startswith("unknown project 'nope' (projects here: ")
    assert h.client.post("/api/projects", json={"name": "p1"}, headers=h.admin).status_code == 409
    assert h.client.post("/api/projects", json={"name": "x", "overlap": 0}, headers=h.admin).status_code == 422
    assert h.client.post("/api/projects", json={"name": "x", "colour": "red"}, headers=h.admin).status_code == 422


def test_pages_are_served_without_secrets(app_harness):
    h = app_harness
    for path in ("/", "/admin", "/annotate/p1", "/admin/p1/dashboard", "/static/common.js"):
        response = h.client.get(path)
        assert response.status_code == 200, path
    assert "Response A" in h.client.get("/annotate/p1").text


# The queue's original one-query form: every main pair counted on every request. The incremental form in
# service._main_queue must pick the same pair and count the same number of open pairs in every state.
REFERENCE_QUEUE = """
WITH per_choice AS (
    SELECT j.pair_id, COUNT(*) AS n FROM judgments j JOIN annotators a ON a.id = j.annotator_id
    WHERE j.project_id = :project AND a.kind = 'human' GROUP BY j.pair_id, j.choice),
tally AS (SELECT pair_id, SUM(n) AS votes, MAX(n) AS top FROM per_choice GROUP BY pair_id),
pending AS (
    SELECT pair_id, COUNT(*) AS open FROM assignments
    WHERE project_id = :project AND done = :no AND phase = 'main' GROUP BY pair_id),
counted AS (
    SELECT p.id, p.margin, COALESCE(t.votes, 0) AS votes, COALESCE(t.top, 0) AS top,
           COALESCE(t.votes, 0) + COALESCE(o.open, 0) AS taken,
           CASE WHEN p.margin IS NOT NULL AND ABS(p.margin) < CAST(:margin_below AS DOUBLE PRECISION)
                THEN :overlap + 1 ELSE :overlap END AS base
    FROM pairs p LEFT JOIN tally t ON t.pair_id = p.id LEFT JOIN pending o ON o.pair_id = p.id
    WHERE p.project_id = :project AND p.role = 'main'
      AND p.id NOT IN (SELECT pair_id FROM assignments WHERE annotator_id = :annotator)),
wanted AS (
    SELECT id, margin, votes, top, taken,
           CASE WHEN votes > 0 AND votes >= base AND top < CAST(:dispute_below AS DOUBLE PRECISION) * votes THEN
           votes + 1 ELSE base END AS wants
    FROM counted)
SELECT id, COUNT(*) OVER () AS candidates FROM wanted
WHERE taken < CASE WHEN wants > :max_judgments THEN :max_judgments ELSE wants END
ORDER BY CASE WHEN taken < :overlap THEN 0 ELSE 1 END,
         CASE WHEN taken < :overlap THEN -taken WHEN votes > 0 THEN CAST(top AS REAL) / votes ELSE 1.0 END,
         COALESCE(ABS(margin), 1e30), id
LIMIT 1
"""


@pytest.mark.parametrize("seed", range(30))
def test_the_queue_counts_only_touched_pairs_and_picks_what_counting_every_pair_picks(seed, tmp_path):
    import random

    from sqlalchemy import select, text

    from rlhfkit.feedback.annotate import service
    from rlhfkit.feedback.annotate.models import Annotator, Assignment, Judgment, Pair

    rng = random.Random(seed)
    database = open_database(str(tmp_path / "q.sqlite"), create=True)
    with database.session() as s:
        overlap = rng.randint(1, 3)
        settings = service.ProjectSettings(
            name="q",
            overlap=overlap,
            max_judgments=overlap + rng.randint(0, 2),
            margin_below=rng.choice([None, 0.3]),
            dispute_below=rng.choice([0.6, 0.9]),
        )
        project = service.create_project(s, settings)
        n = rng.randint(5, 40)
        rows = [
            (
                i,
                {
                    "id": f"p{i}",
                    "prompt": f"P{i}",
                    "response_a": "A",
                    "response_b": "B",
                    **({"reward_margin": round(rng.uniform(-1, 1), 3)} if rng.random() < 0.4 else {}),
                },
            )
            for i in range(n)
        ]
        service.import_pairs(s, project, rows, "pairs.jsonl")
        humans = [service.invite(s, project, f"h{i}")[0] for i in range(6)]
        machine = Annotator(project_id=project.id, name="judge", kind="ai")
        s.add(machine)
        s.flush()
        pairs = list(s.scalars(select(Pair.id).where(Pair.project_id == project.id, Pair.role == "main")))
        for pair_id in rng.sample(pairs, k=rng.randint(0, len(pairs))):  # some pairs get judgments and open assignments
            for annotator in rng.sample(humans, k=rng.randint(1, 4)):
                done = rng.random() < 0.75
                assignment = Assignment(
                    project_id=project.id,
                    pair_id=pair_id,
                    annotator_id=annotator.id,
                    phase="main",
                    shown_first="a",
                    done=done,
                )
                s.add(assignment)
                s.flush()
                if done:
                    s.add(
                        Judgment(
                            project_id=project.id,
                            pair_id=pair_id,
                            annotator_id=annotator.id,
                            assignment_id=assignment.id,
                            choice=rng.choice(["a", "b", "tie"]),
                            shown_first="a",
                        )
                    )
            if rng.random() < 0.3:  # machine judgments do not count towards the overlap
                s.add(
                    Judgment(
                        project_id=project.id, pair_id=pair_id, annotator_id=machine.id, choice=rng.choice(["a", "b"])
                    )
                )
        s.flush()
        params = {
            "project": project.id,
            "no": False,
            "overlap": project.overlap,
            "max_judgments": project.max_judgments,
            "dispute_below": project.dispute_below,
            "margin_below": project.margin_below,
        }
        for annotator in humans:
            expected = s.execute(text(REFERENCE_QUEUE), {**params, "annotator": annotator.id}).first()
            assert service._main_queue(s, project, annotator) == ((expected[0], expected[1]) if expected else (None, 0))
    database.close()


def test_fresh_pairs_come_before_extra_judgments_of_dynamic_sampling(tmp_path):
    """overlap 1, and a low-margin pair wants a second judgment: a second annotator gets the untouched pairs first,
    and the low-margin pair's extra judgment only once nothing untouched is left."""
    from rlhfkit.feedback.annotate import service

    database = open_database(str(tmp_path / "d.sqlite"), create=True)
    with database.session() as s:
        project = service.create_project(
            s, service.ProjectSettings(name="d", overlap=1, margin_below=0.5, anchor_rate=0.0)
        )
        rows = [
            (1, {"id": "low", "prompt": "P0", "response_a": "A", "response_b": "B", "reward_margin": 0.1}),
            (2, {"id": "x", "prompt": "P1", "response_a": "A", "response_b": "B"}),
            (3, {"id": "y", "prompt": "P2", "response_a": "A", "response_b": "B"}),
        ]
        service.import_pairs(s, project, rows, "pairs.jsonl")
        first, second = service.invite(s, project, "first")[0], service.invite(s, project, "second")[0]

        def label(annotator) -> str:
            view = service.next_assignment(s, project, annotator)["assignment"]
            service.submit_judgment(s, project, annotator, view["id"], "left")
            return view["prompt"]

        assert label(first) == "P0"  # the low-margin pair leads the untouched ones (|margin| first)
        assert [label(second), label(second)] == ["P1", "P2"]  # untouched pairs before P0's extra judgment
        assert label(second) == "P0"  # then the extra judgment the low margin asks for
        assert service.next_assignment(s, project, second)["state"] == "done"
    database.close()


# ------------------------------------------------------------------------------ hostile annotators and data


def raw(client, method: str, path: str, body: str, headers: dict | None = None):
    """Send `body` as it is (NaN, escaped lone surrogates and other things json= would not write)."""
    return client.request(
        method, path, content=body.encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )


def strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_anchors_cannot_be_told_from_main_pairs(app_harness):
    """progress.remaining drops by one after every item served, anchor or not, and counts exactly what comes; no
    prompt comes back (anchors are never repeated); anchor places are not computable from public ids."""
    h = app_harness
    orders = []
    for project in ("a1", "a2"):
        h.project(project, overlap=1, anchor_rate=0.2, batch_size=5)
        h.pairs(project, pair_rows(12, f"{project}anc", answer="a"), role="anchor")
        h.pairs(project, pair_rows(24, f"{project}main"))
        who = h.invite(project, "ann")
        served, remaining = [], []
        while True:
            result = h.next(project, who)
            remaining.append(result["progress"]["remaining"])
            if result["state"] != "assignment":
                break
            served.append(result["assignment"])
            assert h.submit(project, who, served[-1], good(served[-1])).status_code == 200
        assert remaining[0] == len(served) - 1 and remaining[-1] == 0  # the first item is counted as served
        assert remaining == list(range(len(served) - 1, -1, -1)) + [0]
        mine = h.client.get(f"/api/projects/{project}/my-judgments", headers=who).json()
        assert len(mine) == len(served) and len({m["prompt"] for m in mine}) == len(mine)
        assert 24 < len(served) <= 24 + 12
        orders.append(["anc" in item["prompt"] for item in served])
    assert orders[0] != orders[1]  # same data, same annotator id in each project: different anchor places


def test_text_that_cannot_be_stored_is_refused_at_import_naming_the_row(app_harness):
    """A lone surrogate (common in scraped data) or NUL in any text, or NaN in metadata: 422 naming line and field,
    nothing imported, and the queue keeps working."""
    h = app_harness
    project = h.project(anchor_rate=0)
    cases = [
        ({"prompt": "p \ud800"}, "pairs.jsonl:2: field 'prompt'", "surrogate"),
        ({"response_b": "bad \x00 one"}, "pairs.jsonl:2: field 'response_b'", "NUL"),
        ({"metadata": {"source": {"score": float("nan")}}}, "pairs.jsonl:2: field 'metadata.source.score'", "NaN"),
        ({"category": "x \udc80"}, "pairs.jsonl:2: field 'category'", "surrogate"),
        ({"reward_margin": 10**400}, "pairs.jsonl:2: field 'reward_margin'", "2^63"),
        ({"metadata": {"big": -(10**30)}}, "pairs.jsonl:2: field 'metadata.big'", "2^63"),
    ]
    for change, where, what in cases:
        rows = pair_rows(3)
        rows[1].update(change)
        response = h.client.post(
            f"/api/projects/{project}/pairs", json={"jsonl": jsonl(rows), "filename": "pairs.jsonl"}, headers=h.admin
        )
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith(where) and what in response.json()["detail"], response.text
    assert h.client.get("/api/projects", headers=h.admin).json()[0]["pairs"]["main"] == 0
    h.pairs(project, pair_rows(2))
    who = h.invite(project, "ann")
    item = h.next(project, who)["assignment"]
    # text in requests: the field is named
    bodies = [
        (f"/api/projects/{project}/assignments/{item['id']}/judgment", '{"choice": "left", "rationale": "a \\ud800"}'),
        (f"/api/projects/{project}/assignments/{item['id']}/judgment", '{"choice": "left", "rationale": "a \\u0000"}'),
        (f"/api/projects/{project}/annotators", '{"name": "eve \\udfff"}'),
        ("/api/projects", '{"name": "q", "rubric": "nul \\u0000 here"}'),
    ]
    for path, body in bodies:
        who_sends = who if "judgment" in path else h.admin
        response = raw(h.client, "POST", path, body, who_sends)
        assert response.status_code == 422, (path, response.text)
        field_name = "rationale" if "judgment" in path else ("name" if "annotators" in path else "rubric")
        assert f"'{field_name}'" in response.text, response.text
    assert h.judgments(project) == [] and h.submit(project, who, item, "left").status_code == 200
    assert [p["name"] for p in h.client.get("/api/projects", headers=h.admin).json()] == [project]


def test_nan_and_infinity_are_refused_in_requests_and_never_committed(app_harness):
    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(2))
    who = h.invite(project, "ann")
    item = h.next(project, who)["assignment"]
    for value in ("Infinity", "-Infinity", "NaN"):
        response = raw(h.client, "POST", "/api/projects", f'{{"name": "inf", "margin_below": {value}}}', h.admin)
        assert response.status_code == 422, response.text
    listed = h.client.get("/api/projects", headers=h.admin)
    assert listed.status_code == 200 and [p["name"] for p in listed.json()] == [project]
    judgment = f"/api/projects/{project}/assignments/{item['id']}/judgment"
    assert raw(h.client, "POST", judgment, '{"choice": NaN}', who).status_code == 422
    assert raw(h.client, "POST", judgment, '{"choice": "left", "criteria": {"x": Infinity}}', who).status_code == 422
    assert h.judgments(project) == []


def test_the_token_is_checked_before_the_body_is_read(app_harness):
    """Every authenticated route with a body: a body no parser should accept, and no token or an unknown one: 401."""
    from fastapi.routing import APIRoute

    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(2))
    ann = h.invite(project, "ann")
    item = h.next(project, ann)["assignment"]
    values = {"name": project, "annotator": "ann", "assignment_id": str(item["id"])}
    routes = [
        (method, route.path)
        for route in h.client.app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/api/")
        for method in sorted(route.methods)
        if method == "POST"
    ]
    deep = "[" * 7_000 + "]" * 7_000  # past the parser's recursion limit, under the 16 KiB request limit
    for method, path in routes:
        url = path.format(**values)
        for body in ('{"choice": NaN}', '{"name": "\\ud800"}', "{not json", deep):
            for headers in ({}, {"Authorization": "Bearer not-a-token"}):
                response = raw(h.client, method, url, body, headers)
                assert response.status_code == 401, (path, body[:20], response.status_code)
    # an annotator on an admin route is refused for who they are, not for the body
    assert raw(h.client, "POST", "/api/projects", '{"margin_below": NaN}', ann).status_code == 403
    assert h.judgments(project) == []


def test_integers_out_of_range_and_booleans_get_4xx(app_harness):
    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(2))
    who = h.invite(project, "ann")
    h.next(project, who)
    for big in (2**31, 2**63, 10**30, -(2**63) - 1):
        response = h.client.get(f"/api/projects/{project}/assignments/{big}", headers=who)
        assert 400 <= response.status_code < 500, (big, response.status_code)
        response = h.client.post(
            f"/api/projects/{project}/assignments/{big}/judgment", json={"choice": "left"}, headers=who
        )
        assert 400 <= response.status_code < 500, (big, response.status_code)
    for setting in ("overlap", "max_judgments", "batch_size", "anchor_window"):
        for value in (2**31, 2**63, 10**30, True):
            response = h.client.post("/api/projects", json={"name": "big", setting: value}, headers=h.admin)
            assert response.status_code == 422, (setting, value, response.text)
            assert setting in response.text
    assert h.client.post("/api/projects", json={"name": "big", "overlap": 1.0}, headers=h.admin).status_code == 422
    listed = h.client.get("/api/projects", headers=h.admin)
    assert listed.status_code == 200 and [p["name"] for p in listed.json()] == [project]
    assert h.judgments(project) == []


def test_a_deeply_nested_json_line_is_an_error_naming_the_line(app_harness):
    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(2))
    deep = "[" * 10_000 + "]" * 10_000
    for route, good_line in (
        ("pairs", json.dumps(pair_rows(1, "d")[0])),
        ("margins", json.dumps({"pair_id": "p0", "margin": 0.5})),
        ("machine-judgments", json.dumps({"pair_id": "p0", "annotator": "j", "choice": "a"})),
    ):
        body = {"jsonl": f"{good_line}\n{deep}\n", "filename": "deep.jsonl"}
        response = h.client.post(f"/api/projects/{project}/{route}", json=body, headers=h.admin)
        assert response.status_code == 422, (route, response.text[:200])
        assert response.json()["detail"].startswith("deep.jsonl:2: "), response.text[:200]
    # an integer of 5,000 digits, in a line and as a whole body
    lines = ['{"pair_id": "p0", "margin": 0.5}', '{"pair_id": "p0", "margin": ' + "9" * 5000 + "}"]
    body = {"jsonl": "\n".join(lines), "filename": "big.jsonl"}
    response = h.client.post(f"/api/projects/{project}/margins", json=body, headers=h.admin)
    assert response.status_code == 422 and response.json()["detail"].startswith("big.jsonl:2: "), response.text[:200]
    response = raw(h.client, "POST", f"/api/projects/{project}/pairs", '{"jsonl": ' + "9" * 5000 + "}", h.admin)
    assert response.status_code == 422, response.text[:200]
    # a whole request body nested as deep (the import limit lets it in)
    response = raw(h.client, "POST", f"/api/projects/{project}/pairs", '{"jsonl": ' + deep + "}", h.admin)
    assert response.status_code == 422, response.text[:200]
    assert h.client.get("/api/projects", headers=h.admin).json()[0]["pairs"]["main"] == 2


def test_a_chunked_body_over_the_limit_gets_413(app_harness):
    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(2))
    who = h.invite(project, "ann")
    item = h.next(project, who)["assignment"]

    def chunks():
        yield b'{"choice": "left", "rationale": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'

    response = h.client.post(
        f"/api/projects/{project}/assignments/{item['id']}/judgment",
        content=chunks(),
        headers={"Content-Type": "application/json", **who},
    )
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert h.judgments(project) == []


def test_pages_send_a_content_security_policy(app_harness):
    h = app_harness
    for path in ("/", "/admin", "/annotate/p1", "/admin/p1/dashboard"):
        policy = h.client.get(path).headers.get("content-security-policy", "")
        assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL never stored NaN in JSON columns
def test_the_export_is_strict_json_even_over_old_non_finite_values(app_harness, tmp_path, monkeypatch, capsys):
    """Stores filled before NaN was refused may hold it (SQLite keeps NaN in JSON and float columns): the export
    writes null instead, the project list still answers, and strict readers read the export."""
    from sqlalchemy import update

    from rlhfkit.feedback.annotate.models import Pair, Project

    h = app_harness
    project = h.project(anchor_rate=0, overlap=1)
    h.pairs(project, pair_rows(2))
    with h.db.session() as s:
        s.execute(update(Pair).values(extra={"score": float("nan")}, margin=float("inf")))
        s.execute(update(Project).values(margin_below=float("inf")))
        s.commit()
    listed = h.client.get("/api/projects", headers=h.admin)
    assert listed.status_code == 200 and listed.json()[0]["margin_below"] is None
    who = h.invite(project, "ann")
    h.label_all(project, who, good)
    export = h.client.get(f"/api/projects/{project}/export.jsonl", headers=h.admin)
    assert export.status_code == 200
    rows = [strict_loads(line) for line in export.text.splitlines()]
    assert len(rows) == 2 and rows[0]["metadata"]["score"] is None and rows[0]["metadata"]["reward_margin"] is None
    # `rlhfkit annotate export` writes the same
    import sys

    from rlhfkit.cli import main

    out = tmp_path / "preferences.jsonl"
    monkeypatch.setattr(sys, "argv", ["rlhfkit", "annotate", "export", "-p", project, "-o", str(out), "--db", h.db.url])
    with pytest.raises(SystemExit) as stop:
        main()
    assert (stop.value.code or 0) == 0, capsys.readouterr().err
    assert [strict_loads(line) for line in out.read_text().splitlines()] == rows


def test_revoked_tokens_get_401_at_once(app_harness, monkeypatch, capsys):
    """`rlhfkit annotate revoke` while the app serves the same store: the annotator's and the admin's next request
    gets 401; a new invitation gives the annotator a working link again, with their judgments kept."""
    import sys

    from rlhfkit.cli import main

    def cli(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["rlhfkit", "annotate", *args, "--db", h.db.url])
        with pytest.raises(SystemExit) as stop:
            main()
        captured = capsys.readouterr()
        return stop.value.code or 0, captured.out + captured.err

    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(3))
    ann, bob = h.invite(project, "ann"), h.invite(project, "bob")
    h.label_all(project, ann, good, limit=1)
    code, out = cli("revoke", "ann", "--project", project)
    assert code == 0 and "revoked the token of annotator 'ann'" in out, out
    assert h.client.post(f"/api/projects/{project}/next", headers=ann).status_code == 401
    assert h.client.get("/api/whoami", headers=ann).status_code == 401
    assert h.next(project, bob)["state"] == "assignment"  # others are untouched
    assert cli("revoke", "ann", "--project", project)[0] == 2  # revoked already: an error, not a traceback
    again = h.invite(project, "ann")
    assert h.client.get(f"/api/projects/{project}/my-judgments", headers=again).json()[0]["choice"] in SIDES_SHOWN
    # by the admin page: POST .../annotators/NAME/revoke
    assert h.client.post(f"/api/projects/{project}/annotators/bob/revoke", headers=h.admin).status_code == 200
    assert h.client.post(f"/api/projects/{project}/next", headers=bob).status_code == 401
    # a leaked token itself, then every admin token of a name
    code, out = cli("revoke", "--token", again["Authorization"].split()[1])
    assert code == 0 and "annotator 'ann'" in out and h.client.get("/api/whoami", headers=again).status_code == 401
    with h.db.session() as s:
        other = {"Authorization": f"Bearer {create_admin(s, 'ada')}"}
        s.commit()
    code, out = cli("revoke", "--admin", "ada")
    assert code == 0 and "revoked 2 admin tokens of 'ada'" in out, out
    for admin in (h.admin, other):
        assert h.client.get("/api/projects", headers=admin).status_code == 401
    assert cli("revoke", "--admin", "nobody")[0] == 2 and cli("revoke")[0] == 2


SIDES_SHOWN = ("left", "right", "tie", "both_bad")


def test_text_the_store_cannot_keep_in_the_path_gets_4xx(app_harness):
    h = app_harness
    project = h.project(anchor_rate=0)
    h.pairs(project, pair_rows(2))
    who = h.invite(project, "ann")
    for path, headers in (
        ("/api/projects/a%00b/dashboard", h.admin),
        (f"/api/projects/{project}/annotators/a%00b/override", h.admin),
        ("/api/projects/a%ED%A0%80b/dashboard", h.admin),
        ("/api/projects/a%00b/me", who),
    ):
        method = "POST" if path.endswith("override") else "GET"
        response = h.client.request(method, path, json={"reason": "x"} if method == "POST" else None, headers=headers)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
    assert h.client.get("/api/projects", headers=h.admin).status_code == 200


def test_serve_with_two_workers_on_postgresql_hands_out_safely(postgres_server):
    """`rlhfkit annotate serve --workers 2` on PostgreSQL under bench/annotate_load.py: every acknowledged judgment
    stored once, no pair past max_judgments, no pair given to one annotator twice (the queue's row lock holds
    across processes)."""
    import sys

    import psycopg

    name = f"annotate_workers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    args = ["--annotators", "8", "--duration", "4", "--pairs", "60", "--overlap", "2", "--workers", "2"]
    result = subprocess.run(
        [sys.executable, "bench/annotate_load.py", "--db", f"{postgres_server}/{name}", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = dict(
        line.strip("| ").rsplit(" | ", 1)
        for line in result.stdout.splitlines()
        if line.startswith("| ") and line.count("|") == 3
    )
    assert "2 server workers" in result.stdout and int(table["judgments acknowledged (200)"]) > 0
    assert table["judgment rows in the store"] == table["judgments acknowledged (200)"]
    assert table["acknowledged but lost"] == table["duplicated rows"] == table["errors (non-200)"] == "0"
    assert table["pairs given to more than max_judgments (4) annotators"] == table["pairs given to one annotator twice"]
    assert table["pairs given to one annotator twice"] == "0"


def test_sampling_by_ensemble_disagreement_serves_the_most_disputed_first(app_harness):
    """sample_by disagreement: fresh pairs by the uploaded ensemble disagreement, highest first (the margins do not
    matter then; pairs without one last), and one above disagreement_above gets a second judgment."""
    h = app_harness
    project = h.project(overlap=1, max_judgments=2, anchor_rate=0, sample_by="disagreement", disagreement_above=0.27)
    h.pairs(project, pair_rows(5))
    doubts = {"p0": 0.1, "p1": 0.3, "p3": 0.05, "p4": 0.25}  # p2: none uploaded
    rows = [{"pair_id": p, "margin": 0.0 if p == "p3" else 1.0, "disagreement": d} for p, d in doubts.items()]
    response = h.client.post(
        f"/api/projects/{project}/margins", json={"jsonl": jsonl(rows), "filename": "m.jsonl"}, headers=h.admin
    )
    assert response.status_code == 200 and response.json() == {"imported": 4}
    assert h.client.get("/api/projects", headers=h.admin).json()[0]["sample_by"] == "disagreement"
    served = []
    for name in ("ann", "bob"):
        items = h.label_all(project, h.invite(project, name), good)
        served += [item["prompt"].split("number ")[1].split()[0] for item in items]
    assert served == ["p1", "p4", "p0", "p3", "p2", "p1"]
    exported = h.client.get(f"/api/projects/{project}/export.jsonl", headers=h.admin).text.splitlines()
    assert {json.loads(r)["id"]: json.loads(r)["metadata"].get("ensemble_disagreement") for r in exported} == {
        **doubts,
        "p2": None,
    }
