# Two commands matter: `make run` (local Kafka + collector) and `make test` (installs, lints, tests).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:4789
GENEVE_LISTEN ?= 127.0.0.1:6081
HEALTH ?= 127.0.0.1:8080
TOPIC ?= flows
KAFKA ?= 127.0.0.1:9092
CONFIG ?= deploy/examples/collector.toml

.PHONY: install annotate system-deps lint lint-deploy format test run replay-demo kafka kafka-stop tail bench bench-locust lock bundle clean

BUILT := $(VENV)/.built
# The compiled modules (collector/build.py: COMPILED_MODULES), each typed by the .pxd beside it:
# an edit of either rebuilds them (a stale extension module would shadow the edited .py).
PXD := $(wildcard collector/*.pxd collector/*/*.pxd collector/*/*/*.pxd)
COMPILED_SOURCES := $(PXD) $(patsubst %.pxd,%.py,$(PXD))

install: $(BUILT)

# Everything in .venv comes from requirements-dev.lock (exact versions, every file's hash), so an
# upstream release never changes what `make test` runs.
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	touch $(STAMP)

# The project, editable, without build isolation (the locked setuptools, wheel and Cython):
# setup.py compiles the hot modules in place when a C compiler is there, and the last line says
# which build runs (a pure-Python one loudly). COLLECTOR_BUILD_PURE=1 skips the compilation.
$(BUILT): $(STAMP) setup.py collector/build.py $(COMPILED_SOURCES)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(PY) -m collector.build
	touch $(BUILT)

# tshark decodes the golden captures in the tests; installed from the distribution when missing.
system-deps:
	@command -v tshark >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null; \
	  else echo "tshark is missing: install it (Debian/Ubuntu: apt-get install tshark)"; exit 1; fi; }
	@# nfdump (nfcapd, the IPFIX collector the export tests send to) and protoc (the goflow2 tests
	@# build the FlowMessage reader from schema/goflow2-flow.proto)
	@{ command -v nfcapd && command -v protoc; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nfdump protobuf-compiler >/dev/null; \
	  else echo "nfdump and protoc are missing: apt-get install nfdump protobuf-compiler"; exit 1; fi; }
	@# nftables and conntrack: the NLB stand-in of tests/test_fleet.py and make fleet-demo (root only)
	@{ command -v nft && command -v conntrack; } >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables conntrack >/dev/null; }
	@# shellcheck: tests/test_deploy_stack.py lints the boot scripts and the stack's user data
	@command -v shellcheck >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; \
	  else echo "shellcheck is missing: apt-get install shellcheck"; exit 1; fi; }

# promtool checks and unit-tests the Prometheus alert rules; taken from the distribution's prometheus
# package without installing it (no service is started)
PROMTOOL := .cache/promtool/usr/bin/promtool
$(PROMTOOL):
	@mkdir -p .cache/promtool/deb
	@cd .cache/promtool/deb && { apt-get download -qq prometheus 2>/dev/null || \
	  { apt-get update -qq && apt-get download -qq prometheus; }; }
	dpkg -x .cache/promtool/deb/prometheus_*.deb .cache/promtool
	@rm -rf .cache/promtool/deb

lint: install
	$(VENV)/bin/ruff format --check collector tests bench setup.py
	$(VENV)/bin/ruff check collector tests bench setup.py
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format collector tests bench
	$(VENV)/bin/ruff check --fix collector tests bench

# checkov lives in its own venv (its pins clash with ours); --skip-download keeps it offline.
CHECKOV := .cache/checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .cache/checkov
	.cache/checkov/bin/pip install --quiet 'checkov>=3.2,<4'

lint-deploy: install $(CHECKOV)
	$(VENV)/bin/cfn-lint --include-checks I -- deploy/cloudformation/*.yaml
	BC_SKIP_MAPPING=TRUE $(CHECKOV) --quiet --compact --skip-download --framework cloudformation \
	  $(addprefix -f ,$(wildcard deploy/cloudformation/*.yaml))
	BC_SKIP_MAPPING=TRUE $(CHECKOV) --quiet --compact --skip-download --framework dockerfile \
	  -f deploy/Dockerfile

# The two locks, from pyproject.toml, every file pinned by hash; only `make lock` changes them.
# requirements-dev.lock: what .venv runs (runtime, aws, bench and dev extras, and the build
# requirements). deploy/requirements.lock: what the stack installs (runtime, aws and msk-iam extras),
# resolved under the dev lock, so every package both hold has one version: the tested one.
# Existing pins are kept; refresh them with `make lock LOCK_FLAGS=--upgrade`.
# tests/test_deploy_lock.py checks each lock against pyproject and the two against each other.
PIP_COMPILE := .cache/piptools/bin/pip-compile
$(PIP_COMPILE):
	$(PYTHON) -m venv .cache/piptools
	.cache/piptools/bin/pip install --quiet 'pip-tools>=7.4,<8'

LOCK_COMMON := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
  --no-emit-find-links
lock: $(PIP_COMPILE)
	env -u PIP_FIND_LINKS $(PIP_COMPILE) $(LOCK_COMMON) $(LOCK_FLAGS) --all-build-deps \
	  --extra aws --extra bench --extra dev --output-file requirements-dev.lock pyproject.toml
	env -u PIP_FIND_LINKS $(PIP_COMPILE) $(LOCK_COMMON) $(LOCK_FLAGS) -c requirements-dev.lock \
	  --extra aws --extra msk-iam --output-file deploy/requirements.lock pyproject.toml

# dist/collector-bundle-VERSION.tar.gz for the CloudFormation stack (deploy/README.md, Bundle).
bundle: install
	deploy/image/build-bundle

# The whole suite against the build `make install` made (compiled where a C compiler is: then
# tests/test_build.py insists on it), then the core tests against the pure-Python modules (the
# broker tests among them once: the sink and broker code is the same in both builds).
REQUIRE_COMPILED := $(shell command -v cc >/dev/null 2>&1 && echo 1)
PURE_TESTS := tests/test_build.py tests/test_flows.py \
  tests/test_golden.py tests/test_fuzz.py tests/test_filter.py tests/test_sessions.py \
  tests/test_records.py tests/test_encode_paths.py tests/test_replay.py tests/test_ingest_paths.py \
  tests/test_rejected_records.py tests/test_geneve.py tests/test_geneve_pipeline.py \
  tests/test_geneve_replay.py tests/test_partitioner.py
test: install system-deps $(PROMTOOL) lint lint-deploy
	COLLECTOR_REQUIRE_COMPILED=$(REQUIRE_COMPILED) $(PY) -m pytest -q --durations=15
	COLLECTOR_PURE_PYTHON=1 $(PY) -m pytest -q -m 'not kafka' $(wildcard $(PURE_TESTS))

# Cython's annotated HTML of each compiled module (collector/**/*.html): the C each line became,
# yellow where it calls into the interpreter (ARCHITECTURE.md, "Compiled modules").
annotate: install
	$(VENV)/bin/cython -3 -a -X annotation_typing=False $(patsubst %.pxd,%.py,$(PXD))
	find collector -name '*.c' -newer $(BUILT) -delete

kafka:
	deploy/kafka/kafkactl start

kafka-stop:
	deploy/kafka/kafkactl stop

run: install kafka
	$(PY) -m collector run --listen $(LISTEN) --geneve-listen $(GENEVE_LISTEN) --health $(HEALTH) \
	  --sink kafka://$(KAFKA)/$(TOPIC)

replay-demo: install
	$(PY) -m collector replay tests/data/demo.pcap

tail: install
	$(PY) -m collector tail kafka://$(KAFKA)/$(TOPIC) --from-beginning

bench: install
	$(PY) -m bench.run_all

bench-locust: install
	$(PY) -m bench.locust_headless

# The fleet on one machine (as root: network namespaces, nftables): every scenario of
# docs/fleet.md, the figures, and the per-collector load plot shown in the README.
.PHONY: fleet-demo
fleet-demo: install system-deps
	$(PY) -m bench.fleet --plot docs/fleet-load.png

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build
	find collector \( -name '*.so' -o -name '*.c' -o -name '*.html' \) -delete
