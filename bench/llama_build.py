"""Prompt and generation speed of the installed llama.cpp library on the bundled model, for comparing builds
(portable baseline against native): `python bench/llama_build.py [--reps 3]` prints JSON with tokens per second.

Run it once under each build (e.g. two virtual environments); docs/benchmarks.md records the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = ("Extract company, date, address and total from this receipt as JSON. " * 12).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--model", help="a GGUF file (default: the bundled model, found through the harness)")
    args = parser.parse_args()
    import llama_cpp

    if args.model is None:
        from harness.server import bundled_model_path

        args.model = str(bundled_model_path())
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=2048, n_threads=os.cpu_count() or 1,
                          verbose=False, seed=0)
    prompt = llm.tokenize(PROMPT.encode())
    prompt_rates, gen_rates = [], []
    for _ in range(args.reps):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prompt_rates.append(len(prompt) / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(args.tokens):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        gen_rates.append(args.tokens / (time.perf_counter() - start))
    print(json.dumps({
        "llama_cpp_python": llama_cpp.__version__, "library": llama_cpp.__file__, "machine": platform.machine(),
        "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), platform.processor()),
        "prompt_tokens": len(prompt), "generated_tokens": args.tokens,
        "prompt_tokens_per_s": round(statistics.median(prompt_rates), 1),
        "prompt_min_max": [round(min(prompt_rates), 1), round(max(prompt_rates), 1)],
        "output_tokens_per_s": round(statistics.median(gen_rates), 1),
        "output_min_max": [round(min(gen_rates), 1), round(max(gen_rates), 1)],
    }))


if __name__ == "__main__":
    main()
