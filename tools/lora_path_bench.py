"""How much a rank-r LoRA adds to a training step, applied two ways (issue 16).

For every layer Kohya's LoRA wraps in SD 1.5 (UNet attention, feed-forward and projections, text
encoder attention and MLP), at the token counts of a given resolution, times forward + backward of:

- base:   the frozen layer alone (its input needs a gradient, as inside the network);
- side:   base(x) + up(down(x)) * scale, as peft's and Kohya's LoRA layers compute it;
- merged: one linear with W + scale * up @ down, the weight built each step (the alternative).

and prints CPU milliseconds per step summed over the layers. With `--inference`: forward only, batch 2
(a CFG step of the grid), where a merged weight is built once per grid row, so it costs what the base does. Run:

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/lora_path_bench.py --resolution 256 --rank 128
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/lora_path_bench.py --resolution 512 --rank 128 --inference
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/lora_path_bench.py --resolution 512 --whole-unet

`--whole-unet` times a whole denoising step of SD 1.5's UNet (random weights from the carried config, batch
2 as with CFG) without LoRA, with a rank-r LoRA as peft's side path, and with it merged, in alternating rounds.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def layers(resolution: int) -> list[tuple[str, int, int, int, int]]:
    """(name, tokens, in, out, count) of the Linear-shaped layers Kohya's LoRA wraps in SD 1.5."""
    side = resolution // 8
    rows = []
    # (channels, latent side, transformer blocks): 2 down + 3 up per level, one in the middle
    for channels, size, blocks in ((320, side, 5), (640, side // 2, 5), (1280, side // 4, 5), (1280, side // 8, 1)):
        tokens = size * size
        rows += [
            (f"unet {channels} self/out/proj x{blocks}", tokens, channels, channels, 8 * blocks),
            (f"unet {channels} cross k,v x{blocks}", 77, 768, channels, 2 * blocks),
            (f"unet {channels} ff in x{blocks}", tokens, channels, 8 * channels, blocks),
            (f"unet {channels} ff out x{blocks}", tokens, 4 * channels, channels, blocks),
        ]
    rows += [
        ("text encoder attention x12", 77, 768, 768, 4 * 12),
        ("text encoder mlp fc1 x12", 77, 768, 3072, 12),
        ("text encoder mlp fc2 x12", 77, 3072, 768, 12),
    ]
    return rows


def cpu_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats * 1000


def measure(tokens, d_in, d_out, rank, repeats, inference=False):
    weight = torch.randn(d_out, d_in) / d_in**0.5
    down = (torch.randn(rank, d_in) / d_in**0.5).requires_grad_()
    up = (torch.randn(d_out, rank) * 0.01).requires_grad_()
    scale = 1.0 / rank
    x = torch.randn(1, tokens, d_in, requires_grad=True)
    grad = torch.randn(1, tokens, d_out)
    if inference:
        x2 = torch.randn(2, tokens, d_in)
        with torch.no_grad():
            plain = cpu_ms(lambda: F.linear(x2, weight), repeats)  # the merged weight, built once per row
            return [plain, cpu_ms(lambda: F.linear(x2, weight) + F.linear(F.linear(x2, down), up) * scale,
                                  repeats), plain]

    def base():
        F.linear(x, weight).backward(grad)

    def side():
        (F.linear(x, weight) + F.linear(F.linear(x, down), up) * scale).backward(grad)

    def merged():
        F.linear(x, weight + (up @ down) * scale).backward(grad)

    return [cpu_ms(fn, repeats) for fn in (base, side, merged)]


def whole_unet(resolution: int, rank: int, rounds: int = 3) -> None:
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from charlora.lora.network import LoRANetwork, LoRASettings
    from charlora.models.loading import SD15_CONFIG_DIR

    torch.manual_seed(0)
    config = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text())
    unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
    side = resolution // 8
    x, t, context = torch.randn(2, 4, side, side), torch.tensor([500, 500]), torch.randn(2, 77, 768)
    network = LoRANetwork(unet, None, LoRASettings(rank=rank, alpha=1.0))
    for parameter in network.parameters():
        parameter.data.normal_(std=0.02)
    layers = [layer for _, layer in network.layers.values()]

    def use(mode: str) -> None:
        for layer in layers:
            if layer.merged:
                layer.unmerge()
            layer.enable_adapters(mode != "none")
            if mode == "merged":
                layer.merge()

    with torch.no_grad():
        for number in range(rounds):
            for mode in ("none", "side", "merged") if number % 2 == 0 else ("merged", "side", "none"):
                use(mode)
                unet(x, t, context)  # warm-up
                start = time.process_time()
                for _ in range(2):
                    unet(x, t, context)
                print(f"round {number + 1} {mode:7} {(time.process_time() - start) / 2:6.2f} CPU s per step "
                      f"(UNet, batch 2, {resolution} px, rank {rank})", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inference", action="store_true", help="forward only, batch 2 (a grid's CFG step)")
    parser.add_argument("--whole-unet", action="store_true", help="a whole UNet step: no LoRA / side path / merged")
    args = parser.parse_args()
    if args.whole_unet:
        whole_unet(args.resolution, args.rank)
        return
    torch.manual_seed(0)
    total = [0.0, 0.0, 0.0]
    best = 0.0
    print(f"{'layer':36} {'tokens':>6} {'in':>5} {'out':>5} {'n':>3} | base ms  side +ms  merged +ms (per step)")
    for name, tokens, d_in, d_out, count in layers(args.resolution):
        base, side, merged = (t * count for t in measure(tokens, d_in, d_out, args.rank, args.repeats,
                                                                args.inference))
        total = [total[0] + base, total[1] + side, total[2] + merged]
        best += min(side, merged) - base
        print(f"{name:36} {tokens:6} {d_in:5} {d_out:5} {count:3} | {base:7.1f} {side - base:9.1f} "
              f"{merged - base:11.1f}")
    print(f"{'all LoRA layers':58} | {total[0]:7.1f} {total[1] - total[0]:9.1f} {total[2] - total[0]:11.1f}")
    print(f"LoRA overhead over the frozen layers: side path {total[1] - total[0]:.0f} ms, merged weight "
          f"{total[2] - total[0]:.0f} ms, best of the two per layer "
          f"{best:.0f} ms per step (rank {args.rank}, "
          f"{args.resolution} px, {torch.get_num_threads()} threads"
          + (", inference: forward only, batch 2, merged once per row" if args.inference else "") + ")")


if __name__ == "__main__":
    main()
