# Cordon: the two set-up commands are `make up` and `make test` (see README.md).

SHELL := /bin/bash
# Builds are shared across clones of this repository on one machine (CI clones afresh each
# run); set CARGO_TARGET_DIR to build elsewhere.
CARGO_TARGET_DIR ?= $(HOME)/.cache/cordon/target
export CARGO_TARGET_DIR
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release
# Sandbox images (the default one, and for make test the browser one, are built here once and
# rebuilt only when their image file changes), shared by make up, make test and every clone on
# this machine.
CORDON_IMAGES ?= $(HOME)/.cache/cordon/images
export CORDON_IMAGES
export CORDON_TEST_IMAGES ?= $(CORDON_IMAGES)

.PHONY: up test fuzz fuzz-smoke dashboard-screenshots bench bench-policy bench-instructions bench-tools bench-local bench-browser bench-soak deps build fmt lint unit policy-tests clean

deps:
	@scripts/install-deps.sh

# The sandbox agent is also built statically linked (glibc, crt-static), so it runs on every
# image whatever its libc; the controller picks that build when it is there
# (docs/SANDBOXES.md, "What Cordon adds to every image"). The flag is for that target only:
# build scripts and proc macros stay dynamic.
STATIC_AGENT = CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
	$(CARGO) build --locked -p cordon-sandbox-agent --bin cordon-sandbox-agent \
	--target x86_64-unknown-linux-gnu

build: deps
	$(CARGO) build --release --workspace --bins
	$(STATIC_AGENT) --release

# Starts the gateway on examples/cordon.toml in the foreground and prints curl commands that
# show an allowed and a denied request.
up: build
	@scripts/up.sh

# Order matters for CI, which reads the last summary line: the test runner's summary comes last.
test: deps fmt lint policy-tests fuzz-smoke unit

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# nextest runs each test in its own process (a panic or a leaked thread cannot hide another
# test's result); doctests are nextest's blind spot, so they run first with cargo test.
# The binaries first: the escape suite runs the proxy and the sandbox agent as built programs.
unit:
	$(CARGO) build --workspace --locked --bins
	$(STATIC_AGENT)
	$(CARGO_TARGET_DIR)/debug/cordon-controller image build default \
		--from-file images/default.toml --store $(CORDON_IMAGES)
	$(CARGO_TARGET_DIR)/debug/cordon-controller image build browser \
		--from-file examples/images/browser.toml --store $(CORDON_IMAGES)
	$(CARGO) test --workspace --locked --doc
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi

# Every fuzz target (fuzz/, docs/SECURITY.md "Fuzzing") for FUZZ_SECONDS each (default 60),
# release with AddressSanitizer; the corpus grows in ~/.cache/cordon/fuzz across runs.
FUZZ_SECONDS ?= 60
fuzz: deps
	scripts/fuzz.sh $(FUZZ_SECONDS)

# A short run of every fuzz target, part of make test: a dev build (overflow checks, no
# sanitizer) and 10 s each on top of the committed seeds and the corpus so far.
fuzz-smoke:
	scripts/fuzz.sh --smoke 10

# The example bundles' own Rego tests, run the way users run them.
policy-tests:
	$(CARGO) build --locked -p cordon-policy --bin cordon-policy
	@for b in examples/policies/*/; do \
		echo "== cordon-policy test $$b"; \
		$(CARGO_TARGET_DIR)/debug/cordon-policy test "$$b" || exit 1; \
	done

# Cordon side by side with direct, Squid ssl-bump and mitmdump (docs/BENCHMARKS.md); installs
# the peers itself (scripts/bench-deps.sh). About 5 minutes on 2 cores once built; a cold
# release build adds about 8.
bench: deps
	scripts/bench.sh

# docs/dashboard/*.png, the pictures in docs/DASHBOARD.md: the dashboard's browser test (root:
# it runs the demo session in a sandbox) with CORDON_DASHBOARD_SCREENSHOTS set.
dashboard-screenshots: deps
	$(CARGO) build --workspace --locked --bins
	$(STATIC_AGENT)
	$(CARGO_TARGET_DIR)/debug/cordon-controller image build default \
		--from-file images/default.toml --store $(CORDON_IMAGES)
	CORDON_DASHBOARD_SCREENSHOTS=$(CURDIR)/docs/dashboard $(CARGO) test --locked \
		-p cordon-controller --test dashboard_browser -- --test-threads=1

# The policy engine's own micro-benchmark (criterion).
bench-policy: deps
	$(CARGO) bench -p cordon-policy --bench decision

# User-space instructions per proxied request under callgrind: a noise-free A/B measure of a
# hot-path change (CORDON_BIN=<binary> to measure another build).
bench-instructions: deps
	scripts/bench-instructions.sh

# Custom tool call overhead (docs/TOOLS.md, docs/BENCHMARKS.md "Custom tools"); root.
bench-tools: build
	$(CARGO_TARGET_DIR)/release/cordon-controller image build default --from-file images/default.toml \
		--store $(HOME)/.cache/cordon/images
	$(CARGO_TARGET_DIR)/release/cordon-bench tools --doc docs/BENCHMARKS.md

# The local agent loop's own time per model turn (docs/OPEN-MODELS.md, docs/BENCHMARKS.md
# "Local agent loop"); root.
bench-local: build
	$(CARGO_TARGET_DIR)/release/cordon-controller image build default --from-file images/default.toml \
		--store $(HOME)/.cache/cordon/images
	$(CARGO_TARGET_DIR)/release/cordon-bench local-loop --doc docs/BENCHMARKS.md

# The session's browser (docs/BROWSER.md, docs/BENCHMARKS.md "The session's browser"); root.
bench-browser: build
	$(CARGO_TARGET_DIR)/release/cordon-controller image build browser \
		--from-file examples/images/browser.toml --store $(HOME)/.cache/cordon/images
	$(CARGO_TARGET_DIR)/release/cordon-bench browser --doc docs/BENCHMARKS.md

# The leak soak (issue 19; docs/BENCHMARKS.md "Soak"): 200 sessions with churn, mixed traffic at
# --rate for 10 minutes; fds, memory, connections, sessions and nftables judged. Proxy on CPU 1,
# load and upstream on CPU 0. SOAK_RATE=<req/s> to aim elsewhere.
SOAK_RATE ?= 10000
bench-soak: build
	taskset -c 0 $(BIN)/cordon-bench soak --rate $(SOAK_RATE) --doc docs/BENCHMARKS.md

clean:
	$(CARGO) clean
