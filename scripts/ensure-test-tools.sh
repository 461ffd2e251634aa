#!/usr/bin/env bash
# Make sure the Debian tools the tests need are installed (`make test` runs this first):
#   /usr/bin/chromium  the browser test (tests/test_browser.py); Playwright drives this browser, and its
#                      own browser downloads (`playwright install`) are never used;
#   /usr/bin/ffmpeg    the MP4 export of the animations (tests/test_widgets.py), which matplotlib writes
#                      through ffmpeg.
# Idempotent: does nothing when both are there.  Without them those tests fail, they do not skip.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
FFMPEG=/usr/bin/ffmpeg
packages=()
[ -x "$CHROMIUM" ] || packages+=(chromium fonts-dejavu-core)
[ -x "$FFMPEG" ] || packages+=(ffmpeg)
if [ ${#packages[@]} -eq 0 ]; then
    exit 0
fi

fail() {
    echo "ensure-test-tools: $1" >&2
    echo "ensure-test-tools: the tests need Debian's chromium at $CHROMIUM and ffmpeg at $FFMPEG;" \
         "install them (apt-get install chromium ffmpeg) and rerun." >&2
    exit 1
}

command -v apt-get >/dev/null || fail "no apt-get on this machine"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || fail "not root and no sudo to run apt-get"
    SUDO="sudo"
fi
echo "ensure-test-tools: installing Debian's ${packages[*]} (once)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || fail "apt-get update failed"
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null || fail "apt-get install ${packages[*]} failed"
[ -x "$CHROMIUM" ] || fail "chromium installed but $CHROMIUM is missing"
[ -x "$FFMPEG" ] || fail "ffmpeg installed but $FFMPEG is missing"
"$CHROMIUM" --version
"$FFMPEG" -hide_banner -version | head -1
