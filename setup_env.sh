#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv, idempotently:
#   bash setup_env.sh            # then: source .venv/bin/activate
# - CPU machines get the CPU wheel of torch 2.13.0 (never torchvision / torchaudio, whose registry
#   builds are CUDA builds that break CPU torch); machines with an NVIDIA GPU get the CUDA build.
# - Re-running is fast: nothing is installed when requirements.txt and pyproject.toml are unchanged.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

if [ ! -x .venv/bin/python ]; then
  echo "[setup_env] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"

stamp=.venv/.loramcl-installed
want="$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16) torch=$TORCH_VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import loramcl, torch" 2>/dev/null; then
  echo "[setup_env] .venv is up to date"
  exit 0
fi

if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup_env] NVIDIA GPU found: installing the CUDA build of torch $TORCH_VERSION"
    $PIP install -q "torch==$TORCH_VERSION"
  else
    echo "[setup_env] no NVIDIA GPU: installing the CPU build of torch $TORCH_VERSION"
    # a local CPU wheel (pip find-links) when the machine has one (its dependencies come from the
    # registry), else PyTorch's CPU index
    if $PIP download -q --no-index --no-deps "torch==$TORCH_VERSION" -d "$(mktemp -d)" 2>/dev/null; then
      $PIP install -q "torch==$TORCH_VERSION"
    else
      $PIP install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi
echo "[setup_env] installing the pinned requirements and the loramcl package (editable)"
$PIP install -q -r requirements.txt
$PIP install -q --no-deps -e .
if .venv/bin/python -c "import torchvision" 2>/dev/null || .venv/bin/python -c "import torchaudio" 2>/dev/null; then
  echo "[setup_env] warning: torchvision/torchaudio are installed in .venv; they are not needed and may break CPU torch"
fi
echo "$want" > "$stamp"
echo "[setup_env] done: $(.venv/bin/python -c 'import torch, transformers, peft, lightning; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, lightning {lightning.__version__}")')"
