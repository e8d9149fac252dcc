#!/usr/bin/env bash
# Re-resolve the pinned, hashed dependency sets from pyproject.toml (see docs/development.md).
# The test set is resolved first; the runtime set is constrained to it, so both agree on every
# package they share. Needs uv (`pip install uv`); installs need only pip.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-uv}
common=(--generate-hashes --python-version 3.11 --universal --quiet)
"$uv" pip compile pyproject.toml --extra test "${common[@]}" "$@" -o requirements/test.lock
"$uv" pip compile pyproject.toml -c requirements/test.lock "${common[@]}" -o requirements/runtime.lock
