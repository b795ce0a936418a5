"""The tools cache shared by the host and the container (compose.yaml mounts the host's
~/.cache/gym-dpo at /root/.cache/gym-dpo), on the real Docker engine with the image of our
Dockerfile: what the container (root) makes in a user's cache stays that user's, whose later
host run works, and a venv is keyed so that neither side takes the other's."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from engines import build_test_images, run

from recipe.iterate import cache, setup  # noqa: F401  (imported before the fork: the user cannot read root's Python)
from tests.conftest import as_user

pytestmark = pytest.mark.integration

USES_THE_CACHE = """import json, os, sys
from pathlib import Path
from recipe.iterate import cache, setup
setup._run(["true"], cache.logs() / "nemo-gym-install.log", "true")
@setup._one_installer
def installs():
    cache.shared_dir(cache.root() / "models")
installs()
print(json.dumps(cache.identity(Path(os.environ.get("PROBE_PYTHON", sys.executable)))))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a cache of another user, as a host user has")
def test_a_container_run_leaves_the_users_cache_to_that_user():
    image = build_test_images()["GYM_DPO_TEST_IMAGE"]
    uid = 4246
    top = Path(tempfile.mkdtemp(prefix="gym-dpo-docker-cache-", dir="/tmp"))
    try:
        top.chmod(0o755)
        host_cache = top / "home" / ".cache" / "gym-dpo"
        host_cache.mkdir(parents=True)
        for folder in (top / "home", top / "home" / ".cache", host_cache):
            os.chown(folder, uid, uid)
        done = run(["docker", "run", "--rm", "-v", f"{host_cache}:/root/.cache/gym-dpo", "--entrypoint",
                    "/opt/gym-dpo/bin/python", image, "-c", USES_THE_CACHE], timeout=300)
        in_container = json.loads(done.stdout.strip().splitlines()[-1])
        assert in_container["uid"] == 0 and in_container["cache"] == "/root/.cache/gym-dpo/iterate"
        for made in ("iterate", "iterate/.install.lock", "iterate/logs", "iterate/logs/nemo-gym-install.log",
                     "iterate/models"):
            assert (host_cache / made).stat().st_uid == uid, made  # root's files handed to the owner
        # the host user's next run (its interpreter one the user may run: this one lives in root's home)
        said = as_user(uid, USES_THE_CACHE, {"GYM_DPO_CACHE": str(host_cache), "PROBE_PYTHON": "/usr/bin/python3"})
        assert said.startswith("{"), said
        on_host = json.loads(said.splitlines()[-1])
        assert on_host["uid"] == uid and on_host["cache"] == str(host_cache / "iterate")
        # a venv made on one side is keyed by its interpreter, user and cache path: never the other's
        host_root = {**cache.identity(Path(sys.executable), host_cache / "iterate"), "uid": 0}
        keys = {cache.key(ident) for ident in (in_container, on_host, host_root)}
        assert len(keys) == 3
    finally:
        shutil.rmtree(top, ignore_errors=True)
