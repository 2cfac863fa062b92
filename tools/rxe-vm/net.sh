# Sourced inside the rxe VM: a second pair of "hosts" for two-device tests. A veth pair vA/vB with
# one soft-RoCE device per end (rxeA on 192.0.2.1, rxeB on 192.0.2.2). Both ends live in the root
# namespace (rxe sends only through it), so policy routing makes traffic to the other end leave
# through the veth instead of the local table.
ip link add vA type veth peer name vB
ip addr add 192.0.2.1/24 dev vA
ip addr add 192.0.2.2/24 dev vB
# Jumbo frames, as RoCE fabrics run them: rxe then uses a 4096-byte path MTU (1024 at MTU 1500),
# a quarter of the packets per message.
ip link set vA mtu 9000
ip link set vB mtu 9000
ip link set vA up
ip link set vB up
for k in all default vA vB; do sysctl -qw net.ipv4.conf.$k.rp_filter=0; done
for k in all vA vB; do sysctl -qw net.ipv4.conf.$k.accept_local=1; done
ip route add 192.0.2.1 dev vB src 192.0.2.2 table 100
ip route add 192.0.2.2 dev vA src 192.0.2.1 table 101
ip rule add pref 10 oif vB lookup 100
ip rule add pref 11 oif vA lookup 101
ip rule add pref 100 lookup local
ip rule del pref 0 lookup local
# Static neighbour entries: rxe resolves the peer's MAC when a QP connects, and a first packet
# sent before ARP completed was seen to stall a connection for minutes.
ip neigh replace 192.0.2.2 lladdr "$(cat /sys/class/net/vB/address)" dev vA nud permanent
ip neigh replace 192.0.2.1 lladdr "$(cat /sys/class/net/vA/address)" dev vB nud permanent
# RoCE assumes a lossless link (PFC on real switches). A veth hands each packet to the peer's
# per-CPU backlog, which drops beyond net.core.netdev_max_backlog (1000); with that default a
# stream of 1 MiB READs stalled the Debian 6.1 rxe (it stalls on retransmits). A backlog that
# never overflows is this harness's PFC.
sysctl -qw net.core.netdev_max_backlog=100000
rdma link add rxeA type rxe netdev vA
rdma link add rxeB type rxe netdev vB
sleep 1
# gid_index DEV IPV4: the index of DEV's GID ::ffff:IPV4 (never assume a fixed index).
gid_index() {
  local dev=$1 ip=$2 want i
  want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${ip//./ })
  for i in $(seq 0 31); do
    [ "$(cat /sys/class/infiniband/$dev/ports/1/gids/$i 2>/dev/null)" = "$want" ] && { echo $i; return 0; }
  done
  echo "no GID for $ip on $dev" >&2
  return 1
}
