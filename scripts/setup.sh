#!/usr/bin/env bash
# Installs medslim and its dependencies into the current Python.
# On a machine without an NVIDIA GPU the CPU build of torch is pinned through
# constraints/cpu.txt; with a GPU (nvidia-smi present) the user's torch is kept.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
constraint=()
if ! command -v nvidia-smi >/dev/null 2>&1 || [ "${MEDSLIM_CPU:-}" = 1 ]; then
  constraint=(-c "$here/constraints/cpu.txt")
fi
"$py" -m pip install -q --root-user-action=ignore "${constraint[@]}" -e "$here[dev]"
