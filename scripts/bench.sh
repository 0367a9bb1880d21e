#!/usr/bin/env bash
# Ward's benchmark (issue #3): install the Debian peers used as baselines (stunnel4, openssh-server,
# socat) when missing and we may, then run ward-bench in release mode and write docs/benchmarks.md.
#   scripts/bench.sh            full run (~1.5 min), writes docs/benchmarks.md
#   scripts/bench.sh --quick    smoke run (~20 s), prints only
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v stunnel4 >/dev/null || missing+=(stunnel4)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v socat >/dev/null || missing+=(socat)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench.sh: installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "bench.sh: ${missing[*]} missing (install them as root); their rows will be skipped" >&2
  fi
fi

if [ "${1:-}" = "--quick" ]; then
  exec cargo run --release -p ward-tests --bin ward-bench -- --quick "${@:2}"
fi
exec cargo run --release -p ward-tests --bin ward-bench -- --out docs/benchmarks.md "$@"
