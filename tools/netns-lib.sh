# Sourced by the scripts that run ranks on a rate-limited link (tools/bench-overlap.sh,
# tools/emulator-fidelity.sh): a network namespace whose loopback carries at most a given rate
# (`tc qdisc ... tbf`; this kernel has no netem), and 4 SwarmSGD ranks launched inside it.
# Expects: $root (the checkout), NETNS_TOOL (the script's name, for messages).

netns_require_root() {
  [ "$(id -u)" -eq 0 ] || { echo "$NETNS_TOOL: needs root (ip netns, tc)" >&2; exit 2; }
  command -v tc >/dev/null || { echo "$NETNS_TOOL: tc missing: apt-get install iproute2" >&2; exit 2; }
}

# netns_build: builds swarm and launcher (release) unless SKIP_BUILD=1; sets $swarm, $launcher.
netns_build() {
  echo "$NETNS_TOOL: building swarm and launcher (release)" >&2
  [ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet -p trainer -p launcher --bins
  local target="${CARGO_TARGET_DIR:-$root/target}"
  swarm="$target/release/swarm"
  launcher="$target/release/launcher"
}

# netns_create: a fresh namespace $ns with its loopback up and a scratch directory $work, both
# removed at exit (KEEP=1 keeps $work).
netns_create() {
  ns="swarm-$NETNS_TOOL-$$"
  work="$(mktemp -d "/tmp/$NETNS_TOOL.XXXXXX")"
  trap netns_cleanup EXIT
  ip netns add "$ns"
  ip netns exec "$ns" ip link set lo up
}

netns_cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "$NETNS_TOOL: runs kept in $work" >&2; else rm -rf "$work"; fi
}

# netns_set_rate GBIT: the namespace's loopback carries at most GBIT Gbit/s (all ranks share it,
# as ranks share a NIC); 0 removes the limit. The bucket holds 2 ms of traffic (at least 256 KB),
# so bursts stay short beside a model of megabytes.
netns_set_rate() {
  ip netns exec "$ns" tc qdisc del dev lo root 2>/dev/null || true
  if [ "$1" != 0 ]; then
    local burst
    burst="$(python3 -c "print(max(262144, int(float('$1') * 1e9 / 8 * 0.002)))")"
    ip netns exec "$ns" tc qdisc add dev lo root tbf rate "${1}gbit" burst "$burst" latency 200ms
  fi
}

# netns_ranks OUT RANKS [swarm train flags...]: RANKS ranks over tcp in the namespace, outputs in
# OUT (rank-K/ directories), log in OUT.log; on failure prints the log's tail and exits.
netns_ranks() {
  local out="$1" ranks="$2"
  shift 2
  ip netns exec "$ns" "$launcher" local -n "$ranks" --master-addr 127.0.0.1 --timeout 900 \
    --summary "$out.json" -- "$swarm" train --transport tcp --quiet --out "$out" "$@" \
    >"$out.log" 2>&1 || {
    echo "$NETNS_TOOL: run $(basename "$out") failed; its log:" >&2
    tail -n 30 "$out.log" >&2
    exit 1
  }
}
