"""`make bench`: is the harness ever the bottleneck? A package, run from the repository root as modules:

- `python -m bench.run`: every part side by side (dispatch, latency, real, storage, cache, report, memory, and
  peers with `--peers`), results in docs/benchmarks.json and docs/benchmarks.md;
- `python -m bench.report_scale`, `python -m bench.llama_build`, `python -m bench.loop_lag`: one measurement alone.

`common` holds what they share (targets, summaries, the machine, writing the results); `servers` the loopback
model servers, `clients` the raw aiohttp client, `workload` the generated suites, `report_doc` the write-up,
`peers` Inspect AI and promptfoo. No module imports `run`, the orchestrator on top.
"""
