# retired — top-level build.  `make check` and `make demo` are the two
# commands a fresh Debian 12 machine needs; both install what is missing.

VERSION    := 0.1.0
PREFIX     ?= /usr/local
DESTDIR    ?=
LIBEXECDIR ?= $(PREFIX)/libexec
# retirectl-live, which retirectl runs for plan --live.
PKGLIBEXECDIR = $(LIBEXECDIR)/retired
BUILD      ?= build
CC         ?= cc
PYTHON     := /usr/bin/python3

PKGS       := libcurl libconfig sqlite3 libsystemd libcrypto
# retirectl's own: the API client's two (and the libraries they need) are
# retirectl-live's alone.
PKGS_LEAN  := libconfig sqlite3 libsystemd
DEB_BUILD  := gcc make pkg-config libcurl4-openssl-dev libconfig-dev \
              libsqlite3-dev libsystemd-dev libcmocka-dev libssl-dev
DEB_TEST   := python3 python3-pytest sqlite3 curl openssl systemd \
              util-linux iproute2 time bc clang libclang-rt-14-dev valgrind
# What `make deb` and `make lintian` need beyond the build.
DEB_PKG    := build-essential dpkg-dev debhelper lintian
# pytest's workers (make check, make coverage) and the coverage report.
DEB_COV    := gcovr python3-pytest-xdist
DEB_ALL    := $(DEB_BUILD) $(DEB_TEST) $(DEB_PKG) $(DEB_COV)

# The tree builds clean with -Werror under Debian's hardening flags too (the
# package keeps it); WERROR= drops it for a compiler that warns anew.
WERROR     ?= -Werror
WARN       := -Wall -Wextra $(WERROR) -Wshadow -Wformat=2 -Wno-unused-parameter -Wno-missing-field-initializers
CFLAGS     ?= -O2 -g
CFLAGS     += -std=c17 $(WARN) -D_GNU_SOURCE -DVERSION='"$(VERSION)"' \
              -Iconf -Istate -Idaemon
ifeq ($(SANITIZE),1)
CFLAGS     += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
# Linked in, the runtimes start and check for leaks at exit a third faster:
# the sanitized suites start retired and retirectl a thousand times.
LDFLAGS    += -fsanitize=address,undefined -static-libasan -static-libubsan
BUILD      := build-san
endif
# The instrumented build of `make coverage`: its objects and their .gcda
# counts stay in build/coverage/.  -DCOVERAGE lets retired flush its counts
# before a SIGKILL can take them (daemon/retired.c).
ifeq ($(COVERAGE),1)
ifeq ($(SANITIZE),1)
$(error SANITIZE=1 and COVERAGE=1 do not mix: one build dir, one set of flags)
endif
CFLAGS     += --coverage -O0 -DCOVERAGE
LDFLAGS    += --coverage
BUILD      := build/coverage
endif
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
PKG_LIBS_LEAN = $(shell pkg-config --libs $(PKGS_LEAN) 2>/dev/null)

SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: FORCE all deps check check-fast unit-build test demo install uninstall deb lintian clean unit valgrind fuzz bench torture coverage mutants

all: $(BUILD)/retired $(BUILD)/retirectl $(BUILD)/retirectl-live

# Installs only what dpkg does not already know as installed, so a second
# run is silent and needs no network.
deps:
	@missing=$$(for p in $(DEB_ALL); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing" $$missing; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

CONF_SRC   := conf/syntax.c conf/parse.c
STATE_SRC  := state/ledger.c state/schema.c state/meta.c state/history.c state/plan.c state/decl.c state/listed.c
CORE_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(CONF_SRC) $(STATE_SRC))
RETIRECTL_OBJ := $(BUILD)/daemon/retirectl.o $(BUILD)/daemon/retirectl-control.o
# plan --live lists the account by the daemon's rules and decides with its
# decisions: the client, the listing, the match and reconcile.c, no engine.
# Linked with them (libcurl, libcrypto and what they load), retirectl took
# 22 ms to start, 7 without: retirectl is every command but that one, which
# it runs as retirectl-live (retirectl with these), from beside itself or
# from where install puts it.
RETIRECTL_LIVE_OBJ := $(BUILD)/daemon/retirectl-live.o \
                 $(patsubst %,$(BUILD)/daemon/%.o,api diga listing log match pacer reconcile token)
RETIRED_SRC := $(filter-out daemon/retirectl%,$(wildcard daemon/*.c))
RETIRED_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(RETIRED_SRC))
HEADERS    := $(wildcard conf/*.h state/*.h daemon/*.h)

$(BUILD)/%.o: %.c $(HEADERS) | $(BUILD)/.dir
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CPPFLAGS) $(CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

$(BUILD)/.dir:
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/libcore.a: $(CORE_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/retirectl: $(RETIRECTL_OBJ) $(BUILD)/daemon/retirectl-exec.o $(BUILD)/libcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS_LEAN) -lm

$(BUILD)/retirectl-live: $(RETIRECTL_OBJ) $(RETIRECTL_LIVE_OBJ) $(BUILD)/libcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

# Where install puts retirectl-live is compiled into retirectl; this file
# holds it, rewritten when it changes, so that a make install with another
# PREFIX than the build's builds retirectl again.
$(BUILD)/daemon/retirectl-exec.o: CPPFLAGS += -DPKGLIBEXECDIR='"$(PKGLIBEXECDIR)"'
$(BUILD)/daemon/retirectl-exec.o: $(BUILD)/pkglibexecdir
$(BUILD)/pkglibexecdir: FORCE | $(BUILD)/.dir
	@echo '$(PKGLIBEXECDIR)' | cmp -s - $@ || echo '$(PKGLIBEXECDIR)' >$@

FORCE:

$(BUILD)/retired: $(RETIRED_OBJ) $(BUILD)/libcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

clean:
	rm -rf build build-san

# Unit tests: every tests/unit/test-*.c is one cmocka program linked with the
# core library; they run from the top folder so the corpus paths are stable.
UNIT_SRC   := $(wildcard tests/unit/test-*.c)
UNIT_BIN   := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

# The decisions, the pacer and the body parsers need no event loop: unit-tested too.
UNIT_DAEMON_OBJ := $(BUILD)/daemon/reconcile.o $(BUILD)/daemon/pacer.o $(BUILD)/daemon/api.o

$(BUILD)/tests/%: tests/unit/%.c tests/unit/unit.h $(BUILD)/libcore.a $(UNIT_DAEMON_OBJ) $(HEADERS) | $(BUILD)/.dir
	@mkdir -p $(dir $@)
	@echo "  CCLD    $<"
	@$(CC) $(CFLAGS) $(PKG_CFLAGS) -Itests/unit -o $@ $< $(UNIT_OBJ) $(UNIT_DAEMON_OBJ) $(BUILD)/libcore.a $(PKG_LIBS) -lcmocka -lm $(UNIT_LDFLAGS)

# test-faults fails the SQLite calls it chooses: the code under test makes
# them through the __wrap_ functions of tests/unit/sqlite-faults.c.
SQLITE_FAULTS_OBJ := $(BUILD)/tests/unit/sqlite-faults.o
SQLITE_WRAP := -Wl,--wrap=sqlite3_step,--wrap=sqlite3_exec,--wrap=sqlite3_prepare_v2,--wrap=sqlite3_prepare_v3
$(BUILD)/tests/unit/sqlite-faults.o: tests/unit/sqlite-faults.h
$(BUILD)/tests/test-faults: $(SQLITE_FAULTS_OBJ)
$(BUILD)/tests/test-faults: UNIT_OBJ := $(SQLITE_FAULTS_OBJ)
$(BUILD)/tests/test-faults: UNIT_LDFLAGS := $(SQLITE_WRAP)

# test-listing runs the listing against a scripted Diga client
# (tests/unit/stub-diga.c) in place of daemon/diga.c: each test answers each
# call as it chooses, and nothing goes on a wire.
STUB_DIGA_OBJ := $(BUILD)/tests/unit/stub-diga.o $(BUILD)/daemon/log.o
$(BUILD)/tests/unit/stub-diga.o: tests/unit/stub-diga.h tests/unit/unit.h
$(BUILD)/tests/test-listing: $(BUILD)/daemon/listing.o $(STUB_DIGA_OBJ)
$(BUILD)/tests/test-listing: UNIT_OBJ := $(BUILD)/daemon/listing.o $(STUB_DIGA_OBJ)
# test-engine: the engine's rooms too, and SQLite's calls wrapped as in test-faults.
ENGINE_OBJ := $(patsubst %,$(BUILD)/daemon/%.o,engine act match pause listing)
$(BUILD)/tests/test-engine: $(ENGINE_OBJ) $(STUB_DIGA_OBJ) $(SQLITE_FAULTS_OBJ)
$(BUILD)/tests/test-engine: UNIT_OBJ := $(ENGINE_OBJ) $(STUB_DIGA_OBJ) $(SQLITE_FAULTS_OBJ)
$(BUILD)/tests/test-engine: UNIT_LDFLAGS := $(SQLITE_WRAP),--wrap=strdup

# test-log reads the journal entries log.c sends through its
# __wrap_sd_journal_sendv_with_location (what sd_journal_sendv() is once
# <systemd/sd-journal.h> adds the caller's place), and fails the send where it chooses.
$(BUILD)/tests/test-log: $(BUILD)/daemon/log.o
$(BUILD)/tests/test-log: UNIT_OBJ := $(BUILD)/daemon/log.o
$(BUILD)/tests/test-log: UNIT_LDFLAGS := -Wl,--wrap=sd_journal_sendv_with_location

# test-control runs the control socket in its own event loop; its __wrap_
# functions say who the peer is, keep each client's timer so that a test can
# make it due, and fail the calls a test chooses.
$(BUILD)/tests/test-control: $(BUILD)/daemon/control.o $(BUILD)/daemon/log.o
$(BUILD)/tests/test-control: UNIT_OBJ := $(BUILD)/daemon/control.o $(BUILD)/daemon/log.o
$(BUILD)/tests/test-control: UNIT_LDFLAGS := -Wl,--wrap=getsockopt,--wrap=accept4,--wrap=sd_event_add_io,--wrap=sd_event_add_time_relative

# The clock tests' LD_PRELOAD shim (tests/e2e/clockshim.c): never
# sanitized (a preloaded ASan runtime would have to come first), so that
# the sanitized daemon can take it too.
CLOCKSHIM  := $(BUILD)/tests/clockshim.so
$(CLOCKSHIM): tests/e2e/clockshim.c | $(BUILD)/.dir
	@mkdir -p $(dir $@)
	@echo "  CCLD    $<"
	@$(CC) -std=c17 -O2 -Wall -Wextra $(WERROR) -shared -fPIC -pthread -o $@ $< -ldl

unit-build: $(UNIT_BIN) $(CLOCKSHIM)

unit: $(UNIT_BIN)
	@fail=0; for t in $(UNIT_BIN); do $$t || fail=1; done; exit $$fail

PYTEST     := $(PYTHON) -m pytest -q -p no:cacheprovider
export RETIRED_BUILD := $(abspath $(BUILD))

# One run of every suite: the unit tests, then the pytest suites (the fake,
# end to end, and under a private systemd, which skips itself when not root).
# Every suite runs even when an earlier one fails; any failure fails the target.
# Each pytest suite runs alone: each has its own conftest.py, and its
# tests import helpers from it by that name.
test: all
	@$(MAKE) --no-print-directory unit; u=$$?; \
	 $(PYTEST) tests/fake-diga; f=$$?; \
	 $(PYTEST) tests/e2e; e=$$?; \
	 $(PYTEST) tests/system; s=$$?; \
	 test $$u = 0 -a $$f = 0 -a $$e = 0 -a $$s = 0

# make check: every stage (the package, the suites plain and with
# ASan+UBSan, the demo under valgrind, the fuzzers), side by side where they
# can be; tests/check.py says how, and prints each stage's time.
# make check-fast: the edit loop (build, unit, the fake, e2e).
# make check SANITIZE=1: the sanitized stages only.
ifeq ($(SANITIZE),1)
check: deps
	@$(PYTHON) tests/check.py unit-san e2e-san system-san
else
check: deps
	@$(PYTHON) tests/check.py
endif

check-fast: deps
	@$(PYTHON) tests/check.py --fast

# make coverage: the unit tests (the decision tables among them) and the e2e
# suite on the instrumented build, then gcovr's figures for daemon/, state/
# and conf/ as a table, with an HTML report in build/coverage/html/.  Not part
# of make check.  The table is printed even when a test fails; the exit
# status is the tests' (and gcovr's).  The counts start from zero each run.
COV_JOBS   ?= 2
COV_GCOVR  := gcovr -r . --object-directory $(BUILD) --filter daemon/ --filter state/ --filter conf/
ifeq ($(COVERAGE),1)
export RETIRED_COVERAGE := 1
coverage: all $(UNIT_BIN) $(CLOCKSHIM)
	@find $(BUILD) -name '*.gcda' -delete
	@$(MAKE) --no-print-directory unit; u=$$?; \
	 $(PYTEST) -n $(COV_JOBS) tests/e2e; e=$$?; \
	 rm -rf $(BUILD)/html && mkdir -p $(BUILD)/html && \
	 $(COV_GCOVR) --json-summary $(BUILD)/summary.json --html-details $(BUILD)/html/index.html $(BUILD) && \
	 $(PYTHON) tests/coverage/table.py $(BUILD)/summary.json; g=$$?; \
	 echo "coverage: unit $$u, e2e $$e, report $$g (0 = passed); HTML in $(BUILD)/html/index.html"; \
	 test $$u = 0 -a $$e = 0 -a $$g = 0
else
coverage: deps
	@$(MAKE) --no-print-directory coverage COVERAGE=1
endif

# make mutants: each tests/mutants/*.patch takes a guard out of a copy of the
# tree, and the test it names must then fail (tests/mutants/README.md).  Not
# part of make check.
mutants: deps
	@tests/mutants/run

# The main job (the demo) with retired under valgrind memcheck: no error, no leak.
valgrind: all
	@RETIRED_WRAP="valgrind -q --error-exitcode=3 --leak-check=full --show-leak-kinds=definite,indirect \
	  --errors-for-leak-kinds=definite,indirect" BUILD=$(abspath $(BUILD)) tests/demo/demo.sh >$(BUILD)/valgrind.log 2>&1 \
	  && echo "valgrind: the demo ran clean" || { cat $(BUILD)/valgrind.log; echo "valgrind: FAILED"; exit 1; }

torture: all
	TORTURE_ROUNDS=100 TORTURE_PHONES=1000 $(PYTEST) tests/e2e/test_torture.py

bench: all
	tests/bench/run

demo: deps all
	@BUILD=$(abspath $(BUILD)) tests/demo/demo.sh

BINDIR     := $(DESTDIR)$(PREFIX)/bin
SBINDIR    := $(DESTDIR)$(PREFIX)/sbin
MANDIR     := $(DESTDIR)$(PREFIX)/share/man
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
UNITDIR    := $(DESTDIR)$(SYSTEMDUNITDIR)
COMPLETIONDIR := $(DESTDIR)$(PREFIX)/share/bash-completion/completions
UNITS      := retired.service retired-once.service retired-once.timer
CATALOGDIR := $(DESTDIR)$(PREFIX)/lib/systemd/catalog
COMPLETIONDIR := $(DESTDIR)$(PREFIX)/share/bash-completion/completions
CONFDIR    := $(DESTDIR)/etc/retired

# The example config is installed only where none exists: an operator's
# declarations are never overwritten.
install: all
	install -d $(BINDIR) $(SBINDIR) $(MANDIR)/man1 $(MANDIR)/man5 $(MANDIR)/man8 $(CONFDIR)/releases.d
	install -m 0755 $(BUILD)/retired $(SBINDIR)/retired
	install -m 0755 $(BUILD)/retirectl $(BINDIR)/retirectl
	install -d $(DESTDIR)$(PKGLIBEXECDIR)
	install -m 0755 $(BUILD)/retirectl-live $(DESTDIR)$(PKGLIBEXECDIR)/retirectl-live
	install -m 0644 daemon/retirectl.1 $(MANDIR)/man1/retirectl.1
	install -m 0644 conf/retired.conf.5 $(MANDIR)/man5/retired.conf.5
	install -d $(COMPLETIONDIR)
	install -m 0644 completion/retirectl $(COMPLETIONDIR)/retirectl
	test ! -f daemon/retired.8 || install -m 0644 daemon/retired.8 $(MANDIR)/man8/retired.8
	test -e $(CONFDIR)/retired.conf || install -m 0644 conf/retired.conf $(CONFDIR)/retired.conf
	install -d $(UNITDIR) $(CATALOGDIR) $(COMPLETIONDIR)
	for u in $(UNITS); do \
	  sed 's|@SBINDIR@|$(PREFIX)/sbin|g; s|@BINDIR@|$(PREFIX)/bin|g' systemd/$$u > $(UNITDIR)/$$u && \
	    chmod 0644 $(UNITDIR)/$$u || exit 1; \
	done
	install -m 0644 systemd/retired.catalog $(CATALOGDIR)/retired.catalog
	install -m 0644 completion/retirectl $(COMPLETIONDIR)/retirectl

# What install put in place, except the config and the ledger: like a
# package's remove, it keeps /etc/retired and /var/lib/private/retired.
# Run `systemctl disable --now retired retired-once.timer` first.
uninstall:
	rm -f $(SBINDIR)/retired $(BINDIR)/retirectl $(DESTDIR)$(PKGLIBEXECDIR)/retirectl-live \
	  $(MANDIR)/man1/retirectl.1 $(MANDIR)/man5/retired.conf.5 $(MANDIR)/man8/retired.8 \
	  $(addprefix $(UNITDIR)/,$(UNITS)) $(CATALOGDIR)/retired.catalog $(COMPLETIONDIR)/retirectl
	[ ! -d $(DESTDIR)$(PKGLIBEXECDIR) ] || rmdir --ignore-fail-on-non-empty $(DESTDIR)$(PKGLIBEXECDIR)

# The Debian package, built by debhelper (debian/) in a copy of the tree so
# that dpkg-buildpackage leaves the .deb in build/deb, not beside the tree.
# The outer make's flags (SANITIZE=1, BUILD=...) must not reach that build.
DEBDIR     := build/deb
DEB_ARCH    = $(shell dpkg-architecture -qDEB_HOST_ARCH)
DEB_FILE    = $(DEBDIR)/retired_$(VERSION)_$(DEB_ARCH).deb

deb:
	rm -rf $(DEBDIR) && mkdir -p $(DEBDIR)/retired-$(VERSION)
	tar -c --exclude=./build --exclude=./build-san --exclude-vcs --exclude-vcs-ignores . \
	  | tar -x -C $(DEBDIR)/retired-$(VERSION)
	cd $(DEBDIR)/retired-$(VERSION) && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
	  dpkg-buildpackage -us -uc -b -Jauto >../build.log 2>&1 \
	  || { tail -40 ../build.log; echo "deb: FAILED (all of it in $(DEBDIR)/build.log)"; exit 1; }
	@echo "deb: $(DEB_FILE)"

# Errors and warnings fail; each override in debian/ says why it is there.
lintian:
	lintian --fail-on error,warning --info --display-info $(DEB_FILE)
	@echo "lintian: no error, no warning"

$(BUILD)/tests/fill-ledger: tests/bench/fill-ledger.c $(BUILD)/libcore.a $(HEADERS)
	@mkdir -p $(dir $@)
	@$(CC) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< $(BUILD)/libcore.a $(PKG_LIBS)

$(BUILD)/tests/libconfig-read: tests/bench/libconfig-read.c | $(BUILD)/.dir
	@mkdir -p $(dir $@)
	@$(CC) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< $(PKG_LIBS)
include tests/fuzz/fuzz.mk
