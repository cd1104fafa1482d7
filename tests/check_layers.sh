#!/usr/bin/env bash
# lib/ is in layers (lib/README.md): a file may include headers of its own folder and of
# folders on a lower level, never of its level's siblings or of a level above; and no header
# includes itself through others. Prints each offending line; exits 1 if there is one.
set -u
cd "$(dirname "$0")/.."
level() {
    case "$1" in
    core) echo 0 ;;
    io | ckpt | text | kernels) echo 1 ;;
    model) echo 2 ;;
    search) echo 3 ;;
    train) echo 4 ;;
    *) echo x ;;
    esac
}
bad=0
for dir in lib/*/; do
    from=$(basename "$dir")
    if [ "$(level "$from")" = x ]; then
        echo "check-layers: lib/$from/ is on no level: add it to tests/check_layers.sh and lib/README.md"
        bad=1
        continue
    fi
done
for f in lib/*.[ch]; do
    [ -e "$f" ] || continue
    echo "check-layers: $f is outside every layer folder"
    bad=1
done
while IFS=: read -r file line inc; do
    from=$(basename "$(dirname "$file")")
    to=${inc%%/*}
    if [ "$to" = "$inc" ]; then
        echo "$file:$line: #include \"$inc\": name the folder (\"core/util.h\")"
        bad=1
    elif [ ! -e "lib/$inc" ]; then
        echo "$file:$line: #include \"$inc\": no such header in lib/"
        bad=1
    elif [ "$to" != "$from" ] && ! [ "$(level "$to")" -lt "$(level "$from")" ]; then
        echo "$file:$line: lib/$from/ (level $(level "$from")) includes lib/$inc (level $(level "$to")): only lower levels"
        bad=1
    fi
done < <(grep -Hno '^#include "[^"]*"' lib/*/*.[ch] | sed 's/#include "\(.*\)"$/\1/')
# include cycles among lib's headers: follow each header's includes, depth first
declare -A state
cycle() { # $1 header path under lib/; state: 1 on the current path, 2 done
    local h=$1 inc
    state[$h]=1
    for inc in $(sed -n 's/^#include "\(.*\)"$/\1/p' "lib/$h"); do
        [ -e "lib/$inc" ] || continue
        if [ "${state[$inc]:-0}" = 1 ]; then
            echo "check-layers: include cycle through lib/$h and lib/$inc"
            bad=1
        elif [ "${state[$inc]:-0}" = 0 ]; then
            cycle "$inc"
        fi
    done
    state[$h]=2
}
for h in lib/*/*.h; do
    h=${h#lib/}
    [ "${state[$h]:-0}" = 0 ] && cycle "$h"
done
[ $bad = 0 ] && echo "check-layers: $(ls lib/*/*.[ch] | wc -l) files in $(ls -d lib/*/ | wc -l) folders, every include downwards"
exit $bad
