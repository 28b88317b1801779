# Entry points for newcomers and CI. See README.md.
#   make run    install what is missing, build, start a single-node server on 127.0.0.1
#   make test   install what is missing, build (normal + ASan/UBSan + fuzz), run every test
#   make fuzz   run every libFuzzer target longer (FUZZ_SECONDS each, default 300)
#   make mutants  apply each bug of tests/mutants/ to a copy and check a test catches it
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build build-asan build-fuzz fuzz run test unit integration clean mutants

all: build

deps:
	@bash deploy/install-deps.sh

build: deps
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXMPP_WERROR=ON >/dev/null
	@cmake --build build -j $(JOBS)

build-asan: deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DXMPP_SANITIZE=ON -DXMPP_WERROR=ON >/dev/null
	@cmake --build build-asan -j $(JOBS)

# libFuzzer targets (tests/fuzz/): clang, ASan+UBSan, coverage-instrumented libraries.
FUZZ_CC ?= clang-14
build-fuzz: deps
	@CC=$(FUZZ_CC) cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXMPP_FUZZ=ON -DXMPP_SANITIZE=ON -DXMPP_WERROR=ON >/dev/null
	@cmake --build build-fuzz -j $(JOBS)

FUZZ_SECONDS ?= 300
fuzz: build-fuzz
	@bash tests/fuzz/run.sh -s $(FUZZ_SECONDS) $(FUZZ_TARGETS)

mutants: deps
	@bash tests/mutants/run.sh $(MUTANTS)

run: build
	@bash deploy/run.sh

test: build build-asan build-fuzz
	@bash tests/run_all.sh

clean:
	rm -rf build build-asan build-fuzz
