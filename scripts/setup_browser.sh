#!/usr/bin/env bash
# Headless Chromium for `make site-test` only (never part of `make setup`: plain setup and `make test` stay
# within their time budget). Installs Debian's `chromium` and a CJK font (the pages are in Chinese; without it
# the screenshots show boxes) with apt-get, and only when they are missing. A reader's own browser needs none of
# this: the site is static HTML.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ] || missing+=(chromium)
if command -v fc-list >/dev/null 2>&1 && ! fc-list :lang=zh 2>/dev/null | grep -q .; then
  missing+=(fonts-noto-cjk)
elif ! command -v fc-list >/dev/null 2>&1; then
  missing+=(fonts-noto-cjk)
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "[site] Chromium and a CJK font are present"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[site] missing: ${missing[*]}; no apt-get here: install Chromium yourself and set CHROMIUM=/path/to/chrome" >&2
  exit 2
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
echo "[site] installing ${missing[*]} with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
