# choreo — the two commands of the README, and a few helpers.
#   make run    install what is missing, build, serve the bundled rules
#   make test   install, build, run every test; then again under ASan+UBSan
#   make fuzz   run every libFuzzer target FUZZ_SECONDS CPU seconds (clang)
#   make faults-long  the long power-loss, I/O error and memory runs
#               (docs/reliability.md); TRIALS=200 SEED=1

BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
SERVE_FLAGS ?=
FUZZ_SECONDS ?= 60
# cmake's generated makefiles run make again: no "Entering directory" lines
MAKEFLAGS  += --no-print-directory

.PHONY: all deps build run test test-plain test-asan faults-long fuzz clean

all: build

deps:
	@./scripts/install-deps

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# run builds the daemon only (the tests and benchmarks wait for make test)
run: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target choreo
	$(BUILD)/choreo serve --rules rules --data data $(SERVE_FLAGS)

test: deps test-plain test-asan

test-plain: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 300

test-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCHOREO_SANITIZE=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)
	@cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:handle_segv=0:abort_on_error=1 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j $(JOBS) --timeout 600

faults-long: deps
	@./scripts/faults-long $(or $(TRIALS),200) $(or $(SEED),1)

# the libFuzzer targets, each run on its corpus (tests/fuzz/README.md);
# FUZZ_TARGETS="fuzz_rules ..." picks some
fuzz:
	@./scripts/install-deps fuzz
	@FUZZ_SECONDS=$(FUZZ_SECONDS) ./scripts/fuzz $(FUZZ_TARGETS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz
