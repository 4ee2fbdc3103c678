#!/usr/bin/env bash
# One GPU check of lmlab: pytest -m gpu, gpt2-small MFU (bf16, compile), TinyStories-config tok/s,
# FSDP on one GPU, KV-cache decode at batch 1 and 32, the micro-batch memory probe.
# Plans for ~5 minutes on one H200 (sections that would start after --budget-s, default 420 s,
# are skipped and say so). Writes gpu_check.json (figures) and gpu_check.log under --out DIR,
# else $OUT, else runs/gpu_check.
#
#   bench/gpu/check.sh                       # on the GPU machine
#   bench/gpu/check.sh --cpu-dry-run --out /tmp/gc   # the same sections, tiny, on the CPU
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
cd "$ROOT"
exec "$PY" "$ROOT/bench/gpu/check.py" "$@"
