#!/usr/bin/env bash
# The lab's network: namespace NS with bridge labbr0 holding the host-side
# addresses (198.18.0.1/24, fd00:4791::1/64, no link-local address, so its
# GID table is 0 = default link-local, 1 = IPv4, 2 = IPv6). Guests join
# the bridge through taps (see ifup). Nothing outside the namespace.
#
#   netns.sh up NS | netns.sh down NS
set -euo pipefail
ns=$2
case $1 in
    up)
        # A namespace left by a run that died is deleted; one that still
        # holds processes belongs to a run that is not over (or to one of
        # an older lab.sh that took no lock): never pull it from under them.
        if ip netns list | grep -qx "$ns\( .*\)\?"; then
            pids=$(ip netns pids "$ns" | tr '\n' ' ')
            if [ -n "$pids" ]; then
                echo "netns.sh: namespace $ns exists and processes run in it ($pids):" \
                    "another lab run; wait for it, or end those processes if they are left over" >&2
                exit 3
            fi
            ip netns del "$ns"
        fi
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$ns" link add labbr0 type bridge forward_delay 0 stp_state 0
        ip -n "$ns" link set labbr0 addrgenmode none
        ip netns exec "$ns" sh -c 'echo 0 > /proc/sys/net/ipv6/conf/labbr0/accept_dad'
        ip -n "$ns" addr add 198.18.0.1/24 dev labbr0
        ip -n "$ns" -6 addr add fd00:4791::1/64 dev labbr0 nodad
        ip -n "$ns" link set labbr0 up
        ;;
    down)
        ip netns del "$ns" 2>/dev/null || true
        ;;
    *)
        echo "usage: netns.sh up|down NS" >&2
        exit 2
        ;;
esac
