#!/usr/bin/env bash
# Install the system packages the test suite needs, with apt-get, only when missing:
#   - prometheus (Debian package: the Prometheus server and promtool)
#   - make, and python3-venv when the system python lacks ensurepip (fresh CI machines)
#   - Java 17 and Maven, for the Apache Kafka broker (make kafka fetches its jars)
# A no-op on a machine that already has them.
set -euo pipefail

packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
command -v make >/dev/null 2>&1 || packages+=(make)
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
python=${PYTHON:-python3}
if command -v "$python" >/dev/null 2>&1 && ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=(python3-venv)
fi

if ((${#packages[@]} == 0)); then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_deps: missing ${packages[*]} and no apt-get here; install them by hand" >&2
    exit 1
fi
sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || { echo "install_system_deps: need root or sudo to install ${packages[*]}" >&2; exit 1; }
    sudo=(sudo)
fi

# Keep package scripts from starting services (a system Prometheus on :9090 would collide
# with the tests' own): policy-rc.d exit 101 = "action forbidden", removed afterwards.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    "${sudo[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

echo "install_system_deps: installing ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
command -v promtool >/dev/null 2>&1 || { echo "install_system_deps: promtool still missing" >&2; exit 1; }
