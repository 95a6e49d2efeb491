"""`python -m server.plan`: how a preset fits on GPUs, split by `device_map` (server/model/plan.py,
the default) or by tensor parallelism (`--tensor-parallel N`, server/model/tp_plan.py), with the
memory of LoRA adapters (server/model/adapter_plan.py). The command line lives here, above the three
planners, so none of them imports another's command line."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from server.model import plan as sharding
from server.model.adapter_plan import add_arguments, from_arguments
from server.model.plan import DTYPE_BYTES, PlanError, plan
from server.model.tp_plan import plan_tensor_parallel
from server.presets import PresetError, list_presets, load_preset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server.plan", description=sharding.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", required=True, help=f"one of: {', '.join(list_presets())}")
    parser.add_argument(
        "--gpus", help="e.g. 2x24GiB, 1x80GiB or 24GiB,48GiB (default: the preset's resources)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), help="default: the preset's dtype")
    parser.add_argument("--quantization", choices=["none", "int8", "int4", "fp8"],
                        help="weight-only quantization (QUANTIZATION); default: the preset's")
    parser.add_argument("--reserve", default="1GiB", help="per GPU, kept for CUDA context and activations")
    parser.add_argument("--min-tokens", type=int, default=None,
                        help="fail unless this many KV-cache tokens fit (default: min(context, 2048))")
    parser.add_argument("--tensor-parallel", type=int, metavar="N",
                        help="split every layer over N GPUs (transformers' tp_plan) instead of placing whole "
                             "layers; --gpus is then N GPUs, or one size for each (default: the preset's)")
    add_arguments(parser)
    parser.add_argument("--show-device-map", action="store_true",
                        help="the device map (with --tensor-parallel: the tp_plan's styles)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        preset = load_preset(args.preset)
        common: dict[str, Any] = dict(dtype=args.dtype, reserve=args.reserve, min_tokens=args.min_tokens,
                      quantization=args.quantization)
        if args.tensor_parallel is not None:
            if args.adapters:
                raise PlanError("--adapters is not planned with --tensor-parallel yet")
            split = plan_tensor_parallel(preset, args.tensor_parallel, args.gpus, **common)
            print(split.render())
            placement = [f"{name} -> {style}" for name, style in split.tp_plan.items()]
        else:
            gpus = args.gpus or f"{preset.resources.gpus}x{preset.resources.gpu_memory}"
            result = plan(preset, gpus, **common, **from_arguments(args))
            print(result.render())
            placement = [f"{name or '(model)'} -> cuda:{d}" for name, d in result.device_map.items()]
    except (PlanError, PresetError) as exc:
        print(f"plan failed: {exc}", file=sys.stderr)
        return 2
    if args.show_device_map:
        print("\n".join(f"  {line}" for line in placement))
    return 0


if __name__ == "__main__":
    sys.exit(main())
