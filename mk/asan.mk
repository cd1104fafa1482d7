# The library and every program under AddressSanitizer + UndefinedBehaviorSanitizer, in a tree
# of their own (build-asan/, bin-asan/; the normal build/ and bin/ are untouched), and
# `make check-asan`: the whole bats suite against bin-asan/. The fuzzers (mk/fuzz.mk) link the
# same library.
#
# Clean means: no ASan or UBSan report and no leak (LeakSanitizer at every exit through main
# or exit(); not through die(), tools/tool.c says why), in any program any test runs,
# whatever status the test expected. The reports go to files under
# build-asan/reports/ (not stderr, where a test that expects a failure would take them for
# one) and check-asan fails if any appear; a sanitizer error also exits 99, not a tool's 1.
# No leak suppression is needed: libgomp, OpenBLAS, libvips and glib keep what they hold
# reachable at exit. ASAN_BATS picks the bats files (default: all).
# Under CLIP_SANITIZED=1 the tests that cap memory with ulimit -v leave the cap off (ASan
# reserves terabytes of shadow address space).

SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
# linked statically, UBSan writes its reports to UBSAN_OPTIONS log_path (as libubsan.so beside
# libasan.so, it writes them to stderr whatever the option says)
SAN_LDFLAGS := -static-libubsan
ASAN_CFLAGS ?= -O1 -g
ASAN_LIB_OBJ := $(LIB_SRC:lib/%.c=build-asan/lib/%.o)
ASAN_TOOLS := $(patsubst tools/%.c,bin-asan/%,$(wildcard tools/clip-*.c))
ASAN_REPORTS := build-asan/reports
ASAN_BATS ?= tests/bats

build-asan/lib/core/datafile.o: CLIP_CFLAGS += -DCLIP_DATADIR='"$(DATADIR)"'

build-asan/lib/%.o: lib/%.c $(wildcard lib/*/*.h)
	@mkdir -p $(@D)
	$(CC) $(CLIP_CFLAGS) $(ASAN_CFLAGS) $(SAN_FLAGS) -c -o $@ $<

build-asan/libclip.a: $(ASAN_LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

build-asan/tools/tool.o: tools/tool.c tools/tool.h $(wildcard lib/*/*.h)
	@mkdir -p $(@D)
	$(CC) $(CLIP_CFLAGS) $(ASAN_CFLAGS) $(SAN_FLAGS) -c -o $@ $<

bin-asan/%: tools/%.c build-asan/tools/tool.o build-asan/libclip.a
	@mkdir -p $(@D)
	$(CC) $(CLIP_CFLAGS) $(ASAN_CFLAGS) $(SAN_FLAGS) $(SAN_LDFLAGS) -o $@ $< build-asan/tools/tool.o \
		build-asan/libclip.a $(LDLIBS)

asan: $(ASAN_TOOLS)

# the sanitizers' settings for a run whose reports land in $(ASAN_REPORTS)
SAN_ENV = ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:exitcode=99:detect_stack_use_after_return=0:log_path=$(CURDIR)/$(ASAN_REPORTS)/asan \
          UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=99:log_path=$(CURDIR)/$(ASAN_REPORTS)/ubsan

# the suite also runs bin/ (the installed-tree test) and one unit-test program
check-asan: $(ASAN_TOOLS) all build/tests/test_checkpoint
	@rm -rf $(ASAN_REPORTS) && mkdir -p $(ASAN_REPORTS)
	@start=$$(date +%s); \
	env $(SAN_ENV) CLIP_BIN=$(CURDIR)/bin-asan CLIP_SANITIZED=1 bats $(ASAN_BATS); rc=$$?; \
	echo "check-asan: $(ASAN_BATS) against bin-asan/ took $$(( $$(date +%s) - start )) s"; \
	if [ -n "$$(ls -A $(ASAN_REPORTS))" ]; then \
	    cat $(ASAN_REPORTS)/*; \
	    echo "check-asan: sanitizer reports above (files in $(ASAN_REPORTS)/)" >&2; exit 1; \
	fi; \
	exit $$rc

clean-asan:
	rm -rf build-asan bin-asan

clean: clean-asan

.PHONY: asan check-asan clean-asan
.SECONDARY: $(ASAN_LIB_OBJ)
