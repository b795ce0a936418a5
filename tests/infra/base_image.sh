#!/usr/bin/env bash
# base_image.sh - build the local stand-in for the NeMo RL container.
#
# The real base, nvcr.io/nvidia/nemo-rl:v0.7.0, cannot be pulled here (no
# container registry is reachable), so we make a small Debian bookworm image
# from Debian's own packages and import it into Docker:
#
#   1. rootfs tarball (cached in $CACHE/base-bookworm.tar, reused across runs):
#      debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,
#      ca-certificates,procps bookworm, using the Debian mirror that apt on this
#      machine already uses; plus an empty venv /opt/nemo_rl_venv (the real NeMo
#      RL image keeps its Python env there; with it first on PATH a Dockerfile's
#      `pip install` works instead of failing with Debian's PEP 668
#      "externally-managed-environment").
#   2. `docker import` of that tarball -> $IMAGE-rootfs tag (…:bookworm-rootfs).
#   3. $IMAGE (gym-dpo-base:bookworm) = that image plus the CA certificates this
#      host trusts and Debian does not (see "TLS" below). With none, a plain tag.
#
# Idempotent: if $IMAGE already exists nothing is done; if only the tarball
# exists it is just imported. The image name is printed on stdout (the only
# stdout line), so:  BASE_IMAGE=$(tests/infra/base_image.sh)
#
# TLS / networking facts found on this machine (details in README.md):
#   * Containers and `docker build` steps on the default bridge network DO reach
#     PyPI and deb.debian.org; `--network host` is not needed.
#   * HTTPS to PyPI is re-signed by a CA that only the host trusts (it is
#     appended to the host's /etc/ssl/certs/ca-certificates.crt). A stock Debian
#     container fails with CERTIFICATE_VERIFY_FAILED ("self-signed certificate
#     in certificate chain"). Hence step 3: the extra certificates are added to
#     /usr/local/share/ca-certificates and `update-ca-certificates` is run, and
#     SSL_CERT_FILE / REQUESTS_CA_BUNDLE / PIP_CERT point at the system bundle so
#     pip, requests and uv all use it. On a machine without such a CA, step 3
#     adds nothing. Set GYM_DPO_BASE_TRUST_HOST_CA=0 to skip it anyway.
#   * The host's pip config (extra-index-url file:///opt/pypi/simple, find-links
#     /opt/wheels, constraint /etc/xdg/pip/constraints.txt) is NOT copied into
#     the image: those paths are local folders of the host. Do not pass the
#     host's PIP_* variables into containers (a missing constraint file is a
#     hard pip error there).
#
# Env knobs:
#   INFRA_STATE     state/log folder (default /var/tmp/gym-dpo-infra)
#   GYM_DPO_CACHE   cache folder for the tarball (default ~/.cache/gym-dpo)
#   GYM_DPO_BASE_IMAGE  image name (default gym-dpo-base:bookworm)
#   DEBIAN_MIRROR   override the mirror (default: the one apt uses here)
#   GYM_DPO_BASE_TRUST_HOST_CA  1 (default) / 0, see above
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CACHE=${GYM_DPO_CACHE:-$HOME/.cache/gym-dpo}
IMAGE=${GYM_DPO_BASE_IMAGE:-gym-dpo-base:bookworm}
ROOTFS_IMAGE="$IMAGE-rootfs"
TARBALL="$CACHE/base-bookworm.tar"
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,procps
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)


mkdir -p "$STATE" "$CACHE"

# The Docker engine must be up (starts/installs it when needed).
docker info >/dev/null 2>&1 || "$HERE/docker_up.sh" >&2

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "image $IMAGE already exists"
    echo "$IMAGE"
    exit 0
fi

# Print the Debian mirror apt uses for $SUITE on this machine: first from
# deb822 files (*.sources: "URIs:" + "Suites:" stanzas), then from one-line
# *.list files; fall back to deb.debian.org.
debian_mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local m
    m=$(awk -v suite="$SUITE" '
        /^[[:space:]]*#/ { next }
        /^URIs:/   { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
        /^[[:space:]]*$/ { if (ok && uri && !found) { print uri; found = 1 }
                           ok = 0; uri = "" }
        END { if (ok && uri && !found) print uri }
        ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [[ -z $m ]]; then
        m=$(awk -v suite="$SUITE" '
            $1 == "deb" && !found {
                for (i = 2; i <= NF; i++) if ($i == suite) hit = 1
                for (i = 2; i <= NF && hit; i++)
                    if ($i ~ /^https?:\/\//) { print $i; found = 1; break }
                hit = 0 }
            ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    fi
    echo "${m:-http://deb.debian.org/debian}" | head -n 1
}

# Remove a debootstrap work dir safely: first unmount anything left mounted
# inside it (proc/sys/dev after an interrupted run), then never cross into
# another file system while deleting.
remove_workdir() {
    local d=$1 mnt
    [[ -d $d ]] || return 0
    awk -v d="$d/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mnt; do umount -l "$mnt" || true; done
    rm -rf --one-file-system "$d"
}

# ------------------------------------------------------ 1. rootfs tarball ----
if [[ -f $TARBALL ]]; then
    log "using cached rootfs $TARBALL"
elif docker image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
    log "image $ROOTFS_IMAGE exists; no tarball needed"
else
    if ! command -v debootstrap >/dev/null 2>&1; then
        apt_install debootstrap
    fi
    mirror=$(debian_mirror)
    workdir=$(mktemp -d "$STATE/rootfs-build.XXXXXX")
    trap 'remove_workdir "$workdir"' EXIT
    rootfs="$workdir/rootfs"

    log "debootstrap $SUITE from $mirror (log: $STATE/debootstrap.log, ~1 min)"
    if ! debootstrap --variant=minbase --include="$PACKAGES" \
            "$SUITE" "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1; then
        tail -n 30 "$STATE/debootstrap.log" >&2
        die "debootstrap failed (see $STATE/debootstrap.log)"
    fi

    # Stand-in for the NeMo RL image's Python env (no network needed: the
    # venv gets pip from Debian's bundled wheel).
    chroot "$rootfs" python3 -m venv /opt/nemo_rl_venv

    # Shrink: drop downloaded .debs and apt lists (run apt-get update first).
    rm -f "$rootfs"/var/cache/apt/archives/*.deb
    rm -rf "$rootfs"/var/lib/apt/lists/*

    log "writing $TARBALL"
    tar -C "$rootfs" -c . >"$TARBALL.tmp"
    mv "$TARBALL.tmp" "$TARBALL"
    remove_workdir "$workdir"
    trap - EXIT
fi

# ------------------------------------------------------- 2. docker import ----
if ! docker image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
    log "docker import $TARBALL -> $ROOTFS_IMAGE"
    venv_path=/opt/nemo_rl_venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    docker import \
        --change "ENV PATH=$venv_path" \
        --change "ENV VIRTUAL_ENV=/opt/nemo_rl_venv" \
        --change "ENV UV_PROJECT_ENVIRONMENT=/opt/nemo_rl_venv" \
        --change "ENV LANG=C.UTF-8" \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL org.opencontainers.image.title=gym-dpo-base" \
        "$TARBALL" "$ROOTFS_IMAGE" >/dev/null
fi

# --------------------------------------------- 3. trust the host's extra CAs ----
ctx=$(mktemp -d "$STATE/base-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
n_extra=0
if [[ ${GYM_DPO_BASE_TRUST_HOST_CA:-1} == 1 && -r $HOST_CA_BUNDLE ]]; then
    # Certificates in the host bundle that are not in the image's bundle,
    # one file per certificate (what update-ca-certificates expects).
    docker run --rm --network none "$ROOTFS_IMAGE" cat "$HOST_CA_BUNDLE" >"$ctx/image-bundle.pem"
    n_extra=$(python3 - "$HOST_CA_BUNDLE" "$ctx/image-bundle.pem" "$ctx" <<'PY'
import re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
host, image, out = sys.argv[1:4]
have = set(pem.findall(open(image).read()))
extra = [c for c in pem.findall(open(host).read()) if c not in have]
for i, cert in enumerate(extra, 1):
    with open(f"{out}/host-extra-{i}.crt", "w") as f:
        f.write(cert + "\n")
print(len(extra))
PY
)
fi

if (( n_extra == 0 )); then
    log "no extra host CA certificates to add"
    docker tag "$ROOTFS_IMAGE" "$IMAGE"
else
    log "adding $n_extra host CA certificate(s) to the image"
    cat >"$ctx/Dockerfile" <<EOF
FROM $ROOTFS_IMAGE
COPY host-extra-*.crt /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV SSL_CERT_FILE=$HOST_CA_BUNDLE \\
    REQUESTS_CA_BUNDLE=$HOST_CA_BUNDLE \\
    PIP_CERT=$HOST_CA_BUNDLE
EOF
    # No network is needed for this step.
    docker build --network none -q -t "$IMAGE" "$ctx" >&2
fi

log "built $IMAGE"
echo "$IMAGE"
