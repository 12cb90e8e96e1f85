#!/usr/bin/env bash
# The one test command: installs what is missing (the product's and the tests' packages: setup.sh
# --tests), builds, and runs every test (fast + vm projects).
#   npm test                  everything (what .ci/run calls)
#   npm test -- --project fast   only the fast tests (no libvirt domains)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
# In CI a missing tool is a failure, never a skip.
if [ "${CI:-}" = true ]; then export VMVAULT_TEST_STRICT=1; fi
npx tsc -p tsconfig.json --noEmit
exec npx vitest run "$@"
