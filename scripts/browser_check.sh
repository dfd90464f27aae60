#!/usr/bin/env bash
# Opens REPORT_DIR/index.html (written by `harness report`) in headless Chromium and
# checks that it loads with no console messages or script errors, shows every table
# of leaderboard.md and every plot under plots/, and renders to a non-blank
# screenshot. The checks themselves are in browser_check.py.
# Installs Debian's chromium when it is missing and we are root (a fresh CI machine).
# Exit 0 when the page is whole; otherwise one line on stderr saying why, exit 1.
set -euo pipefail

fail() {
    echo "browser check failed: $*" >&2
    exit 1
}

[ $# -eq 1 ] || fail "usage: scripts/browser_check.sh REPORT_DIR"
report=$(cd "$1" 2>/dev/null && pwd) || fail "no report directory $1"
[ -f "$report/index.html" ] || fail "no index.html in $report (run harness report first)"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
            >/dev/null 2>&1 || fail "chromium is missing and apt-get install -y chromium failed"
        browser=$(command -v chromium) || fail "chromium is still missing after apt-get install"
    else
        fail "chromium is missing (install Debian's chromium package)"
    fi
fi
command -v python3 >/dev/null || fail "python3 is missing"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A fresh profile and no background services: the page alone decides what loads.
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --enable-logging=stderr --v=0)
url="file://$report/index.html"

timeout 120 "$browser" "${flags[@]}" --user-data-dir="$work/dom-profile" \
    --dump-dom "$url" >"$work/dom.html" 2>"$work/dom.log" ||
    fail "chromium could not load $url (see: $browser --headless --dump-dom $url)"
timeout 120 "$browser" "${flags[@]}" --user-data-dir="$work/shot-profile" \
    --screenshot="$work/screenshot.png" --window-size=1280,2000 --hide-scrollbars \
    "$url" >"$work/shot.log" 2>&1 ||
    fail "chromium could not take a screenshot of $url"
[ -s "$work/screenshot.png" ] || fail "chromium wrote no screenshot of $url"

cat "$work/dom.log" "$work/shot.log" >"$work/chromium.log"
python3 "$here/browser_check.py" "$report" "$work/dom.html" "$work/chromium.log" "$work/screenshot.png"
