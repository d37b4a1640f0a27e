# sqlc runs at an exact version through `go run`, so it needs no global install and stays out of
# go.mod: a service that imports the library never builds it.
SQLC_VERSION := v1.31.1
SQLC := go run github.com/sqlc-dev/sqlc/cmd/sqlc@$(SQLC_VERSION)
GOIMPORTS := go run golang.org/x/tools/cmd/goimports@v0.39.0 -local github.com/oauthstore/oauthstore
GO_TEST_FLAGS ?= -race -count=1 -timeout 15m

FUZZTIME ?= 10s
SOAK ?= 10m

.PHONY: help generate verify lint test test-unit test-integration test-adapters test-ha test-partitioned test-matrix test-testcontainers fuzz soak bench-janitor demo

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

generate: ## regenerate db/ from schema/ and queries/ with sqlc
	$(SQLC) generate

verify: lint ## fail when db/ differs from what sqlc generates, or go.mod files are untidy
	$(SQLC) diff
	go mod tidy -diff
	cd tests && go mod tidy -diff
	cd adapters/zitadeloidc && go mod tidy -diff
	@if go list -deps ./repository | grep -q zitadel; then echo "the library depends on zitadel"; exit 1; fi

lint: ## gofmt, goimports (standard library, others, this module) and go vet over every module
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@out=$$($(GOIMPORTS) -l $$(git ls-files '*.go' | grep -v '^db/')); if [ -n "$$out" ]; then echo "goimports would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	cd tests && go vet ./...
	cd adapters/zitadeloidc && go vet ./...

test: test-unit test-integration ## all tests: unit, then integration against real PostgreSQL

test-unit: ## tests of the library module (pure Go, and pgtemp against the server binaries)
	go test $(GO_TEST_FLAGS) ./...

test-integration: ## the integration suite in tests/ against real PostgreSQL
	cd tests && go test $(GO_TEST_FLAGS) ./...

test-adapters: ## the adapters' end-to-end tests: a zitadel/oidc provider on adapters/zitadeloidc, against real PostgreSQL
	cd adapters/zitadeloidc && go test $(GO_TEST_FLAGS) ./...

test-ha: ## failover and standbys: pgtemp's standby tests, a primary crashing under load onto a synchronous and an asynchronous standby, and reads served by a standby within a staleness bound
	go test $(GO_TEST_FLAGS) -run 'Standby' ./internal/pgtemp/
	cd tests && OAUTHSTORE_TEST_PROVIDER=binaries go test $(GO_TEST_FLAGS) -v -run '^TestHA_|^TestReplica_' .

test-partitioned: ## the integration suite with the family tables hash-partitioned by family id (16 partitions)
	cd tests && OAUTHSTORE_TEST_PARTITIONS=16 go test -count=1 -timeout 15m ./...

test-matrix: ## the integration suite against PostgreSQL 13, 14, 15, 16, 17 and 18 (server binaries from npm, cached)
	.ci/pg-matrix

test-testcontainers: ## the integration suite through testcontainers-go (needs a running Docker engine)
	.ci/postgres-image/build.sh oauthstore/postgres:15-local
	cd tests && OAUTHSTORE_TEST_PROVIDER=testcontainers OAUTHSTORE_TEST_POSTGRES_IMAGE=oauthstore/postgres:15-local \
		TESTCONTAINERS_RYUK_DISABLED=true TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1 go test -count=1 ./...

fuzz: ## run every fuzz target for FUZZTIME (default 10s) each
	@for f in $$(go test ./repository -list '^Fuzz' | grep '^Fuzz'); do \
		echo "fuzz $$f"; \
		go test ./repository -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s || exit 1; \
	done

soak: ## mixed workload at 8 workers for SOAK (default 10m): errors, live rows, memory over time
	cd tests && go run ./soak --duration $(SOAK)

bench-janitor: ## rotation p50/p99 at 8 workers with and without the janitor deleting 1,000,000 expired tokens
	cd tests && go run ./janitorbench

demo: ## issue → rotate → replay → revoked, on a throwaway PostgreSQL unless DATABASE_URL is set
	go run ./cmd/oauthstore demo
