#!/usr/bin/env bash
# `scripts/held-ports.sh [-v] LO HI`: how many TCP ports from 10000-65000 but outside LO-HI
# (the usual ephemeral range) a listener cannot bind now, because a connection still holds
# the port as its source port (open, or in TIME_WAIT for 60 s after it closed). The bench
# widens the range while it runs; it puts it back once this is 0, and CI checks that it
# is, so the next scenario's fixed ports bind. With -v, the first few such sockets on stderr.
set -euo pipefail
verbose=0
if [ "${1:-}" = -v ]; then verbose=1; shift; fi
ss -tanH | python3 -c '
import socket, sys
lo, hi, verbose = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
listening, candidates = set(), {}
for line in sys.stdin:
    fields = line.split()
    port = int(fields[3].rsplit(":", 1)[1])
    if fields[0] == "LISTEN":
        listening.add(port)
    elif 10000 <= port <= 65000 and not lo <= port <= hi:
        candidates.setdefault(port, " ".join(fields[:1] + fields[3:5]))
held = []
for port in sorted(set(candidates) - listening):
    # Bound as a listener would (SO_REUSEADDR, every address): a closed listener'"'"'s own
    # TIME_WAIT does not stop it, a source port does.
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("0.0.0.0", port))
    except OSError:
        held.append(port)
    finally:
        probe.close()
if verbose:
    for port in held[:5]:
        print("  " + candidates[port], file=sys.stderr)
print(len(held))
' "$1" "$2" "$verbose"
