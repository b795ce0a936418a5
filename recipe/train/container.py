"""The NeMo RL image: which one, which digest was recorded, and whether a launch runs that digest.

A tag such as `nvcr.io/nvidia/nemo-rl:v0.7.0` can be re-pushed; a digest cannot. The image is
named once (`container.image`, configs/container/nemo_rl.yaml); `gym-dpo stage=lock_image`
records the digest of the image you actually pulled in `container.lock_file` (JSON, commit it)
and pins the Dockerfile's `ARG BASE_IMAGE=` to tag@digest. Every launch then compares:
- executor=docker: the local image's registry digest (or, for an image that never came from a
  registry, its image id) against the lock; a different one is refused;
- executor=subprocess inside our image: the digest baked in at build time (GYM_DPO_BASE_IMAGE);
- slurm with pyxis: enroot before 4.0.0 refuses any reference with `@sha256:` ("Invalid image
  reference"), so pyxis is never handed tag@digest unless launcher.digest_reference=true says
  the cluster's enroot takes it. The pin every version accepts is a squashfs file imported once
  to shared storage (`enroot import -o /shared/nemo-rl.sqsh docker://nvcr.io#nvidia/nemo-rl:v0.7.0`)
  and passed as `launcher.container=/shared/nemo-rl.sqsh`: `gym-dpo stage=lock_image
  container.squashfs=/shared/nemo-rl.sqsh` records its sha256, size and mtime, and every Slurm
  launch checks the file against them (`check_squashfs`).
`container.allow_digest_mismatch=true` runs anyway (and the run folder records the mismatch).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig

import recipe
from recipe import report
from recipe.errors import RecipeError
from recipe.run_files import sha256_file

BAKED_ENV = "GYM_DPO_BASE_IMAGE"  # set by our Dockerfile to the BASE_IMAGE it was built FROM
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_DOCKERFILE_ARG = re.compile(r"^(ARG BASE_IMAGE=)(\S+)", re.MULTILINE)


@dataclass
class Lock:
    image: str           # the reference as configured (tag)
    digest: str          # sha256:... ("" when only a squashfs file of the image is locked)
    kind: str            # repo (registry manifest digest) | image_id (local-only image) | given
                         # | squashfs (no registry digest, only the file below)
    recorded_at: str = ""
    gym_dpo_version: str = ""
    squashfs: dict | None = None  # {path, sha256, bytes, mtime_ns}: an enroot import of the image

    @property
    def reference(self) -> str:
        """What to pull (or give an enroot >= 4.0.0): tag@digest (registry digests only)."""
        return f"{self.image}@{self.digest}" if self.kind in ("repo", "given") else self.image


def repository(image: str) -> str:
    """`nvcr.io/nvidia/nemo-rl:v0.7.0@sha256:..` -> `nvcr.io/nvidia/nemo-rl`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def digest_of_reference(reference: str | None) -> str | None:
    if reference and "@" in reference:
        digest = reference.rsplit("@", 1)[1]
        return digest if _DIGEST.match(digest) else None
    return None


def lock_path(cfg: DictConfig) -> Path:
    return Path(str(cfg.container.lock_file)).expanduser().absolute()


def read_lock(cfg: DictConfig) -> Lock | None:
    path = lock_path(cfg)
    if not path.is_file():
        return None
    try:
        lock = Lock(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{path} is not a gym-dpo lock file ({exc}); delete it and run "
                          "`gym-dpo stage=lock_image`") from None
    return lock


# -- Docker ---------------------------------------------------------------------------------------
def docker_client():
    """A Docker SDK client, or a RecipeError saying how to get one."""
    try:
        import docker
    except ImportError:
        raise RecipeError("the Docker SDK is not installed: pip install 'gym-dpo[docker]'") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker.errors.DockerException and socket errors
        raise RecipeError(f"cannot reach the Docker engine ({exc}); is dockerd running and "
                          "DOCKER_HOST right?") from None
    return client


def local_image(client, image: str):
    import docker

    try:
        return client.images.get(image)
    except docker.errors.ImageNotFound:
        raise RecipeError(f"image {image} is not on this machine: `docker pull {image}` first "
                          "(or set container.image)") from None


def local_digests(attrs: dict, image: str) -> tuple[list[str], str]:
    """(registry digests of `image`'s repository, image id) from `docker image inspect` attrs."""
    repo = repository(image)
    digests = [d.split("@", 1)[1] for d in attrs.get("RepoDigests") or []
               if d.split("@", 1)[0] == repo or repository(d) == repo]
    return digests, attrs["Id"]


def lock_from_docker(image: str, client=None) -> Lock:
    client = client or docker_client()
    digests, image_id = local_digests(local_image(client, image).attrs, image)
    if digests:
        return Lock(image, digests[0], "repo")
    return Lock(image, image_id, "image_id")


# -- the check ------------------------------------------------------------------------------------
def check(cfg: DictConfig, actual: list[str] | None, source: str) -> dict:
    """Compare the digest(s) a launch would run with the lock; returns what the run folder records.

    `actual`: digests the image is known by (None: cannot be known from here). Refuses a
    mismatch, and an unlocked docker image, unless container.allow_digest_mismatch.
    """
    lock = read_lock(cfg)
    image = str(cfg.container.image)
    allow = bool(cfg.container.allow_digest_mismatch)
    record = {"image": image, "lock_file": str(lock_path(cfg)), "locked": None, "running": actual,
              "source": source, "status": ""}
    if lock is not None and lock.image != image:
        report.console.print(f"[yellow]note:[/] {lock_path(cfg)} locks {lock.image}, not "
                             f"container.image={image}: digest not checked")
        lock = None
    if lock is not None and not lock.digest:  # only a squashfs file is locked: no digest to compare
        lock = None
    if lock is not None:
        record["locked"] = lock.digest
    if lock is None:
        record["status"] = "unlocked"
        if actual is not None and not allow:
            raise RecipeError(f"no digest recorded for {image} in {lock_path(cfg)}: run "
                              f"`gym-dpo stage=lock_image container.image={image}` once to record "
                              "the image you pulled (or container.allow_digest_mismatch=true)")
        report.console.print(f"[yellow]note:[/] no digest recorded for {image}; the run folder "
                             "records it as unlocked (gym-dpo stage=lock_image records one)")
    elif actual is None:
        record["status"] = "unverified"
    elif lock.digest in actual:
        record["status"] = "match"
    else:
        record["status"] = "mismatch"
        message = (f"{image} ({source}) is {', '.join(actual)}, but {lock_path(cfg)} recorded "
                   f"{lock.digest}")
        if not allow:
            raise RecipeError(f"{message}. Pull the recorded image "
                              f"(docker pull {lock.reference}), re-lock with `gym-dpo "
                              "stage=lock_image` if the change is intended, or run anyway with "
                              "container.allow_digest_mismatch=true")
        report.console.print(f"[yellow]warning:[/] {message}; running anyway "
                             "(container.allow_digest_mismatch=true)")
    return record


def baked_digests(environ=None) -> list[str] | None:
    """Inside our image: the digest of the base it was built FROM, else None (unknown)."""
    environ = os.environ if environ is None else environ
    digest = digest_of_reference(environ.get(BAKED_ENV))
    return [digest] if digest else None


# -- squashfs files (enroot) ----------------------------------------------------------------------
def squashfs_record(path: Path) -> dict:
    """What the lock keeps of a squashfs file: sha256 (read once, here), size and mtime."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise RecipeError(f"container.squashfs={path}: no such file (import the image first: "
                          "enroot import -o FILE.sqsh 'docker://nvcr.io#nvidia/nemo-rl:v0.7.0')")
    report.console.print(f"hashing {path} ({path.stat().st_size / 2**30:.1f} GiB) ...")
    stat = path.stat()
    return {"path": str(path), "sha256": sha256_file(path), "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def check_squashfs(cfg: DictConfig, path: str | Path) -> dict:
    """Check the squashfs file a Slurm job will run against the lock; what provenance records.

    A file whose size and mtime are those recorded at lock time is taken as the locked one (no
    20 GB read at every launch); any other file is hashed and refused unless its sha256 is the
    recorded one (or container.allow_digest_mismatch=true).
    """
    path = Path(str(path)).expanduser().absolute()
    record = {"image": str(path), "lock_file": str(lock_path(cfg)), "locked": None,
              "source": "squashfs", "status": "unlocked"}
    if not path.is_file():
        raise RecipeError(f"launcher.container={path}: no such squashfs file here (it must be on "
                          "storage the login node and every compute node see)")
    lock = read_lock(cfg)
    locked = (lock.squashfs or {}) if lock is not None else {}
    if locked.get("path") != str(path):
        report.console.print(f"[yellow]note:[/] {path} is not locked: `gym-dpo stage=lock_image "
                             f"container.squashfs={path}` records its sha256 for every later launch")
        return record
    record["locked"] = "sha256:" + locked["sha256"]
    stat = path.stat()
    if (stat.st_size, stat.st_mtime_ns) == (locked.get("bytes"), locked.get("mtime_ns")):
        record["status"] = "match (size and mtime as locked)"
        return record
    actual = sha256_file(path)
    record["running"] = ["sha256:" + actual]
    if actual == locked["sha256"]:
        record["status"] = "match (sha256)"
        return record
    record["status"] = "mismatch"
    message = (f"{path} is sha256:{actual}, but {lock_path(cfg)} recorded sha256:{locked['sha256']} "
               "for it")
    if not cfg.container.allow_digest_mismatch:
        raise RecipeError(f"{message}. Put the locked file back, re-lock with `gym-dpo "
                          f"stage=lock_image container.squashfs={path}` if the change is intended, "
                          "or run anyway with container.allow_digest_mismatch=true")
    report.console.print(f"[yellow]warning:[/] {message}; running anyway "
                         "(container.allow_digest_mismatch=true)")
    return record


# -- stage=lock_image -----------------------------------------------------------------------------
def pin_dockerfile(path: Path, reference: str) -> bool:
    """Point `ARG BASE_IMAGE=` of the Dockerfile at `reference` (tag@digest); False if no such line."""
    if not path.is_file():
        return False
    text = path.read_text()
    if not _DOCKERFILE_ARG.search(text):
        return False
    path.write_text(_DOCKERFILE_ARG.sub(lambda m: m.group(1) + reference, text, count=1))
    return True


def run(cfg: DictConfig) -> Lock:
    """`gym-dpo stage=lock_image`: record the digest of container.image (pulled here, or given),
    and with container.squashfs the sha256 of that enroot import of it (no Docker needed then)."""
    image = str(cfg.container.image)
    if "@" in image:
        raise RecipeError(f"container.image={image} already names a digest; give the tag alone "
                          "(the digest goes to the lock file)")
    given = cfg.container.get("digest")
    squashfs = cfg.container.get("squashfs")
    earlier = read_lock(cfg)
    if given:
        if not _DIGEST.match(str(given)):
            raise RecipeError(f"container.digest={given} is not sha256:<64 hex digits>")
        lock = Lock(image, str(given), "given")
    elif squashfs and earlier is not None and earlier.image == image and earlier.digest:
        lock = Lock(image, earlier.digest, earlier.kind)  # keep the registry digest locked before
    elif squashfs:
        lock = Lock(image, "", "squashfs")
    else:
        lock = lock_from_docker(image)
    if squashfs:
        lock.squashfs = squashfs_record(Path(str(squashfs)))
    elif earlier is not None and earlier.image == image:
        lock.squashfs = earlier.squashfs  # a new registry digest keeps the squashfs entry
    lock.recorded_at = datetime.now(UTC).isoformat(timespec="seconds")
    lock.gym_dpo_version = recipe.__version__
    path = lock_path(cfg)
    path.write_text(json.dumps(asdict(lock), indent=2) + "\n")
    if lock.digest:
        report.console.print(f"locked {image} at {lock.digest} ({lock.kind}) in {path}")
    if lock.squashfs:
        report.console.print(f"locked {lock.squashfs['path']} at sha256:{lock.squashfs['sha256']} "
                             f"in {path} (launcher=slurm launcher.container={lock.squashfs['path']})")
    if lock.kind in ("repo", "given") and cfg.container.get("dockerfile"):
        dockerfile = Path(str(cfg.container.dockerfile)).expanduser().absolute()
        if pin_dockerfile(dockerfile, lock.reference):
            report.console.print(f"pinned {dockerfile}: ARG BASE_IMAGE={lock.reference}")
    return lock
