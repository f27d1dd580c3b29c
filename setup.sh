#!/usr/bin/env bash
# Set up CharLoRA in ./.venv (Linux/macOS). Safe to run again: it does nothing when nothing changed.
#   bash setup.sh          runtime only (what `python gui.py` needs)
#   bash setup.sh --dev    + test tools (pytest, browser-test tools)
# Environment: PYTHON=python3.11 picks the interpreter; CHARLORA_TORCH=cpu|cuda forces the torch build;
# CHARLORA_TORCH_INDEX=<url> installs torch from that index instead.
set -euo pipefail
cd "$(dirname "$0")"

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --dev or --help)" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*"; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.10 python3 python; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup.sh: no Python found. Install Python 3.10-3.12 and run again." >&2; exit 1; }
if ! "$PY" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)'; then
  echo "setup.sh: $("$PY" --version 2>&1) is not supported; CharLoRA needs Python 3.10-3.12 (set PYTHON=...)." >&2
  exit 1
fi

# Which torch build: CUDA where an NVIDIA GPU answers, CPU otherwise (a plain `torch` from PyPI
# on Linux is a multi-GB CUDA build, useless without a GPU).
TORCH_VERSION=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements.txt)
VARIANT=${CHARLORA_TORCH:-}
if [ -z "$VARIANT" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VARIANT=cuda; else VARIANT=cpu; fi
fi
case "$VARIANT" in cpu|cuda) ;; *) echo "setup.sh: CHARLORA_TORCH must be cpu or cuda, not '$VARIANT'" >&2; exit 2 ;; esac

# Browser tests need a Chromium; Playwright's own download does not work offline, Debian's package does.
if [ "$DEV" = 1 ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium for the browser tests (about 1-2 minutes)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    say "note: no chromium found; the browser tests will be skipped (install your distribution's chromium)"
  fi
fi

STAMP_WANT=$( { cat requirements.txt; [ "$DEV" = 1 ] && cat requirements-dev.txt; echo "$VARIANT ${CHARLORA_TORCH_INDEX:-}"; "$PY" --version; } | cksum)
STAMP=.venv/.charlora-setup
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_WANT" ]; then
  say "up to date (.venv, torch $TORCH_VERSION $VARIANT$([ "$DEV" = 1 ] && echo ', dev tools')). Nothing to do."
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
PIP=("$VPY" -m pip install --disable-pip-version-check)

have_torch() { "$VPY" - "$TORCH_VERSION" "$1" <<'PYEOF' >/dev/null 2>&1
import sys
import torch
want, variant = sys.argv[1], sys.argv[2]
ok = torch.__version__.split("+")[0] == want and ((torch.version.cuda is not None) == (variant == "cuda"))
sys.exit(0 if ok else 1)
PYEOF
}

if have_torch "$VARIANT"; then
  say "torch $TORCH_VERSION ($VARIANT) already installed"
elif [ -n "${CHARLORA_TORCH_INDEX:-}" ]; then
  say "installing torch $TORCH_VERSION from $CHARLORA_TORCH_INDEX"
  "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$CHARLORA_TORCH_INDEX"
elif [ "$VARIANT" = cuda ]; then
  say "NVIDIA GPU found: installing the CUDA build of torch $TORCH_VERSION (about 3 GB)"
  "${PIP[@]}" "torch==$TORCH_VERSION"
elif [ "$(uname -s)" = Darwin ]; then
  say "installing torch $TORCH_VERSION (macOS)"
  "${PIP[@]}" "torch==$TORCH_VERSION"
else
  say "no NVIDIA GPU found: installing the CPU build of torch $TORCH_VERSION (training will be slow; set CHARLORA_TORCH=cuda to override)"
  # A local wheel or mirror that already has the +cpu build wins; else PyTorch's CPU index.
  "${PIP[@]}" "torch==$TORCH_VERSION+cpu" 2>/dev/null \
    || "${PIP[@]}" "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
fi

say "installing requirements.txt"
"${PIP[@]}" -r requirements.txt
if [ "$DEV" = 1 ]; then
  say "installing requirements-dev.txt"
  "${PIP[@]}" -r requirements-dev.txt
fi

echo "$STAMP_WANT" > "$STAMP"
say "done. Start the app with: .venv/bin/python gui.py"
