#!/usr/bin/env bash
# The test command: set up the virtualenv with test extras, then run pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k geometry).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/venv.sh" test
cd "$repo"
# lint and types first (seconds); FACEPGN_LINT=0 skips them (e.g. while iterating on one test)
if [ "${FACEPGN_LINT:-1}" != 0 ]; then
  python -m ruff check --quiet . || { echo "facepgn: ruff found problems (see above)" >&2; exit 1; }
  python -m mypy || { echo "facepgn: mypy found type errors (see above)" >&2; exit 1; }
fi
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "facepgn: no tests were collected" >&2
  exit 1
fi
exit "$rc"
