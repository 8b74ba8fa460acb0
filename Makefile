# The door to the project: `make run`, `make test`, `make lint`, `make proto`, `make bench`,
# `make install`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/gpulet/v1/*.proto)
GEN    := client

.PHONY: venv proto proto-check schema-check lint test run bench clean install

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Regenerates the committed stubs in client/gpulet/v1 from protos/.
proto: $(STAMP)
	$(BIN)/python tools/protogen.py --out $(GEN)

# Fails when the committed stubs differ from what `make proto` would write.
proto-check: $(STAMP)
	$(BIN)/python tools/protogen.py --check $(GEN)

# Fails when the committed JSON Schemas differ from what the config field specs give.
schema-check: $(STAMP)
	$(BIN)/python -m gpuletd.schema docs/schema --check

lint: $(STAMP) proto-check schema-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint

test: $(STAMP)
	$(BIN)/python -m pytest

# Runs the daemon in the foreground on its embedded defaults (built-in profiles, example
# registry). Without a GPU it auto-detects `development`; try GPULET_SIMULATED_GPUS=16384.
run: $(STAMP)
	$(BIN)/gpuletd $(ARGS)

# Every benchmark (pure-core replay, core at scale, gpuletd against the real vramd from PyPI in
# .bench/, RPC hot path), about ten minutes; the table goes to docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m bench --write docs/benchmarks.md

# Installs the systemd unit and its files (not gpuletd itself: see docs/systemd.md). DESTDIR
# stages into a directory and touches nothing else; the unit's ExecStart= becomes
# $(BINDIR)/gpuletd. Existing /etc/default/gpuletd is kept; the example config is installed as
# gpulet.example.toml, which gpuletd does not read.
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(SYSCONFDIR)/systemd/system
SYSUSERSDIR ?= $(SYSCONFDIR)/sysusers.d
TMPFILESDIR ?= $(SYSCONFDIR)/tmpfiles.d

install:
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/default $(DESTDIR)$(SYSCONFDIR)/gpulet
	sed 's|^ExecStart=/usr/local/bin/gpuletd |ExecStart=$(BINDIR)/gpuletd |' deploy/gpuletd.service \
		> $(DESTDIR)$(UNITDIR)/gpuletd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/gpuletd.service
	grep -q '^ExecStart=$(BINDIR)/gpuletd ' $(DESTDIR)$(UNITDIR)/gpuletd.service
	install -D -m 0644 deploy/gpulet.sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/gpulet.conf
	install -D -m 0644 deploy/gpulet.tmpfiles.conf $(DESTDIR)$(TMPFILESDIR)/gpulet.conf
	test -e $(DESTDIR)$(SYSCONFDIR)/default/gpuletd || \
		install -m 0644 deploy/gpuletd.env $(DESTDIR)$(SYSCONFDIR)/default/gpuletd
	install -m 0644 deploy/gpulet.example.toml $(DESTDIR)$(SYSCONFDIR)/gpulet/gpulet.example.toml
	@test -n "$(DESTDIR)" || echo "next: systemd-sysusers; systemd-tmpfiles --create;" \
		"systemctl daemon-reload; systemctl enable --now gpuletd"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
