# Entry points for newcomers and CI. See README.md.
#   make run    install what is missing, build, start a single-node server on 127.0.0.1
#   make test   install what is missing, build (normal + ASan/UBSan), run every test
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build build-asan run test unit integration clean

all: build

deps:
	@bash deploy/install-deps.sh

build: deps
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXMPP_WERROR=ON >/dev/null
	@cmake --build build -j $(JOBS)

build-asan: deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DXMPP_SANITIZE=ON -DXMPP_WERROR=ON >/dev/null
	@cmake --build build-asan -j $(JOBS)

run: build
	@bash deploy/run.sh

test: build build-asan
	@bash tests/run_all.sh

clean:
	rm -rf build build-asan
