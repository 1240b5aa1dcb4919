# Fuzzers (libFuzzer + ASan + UBSan, clang).  Included from the top-level
# Makefile; paths are relative to the top folder.  See tests/fuzz/README.md.
#
#   make fuzz-build              build build/fuzz/fuzz-NAME
#   make fuzz [FUZZ_SECONDS=60]  run each fuzzer that long on a copy of its corpus
#   make fuzz-smoke              run each for 5 s; fails if any of them fails
#   make fuzz-crashes            replay tests/fuzz/crashes/NAME/*; fails while any still fails
#   make fuzz FUZZ_NAMES=api     only some of them
#   make fuzz FUZZ_DEFS=-DFUZZ_TRACE          extra defines for the harnesses
#
# The project's sources are compiled again with clang into build/fuzz/obj/
# (never mixed with the gcc objects in $(BUILD)/).

# Whichever rule the including Makefile has first stays the default goal.
fuzz_saved_goal := $(.DEFAULT_GOAL)

FUZZ_CC      ?= clang
FUZZ_OUT     := build/fuzz
FUZZ_SECONDS ?= 60
FUZZ_NAMES   ?= config api retry-after control
FUZZ_FLAGS   ?= -rss_limit_mb=2048 -timeout=10
FUZZ_DEFS    ?=
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# Recursive (=): VERSION, PKG_CFLAGS and PKG_LIBS may be defined after the include.
FUZZ_CFLAGS   = -g -O1 -std=c17 -D_GNU_SOURCE -DVERSION='"$(VERSION)"' -Iconf -Istate -Idaemon $(FUZZ_DEFS) \
                -Wall -Wno-unused-parameter -Wno-missing-field-initializers $(FUZZ_SAN) $(PKG_CFLAGS)
FUZZ_LIBS     = $(PKG_LIBS) -lm -lpthread
FUZZ_HEADERS := $(wildcard conf/*.h state/*.h daemon/*.h)

# Which project sources each harness links.
fuzz_src_config      := conf/syntax.c conf/parse.c state/ledger.c state/schema.c state/meta.c state/history.c state/plan.c state/decl.c state/listed.c
fuzz_src_api         := conf/syntax.c daemon/api.c daemon/reconcile.c state/ledger.c state/schema.c state/meta.c state/history.c
fuzz_src_control     := daemon/control.c daemon/log.c
fuzz_src_retry-after := conf/syntax.c daemon/diga.c daemon/pacer.c daemon/reconcile.c daemon/log.c

fuzz_all_src := $(sort $(foreach n,config api control retry-after,$(fuzz_src_$(n))))
fuzz_all_obj := $(patsubst %.c,$(FUZZ_OUT)/obj/%.o,$(fuzz_all_src))
FUZZ_BIN     := $(patsubst %,$(FUZZ_OUT)/fuzz-%,$(FUZZ_NAMES))

.PHONY: fuzz-build fuzz fuzz-smoke fuzz-crashes fuzz-FORCE

fuzz-build: $(FUZZ_BIN)

# Rewritten only when the compiler or FUZZ_DEFS change, so that a change
# rebuilds everything and nothing else does.
$(FUZZ_OUT)/.flags: fuzz-FORCE
	@mkdir -p $(dir $@)
	@echo '$(FUZZ_CC) $(FUZZ_DEFS)' | cmp -s - $@ || echo '$(FUZZ_CC) $(FUZZ_DEFS)' > $@
fuzz-FORCE:

# Coverage instrumentation (fuzzer-no-link) for the code under test too.
$(fuzz_all_obj): $(FUZZ_OUT)/obj/%.o: %.c $(FUZZ_HEADERS) $(FUZZ_OUT)/.flags
	@mkdir -p $(dir $@)
	@echo "  CC      $< (fuzz)"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

# One link rule per harness: $(1) = NAME.
define fuzz_link
$(FUZZ_OUT)/fuzz-$(1): tests/fuzz/fuzz-$(1).c $(patsubst %.c,$(FUZZ_OUT)/obj/%.o,$(fuzz_src_$(1))) \
                       $(FUZZ_HEADERS) $(FUZZ_OUT)/.flags
	@mkdir -p $$(dir $$@)
	@echo "  CCLD    $$@"
	@$$(FUZZ_CC) $$(FUZZ_CFLAGS) -fsanitize=fuzzer -o $$@ $$< \
	    $(patsubst %.c,$(FUZZ_OUT)/obj/%.o,$(fuzz_src_$(1))) $$(FUZZ_LIBS)
endef
$(foreach n,config api control retry-after,$(eval $(call fuzz_link,$(n))))

# $(call fuzz_run,SECONDS): each fuzzer on build/fuzz/corpus-NAME (the seeds
# copied in, earlier finds kept), crashes in build/fuzz/artifacts-NAME/, the
# full log in build/fuzz/NAME.log, temporary files (fuzz-config's folder,
# left behind when it crashes) in build/fuzz/tmp/.  Every fuzzer runs; any
# failure fails.
define fuzz_run
	@fail=; for n in $(FUZZ_NAMES); do \
	  c=$(FUZZ_OUT)/corpus-$$n; a=$(FUZZ_OUT)/artifacts-$$n; log=$(FUZZ_OUT)/$$n.log; \
	  mkdir -p $$c $$a $(FUZZ_OUT)/tmp && cp -R tests/fuzz/corpus/$$n/. $$c/ || exit 1; \
	  dict=; test ! -f tests/fuzz/dict/$$n.dict || dict=-dict=tests/fuzz/dict/$$n.dict; \
	  printf '  FUZZ    %-12s %s s ... ' $$n $(1); \
	  if TMPDIR=$(abspath $(FUZZ_OUT))/tmp $(FUZZ_OUT)/fuzz-$$n $$c -max_total_time=$(1) $(FUZZ_FLAGS) $$dict \
	       -artifact_prefix=$$a/ -print_final_stats=1 >$$log 2>&1; then \
	    echo "ok, $$(sed -n 's/^stat::number_of_executed_units: *//p' $$log) runs," \
	         "$$(sed -n 's/^stat::average_exec_per_sec: *//p' $$log) exec/s," \
	         "$$(grep -o 'cov: [0-9]*' $$log | tail -n 1)"; \
	  else \
	    echo "FAILED (see $$log)"; \
	    grep -E 'invariant failed|ERROR:|^SUMMARY:|^    #[0-9]+ ' $$log | \
	      grep -v -E 'fuzzer::|libc\.so|__sanitizer_print|libc_start|in _start|in main |nptl/|raise\.c|abort\.c' | head -n 16; \
	    sed -n 's/^.*Test unit written to /    input: /p' $$log; fail="$$fail $$n"; \
	  fi; \
	done; \
	if [ -n "$$fail" ]; then echo "fuzz: failed:$$fail"; exit 1; fi
endef

fuzz: fuzz-build
	$(call fuzz_run,$(FUZZ_SECONDS))

fuzz-smoke: fuzz-build
	$(call fuzz_run,5)

# Every input that once crashed a harness must run clean.
fuzz-crashes: fuzz-build
	@mkdir -p $(FUZZ_OUT)/tmp; fail=; for n in $(FUZZ_NAMES); do \
	  for f in tests/fuzz/crashes/$$n/*; do \
	    test -f "$$f" || continue; \
	    log=$(FUZZ_OUT)/replay-$$n-$$(basename "$$f").log; \
	    if TMPDIR=$(abspath $(FUZZ_OUT))/tmp $(FUZZ_OUT)/fuzz-$$n $(FUZZ_FLAGS) "$$f" >$$log 2>&1; then echo "  FIXED   $$f"; \
	    else echo "  FAILS   $$f (see $$log)"; fail=1; fi; \
	  done; \
	done; test -z "$$fail"

.DEFAULT_GOAL := $(fuzz_saved_goal)
