"""TA-Tok encode throughput (images/s): SigLIP features alone, and full encodes to 9x9 and 27x27 tokens.

The default is the mid config (384 px, 27x27 patches, width 384, 8 layers, the real 65536x1536
codebook) at batch 4; `--real` adds the released so400m size (1152 wide, 27 layers; ~1.6 GB of
random fp32 weights) at `--real-batch`. Random weights: throughput does not depend on them.
The paired ratios against "features" show what pooling + task layer + nearest-code lookup add.
On a GPU: `--real --dtype bfloat16 --batch 32 --real-batch 32` (the lookup stays float32).
"""

from __future__ import annotations

import statistics

import torch
from common import common_args, interleaved_times, report, setup_runtime

from planx_core.tatok.model import TATok, TATokConfig


def measure(config: TATokConfig, batch: int, args, device, dtype, sync) -> None:
    model = TATok(config).to(device).eval().requires_grad_(False)
    model.encoder.to(dtype)
    model.encode_task_layer.to(dtype)
    images = torch.rand(batch, 3, 704, 1280, generator=torch.Generator().manual_seed(0)).to(device)  # video frames
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"\n{config.name}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, codebook "
        f"{config.codebook_size}x{config.bottleneck_dim}, {params:.0f} M parameters; batch {batch} of 1280x704 "
        f"frames squashed to {config.image_size}"
    )
    model.codebook()  # built once, cached like in use
    with torch.inference_mode():
        times = interleaved_times(
            {
                "features": lambda: model.features(images),
                "encode grid 9": lambda: model.encode(images, grid=9),
                "encode grid 27": lambda: model.encode(images, grid=27),
            },
            args.repeats,
            sync=sync,
        )
    report(times, "features")
    for name, samples in times.items():
        print(f"RESULT {config.name} {name}: {batch / statistics.median(samples):.2f} images/s")


def main():
    parser = common_args(__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--real", action="store_true", help="also the released so400m size")
    parser.add_argument("--real-batch", type=int, default=1)
    args = parser.parse_args()
    device, dtype, sync = setup_runtime(args)
    measure(TATokConfig.mid(), args.batch, args, device, dtype, sync)
    if args.real:
        measure(TATokConfig.so400m(), args.real_batch, args, device, dtype, sync)


if __name__ == "__main__":
    main()
