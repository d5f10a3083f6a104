#!/usr/bin/env bash
# Consumer smoke test of a packed engine-guard tarball:
#
#   bash .ci/smoke/run-core.sh TARBALL [TSC...]
#
# 1. makes a throwaway project from .ci/smoke/consumer and installs TARBALL into it;
# 2. fails if a published declaration file needs Node's types (NodeJS.*, node:* imports,
#    /// <reference types="node" />): a consumer without @types/node must type-check;
# 3. type-checks consumer.ts (the "import" types) and consumer-cjs.cts (the "require" types)
#    with each TSC given (default: the repo's own, node_modules/.bin/tsc), under two configs:
#    tsconfig.json (strict, "types": [], skipLibCheck off) and tsconfig.minimal.json (nothing
#    but "module": "nodenext": each compiler's own default lib);
# 4. runs cross-build.mjs there: the ESM and the CJS build loaded in one process, errors made by
#    either are instanceof the classes of both.
# Exits non-zero at the first failure. Needs no network: the tarball has no dependencies (CI
# installs the second compiler, TypeScript 7, before calling this).
set -euo pipefail

SMOKE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SMOKE_DIR/../.." && pwd)"

die() {
  echo "run-core.sh: $*" >&2
  exit 1
}

[ "$#" -ge 1 ] || die "usage: bash .ci/smoke/run-core.sh TARBALL [TSC...]"
[ -f "$1" ] || die "no such tarball: $1"
TARBALL="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shift
COMPILERS=("$@")
[ "${#COMPILERS[@]}" -gt 0 ] || COMPILERS=("$REPO_ROOT/node_modules/.bin/tsc")
for i in "${!COMPILERS[@]}"; do
  tsc="${COMPILERS[$i]}"
  [ -x "$tsc" ] || die "$tsc is missing (the repo's own: run npm ci in $REPO_ROOT first)"
  COMPILERS[$i]="$(cd "$(dirname "$tsc")" && pwd)/$(basename "$tsc")" # absolute: we cd below
done

# Outside the repo, so that no node_modules (and no @types) above it can leak into the check.
PROJECT="$(mktemp -d "${TMPDIR:-/tmp}/engine-guard-consumer.XXXXXX")"
trap 'rm -rf "$PROJECT"' EXIT
cp "$SMOKE_DIR"/consumer/package.json "$SMOKE_DIR"/consumer/tsconfig.json \
  "$SMOKE_DIR"/consumer/tsconfig.minimal.json \
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

for tsc in "${COMPILERS[@]}"; do
  version="$("$tsc" --version)"
  echo "--- $version: tsconfig.json (types: [], skipLibCheck: false, strict)"
  "$tsc" --noEmit -p tsconfig.json
  echo "--- $version: tsconfig.minimal.json (nothing but \"module\": \"nodenext\")"
  "$tsc" -p tsconfig.minimal.json
  echo "$version: consumer.ts (import types) and consumer-cjs.cts (require types) type-check"
done

echo '--- node cross-build.mjs (ESM and CJS builds in one process)'
timeout 60 node cross-build.mjs
