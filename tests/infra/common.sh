# Sourced by the infra scripts: their state folder, their log lines, and Debian installs.
# shellcheck shell=bash
# shellcheck disable=SC2034  # used by the scripts that source this file
STATE=${INFRA_STATE:-/var/tmp/gym-dpo-infra}
INFRA_NAME=$(basename "$0" .sh)

log() { echo "[$INFRA_NAME] $*" >&2; }
die() { echo "[$INFRA_NAME] ERROR: $*" >&2; exit 1; }

# apt_install PKG...: Debian packages, non-interactive, without recommends, quietly.
apt_install() {
    log "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
