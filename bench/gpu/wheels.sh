#!/usr/bin/env bash
# What the GPU run (bench/gpu/run.sh) needs that the GPU machine's image lacks, made here, where the package index
# is reachable, into .whl/ (ignored by git; name it in the device tool's `carry`):
#
#     bash bench/gpu/wheels.sh
#
# - wheels for that machine's Python 3.12 on x86-64, every one pinned: pydantic and its three helpers (rlhfkit's
#   config), typing_extensions (pydantic 2.14 needs 4.16), TRL, datasets and vaderSentiment as bench/spec.py's
#   TRL_REQUIREMENTS pins them, and datasets' dill and multiprocess. The image has torch, transformers, accelerate,
#   peft, tokenizers, safetensors, numpy, pandas, pyarrow, xxhash, fsspec, requests, huggingface-hub, pytest and
#   pytest-xdist (KINDS.md of the device tool lists it).
# - home/: this machine's build of the embedded default (about 8 MB), so the bare GPU machine does not rebuild it
#   (minutes) and both machines train the same model. run.sh points RLHFKIT_HOME at a copy of it.
# - data/: shared/data's HH-RLHF sample (0.5 MB) where this checkout has one beside it: bench/prepare.py trains the
#   qwen152k tokenizer on it too, and ../shared does not travel to the GPU machine.
#
# Prints the total size and fails over RLHFKIT_WHEELS_LIMIT_MB (default 50): the device tool carries at most 64 MiB,
# the working tree included.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEST=${RLHFKIT_GPU_WHEELS:-.whl}
LIMIT_MB=${RLHFKIT_WHEELS_LIMIT_MB:-50}

PINS=(
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    typing-extensions==4.16.0 dill==0.4.1 multiprocess==0.70.19
)
# trl, datasets and vaderSentiment exactly as the CPU bench pins them
read -r -a SPEC_PINS <<<"$("$PY" -c '
import sys
sys.path.insert(0, ".")
from bench.spec import TRL_REQUIREMENTS
print(" ".join(r for r in TRL_REQUIREMENTS if r.split("==")[0].lower() in ("trl", "datasets", "vadersentiment")))
')"
[ "${#SPEC_PINS[@]}" -eq 3 ] || { echo "wheels: expected trl, datasets and vaderSentiment in TRL_REQUIREMENTS" >&2; exit 1; }
PINS+=("${SPEC_PINS[@]}")

rm -rf "$DEST"
mkdir -p "$DEST"
echo "wheels: ${PINS[*]}"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$DEST" "${PINS[@]}"
count=$(ls "$DEST"/*.whl | wc -l)
[ "$count" -eq "${#PINS[@]}" ] || { echo "wheels: $count wheels for ${#PINS[@]} pins" >&2; exit 1; }

# the embedded default, built here if it is not yet (a few minutes on 2 cores, once)
default=$(PYTHONPATH=src "$PY" -c 'from rlhfkit.demo.build import ensure_default; print(ensure_default().root)')
mkdir -p "$DEST/home"
cp -r "$default" "$DEST/home/"

for folder in shared/data ../shared/data; do
    if [ -f "$folder/hh-rlhf-harmless-sample.jsonl.gz" ]; then
        mkdir -p "$DEST/data" && cp "$folder/hh-rlhf-harmless-sample.jsonl.gz" "$DEST/data/"
        break
    fi
done

ls -l "$DEST"/*.whl | awk '{printf "%8.1f MB  %s\n", $5 / 1048576, $NF}'
echo "$(du -sh "$DEST/home/$(basename "$default")" | cut -f1)  $DEST/home/$(basename "$default") (the default's build)"
[ -d "$DEST/data" ] && echo "$(du -sh "$DEST/data" | cut -f1)  $DEST/data (the HH-RLHF sample)"
total=$(du -sm "$DEST" | cut -f1)
echo "wheels: $count wheels and the default's build, ${total} MB in $DEST"
if [ "$total" -gt "$LIMIT_MB" ]; then
    echo "wheels: $DEST is ${total} MB, over the ${LIMIT_MB} MB the device tool can carry with the tree" >&2
    exit 1
fi
