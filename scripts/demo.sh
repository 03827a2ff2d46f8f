#!/usr/bin/env bash
# Set-up plus the main job: train, evaluate and measure a small U-Net on Kvasir-SEG.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
exec medslim demo "$@"
