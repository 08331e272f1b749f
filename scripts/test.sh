#!/usr/bin/env bash
# The test command: set up the virtualenv with test extras, then run pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k geometry).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/venv.sh" test
cd "$repo"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "facepgn: no tests were collected" >&2
  exit 1
fi
exit "$rc"
