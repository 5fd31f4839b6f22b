# One etcd for a script, on free loopback ports, sourced by the bench
# scripts. The caller defines $work (a scratch directory) and the array
# pids (killed on exit); start_etcd sets $registry.
#
#   source scripts/lib/etcd.sh
#   start_etcd            # etcd://127.0.0.1:PORT in $registry

command -v etcd >/dev/null || { echo "etcd is missing: apt-get install etcd-server" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_etcd() {
  local client peer
  client=$(free_port); peer=$(free_port)
  etcd --name bench --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$client/health')" 2>/dev/null && {
      registry="etcd://127.0.0.1:$client"
      return 0
    }
    sleep 0.1
  done
  echo "etcd did not start:" >&2; cat "$work/etcd.log" >&2
  return 1
}
