#!/usr/bin/env bash
# Set-up plus the whole test suite (CI runs exactly this through .ci/run).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
exec "${PYTHON:-python3}" -m pytest -q "$@"
