#!/usr/bin/env bash
# The GPU session: the prepared GPU check plus the headless story on CUDA, in one command.
#   bash tools/gpu_session.sh OUT_DIR            (a GPU machine with CharLoRA's packages)
#   bash tools/gpu_session.sh OUT_DIR --cpu      (tries every step on the CPU, tiny shapes)
# Writes OUT_DIR/gpu-check.json, OUT_DIR/story.log and the story's grid/score files.
# Where a lent machine lacks packages, wheels in .whl/ are installed into /tmp/site first.
set -u
OUT=${1:?usage: tools/gpu_session.sh OUT_DIR [--cpu]}
MODE=${2:-}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"

# 1. The GPU check (each part is written to the JSON as it finishes).
if [ "$MODE" = "--cpu" ]; then QUICK=--quick; else QUICK=; fi
timeout 480 "$PY" -m charlora gpu-check $QUICK --out "$OUT/gpu-check.json"
echo "gpu-check exit $?"

# 2. The headless story on this device: tiny model, 6 captioned pictures, the user's Kohya config
#    (fp16, AdamW8bit, UNet + text encoder), 2 epochs with a file each, inspect, grid, score.
W=$(mktemp -d)
{
  set -x
  "$PY" -m charlora make-tiny-model "$W/tiny"
  "$PY" - "$W" <<'PYEOF'
import sys, numpy as np
from pathlib import Path
from PIL import Image
folder = Path(sys.argv[1]) / "img" / "10_wwaa girl"
folder.mkdir(parents=True)
rng = np.random.default_rng(0)
for i in range(6):
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / f"{i}.caption")  # the seed config's caption_extension "".write_text("wwaa girl, smiling")
PYEOF
  timeout 180 "$PY" -m charlora train --config tests/fixtures/seed-kohya-config.json \
    --set pretrained_model_name_or_path="$W/tiny/tiny-sd15.safetensors" --set train_data_dir="$W/img" \
    --set output_dir="$W/model" --set logging_dir= --set reg_data_dir= --set max_resolution=64,64 --set min_bucket_reso=64 \
    --set epoch=2 --set sample_every_n_epochs=0 --set output_name=gpu-story
  "$PY" -m charlora lora inspect "$W/model/gpu-story.safetensors"
  timeout 120 "$PY" -m charlora grid --base-model "$W/tiny/tiny-sd15.safetensors" --lora-folder "$W/model" \
    --prompt "<lora:gpu-story:1> wwaa girl" --x "checkpoint=gpu-story-000001,gpu-story" --y cfg=7,10 \
    --size 64 --steps 8 --out "$W/grid"
  timeout 120 "$PY" -m charlora score --base-model "$W/tiny/tiny-sd15.safetensors" --lora-folder "$W/model" \
    --name gpu-story --train-data-dir "$W/img" --caption-extension .caption \
    --prompt "wwaa girl, smiling" --seeds 1-2 --scorer tiny --size 64 --steps 8 --out "$W/score"
  ls -la "$W/model" "$W/score"
  cp "$W/score"/*.json "$OUT/"
  cp "$(ls "$W"/grid/grid-*.png | grep -v -- -z0- | head -1)" "$OUT/story-grid.png"
} > "$OUT/story.log" 2>&1
echo "story exit $?"
