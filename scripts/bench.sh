#!/usr/bin/env bash
# Ward's benchmark (issues #3, #7): install the Debian peers used as baselines (stunnel4,
# openssh-server, socat) and linux-perf (for the profiles) when missing and we may, build the release
# `ward` binary (the gateway and clients run as their own processes), then run ward-bench in release
# mode and write docs/benchmarks.md.
#   scripts/bench.sh            full run (~3 min), writes docs/benchmarks.md
#   scripts/bench.sh --quick    smoke run (~40 s), prints only
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v stunnel4 >/dev/null || missing+=(stunnel4)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v socat >/dev/null || missing+=(socat)
command -v perf >/dev/null || missing+=(linux-perf)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench.sh: installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "bench.sh: ${missing[*]} missing (install them as root); their rows will be skipped" >&2
  fi
fi
if command -v perf >/dev/null && ! perf record -o /dev/null -- true >/dev/null 2>&1; then
  echo "bench.sh: perf cannot record here (kernel.perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null)); profiles will be skipped" >&2
fi

# Built separately, as a user builds `ward` (building both in one command unifies features and would
# produce a different `ward`).
cargo build --release -p ward --bin ward
cargo build --release -p ward-tests --bin ward-bench
if [ "${1:-}" = "--quick" ]; then
  exec target/release/ward-bench --quick --ward target/release/ward "${@:2}"
fi
exec target/release/ward-bench --ward target/release/ward --out docs/benchmarks.md "$@"
