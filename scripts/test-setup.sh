#!/usr/bin/env bash
# System packages the tests need that pip cannot install (`make test` runs this first):
# - Debian's Chromium: the browser test drives /usr/bin/chromium through Playwright (no browser download);
# - PostgreSQL server binaries (initdb, pg_ctl): the annotation API tests start their own throwaway cluster on a
#   free port, so no cluster is created or started here.
# Idempotent, and instant when both are there. Where it cannot install (not root, no apt-get, apt fails) it says
# so and the tests concerned skip, naming this script.
set -u

have_chromium() { [ -x /usr/bin/chromium ]; }

# where tests/test_annotate_api.py looks: pg_ctl on PATH, or /usr/lib/postgresql/VERSION/bin (Debian's layout)
have_postgres() {
  command -v pg_ctl >/dev/null 2>&1 && return 0
  local bin
  for bin in /usr/lib/postgresql/*/bin; do
    [ -x "$bin/pg_ctl" ] && [ -x "$bin/initdb" ] && return 0
  done
  return 1
}

missing=()
have_chromium || missing+=(chromium)
have_postgres || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

skipped_tests() {
  case "$1" in
    chromium) echo "the browser test (tests/test_annotate_browser.py)" ;;
    postgresql) echo "the PostgreSQL half of tests/test_annotate_api.py" ;;
  esac
}

if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  for package in "${missing[@]}"; do
    echo "test setup: $package is not installed and cannot be installed here (needs root and apt-get); $(skipped_tests "$package") will be skipped"
  done
  exit 0
fi

log=$(mktemp)
echo "test setup: installing ${missing[*]} with apt-get (once)"
if ! apt-get update -qq >"$log" 2>&1; then
  echo "test setup: apt-get update failed ($(tail -n 1 "$log")); trying the package lists already here"
fi
for package in "${missing[@]}"; do
  options=()
  if [ "$package" = postgresql ]; then
    # binaries only: no 'main' cluster created and started by the package (the tests make their own)
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/rlhfkit-no-main-cluster.conf
    options=(--no-install-recommends)
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${options[@]}" "$package" >"$log" 2>&1; then
    echo "test setup: could not install $package ($(tail -n 1 "$log")); $(skipped_tests "$package") will be skipped"
  fi
done
rm -f "$log"
have_chromium && have_postgres && echo "test setup: chromium and PostgreSQL server binaries installed"
exit 0
