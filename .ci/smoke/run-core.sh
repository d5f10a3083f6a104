#!/usr/bin/env bash
# Consumer smoke test of a packed engine-guard tarball:
#
#   bash .ci/smoke/run-core.sh TARBALL
#
# 1. makes a throwaway project from .ci/smoke/consumer (ESM, "types": [], skipLibCheck off,
#    strict) and installs TARBALL into it;
# 2. fails if a published declaration file needs Node's types (NodeJS.*, node:* imports,
#    /// <reference types="node" />): a consumer without @types/node must type-check;
# 3. type-checks consumer.ts (the "import" types) and consumer-cjs.cts (the "require" types)
#    with the repo's own TypeScript (node_modules/.bin/tsc: nothing is downloaded);
# 4. runs cross-build.mjs there: the ESM and the CJS build loaded in one process, errors made by
#    either are instanceof the classes of both.
# Exits non-zero at the first failure. Needs no network: the tarball has no dependencies.
set -euo pipefail

SMOKE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SMOKE_DIR/../.." && pwd)"

die() {
  echo "run-core.sh: $*" >&2
  exit 1
}

[ "$#" -eq 1 ] || die "usage: bash .ci/smoke/run-core.sh TARBALL"
[ -f "$1" ] || die "no such tarball: $1"
TARBALL="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
TSC="$REPO_ROOT/node_modules/.bin/tsc"
[ -x "$TSC" ] || die "$TSC is missing: run npm ci in $REPO_ROOT first"

# Outside the repo, so that no node_modules (and no @types) above it can leak into the check.
PROJECT="$(mktemp -d "${TMPDIR:-/tmp}/engine-guard-consumer.XXXXXX")"
trap 'rm -rf "$PROJECT"' EXIT
cp "$SMOKE_DIR"/consumer/package.json "$SMOKE_DIR"/consumer/tsconfig.json \
  "$SMOKE_DIR"/consumer/consumer.ts "$SMOKE_DIR"/consumer/consumer-cjs.cts \
  "$SMOKE_DIR"/cross-build.mjs "$PROJECT"/
cd "$PROJECT"

echo "--- install $(basename "$TARBALL") into $PROJECT"
npm install --no-audit --no-fund --no-package-lock --offline "$TARBALL"
PKG="$PROJECT/node_modules/engine-guard"
[ -f "$PKG/package.json" ] || die "the tarball did not install as node_modules/engine-guard"

echo '--- published declarations need no @types/node'
mapfile -t DECLARATIONS < <(find "$PKG/dist" -name '*.d.ts' -o -name '*.d.cts' | sort)
[ "${#DECLARATIONS[@]}" -gt 0 ] || die "no .d.ts / .d.cts file in $PKG/dist"
# Doc comments may show Node code (`import ... from 'node:diagnostics_channel'` in an example):
# only code lines count, and a `/// <reference types="node" />` directive is code.
NODE_REFS="$(grep -nE "NodeJS\.|from ['\"]node:|import\(['\"]node:|require\(['\"]node:|reference types=['\"]node['\"]" \
  "${DECLARATIONS[@]}" | grep -vE '^[^:]+:[0-9]+:[[:space:]]*(\*|/\*|//[^/])' || true)"
if [ -n "$NODE_REFS" ]; then
  printf '%s\n' "$NODE_REFS"
  die 'the declarations above refer to Node types: a consumer without @types/node cannot use them'
fi
echo "${#DECLARATIONS[@]} declaration files, none refers to Node types"

echo "--- tsc $("$TSC" --version) --noEmit (types: [], skipLibCheck: false, strict)"
"$TSC" --noEmit -p tsconfig.json
echo 'consumer.ts (import types) and consumer-cjs.cts (require types) type-check'

echo '--- node cross-build.mjs (ESM and CJS builds in one process)'
timeout 60 node cross-build.mjs
