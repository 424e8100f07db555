#!/usr/bin/env bash
# Watch pullwatch work without a cluster. It starts, all on 127.0.0.0/8 and all stopped at the end:
# a few local registries (one healthy, others broken in the ways nodes break: credentials needed,
# a missing tag, wrong certificate name, plain HTTP on the TLS port, nothing listening, a name that
# does not exist), a DNS server for them, a real containerd with its own root, socket and certs.d,
# and a fake Kubernetes API server (examples/demo_cluster.rs) with one pod stuck in ErrImagePull.
# Then: `pullwatch diagnose` against each registry; `targets` and `diagnose --via-runtime` along
# containerd's route (its mirror down, its upstream up); and the agent watching the registries,
# containerd and the node's pods, with its metrics and the PullDiagnosis Event it posts on the pod.
# The host's /etc/resolv.conf and /etc/hosts are never touched (pullwatch gets --resolv-conf).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked --quiet --bin pullwatch --example demo_cluster
pullwatch="$PWD/target/debug/pullwatch"
demo_cluster="$PWD/target/debug/examples/demo_cluster"

work=$(mktemp -d /tmp/pullwatch-demo.XXXXXX)
pids=()
cleanup() {
  exec 7>&- 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # containerd and the rest get 10 s to exit before their files go.
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# wait_until WHAT SECONDS COMMAND…: polls COMMAND every 0.1 s; gives up naming WHAT.
wait_until() {
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: gave up after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 0.1
  done
}
# exited PID: the child has exited (gone, or a zombie not yet waited for).
exited() { local state; read -r _ _ state _ 2>/dev/null < "/proc/$1/stat" || return 0; [ "$state" = Z ]; }
# forget PID: a child already waited for is not killed again at exit.
forget() {
  local kept=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}
say() { printf '\n== %s\n' "$*"; }

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

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in $tls_port $private_port $plain_port; do
  wait_until "the registry on port $port" 10 port_open "$port"
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

# A real containerd, as on a node: its own root, state and socket under $work, the CRI plugin
# pulling through $certs (containerd's config_path), native snapshotter, no CNI or cgroups.
certs="$work/certs.d" ctrd="$work/containerd"
ctrd_sock="$ctrd/containerd.sock"
mkdir -p "$certs" "$ctrd"
cat > "$ctrd/config.toml" <<TOML
version = 2
root = "$ctrd/root"
state = "$ctrd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$ctrd_sock"
[ttrpc]
  address = "$ctrd_sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  restrict_oom_score_adj = true
  disable_cgroup = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$ctrd/cni/bin"
    conf_dir = "$ctrd/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$certs"
TOML
env -u HTTPS_PROXY -u HTTP_PROXY -u NO_PROXY -u https_proxy -u http_proxy -u no_proxy \
  containerd --config "$ctrd/config.toml" > "$ctrd/log" 2>&1 &
pids+=($!)
ctrd_serving() { grep -qF "serving... address=$ctrd_sock" "$ctrd/log" && [ -S "$ctrd_sock" ]; }
wait_until "containerd to serve $ctrd_sock" 30 ctrd_serving || { cat "$ctrd/log"; exit 1; }

# containerd's route for 127.0.0.1:15443: a mirror first (nothing listens there: it is down), then
# the registry itself; both trust the demo CA. (containerd resolves names with the host's own
# resolver, which the demo leaves alone, so this registry is named by its address.)
mirror_addr=127.77.0.80:5000
mkdir -p "$certs/127.0.0.1:$tls_port"
cat > "$certs/127.0.0.1:$tls_port/hosts.toml" <<TOML
server = "https://127.0.0.1:$tls_port"
ca = "$work/ca.pem"

[host."https://$mirror_addr"]
  capabilities = ["pull", "resolve"]
  ca = "$work/ca.pem"
TOML

# Every pullwatch below runs with these flags (not repeated in the headers): the demo's resolver,
# containerd's socket and certs.d, and a 2 s timeout per check.
node_flags=(--resolv-conf "$work/resolv.conf" --runtime-endpoint "unix://$ctrd_sock"
  --containerd-certs-dir "$certs" --timeout 2s)
pw() { "$pullwatch" "${node_flags[@]}" "$@"; } # in the foreground only
echo
echo "Every pullwatch command below also gets: ${node_flags[*]}"

say "1. diagnose: the checklist for one image, from this machine (the demo CA via --ca-file)"
run() {
  echo
  echo "\$ pullwatch --ca-file $work/ca.pem diagnose $*"
  pw --ca-file "$work/ca.pem" diagnose "$@" || true
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
echo "\$ pullwatch --ca-file $work/ca.pem diagnose --output json registry.demo.test:$tls_port/team/app:1.0"
pw --ca-file "$work/ca.pem" diagnose --output json "registry.demo.test:$tls_port/team/app:1.0" || true

say "2. the runtime's real route: containerd's certs.d says mirror first, then the registry"
echo "(no --ca-file in this part: the CA comes from hosts.toml, as it does for containerd)"
echo
echo "\$ cat $certs/127.0.0.1:$tls_port/hosts.toml"
cat "$certs/127.0.0.1:$tls_port/hosts.toml"
echo
echo "\$ pullwatch targets"
pw targets || true
echo
echo "pullwatch walks the route like containerd: the mirror fails (nothing listens), the registry"
echo "answers, so the image is pullable; --via-runtime then has containerd really pull it (CRI PullImage)."
echo
echo "\$ pullwatch diagnose --via-runtime 127.0.0.1:$tls_port/team/app:1.0"
pw diagnose --via-runtime "127.0.0.1:$tls_port/team/app:1.0" || true

say "3. the agent on a node with a failing pod (a fake Kubernetes API server stands in for the cluster)"
# examples/demo_cluster.rs: the test harness's fake API server, one pod on demo-node stuck in
# ErrImagePull for a tag that does not exist, the kubelet's message in containerd's real words.
# It prints the Events it receives, and `kubectl describe pod` when its stdin closes.
pod_image="registry.demo.test:$private_port/team/app:1.1"
mkfifo "$work/cluster.in"
"$demo_cluster" "$pod_image" < "$work/cluster.in" > "$work/cluster.out" 2>&1 &
cluster_pid=$!
pids+=("$cluster_pid")
exec 7> "$work/cluster.in"
wait_until "the fake API server's kubeconfig" 10 grep -q '^kubeconfig ' "$work/cluster.out" \
  || { cat "$work/cluster.out"; exit 1; }
kubeconfig=$(sed -n 's/^kubeconfig //p' "$work/cluster.out")
echo
echo "\$ $demo_cluster $pod_image &"
grep -E '^(kubeconfig|pod) ' "$work/cluster.out"
echo
echo "\$ KUBECONFIG=$kubeconfig pullwatch --ca-file $work/ca.pem --docker-config $work/config.json \\"
echo "    agent --kubernetes on --node-name demo-node --listen 127.0.0.1:19746 --interval 5s … &"
# (the binary itself, not the pw function: $! must be the agent, for SIGTERM to reach it)
KUBECONFIG="$kubeconfig" "$pullwatch" "${node_flags[@]}" --ca-file "$work/ca.pem" --docker-config "$work/config.json" \
  agent --listen 127.0.0.1:19746 --api-socket "$work/pullwatch.sock" --node-name demo-node \
  --kubernetes on --interval 5s --manifest-interval 5s --runtime-check-interval 5s \
  --registry "registry.demo.test:$tls_port" --registry "registry.demo.test:$private_port" \
  --registry "plain.demo.test:$plain_port" --registry "registy.demo.test:$tls_port" \
  > "$work/agent.log" 2>&1 7>&- &
agent_pid=$!
pids+=("$agent_pid")
wait_until "the agent's /readyz" 30 curl -fsS http://127.0.0.1:19746/readyz \
  || { cat "$work/agent.log"; exit 1; }
wait_until "the PullDiagnosis Event on shop/web" 30 grep -q '^event PullDiagnosis shop/web' "$work/cluster.out" \
  || { cat "$work/agent.log"; exit 1; }
echo
echo "The agent found 127.0.0.1:$tls_port through containerd (its images and certs.d), checks every"
echo "registry every 5 s along its route, has containerd re-pull a digest it holds (runtime check), and"
echo "diagnosed the pod's failure at once. 127.0.0.1:$tls_port is up although its mirror is down: the"
echo "route falls back. The pod's failure is a series of its own, with the cause the node found."
metrics_re='^pullwatch_(registry_up|endpoint_failure_reason|runtime_up|runtime_check_success|container_pull_failing|image_pull_failures_total)\{'
runtime_checked() { curl -fsS http://127.0.0.1:19746/metrics | grep -q '^pullwatch_runtime_check_success{'; }
wait_until "the agent's first runtime check" 20 runtime_checked || true
echo
echo "\$ curl -s http://127.0.0.1:19746/metrics | grep -E '$metrics_re'"
curl -fsS http://127.0.0.1:19746/metrics | grep -E "$metrics_re" || true
echo
echo "The running agent, asked about the pod's image (with the node's credentials, it can list the tags):"
echo "\$ pullwatch diagnose --agent unix://$work/pullwatch.sock $pod_image"
"$pullwatch" diagnose --agent "unix://$work/pullwatch.sock" "$pod_image" || true
kill -TERM "$agent_pid"
wait "$agent_pid" && echo "(agent stopped cleanly on SIGTERM)"
forget "$agent_pid"

echo
echo "What \`kubectl describe pod -n shop web\` would show, abridged (no kubelet runs here, so only"
echo "pullwatch's Event is there): the pod as the fake API server holds it, and the Events posted to it."
exec 7>&-
wait_until "the fake API server to stop" 10 exited "$cluster_pid"
wait "$cluster_pid" || true
forget "$cluster_pid"
sed -n '/^Name:/,$p' "$work/cluster.out"
