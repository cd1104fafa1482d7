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

# The house style (.clang-format; Debian's clang-format package): `make format FILES=lib/io/npy.c`
# rewrites those files in place; `make check-format` lists the C files of lib/, tools/ and tests/
# whose formatting differs. Not part of `make check`: most of the tree predates the style.
FORMAT_FILES = $(wildcard lib/*/*.c lib/*/*.h tools/*.c tools/*.h tests/*/*.c tests/*/*.h)
FILES ?=

format:
	@test -n "$(FILES)" || { echo "make format: name the files, FILES=\"a.c b.h\"" >&2; exit 2; }
	clang-format -i $(FILES)

check-format:
	@n=0; for f in $(FORMAT_FILES); do \
	    clang-format "$$f" | cmp -s - "$$f" || { echo "$$f"; n=$$((n + 1)); }; done; \
	echo "check-format: $$n of $(words $(FORMAT_FILES)) files differ from .clang-format" >&2; \
	test $$n -eq 0

.PHONY: format check-format
