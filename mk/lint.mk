# A lint of the bats suite, part of `make check`. Under bats' `set -e` these
# lines assert nothing unless they are the last command of a test:
#   [ A ] && [[ B ]]   set -e ignores the failure of any command of an && list
#                      but the last, so a failing A passes;
#   ! cmd              set -e ignores negated commands (write `run cmd` and
#                      check "$status").
# One assertion a line instead.
BATS_LINT_RE := ^[[:space:]]*(\[\[? .* \]\]? && |! )

lint-tests:
	@if grep -nE '$(BATS_LINT_RE)' tests/bats/*.bats; then \
	    echo "tests/bats: the lines above assert nothing under set -e unless last in a test;" \
	         "one assertion a line (see mk/lint.mk)" >&2; \
	    exit 1; \
	fi

check: lint-tests

.PHONY: lint-tests

# lib/ in layers (lib/README.md): every include goes to its own folder or a lower level
check-layers:
	@tests/check_layers.sh

check: check-layers

.PHONY: check-layers

# The house style (.clang-format; Debian's clang-format package, from `make deps`): `make format
# FILES=lib/io/npy.c` rewrites those files in place; `make check-format`, part of `make check`,
# lists the C files of lib/, tools/ and tests/ whose formatting differs. The tree is formatted
# with Debian 12's clang-format 14; another major version formats some lines otherwise, so
# there the check says so and is skipped. Tables keep their columns between
# /* clang-format off */ and /* clang-format on */.
FORMAT_FILES = $(wildcard lib/*/*.c lib/*/*.h tools/*.c tools/*.h tests/*/*.c tests/*/*.h)
FORMAT_VERSION = 14
FILES ?=

format:
	@test -n "$(FILES)" || { echo "make format: name the files, FILES=\"a.c b.h\"" >&2; exit 2; }
	clang-format -i $(FILES)

check-format:
	@v=$$(clang-format --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p'); \
	if [ "$$v" != "$(FORMAT_VERSION)" ]; then \
	    echo "check-format: skipped: clang-format $${v:-not installed}, the tree is formatted with $(FORMAT_VERSION) (make deps)" >&2; \
	    exit 0; fi; \
	n=0; for f in $(FORMAT_FILES); do \
	    clang-format "$$f" | cmp -s - "$$f" || { echo "$$f"; n=$$((n + 1)); }; done; \
	test $$n -eq 0 || { echo "check-format: $$n of $(words $(FORMAT_FILES)) files differ from" \
	    ".clang-format: make format FILES=\"...\"" >&2; exit 1; }

check: check-format

.PHONY: format check-format
