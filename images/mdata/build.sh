#!/usr/bin/env bash
# Builds the metadata clients of the sample images: mdata.c as one static
# binary, installed as mdata-get, mdata-list, mdata-put and mdata-delete
# (hard links) into DIR.
#
#   images/mdata/build.sh DIR
set -euo pipefail
dir="${1:?usage: build.sh DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v gcc >/dev/null || { echo "mdata/build.sh: gcc is missing (apt-get install gcc libc6-dev)" >&2; exit 1; }
mkdir -p "$dir"
gcc -static -Os -Wall -Wextra -Werror -o "$dir/mdata-get" "$here/mdata.c"
strip "$dir/mdata-get"
for name in mdata-list mdata-put mdata-delete; do
    ln -f "$dir/mdata-get" "$dir/$name"
done
