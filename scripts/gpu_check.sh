#!/usr/bin/env bash
# One prepared GPU check (issue 18): the bench at 1024² (batch sweep, engine against bare, every
# fast-path option), SDXL LoRA training, the curation judge and the studio's generate path, in
# one call of at most 9 minutes; the figures go to $OUT (default ./gpu-check-out).
#
#   bash scripts/gpu_check.sh               # on a GPU machine
#   bash scripts/gpu_check.sh --dry-run     # the same steps on a CPU at tiny sizes
#   bash scripts/gpu_check.sh --only lora   # one step again
#
# Where .whl/ holds wheels (scripts/gpu_wheels.sh puts there what the device machine lacks),
# a GPU run installs them into /tmp/site first. scripts/gpu_check.py says what each step does,
# and its estimated time.
set -euo pipefail

started=$(date +%s)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export OUT="${OUT:-$root/gpu-check-out}"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1  # every model is a local folder; the device machine has no network

dry_run=0
for argument in "$@"; do
    [[ $argument == --dry-run ]] && dry_run=1
done
if (( ! dry_run )); then
    # Refuse in one line before installing anything where no GPU is visible.
    "$PYTHON" scripts/gpu_check.py --check-cuda
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH="$root:/tmp/site${PYTHONPATH#"$root"}"
        echo "gpu_check: installed $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
    fi
fi
exec "$PYTHON" scripts/gpu_check.py --out "$OUT" --started "$started" "$@"
