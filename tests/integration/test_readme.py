"""Every command of the README and of docs/, as written, in order, on the bundled sample.

The pages are the README, then each page of docs/ in the order the README first links it (every
page of docs/ must be linked). The commands are the lines of their ```bash blocks (continued
lines joined, comments dropped, `a && b` split in two), run one after the other from the root of
a copy of the repository, as a newcomer runs them. Where this machine lacks what a command needs, the test
changes exactly this, for the reason given:
- a command that launches on GPUs (`launcher=single_gpu|multi_gpu|slurm`, or `docker compose run
  recipe`, whose entrypoint picks launcher=single_gpu) runs as a dry run (`launcher.dry_run=true`
  appended): there is no GPU here, nor the README's Slurm account and partition;
- nvcr.io cannot be pulled: the local registry's stand-in for the NeMo RL image
  (tests/infra/test_image.sh) takes the place of `nvcr.io/nvidia/nemo-rl:v0.7.0`, in `docker pull`
  and, as `container.image=`, in every gym-dpo command;
- there is no enroot: `enroot import -o FILE ...` is replaced by writing a stand-in FILE;
- `docker compose` runs with tests/infra/compose.test.yaml on top (no GPU reservation, no
  memlock=-1) under a project and image name of its own, and the HF cache in a temp folder;
- `gym-dpo stage=iterate ...` runs as a dry run (`iterate.dry_run=true`: every round's commands,
  nothing started): one real round takes ~45 min on 2 cores; tests/integration/
  test_iterate_loop.py runs a small loop for real. `python -m recipe.iterate.setup` runs against
  the cache tests/infra/iterate_up.sh filled (it is idempotent: a second run checks and returns).
Three commands are not run, and `test_only_these_commands_are_left_out` keeps that list exact:
`pip install -e '.[local]'` and `pip install -e '.[local,iterate]'` (tests/run.sh installed the
package, with these extras and more, into this interpreter) and `bash tests/run.sh` (the command
that runs this test). Commands that need Docker skip (fail in CI) without an engine; the others
run without it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from engines import INFRA, REPO, build_test_images, gym_dpo_cli, run, unavailable

pytestmark = pytest.mark.integration
README = REPO / "README.md"
DOCS = REPO / "docs"
NOT_RUN = {"pip install -e '.[local]'": "tests/run.sh installed the package (with more extras)",
           "pip install -e '.[local,iterate]'": "tests/run.sh installed the package (with more extras)",
           "bash tests/run.sh": "the command that runs this test"}
NVCR = "nvcr.io/nvidia/nemo-rl:v0.7.0"
GPU_LAUNCHERS = ("launcher=single_gpu", "launcher=multi_gpu", "launcher=slurm")
SHELL_SYNTAX = re.compile(r"[|;<>`$]")  # what this runner does not interpret: none in the pages


def linked_docs() -> list[str]:
    """The pages of docs/ in the order the README first links them."""
    return list(dict.fromkeys(re.findall(r"\]\(docs/([\w.-]+\.md)", README.read_text())))


def pages() -> list[Path]:
    return [README, *(DOCS / name for name in linked_docs())]


def readme_commands() -> list[tuple[str, list[str]]]:
    """(page: section heading, argv) of every command in the pages' ```bash blocks, in order."""
    commands = []
    for page in pages():
        commands += page_commands(page)
    return commands


def page_commands(page: Path) -> list[tuple[str, list[str]]]:
    text = page.read_text()
    commands = []
    for block in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
        heading = f"{page.relative_to(REPO)}: " + re.findall(r"^#+ (.+)$", text[:block.start()], re.M)[-1]
        for line in block.group(1).replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append((heading, words[:cut]))
                words = words[cut + 1:]
    return commands


COMMANDS = [(h, argv) for h, argv in readme_commands() if shlex.join(argv) not in NOT_RUN]


def test_every_page_of_docs_is_linked_from_the_readme():
    assert sorted(linked_docs()) == sorted(path.name for path in DOCS.glob("*.md"))


def test_only_these_commands_are_left_out():
    left_out = [shlex.join(argv) for _, argv in readme_commands() if shlex.join(argv) in NOT_RUN]
    assert sorted(left_out) == sorted(NOT_RUN)
    assert len(COMMANDS) >= 10 and all(not SHELL_SYNTAX.search(w) for _, argv in COMMANDS for w in argv)


@pytest.fixture(scope="module")
def images():
    """The Docker test images, or None where there is no engine (commands that need one skip)."""
    try:
        return build_test_images()
    except pytest.skip.Exception:
        return None


@dataclass
class Workdir:
    root: Path      # the copy of the repository the commands run in
    project: str    # its docker compose project
    image: str      # the image `docker compose build` tags (GYM_DPO_IMAGE)

    def compose(self, rest: list[str]) -> list[str]:
        return ["docker", "compose", "-p", self.project, "-f", self.root / "compose.yaml",
                "-f", INFRA / "compose.test.yaml", *rest]

    def compose_env(self) -> dict:
        # NEMO_GYM=skip: the stand-in base's Python (Debian's 3.11) is below NeMo Gym 0.4.0's floor,
        # as tests/infra/test_image.sh builds it; on NeMo RL's image the Dockerfile installs it
        return {**os.environ, "GYM_DPO_IMAGE": self.image, "GYM_DPO_HF_CACHE": str(self.root.parent / "hf"),
                "NEMO_GYM": "skip"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of the repository, as a newcomer has it; removed with its Docker leftovers."""
    root = tmp_path_factory.mktemp("readme") / "gym-dpo"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(
        ".git", "results", "data", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
        "container.lock.json", "*.sqsh"))
    (root.parent / "hf").mkdir()
    work = Workdir(root, f"gymdporeadme{uuid.uuid4().hex[:8]}", f"gym-dpo-readme:{uuid.uuid4().hex[:8]}")
    yield work
    if shutil.which("docker"):
        run(work.compose(["down", "--remove-orphans"]), check=False, timeout=120, cwd=root,
            env=work.compose_env())
        run(["docker", "image", "rm", "-f", work.image], check=False, timeout=120)


def needs_a_gpu(argv: list[str]) -> bool:
    if argv[:2] == ["docker", "compose"]:
        return "run" in argv and "recipe" in argv and "launcher=local_cpu" not in argv
    return argv[0] == "gym-dpo" and any(word in GPU_LAUNCHERS for word in argv)


def needs_docker(argv: list[str]) -> bool:
    return (argv[0] == "docker" or "launcher.executor=docker" in argv
            or (argv[:2] == ["gym-dpo", "stage=lock_image"] and len(argv) == 2))


def as_run_here(argv: list[str], work: Workdir, images: dict | None) -> tuple[list[str], dict]:
    """The command this machine runs for the README's `argv`, and its environment."""
    env = {**os.environ, "GYM_DPO_CACHE": str(work.root.parent / "cache"), "HF_HUB_OFFLINE": "1"}
    stand_in = images["GYM_DPO_TEST_BASE_REF"].split("@")[0] if images else None
    extra = [f"container.image={stand_in}"] if stand_in else []
    if needs_a_gpu(argv):
        extra.append("launcher.dry_run=true")
    if argv[:2] == ["gym-dpo", "stage=iterate"]:
        extra.append("iterate.dry_run=true")
    if argv[:3] == ["python", "-m", "recipe.iterate.setup"]:
        env = {k: v for k, v in env.items() if k != "GYM_DPO_CACHE"} | (
            {"GYM_DPO_CACHE": os.environ["GYM_DPO_CACHE"]} if "GYM_DPO_CACHE" in os.environ else {})
        return [sys.executable, *argv[1:]], env
    if argv[0] == "gym-dpo":
        return [*gym_dpo_cli(), *argv[1:], *extra], env
    if argv[:2] == ["docker", "compose"]:
        return work.compose(argv[2:] + (extra if "run" in argv else [])), work.compose_env()
    if argv[:2] == ["docker", "pull"]:
        return [stand_in if word == NVCR else word for word in argv], env
    return argv, env


@pytest.mark.parametrize("heading,argv", COMMANDS,
                         ids=[f"{i:02d}-{' '.join(argv[:3])}" for i, (_, argv) in enumerate(COMMANDS)])
def test_readme_command_runs_as_written(heading, argv, workdir, images):
    if needs_docker(argv) and images is None:
        unavailable(f"no Docker engine for the README's `{shlex.join(argv)}` ({heading})")
    if argv[0] == "enroot":  # no enroot here: the file `enroot import -o FILE` would write
        target = workdir.root / argv[argv.index("-o") + 1]
        target.write_bytes(b"hsqs" + os.urandom(4096))
        return
    command, env = as_run_here(argv, workdir, images)
    result = run(command, cwd=workdir.root, env=env, check=False, timeout=1200)
    assert result.returncode == 0, (f"README ({heading}): {shlex.join(argv)}\nran: {shlex.join(map(str, command))}\n"
                                    f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
