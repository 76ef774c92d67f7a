"""A direct connection to a Label Studio server: push the pending batch, pull the labels.

    export LABEL_STUDIO_API_KEY=...                      # Account & Settings: Personal Access Token
    daal-ray select runs/pets --label-studio http://127.0.0.1:8080 --ls-project 3
    daal-ray import runs/pets --label-studio http://127.0.0.1:8080 --ls-project 3

It saves the round trip through files (download the batch file, import it in the browser,
export the annotations, import them here) and, unlike Label Studio's storage "Sync", it
creates exactly the tasks of the batch, each with its ``data.sample_id``.

* :func:`push_batch` creates the tasks of the pending batch (``batches/batch_NNN_label_studio.json``)
  in a Label Studio project, skipping every task whose ``data.sample_id`` the project holds
  already, so pushing twice (or after ``select --reexport``) creates nothing twice.
* :func:`pull_tasks` returns the project's tasks with their annotations, as Label Studio's
  full JSON export has them (the export endpoint is read, not the task list, so a pull and a
  downloaded ``.json`` export are the same data); ``import_labels(tasks=...)`` commits them.

The client is ``label-studio-sdk`` (the ``labelstudio`` extra), imported only here, when a
command talks to a server. The token is read from ``LABEL_STUDIO_API_KEY`` and nowhere else
(a flag would leave it in the shell history, a file next to the project would be copied with
it). Both kinds of token work: a personal access token (a JWT refresh token, what Label
Studio 1.23 issues), which the SDK exchanges for short-lived access tokens, and a legacy
token (where the organization still allows them), which the SDK sends as ``Token ...``.
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from daal_ray.errors import DaalRayError
from daal_ray.labeling.project import LabelingError, open_project
from daal_ray.pool import load_last_good
from daal_ray.rundir import STATE_FILE

logger = logging.getLogger(__name__)

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
INSTALL = 'pip install "daal-ray[labelstudio]"'
TIMEOUT_S = 60.0  # per request (the SDK's default); the export of a whole project is one request
_PAGE = 500


class LabelStudioError(DaalRayError):
    """Talking to a Label Studio server failed: no client installed, no token, the server
    unreachable, the project missing, the token refused. The message says what to fix."""


# ---------------------------------------------------------------------- the client
def _sdk() -> Any:
    """The ``label_studio_sdk`` module, or an error naming the extra to install."""
    try:
        import label_studio_sdk  # noqa: PLC0415 - optional and heavy (pandas, opencv); only the Label Studio paths need it
    except ImportError as exc:
        raise LabelStudioError(f"the Label Studio connection needs label-studio-sdk, which is not installed ({exc}); "
                               f"install it with `{INSTALL}`") from None
    return label_studio_sdk


def _token() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise LabelStudioError(
            f"set the environment variable {TOKEN_ENV} to a Label Studio access token (in Label Studio: Account & "
            f"Settings > Personal Access Token, or the legacy token where the organization allows it); daal-ray "
            f"reads it from the environment only")
    return token


def _api_error_detail(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("detail", "message", "validation_errors"):
            if key in body:
                return str(body[key])
    text = str(body)
    return text if len(text) <= 300 else text[:300] + "..."


@contextmanager
def _talking_to(url: str, what: str, ls_project: Optional[int] = None) -> Iterator[None]:
    """Turn the SDK's and httpx's exceptions into a :class:`LabelStudioError` that names
    the server, the project and the fix."""
    import httpx  # noqa: PLC0415 - a dependency of label-studio-sdk, present only with the extra
    from label_studio_sdk.core.api_error import ApiError  # noqa: PLC0415 - optional (the labelstudio extra)

    where = f"Label Studio at {url}"
    try:
        yield
    except LabelStudioError:
        raise
    except httpx.TransportError as exc:  # refused, DNS, TLS, timeout: no HTTP answer at all
        raise LabelStudioError(f"{where} is unreachable while trying to {what} ({type(exc).__name__}: {exc}); is "
                               f"the server running, and is the URL right (scheme, host, port)?") from None
    except ApiError as exc:
        code, detail = exc.status_code, _api_error_detail(exc.body)
        if code in (401, 403):
            raise LabelStudioError(
                f"{where} refused the token in {TOKEN_ENV} ({code}: {detail}); create a Personal Access Token "
                f"under Account & Settings (or use the legacy token if the organization allows legacy tokens), and "
                f"check that this user may open the project") from None
        if code == 404 and ls_project is not None:
            raise LabelStudioError(f"{where} has no project {ls_project} that this token may open (404: {detail}); "
                                   f"the project's number is in its URL, /projects/N") from None
        raise LabelStudioError(f"{where}: could not {what} ({code}: {detail})") from None
    except ValueError as exc:  # a 200 answer that is not the API's JSON: another server on that port
        raise LabelStudioError(f"{where} answered, but not like Label Studio's API, while trying to {what} "
                               f"({exc}); is the URL the Label Studio server's root?") from None


def connect(url: str) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client for ``url`` with the token of ``LABEL_STUDIO_API_KEY``.

    Raises:
        LabelStudioError: the SDK is missing, the token is unset or an expired personal
            access token.
    """
    sdk = _sdk()
    token = _token()
    base = url.rstrip("/")
    with _talking_to(base, "read the token"):  # an expired personal access token is refused right here
        return sdk.LabelStudio(base_url=base, api_key=token, timeout=TIMEOUT_S)


def _project(client: Any, url: str, ls_project: int) -> Any:
    with _talking_to(url, f"open project {ls_project}", ls_project):
        return client.projects.get(id=ls_project)


def check_project(url: str, ls_project: int) -> str:
    """The title of Label Studio project ``ls_project``: a check, before a batch is
    selected, that the push after it can succeed (SDK, token, server, project).

    Raises:
        LabelStudioError: as :func:`push_batch` would.
    """
    base = url.rstrip("/")
    return str(getattr(_project(connect(base), base, ls_project), "title", "") or "")


# ---------------------------------------------------------------------- push
def project_sample_ids(client: Any, url: str, ls_project: int) -> set[str]:
    """``data.sample_id`` of every task of the Label Studio project (tasks without one,
    e.g. those a storage sync added, are left out)."""
    ids: set[str] = set()
    with _talking_to(url, f"list the tasks of project {ls_project}", ls_project):
        for task in client.tasks.list(project=ls_project, fields="task_only", page_size=_PAGE):
            data = task.data if isinstance(task.data, dict) else {}
            if data.get("sample_id") is not None:
                ids.add(str(data["sample_id"]))
    return ids


def _choice_values(label_config: str) -> Optional[set[str]]:
    """Values of the ``<Choice>`` tags of a labeling config; None if it has none or is unreadable."""
    try:
        root = ET.fromstring(label_config or "")
    except ET.ParseError:
        return None
    values = {el.get("value") or el.get("alias") or "" for el in root.iter() if el.tag.lower() == "choice"}
    return values or None


def push_batch(project_dir: str | Path, url: str, ls_project: int) -> int:
    """Create the pending batch's tasks in Label Studio project ``ls_project``.

    Tasks come from the batch's ``_label_studio.json`` (as ``daal-ray select`` wrote it);
    only ids still pending are sent, and none whose ``data.sample_id`` the project already
    holds. Each task is sent as its ``data`` alone: Label Studio numbers tasks itself.

    Returns:
        The number of tasks created (0 when every one is there already).

    Raises:
        LabelingError: no batch is pending; LabelStudioError: see :func:`connect`, and the
        server unreachable, the project missing, the token refused.
    """
    project = open_project(project_dir)
    state = load_last_good(project.dir / STATE_FILE, run_id=project.config.project_id)
    cycle = state.pending_cycle
    if cycle is None:
        raise LabelingError(f"no batch is pending in {project.dir}; run `daal-ray select {project.dir}` first")
    path = project.batch_path(cycle, "_label_studio.json")
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelingError(f"batch {cycle} is pending but {path} is missing; write it again with "
                            f"`daal-ray select {project.dir} --reexport`") from None
    except ValueError as exc:
        raise LabelingError(f"{path} is not valid JSON ({exc}); write it again with "
                            f"`daal-ray select {project.dir} --reexport`") from None
    pending = {str(s) for s in state.pending_ids().tolist()}
    wanted = [t for t in tasks if isinstance(t, dict) and isinstance(t.get("data"), dict)
              and str(t["data"].get("sample_id")) in pending]

    base = url.rstrip("/")
    client = connect(base)
    ls = _project(client, base, ls_project)
    values = _choice_values(getattr(ls, "label_config", "") or "")
    if values is not None and not set(project.classes) <= values:
        logger.warning("Label Studio project %d offers the choices %s but daal-ray's classes are %s; an annotation "
                       "with a choice outside the classes will be refused at import", ls_project,
                       ", ".join(sorted(values)), ", ".join(project.classes))
    there = project_sample_ids(client, base, ls_project)
    new = [{"data": t["data"]} for t in wanted if str(t["data"]["sample_id"]) not in there]
    if not new:
        logger.info("batch %d: all %d pending task(s) are in Label Studio project %d already; nothing pushed", cycle,
                    len(wanted), ls_project)
        return 0
    with _talking_to(base, f"create tasks in project {ls_project}", ls_project):
        answer = client.projects.import_tasks(id=ls_project, request=new, return_task_ids=True)
    created = getattr(answer, "task_count", None)
    created = len(new) if created is None else int(created)  # editions that import asynchronously give no count
    logger.info("batch %d: %d task(s) created in Label Studio project %d (%s) at %s, %d there already", cycle,
                created, ls_project, getattr(ls, "title", ""), base, len(wanted) - len(new))
    return created


# ---------------------------------------------------------------------- pull
def pull_tasks(url: str, ls_project: int) -> list[dict[str, Any]]:
    """Every task of Label Studio project ``ls_project`` with its annotations, in the shape
    of Label Studio's full JSON export (``id``, ``data``, ``annotations: [{id, result,
    was_cancelled, completed_by, created_at, updated_at, ...}]``).

    Raises:
        LabelStudioError: see :func:`connect`, and the server unreachable, the project
            missing, the token refused, the export failing.
    """
    base = url.rstrip("/")
    client = connect(base)
    ls = _project(client, base, ls_project)
    with _talking_to(base, f"export project {ls_project}", ls_project):
        tasks = client.projects.exports.as_json(ls_project, timeout=int(TIMEOUT_S * 4))
    if not isinstance(tasks, list):
        raise LabelStudioError(f"Label Studio at {base}: the export of project {ls_project} is not a list of tasks "
                               f"(got {type(tasks).__name__})")
    annotations = sum(len(t.get("annotations") or []) for t in tasks if isinstance(t, dict))
    logger.info("pulled %d task(s) with %d annotation(s) from Label Studio project %d (%s) at %s", len(tasks),
                annotations, ls_project, getattr(ls, "title", ""), base)
    return tasks
