#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser test (tests/test_browser.py).
# Idempotent: does nothing when it is already there.  Playwright drives this browser; its own
# browser downloads (`playwright install`) are never used.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi

fail() {
    echo "ensure-chromium: $1" >&2
    echo "ensure-chromium: the browser test needs Debian's chromium at $CHROMIUM; install it (apt-get install chromium) and rerun." >&2
    exit 1
}

command -v apt-get >/dev/null || fail "no apt-get on this machine"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || fail "not root and no sudo to run apt-get"
    SUDO="sudo"
fi
echo "ensure-chromium: installing Debian's chromium (once)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || fail "apt-get update failed"
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null || fail "apt-get install chromium failed"
[ -x "$CHROMIUM" ] || fail "chromium installed but $CHROMIUM is missing"
"$CHROMIUM" --version
