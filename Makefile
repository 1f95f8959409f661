# The two commands a user needs: `make run` and `make test`. Everything else is for
# developers and CI.
SHELL := /bin/bash
CARGO ?= cargo
FUZZ_SECS ?= 60

.PHONY: run stop test unit services build build-harness lint latency run-check compose-check ci bench chaos cluster-chaos cluster-bench pg-failover alerts-check browser-check status-screenshot fuzz api-fuzz retry-check expiry-bench expiry-hold-check fresh-check memory-check

## run: install/start PostgreSQL and RabbitMQ if needed, build, start the whole pipeline
run: services build
	@scripts/run.sh

## stop: stop a running `make run` (from another terminal), as Ctrl-C would
stop:
	@scripts/stop.sh

## test: install/start the services if needed, then run the whole test suite (and services.sh's own paths, against stand-ins)
test: services
	@scripts/test-services.sh
	@scripts/test.sh

## unit: the tests that need no PostgreSQL or RabbitMQ (the crates' own, and the binaries' command-line and log-format checks)
unit:
	$(CARGO) test --workspace --locked --lib --bins
	$(CARGO) test --locked -p e2e --test it -- config:: logs::

services:
	@scripts/services.sh

## build: the release binaries `make run` starts (the product, lastseenctl and the tester)
build:
	$(CARGO) build --release --locked -p producer -p consumer -p sweeper -p lastseenctl -p tester

## build-harness: the release harness (bench, chaos, expiry-bench, load) on top of `build`
build-harness: build
	$(CARGO) build --release --locked -p harness

## lint: formatting, clippy with warnings as errors, no module dependency cycle inside any crate, the README's webhook verification example
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	python3 scripts/module_cycles.py .
	python3 scripts/check_webhook_example.py README.md

## memory-check: the producer's memory through 100,000 callbacks to a broker 0.5 s away each way, then drained (make test runs it with 10,000)
memory-check: services
	MEMORY_TEST_CALLBACKS=100000 $(CARGO) test --locked -p e2e --test it producer_memory_stays -- --nocapture

## latency: callback latency of 200-id batches under load, with percentiles
latency: services build-harness
	@scripts/latency.sh

## run-check: `make run` as a user would, checked: only even ids stored, then emptied
run-check: services build
	@scripts/run-check.sh

## compose-check: validate docker-compose.yml and its TLS and cluster variants (no Docker engine needed)
compose-check:
	docker-compose config -q
	docker-compose -f docker-compose.yml -f docker-compose.tls.yml config -q
	docker-compose -f docker-compose.yml -f docker-compose.cluster.yml config -q

ci: lint test compose-check run-check

## bench: the pipeline under load (BENCH_SECS, BENCH_RATE, or BENCH_RATES=a,b,c for a sweep)
bench: services build-harness
	@scripts/bench.sh

## expiry-bench: 100,000 objects expiring together with two sweepers (one killed -9), and 10,000 expiries/s: lag and duplicates
expiry-bench: services build-harness
	@$(CARGO) run --release --locked -q -p harness -- expiry-bench

## expiry-hold-check: 1,000 objects every 5 s, TTL 30 s, through 60 s outages (consumers stopped, status failing; PostgreSQL 45 s): 0 false expiries
expiry-hold-check: services build
	HOLD_OBJECTS=1000 HOLD_PERIOD_SECS=5 HOLD_TTL_SECS=30 HOLD_OUTAGE_SECS=60 \
		$(CARGO) test --locked -q -p e2e --test it expiry_hold::objects_are_not_expired_while_the_ -- --nocapture --test-threads=1
	HOLD_OBJECTS=1000 HOLD_PERIOD_SECS=5 HOLD_TTL_SECS=30 HOLD_OUTAGE_SECS=45 \
		$(CARGO) test --locked -q -p e2e --test it expiry_hold::objects_are_not_expired_while_postgres_is_away -- --nocapture

## retry-check: status service failing everything: growing retry delays, dead letters with reason after MAX_ATTEMPTS, low consumer CPU
retry-check: services build
	@scripts/retry-check.sh

## chaos: the pipeline under load and faults (kill -9, RabbitMQ/PostgreSQL stopped); 0 lost ids (CHAOS_RUNS=n)
chaos: services build-harness
	@scripts/chaos.sh

## cluster-chaos: a 3-node RabbitMQ cluster (own namespaces): node killed, cut off, rolling restart; 0 lost ids (CLUSTER_RUNS=n)
cluster-chaos: services build-harness
	@scripts/chaos.sh cluster-chaos

## pg-failover: a 2-node PostgreSQL cluster (Patroni, etcd, HAProxy; synchronous): the primary killed -9 under load, twice; 0 lost ids (PG_FAILOVER_RUNS=n)
pg-failover: services build-harness
	@scripts/chaos.sh pg-failover

## cluster-bench: ids/s and CPU per id with 1, 2 and 3 consumers against a 3-node RabbitMQ cluster (as root)
cluster-bench: services build-harness
	@scripts/cluster-bench.sh

## alerts-check: promtool check rules and promtool test rules on deploy/prometheus/alerts.yml (installs promtool if missing)
alerts-check:
	@scripts/alerts-check.sh

## browser-check: the status page in headless chromium via chromedriver (installs both if missing): it loads with nothing from outside, its numbers are the database's, events arrive live, the search shows an object's history
browser-check: services
	@scripts/browser-check.sh

## status-screenshot: docs/status-page.png from the status page of a running `make run` (object 42 searched)
status-screenshot:
	@scripts/status-screenshot.sh

## fuzz: fuzz the callback body parser (cargo-fuzz, libFuzzer) for FUZZ_SECS seconds (default 60)
fuzz:
	@FUZZ_SECS=$(FUZZ_SECS) scripts/fuzz.sh

## api-fuzz: requests generated from /openapi.json (schemathesis) against the release producer: no 5xx, answers as documented, nothing published for a rejected request
api-fuzz: services
	@scripts/api-fuzz.sh

## fresh-check: the README's two commands on a fresh Debian 12 (debootstrap chroot, offline network namespace); root, ~30 min
fresh-check:
	@scripts/fresh-check.sh
