#!/usr/bin/env bash
# The main job: set up the virtualenv, then run the whole pipeline on a local embedded Ray.
# Extra arguments go to `facepgn demo` (e.g. scripts/demo.sh --out runs/demo).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/venv.sh" ""  # no extras (an explicit empty argument: a bare source would pass this script's own arguments)
cd "$repo"
exec facepgn demo "$@"
