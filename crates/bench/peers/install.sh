#!/usr/bin/env bash
# Installs the peer tools `fieldsync-bench --peers` compares fieldsync with (issue #20,
# part b): GDAL's `ogr2ogr` (Debian's gdal-bin) and PouchDB with pouchdb-server (npm,
# pinned versions, into crates/bench/peers/node_modules, which git ignores). Nothing of
# the workspace's build or tests needs them. Idempotent: installs only what is missing.
# Usage: crates/bench/peers/install.sh
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1
    fi
}

missing=""
command -v ogr2ogr >/dev/null 2>&1 || missing="$missing gdal-bin"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    echo "installing:$missing"
    as_root apt-get update
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y $missing
fi

# The versions are pinned in package.json (exact versions); package-lock.json is not
# kept, so the transitive versions are the newest ones that satisfy the pins.
if [ ! -x node_modules/.bin/pouchdb-server ] || [ ! -d node_modules/pouchdb ] \
    || [ ! -d node_modules/pouchdb-adapter-memory ]; then
    echo "installing: pouchdb, pouchdb-adapter-memory, pouchdb-server (npm, into $PWD/node_modules)"
    npm install --no-audit --no-fund --no-package-lock --loglevel=error
fi
echo "peers ready: $(command -v ogr2ogr) ($(ogr2ogr --version)); node $(node --version); $PWD/node_modules/.bin/pouchdb-server"
