#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv and install facepgn into it.
# Usage: source scripts/venv.sh [extras]   e.g. "test"
# FACEPGN_VENV picks the folder (default .venv in the checkout). The CPU torch pin lives in
# constraints-ci.txt (FACEPGN_CONSTRAINTS overrides it; set it empty to let pip choose torch).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FACEPGN_VENV:-$repo/.venv}"
extras="${1:-}"
constraints="${FACEPGN_CONSTRAINTS-$repo/constraints-ci.txt}"
if [ ! -x "$venv/bin/python" ]; then
  echo "facepgn: creating virtualenv $venv" >&2
  python3 -m venv "$venv"
fi
stamp="$venv/.facepgn-installed-$(cat "$repo/pyproject.toml" "$constraints" 2>/dev/null | sha256sum | cut -c1-12)-${extras:-base}"
if [ ! -e "$stamp" ]; then
  echo "facepgn: installing dependencies into $venv (first run takes a few minutes)" >&2
  spec="$repo"
  [ -n "$extras" ] && spec="$repo[$extras]"
  args=(-q --disable-pip-version-check)
  [ -n "$constraints" ] && args+=(-c "$constraints")
  "$venv/bin/python" -m pip install "${args[@]}" -e "$spec"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
