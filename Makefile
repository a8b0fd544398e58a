# Command menu. `make help` lists the targets.
CARGO ?= cargo
FUZZ_SECONDS ?= 30

.PHONY: help build test lint fmt generate bench bench-kernel bench-violations fuzz demo check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s '	'

build: ## build every crate (debug)
	$(CARGO) build --workspace

test: ## run every test (unit, golden, real apparmor_parser and seccomp, CLI)
	$(CARGO) test --workspace

lint: ## formatting and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

generate: ## regenerate the CRDs in deploy/crds from the Rust types
	$(CARGO) run -q -p varmorctl -- crd --out deploy/crds

golden: ## refresh golden files after checking the change is intended
	UPDATE_GOLDEN=1 $(CARGO) test --workspace

bench: ## compile benchmark: every built-in rule + 1,024 raw file rules
	$(CARGO) bench -p varmor-policy --bench compile

bench-kernel: ## BPF-LSM cost of open/execve/connect in the kernel VM, as ratios (scripts/kernel-tests --bench)
	scripts/kernel-tests --bench

bench-violations: ## violation pipeline: events/s to all sinks on one core, loss at 50k/s offered
	taskset -c 0 $(CARGO) bench -p varmor-agent --bench violations

fuzz: ## run each fuzz target for FUZZ_SECONDS (needs cargo-fuzz)
	cd fuzz && for t in policy_pipeline pattern_automaton; do \
		mkdir -p corpus/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=8192 || exit 1; \
	done

demo: ## validate, compile and explain the example policies
	scripts/demo

check: lint test ## everything CI runs except the fuzzers
