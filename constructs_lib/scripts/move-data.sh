# Moves a service's data from the directory an earlier release kept it in ($MOVE_FROM) to its new one ($MOVE_TO),
# once, before the service starts. The task's non-essential move container runs it, and the service's container starts
# only when it exits 0 (ECS container dependency, condition SUCCESS). POSIX sh; run by the service's own image.
#
# - Done (the marker is in $MOVE_TO): nothing is copied again, so whatever the service wrote there since is kept.
# - Not done: $MOVE_TO must be empty, or hold a copy cut short (the in-progress marker): that is cleared, and the
#   whole of $MOVE_FROM copied (modes and times kept), compared entry by entry (type, size, link target), then marked.
#   A directory that holds other data is refused, untouched (the service does not start).
# - $MOVE_REMOVE_SOURCE=true: once the copy is marked done, $MOVE_FROM is emptied.
set -eu
from=${MOVE_FROM:?MOVE_FROM is not set}
to=${MOVE_TO:?MOVE_TO is not set}
done_name=.platform-data-moved
moving_name=.platform-data-moving

inventory() {
    (cd "$1" && find . -mindepth 1 ! -name "$done_name" ! -name "$moving_name" | LC_ALL=C sort |
        while IFS= read -r entry; do
            if [ -L "$entry" ]; then printf 'link %s -> %s\n' "$entry" "$(readlink "$entry")"
            elif [ -d "$entry" ]; then printf 'directory %s\n' "$entry"
            elif [ -f "$entry" ]; then printf 'file %s %s\n' "$entry" "$(wc -c < "$entry" | tr -d ' ')"
            else printf 'other %s\n' "$entry"
            fi
        done)
}

empty_directory() {
    find "$1" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
}

if [ -e "$to/$done_name" ]; then
    echo "move: already done: $(cat "$to/$done_name")"
else
    if [ -n "$(ls -A "$to")" ] && [ ! -e "$to/$moving_name" ]; then
        echo "move: $to holds data that no move put there; leaving both directories as they are" >&2
        exit 1
    fi
    empty_directory "$to"
    : > "$to/$moving_name"
    echo "move: copying $from to $to"
    cp -a "$from/." "$to/"
    work=$(mktemp -d)
    inventory "$from" > "$work/from"
    inventory "$to" > "$work/to"
    if ! cmp -s "$work/from" "$work/to"; then
        echo "move: the copy differs from $from; it will be made again at the next start" >&2
        exit 1
    fi
    printf 'copied %s entries from %s at %s\n' "$(wc -l < "$work/from" | tr -d ' ')" "$from" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$to/$done_name.tmp"
    mv "$to/$done_name.tmp" "$to/$done_name"
    rm -f "$to/$moving_name"
    rm -rf "$work"
    echo "move: done"
fi
if [ "${MOVE_REMOVE_SOURCE:-false}" = true ]; then
    echo "move: removing the old copy in $from"
    empty_directory "$from"
fi
