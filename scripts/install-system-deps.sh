#!/usr/bin/env bash
# System packages the tests need that pip cannot install: today only Chromium, which renders the HTML
# report in tests/integration/test_report.py. Installs Debian's `chromium` with apt-get when no Chromium is
# on PATH; elsewhere (no apt-get, no root or passwordless sudo) prints one warning line and exits 0.
# Called by the Makefile when it creates .venv; safe to run again.
set -euo pipefail

BINARIES=(chromium chromium-browser google-chrome google-chrome-stable)
HINT="install Chromium (chromium, chromium-browser or google-chrome on PATH) for the report test"

warn() {
  echo "warning: $1; $HINT" >&2
  exit 0
}

for bin in "${BINARIES[@]}"; do
  if command -v "$bin" >/dev/null 2>&1; then
    exit 0
  fi
done

command -v apt-get >/dev/null 2>&1 || warn "no Chromium on PATH and no apt-get to install it"

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  # -n: never wait for a password (make may run unattended)
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    warn "no Chromium on PATH and no root or passwordless sudo for 'apt-get install chromium'"
  fi
fi

apt_install() {
  ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1
}

# a fresh machine or container often has no package lists yet: update once and retry
if ! apt_install; then
  { ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 && apt_install; } \
    || warn "'apt-get install chromium' failed"
fi
command -v chromium >/dev/null 2>&1 || warn "'apt-get install chromium' put no chromium on PATH"
echo "installed chromium ($(command -v chromium)) with apt-get"
