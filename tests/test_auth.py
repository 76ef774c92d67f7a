"""Token authentication of a locally started Ray (``--auth``): the dashboard and the job API
refuse a call without the token (401) or with a wrong one (403) and serve the right one."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from daal_ray import runtime

pytestmark = pytest.mark.faults  # pytest -m faults: every fault-injection test


def _no_token_env(monkeypatch, home):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))


class _Refresh:
    """Stands in for Ray's cached config and token loader (refreshing the real ones would
    switch this test process's Ray to token mode): counts the refreshes."""

    calls = 0

    @classmethod
    def initialize(cls, _config):
        cls.calls += 1

    @classmethod
    def instance(cls):
        return cls

    @classmethod
    def reset_cache(cls):
        cls.calls += 1


def test_auth_generates_a_private_token_only_when_the_user_has_none(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "RayConfig", _Refresh)
    monkeypatch.setattr(runtime, "AuthenticationTokenLoader", _Refresh)
    _no_token_env(monkeypatch, tmp_path / "home")
    token = runtime.enable_token_auth(tmp_path / "run")
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert token == tmp_path / "run" / runtime.AUTH_TOKEN_FILE
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token.resolve())
    assert len(token.read_text()) == 64 and stat.S_IMODE(token.stat().st_mode) == 0o600
    # the user's own token wins: nothing generated
    _no_token_env(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "f" * 64)
    assert runtime.enable_token_auth(tmp_path / "other") is None and not (tmp_path / "other").exists()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert _Refresh.calls == 4, "this process's Ray config and token cache are refreshed each time"


def test_the_run_verbs_take_auth():
    from daal_ray.cli import build_parser

    assert build_parser().parse_args(["run", "--auth"]).auth is True
    assert build_parser().parse_args(["run"]).auth is False


PROBE = textwrap.dedent('''
    import json, sys, urllib.request
    from pathlib import Path
    from daal_ray.runtime import enable_token_auth, init_ray
    import ray
    token_file = enable_token_auth(Path(sys.argv[1]))
    init_ray(num_cpus=2)
    base = "http://" + ray._private.worker._global_node.webui_url
    token = token_file.read_text()
    out = {}
    for name, path in (("jobs", "/api/jobs/"), ("dashboard", "/api/cluster_status")):
        for who, header in (("none", {}), ("wrong", {"Authorization": "Bearer " + "0" * 64}),
                            ("right", {"Authorization": "Bearer " + token})):
            try:
                code = urllib.request.urlopen(urllib.request.Request(base + path, headers=header), timeout=30).status
            except urllib.error.HTTPError as exc:
                code = exc.code
            out[name + "/" + who] = code
    ray.shutdown()
    print(json.dumps(out))
''')


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_a_local_instance_with_auth_refuses_unauthenticated_calls(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    env.update({"HOME": str(tmp_path / "home"), "DAAL_RAY_DASHBOARD": "1", "RAY_AUTH_MODE": "disabled"})
    r = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "run")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    assert codes == {"jobs/none": 401, "jobs/wrong": 403, "jobs/right": 200,
                     "dashboard/none": 401, "dashboard/wrong": 403, "dashboard/right": 200}, codes
