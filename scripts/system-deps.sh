#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real: Prometheus (promtool), Alertmanager (amtool) and
# Chromium. Does nothing when they are already there. Needs root or sudo on a Debian/Ubuntu machine.
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packages' own services are not wanted (tests start their own, on loopback ports).
for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
  $sudo pkill -f "^/usr/bin/$svc" 2>/dev/null || true
done
