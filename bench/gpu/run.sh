#!/usr/bin/env bash
# The GPU run (issue #16, item 4) in one command, on the GPU machine, from the repo root, with .whl carried:
#
#     bash bench/gpu/run.sh
#
# 1. installs the carried wheels (bench/gpu/wheels.sh made them) into /tmp/site: that machine has no package index;
# 2. prints nvidia-smi and the versions of what runs;
# 3. the architecture matrix (tests/test_architectures.py) with device=cuda, mixed_precision=bf16 and
#    gradient_checkpointing=true on every stage whose config has those keys (RLHFKIT_MATRIX_EXTRA), junit XML out;
# 4. the bench against TRL on the GPU (bench/run.py --device cuda, TRL from the same python), one bench/run.py per
#    model of bench/spec.py's MODELS so that a model cut short by the time budget leaves the others' results;
# 5. bench/gpu/report.py: the merged results JSON and the markdown section for BENCHMARKS.md.
#
# Everything lands in $OUT (the device tool's folder; else runs/gpu): run.log, matrix.xml, bench.json, gpu.md and,
# when something failed, failures.txt (the last lines of each failed run's log). Fold gpu.md into BENCHMARKS.md
# with `python bench/gpu/report.py fold PATH/gpu.md`. The exit status is 0 when every step passed, else 1 (the
# report is written either way).
#
# RLHFKIT_GPU_DRY=1 runs the same steps on this machine's CPU with tiny settings (no wheels, no nvidia-smi, a few
# matrix rows with bf16 and gradient checkpointing, one short SFT bench row): the rehearsal before spending GPU time.
# Knobs (environment): PY (python; default python3), RLHFKIT_GPU_BUDGET_S (seconds for the whole script, default
# 480), RLHFKIT_GPU_MATRIX_S (the matrix's share, default 180; 0 skips it), RLHFKIT_GPU_MATRIX_SELECT (a pytest -k
# expression: part of the matrix), RLHFKIT_GPU_TASKS (default sft,reward,dpo: the online stages have no device key
# yet), RLHFKIT_GPU_MODELS (default: all of spec.MODELS, newest first; none skips the bench), RLHFKIT_GPU_REPEATS
# (default 1),
# RLHFKIT_GPU_WHEELS (the wheel folder, default .whl; in a dry run installed only when set), RLHFKIT_GPU_SITE (where
# they go, default /tmp/site).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
DRY=${RLHFKIT_GPU_DRY:-0}
PY=${PY:-python3}
OUT=${OUT:-$ROOT/runs/gpu}
BUDGET=${RLHFKIT_GPU_BUDGET_S:-480}
WHEELS=${RLHFKIT_GPU_WHEELS:-.whl}
SITE=${RLHFKIT_GPU_SITE:-/tmp/site}
WORK=${RLHFKIT_GPU_WORK:-/tmp/rlhfkit-gpu-work}
START=$(date +%s)
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

left() { echo $((BUDGET - ($(date +%s) - START))); }
say() { echo "[gpu-run $(date -u +%H:%M:%S), $(left) s left] $*"; }

main() {
# ---------------------------------------------------------------------------------------------- 1. wheels
if [ "$DRY" != 1 ] || [ -n "${RLHFKIT_GPU_WHEELS:-}" ]; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        say "no wheels in $WHEELS: run 'bash bench/gpu/wheels.sh' on a machine with the package index, carry .whl"
        return 1
    fi
    say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || return 1
    export PYTHONPATH="$ROOT/src:$SITE"
else
    export PYTHONPATH="$ROOT/src"
fi
if [ -d "$WHEELS/home" ]; then  # the embedded default's build, carried: not rebuilt (minutes) on a bare machine
    rm -rf "$WORK/home" && cp -r "$WHEELS/home" "$WORK/home" && export RLHFKIT_HOME="$WORK/home"
fi
# the HH-RLHF sample qwen152k's tokenizer is trained on (bench/prepare.py reads shared/data or ../shared/data)
if [ -d "$WHEELS/data" ] && [ ! -e shared/data ] && [ ! -e ../shared/data ]; then
    mkdir -p shared && cp -r "$WHEELS/data" shared/data
fi

# ---------------------------------------------------------------------------------------------- 2. the machine
if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    EXTRA='{"mixed_precision": "bf16", "gradient_checkpointing": true}'
else
    DEVICE=cuda
    EXTRA='{"device": "cuda", "mixed_precision": "bf16", "gradient_checkpointing": true}'
    nvidia-smi || say "nvidia-smi failed"
fi
"$PY" - "$DEVICE" <<'EOF' || return 1
import importlib, sys

print(f"python {sys.version.split()[0]} at {sys.executable}")
for name in ("torch", "transformers", "accelerate", "peft", "tokenizers", "pydantic", "datasets", "trl", "vaderSentiment"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')} from {module.__file__}")
    except Exception as error:  # say what is missing, then stop below if it matters
        print(f"{name}: NOT importable ({type(error).__name__}: {error})")
import torch

if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("gpu-run: torch sees no CUDA GPU")
    print(f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
import rlhfkit.config  # noqa: F401  (pydantic and the rest of rlhfkit's imports)
EOF

# ---------------------------------------------------------------------------------------------- 3. the matrix
MATRIX_S=${RLHFKIT_GPU_MATRIX_S:-180}
# -v: one line per test in run.log, which survives a matrix cut short (xdist writes no junit XML then)
MATRIX_ARGS=(-v -p no:cacheprovider -o addopts= -rfE --junitxml="$OUT/matrix.xml")
if [ -n "${RLHFKIT_GPU_MATRIX_SELECT:-}" ]; then
    MATRIX_ARGS+=(-k "$RLHFKIT_GPU_MATRIX_SELECT")
elif [ "$DRY" = 1 ]; then
    MATRIX_ARGS+=(-k "test_stage_runs_and_reloads and llama and (sft or reward or dpo) and not online")
fi
if "$PY" -c "import xdist" 2>/dev/null; then
    MATRIX_ARGS+=(-n "${RLHFKIT_GPU_MATRIX_WORKERS:-8}")
fi
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    MATRIX_ARGS+=(--timeout 120)
fi
rm -f "$OUT/matrix.xml"
if [ "$MATRIX_S" -gt 0 ]; then
    say "architecture matrix with RLHFKIT_MATRIX_EXTRA=$EXTRA (at most $MATRIX_S s)"
    RLHFKIT_MATRIX_EXTRA="$EXTRA" timeout -k 10 "$MATRIX_S" "$PY" -m pytest tests/test_architectures.py \
        "${MATRIX_ARGS[@]}"
    status=$?
    say "matrix exit status $status"
    [ "$status" -eq 0 ] || FAILED+=("matrix (exit $status)")
else
    say "architecture matrix skipped (RLHFKIT_GPU_MATRIX_S=$MATRIX_S)"
fi

# ---------------------------------------------------------------------------------------------- 4. the bench
# every model the bench has, the newest first: when the budget runs out, the oldest (the embedded default) goes
MODELS=${RLHFKIT_GPU_MODELS:-$("$PY" -c "import sys; sys.path.insert(0, '.'); from bench import spec; print(','.join(spec.MODELS[::-1]))")}
TASKS=${RLHFKIT_GPU_TASKS:-sft,reward,dpo}
REPEATS=${RLHFKIT_GPU_REPEATS:-1}
BENCH_ARGS=(--device "$DEVICE" --tasks "$TASKS" --repeats "$REPEATS" --no-write)
TRL_PY=${RLHFKIT_GPU_TRL_PYTHON:-$PY}
if [ "$DRY" = 1 ]; then
    MODELS=${RLHFKIT_GPU_MODELS:-default}
    TASKS=${RLHFKIT_GPU_TASKS:-sft}
    BENCH_ARGS=(--device cpu --tasks "$TASKS" --repeats 1 --steps 5 --no-write)
    if ! "$TRL_PY" -c "import trl" 2>/dev/null; then
        TRL_PY=${RLHFKIT_GPU_TRL_PYTHON:-bench/.venv-trl/bin/python}
    fi
fi
if "$TRL_PY" -c "import trl" 2>/dev/null; then
    BENCH_ARGS+=(--trl-python "$TRL_PY")
else
    say "no python that imports trl ($TRL_PY): rlhfkit alone"
    BENCH_ARGS+=(--only rlhfkit)
fi
[ "$MODELS" = none ] && MODELS=""
for model in ${MODELS//,/ }; do
    budget=$(($(left) - 30))  # what is left, less the report's share
    if [ "$budget" -lt 60 ]; then
        say "bench $model: skipped, too little time left"
        continue
    fi
    say "bench $model ($TASKS, at most $budget s)"
    # run.py starts no run past --budget-s and keeps what it measured; timeout is the hard stop for a hung run
    timeout -k 10 "$budget" "$PY" bench/run.py "${BENCH_ARGS[@]}" --models "$model" --work "$WORK/bench-$model" \
        --budget-s $((budget - 45)) >/dev/null
    status=$?
    say "bench $model exit status $status"
    [ "$status" -eq 0 ] || FAILED+=("bench $model (exit $status)")
done

# ---------------------------------------------------------------------------------------------- 5. the report
REPORT_ARGS=(--work "$WORK" --junit "$OUT/matrix.xml" --log "$OUT/run.log" --out "$OUT" --extra "$EXTRA")
[ "$DRY" = 1 ] && REPORT_ARGS+=(--rehearsal)
"$PY" bench/gpu/report.py write "${REPORT_ARGS[@]}" --seconds $(($(date +%s) - START)) || FAILED+=("report")
say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
if [ "${#FAILED[@]}" -gt 0 ]; then
    say "FAILED: ${FAILED[*]}"
    return 1
fi
}

FAILED=()
main 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
