"""Prompt and generation speed of the installed llama.cpp library on the bundled model, for comparing builds
(portable baseline against native): `python -m bench.llama_build [--reps 3]` prints JSON with tokens per second.

`--compare NAME=PYTHON=FLAGS ...` runs it under several interpreters (one virtual environment a build), in
alternating rounds, and with `--record` writes the result into docs/benchmarks.json and docs/benchmarks.md (part
`llama_build`), e.g.

    python -m bench.llama_build --rounds 3 --record \
        --compare "portable=.venv/bin/python=<flags of scripts/install_llama.sh>" \
        --compare "native=/tmp/native-venv/bin/python=-DGGML_NATIVE=ON"
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

from bench.common import ROOT

PROMPT = ("Extract company, date, address and total from this receipt as JSON. " * 12).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--model", help="a GGUF file (default: the bundled model, found through the harness)")
    args = parser.parse_args()
    import llama_cpp

    if args.model is None:
        from harness.providers.server import bundled_model_path

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


def compare(builds: list[str], rounds: int, reps: int, model: str | None) -> dict:
    """Run this script under each build's interpreter, alternating, and summarise."""
    import subprocess

    parsed = [b.split("=", 2) for b in builds]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in parsed}
    load = []
    for _ in range(rounds):
        for name, python, *_ in parsed:
            load.append(os.getloadavg()[0])
            command = [python, "-m", "bench.llama_build", "--reps", str(reps)] + (["--model", model] if model else [])
            out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    first = next(iter(runs.values()))[0]
    result = {"version": first["llama_cpp_python"], "cpu": first["cpu"], "machine": first["machine"],
              "cores": os.cpu_count(), "prompt_tokens": first["prompt_tokens"],
              "generated_tokens": first["generated_tokens"], "rounds": rounds, "reps": reps,
              "load": statistics.median(load), "builds": []}
    for name, _, *flags in parsed:
        prompt = [r["prompt_tokens_per_s"] for r in runs[name]]
        output = [r["output_tokens_per_s"] for r in runs[name]]
        result["builds"].append({"name": name, "flags": flags[0] if flags else "",
                                 "prompt": statistics.median(prompt), "prompt_range": [min(prompt), max(prompt)],
                                 "output": statistics.median(output), "output_range": [min(output), max(output)]})
    return result


if __name__ == "__main__":
    if "--compare" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--compare", action="append", required=True, metavar="NAME=PYTHON=FLAGS")
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--reps", type=int, default=7)
        parser.add_argument("--model")
        parser.add_argument("--note", default="")
        parser.add_argument("--record", action="store_true", help="write it into docs/benchmarks.{json,md}")
        options = parser.parse_args()
        summary = compare(options.compare, options.rounds, options.reps, options.model)
        summary["note"] = options.note
        print(json.dumps(summary, indent=1))
        if options.record:
            from bench.common import record_part

            record_part("llama_build", summary)
    else:
        main()
