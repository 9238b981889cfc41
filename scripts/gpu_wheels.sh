#!/usr/bin/env bash
# Downloads, here, the wheels the GPU check (scripts/gpu_check.sh) needs that the device
# machine's image lacks, into .whl/, for Python 3.12 on manylinux x86_64, at the versions this
# checkout's venv runs; then prints each with its size, and what the device tool would send.
#
#   bash scripts/gpu_wheels.sh      # then: run with carry [".whl"]
#
# The image has torch, transformers, accelerate, peft, pandas, pyarrow, pyyaml, safetensors,
# scikit-learn, torchmetrics, fsspec, httpx, anyio, annotated-doc (see the device README's
# KINDS.md). Not carried: ray (its wheel alone is too large; the check runs the engine
# in-process), compel, uvicorn, prdc, s3fs (not on the check's path).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
[[ -x $PYTHON ]] || PYTHON=python3
LIMIT=$((64 * 1024 * 1024))  # what one call of the device tool may send, wheels included

packages=(
    diffusers                                     # the pipelines and the LoRA trainer's parts
    pydantic pydantic-core annotated-types        # the spec
    typing-inspection typing-extensions           # pydantic asks typing-extensions >= 4.16
    fastapi starlette opentelemetry-api           # the studio's app (TestClient uses httpx)
    duckdb                                        # the studio's catalog
    faiss-cpu                                     # the curation gate's nearest-real search
)
pins=()
for package in "${packages[@]}"; do
    pins+=("$package==$("$PYTHON" -c "from importlib.metadata import version; print(version('$package'))")")
done

rm -rf .whl  # one version of each: two stop the whole install there
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${pins[@]}"

git check-ignore -q .whl || echo "gpu_wheels: warning: .whl/ is not ignored; it would travel twice"
ls -l .whl/*.whl | awk '{printf "%8.1f MB  %s\n", $5 / 1e6, $NF}'
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
# What a call sends: tracked files, untracked ones git does not ignore, and the carried .whl.
tree=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null || true) \
    | awk '$2 == "total" { sum += $1 } END { print sum + 0 }')
total=$((tree + wheels))
awk -v n="${#packages[@]}" -v w="$wheels" -v t="$tree" 'BEGIN { m = 1048576
    printf "gpu_wheels: %d wheels, %.1f MiB; with the working tree (%.1f MiB), %.1f MiB of the 64 MiB a call may send\n", n, w / m, t / m, (w + t) / m }'
if ((total > LIMIT)); then
    echo "gpu_wheels: too large for one call: leave something out of .whl or the tree" >&2
    exit 1
fi
