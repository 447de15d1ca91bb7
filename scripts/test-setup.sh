#!/usr/bin/env bash
# Installs what the browser tests need: Debian's Chromium (Playwright drives it; no browser download).
# Idempotent; when it cannot install (not root, no apt), the browser tests skip and say why.
set -u
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "test setup: installing Debian's chromium for the browser tests"
  apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
    || echo "test setup: could not install chromium; browser tests will be skipped"
else
  echo "test setup: chromium missing and cannot be installed here; browser tests will be skipped"
fi
exit 0
