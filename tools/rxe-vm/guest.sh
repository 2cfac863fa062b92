# Runs inside the rxe VM (tools/rxe-vm/test.sh starts it): the RDMA test binaries on one rxe
# device and on two devices joined by a veth pair, then perftest beside our own bench.
# Inputs (from the host's environment): RXE_TEST_BINS, RXE_BENCH_BIN, RXE_TRAIN_CMD (optional).
set -u
. tools/rxe-vm/net.sh
fail=0
diagnose() { # what the kernel saw, printed after a failed step
  echo "--- per-CPU backlog: packets processed / dropped (hex, /proc/net/softnet_stat)"
  awk '{print "cpu" NR-1, $1, $2}' /proc/net/softnet_stat
  for dev in rxe0 rxeA rxeB; do rdma statistic show link "$dev/1" 2>/dev/null; done
  ip -s link show vA 2>/dev/null
  dmesg | tail -n 15
}
step() { # step NAME SECONDS COMMAND...: run under a time limit, report, remember failures
  local name=$1 t=$2 t0=$SECONDS rc
  shift 2
  echo "=== $name"
  timeout -k 5 "$t" "$@"
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ $rc = 0 ] || { fail=1; diagnose; }
}
export SWARM_RDMA_REQUIRE=1
# Under emulation a 16 MiB transfer outlasts the default 268 ms ACK timeout; the spurious retry
# (rxe counter completer_retry_err, with no packet lost) then stalled the Debian 6.1 rxe's QP.
export SWARM_RDMA_ACK_TIMEOUT=20
# Each test on its own, with its own time limit, so one hang costs minutes, not the stage.
tests() { "$1" --list 2>/dev/null | sed -n 's/: test$//p'; }
for bin in $RXE_TEST_BINS; do
  for t in $(tests "$bin" | grep -E "${RXE_TEST_FILTER:-.}"); do
    SWARM_RDMA_DEV_A=rxe0 SWARM_RDMA_IP_A=127.0.0.1 SWARM_RDMA_DEV_B=rxe0 SWARM_RDMA_IP_B=127.0.0.1 \
      step "one device (rxe0 on lo): $t" "${RXE_TEST_TIMEOUT:-240}" "$bin" "$t" --exact --nocapture --test-threads=1
    [ -n "${RXE_ONE_DEVICE_ONLY:-}" ] && continue
    SWARM_RDMA_DEV_A=rxeA SWARM_RDMA_IP_A=192.0.2.1 SWARM_RDMA_DEV_B=rxeB SWARM_RDMA_IP_B=192.0.2.2 \
      step "two devices (rxeA/rxeB over veth): $t" "${RXE_TEST_TIMEOUT:-240}" "$bin" "$t" --exact --nocapture --test-threads=1
  done
done
if [ -n "${RXE_TRAIN_CMD:-}" ]; then
  step "4-process training over RDMA" 900 bash -c "$RXE_TRAIN_CMD"
fi
if [ -n "${RXE_BENCH_BIN:-}" ]; then
  step "bench: perftest vs rdma-transport on rxe0" 600 bash tools/rxe-vm/bench.sh "$RXE_BENCH_BIN"
fi
exit $fail
