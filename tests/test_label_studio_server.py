"""Labeling through a real Label Studio server, started by the tests on 127.0.0.1.

One server for the module (``label-studio start``, from the ``dev`` extra): a free port, a
temporary data directory, a user with a legacy token (``--user-token`` with
``--enable-legacy-api-token``) and, made from it through the API, a personal access token
(a JWT refresh token, what Label Studio 1.23 hands out by default). The migrated data
directory is built once per Label Studio version and kept in ~/.cache/daal-ray: a start
from it takes about 7 s, a first one about 55 s more. Images are served by Label Studio's
local-files serving from a Local Files storage that is created but never synced: the tasks
are the batch's, each with its ``data.sample_id``.

Each test labels its own tiny project (12 unlabeled images, a first batch of 6 drawn at
random, so no model is trained and no Ray is started) in its own Label Studio project, and
checks the labels committed to the pool state, not just exit codes:

* the file path: the batch file uploaded through the REST API, annotations made through
  it, Label Studio's JSON, JSON-MIN and CSV exports imported with ``daal-ray import FILE``;
* the SDK path: ``select --label-studio`` (twice: nothing is pushed twice), ``import
  --label-studio``, with the personal access token;
* a batch labeled in two parts (``--partial``);
* three annotators disagreeing 2 to 1, refused by default, resolved by ``--consensus majority``.

The fast tests at the end need no server: a missing SDK, a missing token, an unreachable URL.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from daal_ray.cli import main
from daal_ray.labeling import import_labels, init_project, open_project, project_status, select_next_batch
from daal_ray.pool import PoolState

CLASSES = ("red", "green", "blue")
RGB = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
SETTINGS = {"train": {"model": "small_cnn", "epochs": 1}, "scale": {"num_workers": 0}, "image_size": 12, "budget": 6}
START_TIMEOUT_S = 240  # a fresh data directory runs every migration first: about 55 s on two cores
EMAIL, PASSWORD = "admin@example.com", "daal-ray-test-pass"
# Settings Label Studio also reads without its LABEL_STUDIO_ prefix: a stray HOST or PORT in
# the environment must not move the server.
_UNPREFIXED = ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN", "DATABASE_NAME", "DJANGO_DB", "DEBUG",
               "LOG_LEVEL", "BASE_DATA_DIR", "DJANGO_SETTINGS_MODULE")


def _label_studio_exe() -> str | None:
    """``label-studio`` of this interpreter's environment (the dev extra), or the one
    ``DAAL_RAY_LABEL_STUDIO`` names (a server kept in another environment)."""
    named = os.environ.get("DAAL_RAY_LABEL_STUDIO")
    if named:
        return named
    return shutil.which("label-studio", path=str(Path(sys.executable).parent)) or shutil.which("label-studio")


# ====================================================================== the server
@dataclass
class Server:
    url: str
    legacy_token: str
    access_token: str  # a personal access token (JWT refresh token)
    files_root: Path   # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    log: Path


class Api:
    """Label Studio's REST API, as a script or the browser uses it (no SDK)."""

    def __init__(self, url: str, token: str) -> None:
        import requests

        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kwargs):
        resp = self.session.request(method, self.url + path, timeout=60, **kwargs)
        assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text[:800]}"
        return resp

    def json(self, method: str, path: str, **kwargs):
        return self.call(method, path, **kwargs).json()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _server_env(files_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABEL_STUDIO_", "HEARTEX_")) and k not in _UNPREFIXED}
    env.update({"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
                "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # it would ask PyPI at every page load
                "LABEL_STUDIO_COLLECT_ANALYTICS": "false"})
    return env


@contextmanager
def _running(exe: str, data_dir: Path, env: dict[str, str], log: Path, *flags: str) -> Iterator[str]:
    """``label-studio start`` on 127.0.0.1 and a free port, until ``/health`` answers; the
    URL. Ends the server's process group on the way out."""
    import requests

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir), "--log-level", "WARNING", *flags]
    t0 = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group, ended whole below
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited with {proc.returncode} before it was ready:\n{_tail(log)}")
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting up
                pass
            if time.monotonic() - t0 > START_TIMEOUT_S:
                pytest.fail(f"label-studio was not ready at {url} after {START_TIMEOUT_S}s:\n{_tail(log)}")
            time.sleep(0.25)
        print(f"label-studio ready at {url} after {time.monotonic() - t0:.1f}s ({data_dir.name})")
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _data_template(exe: str, env: dict[str, str], log: Path) -> tuple[Path, str]:
    """A data directory with every migration applied and the admin user with its legacy
    token, and that token. Migrating a fresh database is most of a start (about 50 s of
    60), so it is done once per Label Studio version and kept in ~/.cache/daal-ray."""
    try:
        version = importlib.metadata.version("label-studio")
    except importlib.metadata.PackageNotFoundError:  # a server of another environment
        version = hashlib.sha1(str(Path(exe).resolve()).encode()).hexdigest()[:10]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "daal-ray"
    template = cache / f"label-studio-{version}-data"
    token_file = template / "daal_ray_test_token"
    if token_file.is_file():
        return template, token_file.read_text().strip()
    cache.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{template.name}.", dir=cache))
    token = secrets.token_hex(20)
    with _running(exe, build, env, log, "--username", EMAIL, "--password", PASSWORD, "--user-token", token,
                  "--enable-legacy-api-token"):
        pass
    (build / token_file.name).write_text(token)  # last: a template without it is not complete
    try:
        build.rename(template)
    except OSError:  # another run built it first
        shutil.rmtree(build, ignore_errors=True)
        return template, token_file.read_text().strip()
    return template, token


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    exe = _label_studio_exe()
    if exe is None:
        pytest.skip('label-studio is not installed (pip install -e ".[dev]" brings it)')
    root = tmp_path_factory.mktemp("label_studio")
    files_root = root / "files"
    files_root.mkdir()
    env, log = _server_env(files_root), root / "server.log"
    template, legacy = _data_template(exe, env, log)
    shutil.copytree(template, root / "data")
    with _running(exe, root / "data", env, log) as url:
        api = Api(url, legacy)
        assert api.json("GET", "/api/current-user/whoami")["email"] == EMAIL, "the legacy token names the user"
        access = api.json("POST", "/api/token/")["token"]  # a personal access token, shown once
        yield Server(url, legacy, access, files_root, log)


@pytest.fixture
def api(server) -> Api:
    return Api(server.url, server.legacy_token)


# ====================================================================== helpers
def _images(folder: Path, per_class: int = 4, seed: int = 0) -> Path:
    """``per_class`` unlabeled 12x12 PNGs per colour, flat; the class is the name's first word."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for c in CLASSES:
        for i in range(per_class):
            arr = np.clip(np.array(RGB[c])[None, None] + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{c}_{i}.png")
    return folder


def _truth(path: str) -> str:
    return Path(path).name.split("_")[0]


def _state(project: Path) -> PoolState:
    return PoolState.load(project / "pool_state.parquet")


def _digest(path: Path) -> bytes:
    return path.read_bytes()


def _project(server: Server, tmp_path: Path, name: str, select: bool = True) -> Path:
    """A project of 12 unlabeled images under the local-files root, image URLs for
    Label Studio's local-files serving; with ``select``, its random first batch of 6."""
    _images(server.files_root / name)
    project = tmp_path / f"proj_{name}"
    init_project(project, classes=CLASSES, images=server.files_root / name,
                 settings={**SETTINGS, "image_root_url": f"/data/local-files/?d={name}/"})
    if select:
        assert select_next_batch(project).sample_ids.size == 6
    return project


def _truth_of(project: Path) -> dict[int, str]:
    """Every pool image's true class, by sample id."""
    opened = open_project(project)
    ids = opened.pool_ids
    return {int(s): _truth(str(p)) for s, p in zip(ids.tolist(), opened.dataset.paths("train", ids))}


def _choices(project: Path) -> tuple[str, str]:
    """The Choices tag's name and toName in the label_config.xml daal-ray wrote."""
    root = ET.fromstring((project / "label_config.xml").read_text())
    tag = root.find(".//Choices")
    return tag.get("name"), tag.get("toName")


def _ls_project(api: Api, project: Path, images: Path, title: str) -> int:
    """A Label Studio project with daal-ray's labeling config and a Local Files storage
    for ``images``, created and never synced (a sync would add every image as a task
    without a sample_id)."""
    pid = api.json("POST", "/api/projects", json={"title": title,
                                                   "label_config": (project / "label_config.xml").read_text()})["id"]
    api.json("POST", "/api/storages/localfiles/", json={"project": pid, "path": str(images), "title": "images",
                                                        "use_blob_urls": True})
    return pid


def _tasks(api: Api, pid: int) -> list[dict]:
    out = api.json("GET", "/api/tasks", params={"project": pid, "page_size": 1000})
    return out["tasks"] if isinstance(out, dict) else out


def _annotate(api: Api, project: Path, task: dict, label: str, user: int | None = None) -> None:
    name, to_name = _choices(project)
    body = {"result": [{"from_name": name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}]}
    if user is not None:
        body["completed_by"] = user
    api.json("POST", f"/api/tasks/{task['id']}/annotations/", json=body)


def _labels(project: Path) -> dict[int, str]:
    """The committed labels, by sample id, as class names."""
    state = _state(project)
    return {int(s): CLASSES[int(lab)] for s, lab in zip(state.labeled_ids().tolist(), state.labeled_labels().tolist())}


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ====================================================================== the file path
@pytest.mark.slow
def test_files_through_the_rest_api_and_every_export_format(server, api, tmp_path, capsys):
    project = _project(server, tmp_path, "files")
    pending = {int(s) for s in _state(project).pending_ids().tolist()}
    truth = _truth_of(project)
    pid = _ls_project(api, project, server.files_root / "files", "daal-ray files")
    batch_file = project / "batches" / "batch_000_label_studio.json"
    with open(batch_file, "rb") as fh:  # the upload a person does in "Import"
        done = api.json("POST", f"/api/projects/{pid}/import", files={"file": (batch_file.name, fh, "application/json")})
    assert done["task_count"] == 6
    tasks = _tasks(api, pid)
    assert sorted(int(t["data"]["sample_id"]) for t in tasks) == sorted(pending), "exactly the batch, nothing synced"
    image = api.call("GET", tasks[0]["data"]["image"])  # the local-files URL daal-ray wrote is served
    assert image.content == Path(tasks[0]["data"]["path"]).read_bytes()

    for t in tasks:
        _annotate(api, project, t, truth[int(t["data"]["sample_id"])])
    files = {}
    for fmt, name in (("CSV", "labels.csv"), ("JSON", "labels.json"), ("JSON_MIN", "labels_min.json")):
        resp = api.call("GET", f"/api/projects/{pid}/export", params={"exportType": fmt, "download_all_tasks": "true"})
        files[fmt] = tmp_path / name
        files[fmt].write_bytes(resp.content)
    with open(files["CSV"], newline="") as fh:
        assert {"sample_id", _choices(project)[0]} <= set(csv.DictReader(fh).fieldnames or [])

    before = _digest(project / "pool_state.parquet")
    rc, out, err = _cli(capsys, "import", project, files["CSV"])
    assert rc == 0, err
    assert "batch 0 complete: 6 new label(s) committed" in out
    assert _labels(project) == {s: truth[s] for s in pending}
    assert _state(project).pending_cycle is None
    after = _digest(project / "pool_state.parquet")
    assert after != before
    for fmt in ("JSON", "JSON_MIN"):  # the same labels again: each read back and checked against the committed
        again = import_labels(project, files[fmt])
        assert (again.committed, again.already) == (0, 6), fmt
        assert _digest(project / "pool_state.parquet") == after
    status = project_status(project)
    assert status.num_labeled == 6 and len(status.cycles) == 1 and status.cycles[0]["num_added"] == 6


# ====================================================================== the SDK path
@pytest.mark.slow
def test_select_and_import_through_the_server_with_a_personal_access_token(server, api, tmp_path, capsys,
                                                                           monkeypatch):
    project = _project(server, tmp_path, "sdk", select=False)
    truth = _truth_of(project)
    pid = _ls_project(api, project, server.files_root / "sdk", "daal-ray sdk")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.access_token)

    rc, out, err = _cli(capsys, "select", project, "--label-studio", server.url, "--ls-project", pid)
    assert rc == 0, err
    assert f"6 task(s) added to project {pid}" in out
    pending = {int(s) for s in _state(project).pending_ids().tolist()}
    tasks = _tasks(api, pid)
    assert sorted(int(t["data"]["sample_id"]) for t in tasks) == sorted(pending)
    assert api.call("GET", tasks[0]["data"]["image"]).content == Path(tasks[0]["data"]["path"]).read_bytes()

    rc, out, err = _cli(capsys, "select", project, "--reexport", "--label-studio", server.url, "--ls-project", pid)
    assert rc == 0, err
    assert "0 task(s) added" in out and len(_tasks(api, pid)) == 6, "a second push creates nothing twice"

    for t in tasks:
        _annotate(api, project, t, truth[int(t["data"]["sample_id"])])
    rc, out, err = _cli(capsys, "import", project, "--label-studio", server.url, "--ls-project", pid)
    assert rc == 0, err
    assert "batch 0 complete: 6 new label(s) committed" in out
    assert _labels(project) == {s: truth[s] for s in pending}
    status = project_status(project)
    assert status.pending_cycle is None and status.num_labeled == 6 and status.cycles[0]["num_added"] == 6
    rc, out, _ = _cli(capsys, "import", project, "--label-studio", server.url, "--ls-project", pid)
    assert rc == 0 and "nothing new: 6 label(s)" in out


@pytest.mark.slow
def test_a_batch_labeled_in_two_parts(server, api, tmp_path, capsys, monkeypatch):
    from daal_ray.labeling import studio

    project = _project(server, tmp_path, "partial")
    truth = _truth_of(project)
    pid = _ls_project(api, project, server.files_root / "partial", "daal-ray partial")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.legacy_token)  # the legacy token works too
    assert studio.push_batch(project, server.url, pid) == 6
    assert studio.push_batch(project, server.url, pid) == 0
    tasks = sorted(_tasks(api, pid), key=lambda t: t["id"])
    first, rest = tasks[:4], tasks[4:]
    for t in first:
        _annotate(api, project, t, truth[int(t["data"]["sample_id"])])
    ls = ("--label-studio", server.url, "--ls-project", pid)

    before = _digest(project / "pool_state.parquet")
    rc, _, err = _cli(capsys, "import", project, *ls)
    assert rc == 2 and "--partial" in err, err
    assert _digest(project / "pool_state.parquet") == before, "nothing is committed without --partial"

    rc, out, err = _cli(capsys, "import", project, *ls, "--partial")
    assert rc == 0, err
    assert "4 new label(s) committed, 2 still pending" in out
    done = {int(t["data"]["sample_id"]) for t in first}
    assert _labels(project) == {s: truth[s] for s in done}
    state = _state(project)
    assert state.pending_cycle == 0 and set(state.pending_ids().tolist()) == {int(t["data"]["sample_id"]) for t in rest}

    for t in rest:
        _annotate(api, project, t, truth[int(t["data"]["sample_id"])])
    rc, out, err = _cli(capsys, "import", project, *ls)
    assert rc == 0, err
    assert "batch 0 complete: 2 new label(s) committed (4 imported already)" in out
    assert len(_labels(project)) == 6 and _state(project).pending_cycle is None


@pytest.mark.slow
def test_three_annotators_two_against_one(server, api, tmp_path, capsys, monkeypatch):
    from daal_ray.labeling import studio

    project = _project(server, tmp_path, "consensus")
    truth = _truth_of(project)
    pid = _ls_project(api, project, server.files_root / "consensus", "daal-ray consensus")
    users = [api.json("POST", "/api/users/", json={"email": f"ann{i}-{secrets.token_hex(3)}@example.com",
                                                   "username": f"ann{i}-{secrets.token_hex(3)}",
                                                   "password": PASSWORD})["id"] for i in (2, 3)]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.legacy_token)
    assert studio.push_batch(project, server.url, pid) == 6
    tasks = _tasks(api, pid)
    disputed = tasks[0]
    sid = int(disputed["data"]["sample_id"])
    right = truth[sid]
    wrong = next(c for c in CLASSES if c != right)
    _annotate(api, project, disputed, wrong)  # the first annotation is the outvoted one
    for user in users:
        _annotate(api, project, disputed, right, user=user)
    for t in tasks[1:]:
        _annotate(api, project, t, truth[int(t["data"]["sample_id"])])
    ls = ("--label-studio", server.url, "--ls-project", pid)

    before = _digest(project / "pool_state.parquet")
    rc, _, err = _cli(capsys, "import", project, *ls)
    assert rc == 2, err
    assert f"sample_id {sid}: conflicting labels" in err and "--consensus" in err
    assert _digest(project / "pool_state.parquet") == before, "a disagreement is refused by default"

    rc, out, err = _cli(capsys, "import", project, *ls, "--consensus", "majority")
    assert rc == 0, err
    assert "1 disagreement(s) resolved by --consensus majority" in out
    labels = _labels(project)
    assert labels[sid] == right and len(labels) == 6
    assert labels == {int(t["data"]["sample_id"]): truth[int(t["data"]["sample_id"])] for t in tasks}
    with open(project / "batches" / "batch_000_labels.csv", newline="") as fh:
        rows = {int(r["sample_id"]): r for r in csv.DictReader(fh)}
    assert rows[sid]["label"] == right and rows[sid]["rule"] == "majority"


@pytest.mark.slow
def test_errors_name_the_project_and_the_token(server, api, tmp_path, capsys, monkeypatch):
    from daal_ray.labeling import studio

    project = _project(server, tmp_path, "errors")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.legacy_token)
    rc, _, err = _cli(capsys, "import", project, "--label-studio", server.url, "--ls-project", 9999)
    assert rc == 2 and "has no project 9999" in err and server.url in err, err
    pid = _ls_project(api, project, server.files_root / "errors", "daal-ray errors")
    assert studio.check_project(server.url + "/", pid) == "daal-ray errors"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    rc, _, err = _cli(capsys, "import", project, "--label-studio", server.url, "--ls-project", 1)
    assert rc == 2 and "refused the token in LABEL_STUDIO_API_KEY" in err, err
    assert _state(project).labeled_ids().size == 0


# ====================================================================== no server needed
def test_a_missing_sdk_names_the_extra(monkeypatch):
    from daal_ray.labeling import studio

    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)  # import fails as if it were not installed
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x" * 40)
    with pytest.raises(studio.LabelStudioError, match=r'pip install "daal-ray\[labelstudio\]"'):
        studio.pull_tasks("http://127.0.0.1:9", 1)


def test_a_missing_token_names_the_variable(monkeypatch):
    from daal_ray.labeling import studio

    pytest.importorskip("label_studio_sdk")
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(studio.LabelStudioError, match="set the environment variable LABEL_STUDIO_API_KEY"):
        studio.pull_tasks("http://127.0.0.1:9", 1)


def test_an_unreachable_server_is_named(monkeypatch):
    from daal_ray.labeling import studio

    pytest.importorskip("label_studio_sdk")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x" * 40)
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(studio.LabelStudioError, match=f"Label Studio at {url} is unreachable"):
        studio.pull_tasks(url, 1)
