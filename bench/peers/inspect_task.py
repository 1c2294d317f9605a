"""Inspect AI's side of `make bench PEERS=1`: the generated cases, one `generate()` each, an exact-match scorer.

Run by bench/peers/__init__.py as
`inspect eval bench/peers/inspect_task.py -T cases=CASES.jsonl --model openai-api/bench/bench-model
--max-connections 64 --max-tokens 20 --temperature 0` with BENCH_BASE_URL pointing at the zero-latency server.
Each line of CASES.jsonl: {"id", "input" (the rendered user message), "target" (the expected answer)}.
Inspect does not stream, so the server answers it with its non-streamed JSON body; it caches nothing unless asked.
"""

from inspect_ai import Task, task
from inspect_ai.dataset import json_dataset
from inspect_ai.scorer import exact
from inspect_ai.solver import generate


@task
def bench(cases: str = "cases.jsonl") -> Task:
    return Task(dataset=json_dataset(cases), solver=generate(), scorer=exact())
