#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (Debian's redis-server
# and chromium, a virtualenv with the package and its dev extras), checks the code with ruff
# (lint and format) and mypy, then runs pytest under coverage, three test processes at a time.
# Without arguments the coverage floor (pyproject.toml) applies too. Extra arguments go to pytest,
# e.g. `bash tests/run.sh -k streaming -x` (the floor is then not checked: a part of the suite
# covers a part of the code).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

need=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

venv="${VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1  # Playwright drives Debian's /usr/bin/chromium
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q -e ".[dev]"
py="$venv/bin/python"

echo "ruff, mypy"
"$py" -m ruff check --quiet .
"$py" -m ruff format --check --quiet .
"$py" -m mypy --no-error-summary

rm -rf test-artifacts/.coverage*
mkdir -p test-artifacts
workers="${PYTEST_WORKERS:-3}"  # on 2 cores: the tests wait on servers a good part of the time
status=0
"$py" -m coverage run -m pytest -p no:cacheprovider -n "$workers" "$@" || status=$?
"$py" -m coverage combine --quiet
if [ $status -eq 0 ] && [ $# -eq 0 ]; then
  "$py" -m coverage report --skip-covered --sort=-cover | tail -n 15 || status=$?
fi
exit $status
