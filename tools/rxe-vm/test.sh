#!/usr/bin/env bash
# The soft-RoCE stage of the test suite: builds the RDMA test binaries, the bench and `swarm` on
# the host (the guest only runs them), boots the rxe VM once and runs tools/rxe-vm/guest.sh inside
# it: the RDMA tests, a 4-process training run over RDMA (compared with the same run in-process,
# tools/rxe-vm/train.sh) and perftest beside our bench.
# Exit 125 = the VM itself failed (infrastructure), anything else non-zero = a test failed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
cd "$repo"
artifacts() { # the executables cargo reports for a build, one per line
  python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])'
}
export RXE_TEST_BINS
RXE_TEST_BINS=$(cargo test -p swarmsgd-rdma --tests --no-run --message-format=json 2>/dev/null | artifacts | tr '\n' ' ')
export RXE_BENCH_BIN
RXE_BENCH_BIN=$(cargo build --release -p swarmsgd-rdma --features cli --example rdma_bench --message-format=json 2>/dev/null | artifacts | tail -1)
swarm=$(cargo build --profile test -p trainer --bin swarm --message-format=json 2>/dev/null | artifacts | tail -1)
[ -n "$RXE_TEST_BINS" ] && [ -x "$RXE_BENCH_BIN" ] && [ -x "$swarm" ] || { echo "rxe-vm/test.sh: build failed" >&2; exit 1; }
# The training check: the in-process reference runs here, the 4 RDMA ranks in the guest.
train_out=$repo/target/rxe-train
rm -rf "$train_out" && mkdir -p "$train_out"
bash tools/rxe-vm/train.sh host "$swarm" "$train_out"
export RXE_TRAIN_CMD="bash tools/rxe-vm/train.sh guest '$swarm' '$train_out'"
t0=$SECONDS
set +e
RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-1800} bash tools/rxe-vm/run.sh 'bash tools/rxe-vm/guest.sh'
rc=$?
set -e
echo "rxe-vm/test.sh: VM stage took $((SECONDS - t0)) s, exit $rc"
[ $rc != 125 ] || echo "rxe-vm/test.sh: exit 125 is an INFRASTRUCTURE failure (VM did not boot or hung), not a test failure" >&2
[ $rc = 0 ] || exit $rc
bash tools/rxe-vm/train.sh compare "$train_out"
