# The two commands a user needs: `make run` and `make test`. Everything else is for
# developers and CI.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test services build lint latency run-check compose-check ci bench

## run: install/start PostgreSQL and RabbitMQ if needed, build, start the whole pipeline
run: services build
	@scripts/run.sh

## test: install/start the services if needed, then run the whole test suite
test: services
	@scripts/test.sh

services:
	@scripts/services.sh

build:
	$(CARGO) build --release --workspace --locked

## lint: formatting and clippy, warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## latency: callback latency of 200-id batches under load, with percentiles
latency: services build
	@scripts/latency.sh

## run-check: `make run` as a user would, checked: only even ids stored, then emptied
run-check: services build
	@scripts/run-check.sh

## compose-check: validate docker-compose.yml (no Docker engine needed)
compose-check:
	docker-compose config -q

ci: lint test compose-check run-check

## bench: the pipeline under load (BENCH_SECS, BENCH_RATE, or BENCH_RATES=a,b,c for a sweep)
bench: services build
	@scripts/bench.sh
