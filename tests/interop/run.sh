#!/usr/bin/env bash
# Interop: the upstream Python client (dflockd-client 2.1.1) against this
# server. Builds target/release/dflockd, starts it on three free loopback
# ports (one plain, one with --auth-token, one with --tls-cert/--tls-key
# and a self-signed certificate made with openssl), runs scenarios.py;
# then starts the scripted server for clients (`dflockd conformance
# serve`) and runs client_scenarios.py, the same client against the
# scenarios of spec/conformance/client/ it supports. Stops every process
# it started, by PID, on exit. Exits non-zero if anything fails.
#
# Needs: python3 with `pip install --ignore-requires-python dflockd-client==2.1.1`,
# and openssl.
set -euo pipefail
cd "$(dirname "$0")/../.."

python3 -c 'import dflockd_client' 2>/dev/null || {
  echo "interop: dflockd-client is not installed;" \
       "run: pip install --ignore-requires-python dflockd-client==2.1.1" >&2
  exit 1
}

command -v openssl >/dev/null || {
  echo "interop: openssl is needed for the TLS scenario's certificate" >&2
  exit 1
}

cargo build --release --bin dflockd
bin="${CARGO_TARGET_DIR:-target}/release/dflockd"

pids=()
logs=$(mktemp -d)
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$logs"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start NAME ARGS...: starts a server, waits until it accepts connections,
# and sets $addr. (Not run in a subshell, so $pids keeps every server.)
start() {
  local name=$1; shift
  local port
  port=$(free_port)
  "$bin" --host 127.0.0.1 --port "$port" "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),timeout=1).close()" 2>/dev/null; then
      addr="127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "interop: server $name did not start:" >&2
  cat "$logs/$name.log" >&2
  return 1
}

token="interop-$RANDOM$RANDOM"
start plain
DFLOCKD_ADDR=$addr
start auth --auth-token "$token"
DFLOCKD_AUTH_ADDR=$addr
# A self-signed certificate for 127.0.0.1 and localhost; it is its own CA.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
  -keyout "$logs/key.pem" -out "$logs/cert.pem" 2>"$logs/openssl.log" || {
  cat "$logs/openssl.log" >&2
  exit 1
}
start tls --tls-cert "$logs/cert.pem" --tls-key "$logs/key.pem"
DFLOCKD_TLS_ADDR=$addr
export DFLOCKD_ADDR DFLOCKD_AUTH_ADDR DFLOCKD_AUTH_TOKEN="$token"
export DFLOCKD_TLS_ADDR DFLOCKD_TLS_CA="$logs/cert.pem"

python3 tests/interop/scenarios.py

# The scripted server of spec/conformance/client/: it prints
# `main ADDR peer ADDR control ADDR` first.
"$bin" conformance serve >"$logs/serve.log" 2>&1 &
pids+=($!)
control=""
for _ in $(seq 1 200); do
  control=$(head -n 1 "$logs/serve.log" | sed -n 's/.* control \([0-9.:]*\)$/\1/p')
  if [ -n "$control" ]; then break; fi
  if ! kill -0 "${pids[-1]}" 2>/dev/null; then break; fi
  sleep 0.05
done
if [ -z "$control" ]; then
  echo "interop: the scripted server did not start:" >&2
  cat "$logs/serve.log" >&2
  exit 1
fi
DFLOCKD_SCRIPTED_CONTROL=$control python3 tests/interop/client_scenarios.py
