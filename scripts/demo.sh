#!/usr/bin/env bash
# Watch pullwatch work without a cluster: starts a few local registries (one healthy, others
# broken in the ways nodes break: wrong certificate name, plain HTTP on the TLS port, nothing
# listening, a name that does not exist), a local DNS server for them, and runs
# `pullwatch diagnose` against each. Everything listens on 127.0.0.0/8 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked --quiet
pullwatch="$PWD/target/debug/pullwatch"

work=$(mktemp -d /tmp/pullwatch-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

dns_ip=127.77.0.53
tls_port=15443 private_port=15444 plain_port=15000 closed_port=15999

# A CA and a certificate for registry.demo.test, made here and trusted only via --ca-file.
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=pullwatch demo CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=registry.demo.test" \
  -keyout "$work/registry.key" -out "$work/registry.csr" 2>/dev/null
printf 'subjectAltName=DNS:registry.demo.test,IP:127.0.0.1\n' > "$work/san.ext"
openssl x509 -req -in "$work/registry.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 30 -extfile "$work/san.ext" -out "$work/registry.pem" 2>/dev/null

start_registry() { # name addr [tls] [htpasswd-file]
  local name=$1 addr=$2 tls=${3:-} htpasswd=${4:-}
  mkdir -p "$work/$name"
  {
    printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n' "$work/$name/data"
    printf 'http:\n  addr: %s\n' "$addr"
    [ -n "$tls" ] && printf '  tls:\n    certificate: %s\n    key: %s\n' "$work/registry.pem" "$work/registry.key"
    [ -n "$htpasswd" ] && printf 'auth:\n  htpasswd:\n    realm: demo\n    path: %s\n' "$htpasswd"
  } > "$work/$name/config.yml"
  docker-registry serve "$work/$name/config.yml" > "$work/$name/log" 2>&1 &
  pids+=($!)
}
htpasswd -Bbn demo s3cret > "$work/htpasswd"
start_registry secure "127.0.0.1:$tls_port" tls
start_registry private "127.0.0.1:$private_port" tls "$work/htpasswd"
start_registry plain "127.0.0.1:$plain_port"

# DNS: demo names resolve to loopback; other names under demo.test are NXDOMAIN.
dnsmasq --keep-in-foreground --no-resolv --no-hosts --conf-file=/dev/null --bind-interfaces \
  --listen-address="$dns_ip" --port=53 --local=/demo.test/ \
  --address=/registry.demo.test/127.0.0.1 --address=/other-name.demo.test/127.0.0.1 \
  --address=/plain.demo.test/127.0.0.1 --pid-file="$work/dnsmasq.pid" 2>"$work/dnsmasq.log" &
pids+=($!)
printf 'nameserver %s\noptions timeout:1 attempts:1\n' "$dns_ip" > "$work/resolv.conf"

for port in $tls_port $private_port $plain_port; do
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

# A tiny real image (one layer, one config) pushed over the registry API: team/app:1.0 and :1.2.
push_image() { # port repository tag [user:password]
  local base="https://127.0.0.1:$1/v2/$2" auth=()
  [ -n "${4:-}" ] && auth=(-u "$4")
  local dir; dir=$(mktemp -d "$work/image.XXXXXX")
  echo "hello from pullwatch's demo" > "$dir/hello.txt"
  tar -C "$dir" -czf "$dir/layer.tar.gz" hello.txt
  local diff_id; diff_id=$(gzip -dc "$dir/layer.tar.gz" | sha256sum | cut -d' ' -f1)
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' "$diff_id" > "$dir/config.json"
  upload() { # file → digest
    local digest="sha256:$(sha256sum "$1" | cut -d' ' -f1)" location
    location=$(curl -fsS --cacert "$work/ca.pem" "${auth[@]}" -X POST -D - -o /dev/null "$base/blobs/uploads/" \
      | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    case "$location" in http*) ;; *) location="https://127.0.0.1:$port_for_upload$location" ;; esac
    curl -fsS --cacert "$work/ca.pem" "${auth[@]}" -X PUT -H 'Content-Type: application/octet-stream' \
      --data-binary "@$1" "$location&digest=$digest" -o /dev/null
    echo "$digest"
  }
  port_for_upload=$1
  local layer config
  layer=$(upload "$dir/layer.tar.gz"); config=$(upload "$dir/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$config" "$(stat -c %s "$dir/config.json")" "$layer" "$(stat -c %s "$dir/layer.tar.gz")" > "$dir/manifest.json"
  curl -fsS --cacert "$work/ca.pem" "${auth[@]}" -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$dir/manifest.json" "$base/manifests/$3" -o /dev/null
}
push_image "$tls_port" team/app 1.0
push_image "$private_port" team/app 1.0 demo:s3cret
push_image "$private_port" team/app 1.2 demo:s3cret
printf '{"auths":{"registry.demo.test:%s":{"auth":"%s"}}}' "$private_port" "$(printf demo:s3cret | base64)" > "$work/config.json"

run() {
  echo
  echo "\$ pullwatch diagnose $*"
  "$pullwatch" --resolv-conf "$work/resolv.conf" --ca-file "$work/ca.pem" --timeout 2s diagnose "$@" || true
}
run "registry.demo.test:$tls_port/team/app:1.0"
run "registry.demo.test:$private_port/team/app:1.0"
run --docker-config "$work/config.json" "registry.demo.test:$private_port/team/app:1.1"
run "other-name.demo.test:$tls_port/team/app:1.0"
run "plain.demo.test:$plain_port/team/app:1.0"
run "registry.demo.test:$closed_port/team/app:1.0"
run "registy.demo.test:$tls_port/team/app:1.0"
run "Team/App:1.0"
echo
echo "\$ pullwatch diagnose --output json registry.demo.test:$tls_port/team/app:1.0"
"$pullwatch" --resolv-conf "$work/resolv.conf" --ca-file "$work/ca.pem" --timeout 2s \
  diagnose --output json "registry.demo.test:$tls_port/team/app:1.0" || true

# The main job: the agent checks the same registries continuously and exports metrics.
echo
echo "\$ pullwatch agent --registry … (every 5s; metrics on 127.0.0.1:19746)"
"$pullwatch" --resolv-conf "$work/resolv.conf" --ca-file "$work/ca.pem" --timeout 2s \
  agent --listen 127.0.0.1:19746 --api-socket "$work/pullwatch.sock" --node-name demo-node \
  --kubernetes off --interval 5s --manifest-interval 5s --runtime-check-interval 0 \
  --registry "registry.demo.test:$tls_port" --registry "registry.demo.test:$private_port" \
  --registry "plain.demo.test:$plain_port" --registry "registy.demo.test:$tls_port" \
  > "$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
for _ in $(seq 100); do
  curl -fsS -o /dev/null http://127.0.0.1:19746/readyz 2>/dev/null && break
  sleep 0.2
done
echo "\$ curl -s http://127.0.0.1:19746/metrics | grep -E '^pullwatch_(registry_up|endpoint_failure_reason)'"
curl -fsS http://127.0.0.1:19746/metrics | grep -E '^pullwatch_(registry_up|endpoint_failure_reason)' || true
echo
echo "\$ pullwatch diagnose --agent unix://$work/pullwatch.sock registry.demo.test:$tls_port/team/app:1.0"
"$pullwatch" diagnose --agent "unix://$work/pullwatch.sock" "registry.demo.test:$tls_port/team/app:1.0" || true
kill -TERM "$agent_pid"
wait "$agent_pid" && echo "(agent stopped cleanly on SIGTERM)"
