"""`python -m bench.kernels`: the CPU linear-kernel table of a model, `F.linear` vs oneDNN.

For every distinct linear weight shape and each row bucket the server uses (`CPU_LINEAR=measure`
times the same table at start-up to choose a kernel per row count): best-of-N milliseconds per
call of each kernel and the winner. Each layer is timed alone with its weight hot in cache, which
favours `F.linear` on small weights; the kernel check of `make bench` measures the running model.
Prints a table and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

from server.model.cpu_kernels import kernel_table, onednn_works
from tools.local_server import MODEL_DIR, ROOT


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--reps", type=int, default=10, help="calls per measurement (the best is kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if not onednn_works():
        raise SystemExit("this torch build has no usable oneDNN linear op")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    table = kernel_table(model, reps=args.reps)
    print(f"{'layer (out x in)':>18} | {'rows':>4} | {'F.linear ms':>11} | {'oneDNN ms':>9} | faster")
    rows = []
    for (out_f, in_f), timings in table.items():
        for t in timings:
            faster = "oneDNN" if t.onednn_wins else "F.linear"
            print(f"{out_f:>8} x {in_f:<7} | {t.rows:>4} | {t.torch_ms:>11.3f} | {t.onednn_ms:>9.3f} | "
                  f"{faster}")
            rows.append(t.__dict__)
    out = ROOT / "bench" / "results" / f"kernels-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "table": rows},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
