#!/usr/bin/env bash
# Installs the Home Assistant Core release that tests/home_assistant.rs runs against into a venv (default
# target/home-assistant), with its MQTT integration's client library and the frontend (Home Assistant
# starts in recovery mode without it). Does nothing when that release is already there.
#   tests/install-home-assistant.sh [DIR]
# 2025.4.4 is the newest release that installs on Python 3.13.0 (2025.5+ need 3.13.2); the interpreter is
# python3.13 from PATH or pyenv. Home Assistant's own package_constraints.txt, taken from its wheel, pins
# every dependency, so pip installs without backtracking (about 2 minutes on 2 cores).
set -euo pipefail

version=2025.4.4
dir=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/home-assistant}
if [ -x "$dir/bin/hass" ] && [ "$(cat "$dir/face-edge-installed" 2>/dev/null)" = "$version" ]; then
  echo "Home Assistant $version: already in $dir"
  exit 0
fi

python=""
for candidate in python3.13 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3; do
  # (pyenv's shim for python3.13 exists even when no 3.13 is selected: it must also run)
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then
    python=$(command -v "$candidate"); break
  fi
done
if [ -z "$python" ]; then
  echo "Home Assistant $version needs Python 3.13 (python3.13 on PATH or pyenv's 3.13.0); not installed" >&2
  exit 3
fi

echo "Home Assistant $version: installing into $dir with $python"
rm -rf "$dir"
"$python" -m venv "$dir"
pip=("$dir/bin/pip" --disable-pip-version-check --quiet)
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"${pip[@]}" download --no-deps --dest "$wheels" "homeassistant==$version"
wheel=$(ls "$wheels"/homeassistant-*.whl)
"$dir/bin/python" -c 'import sys, zipfile; sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read("homeassistant/package_constraints.txt").decode())' \
  "$wheel" > "$wheels/constraints.txt"
# paho-mqtt is the MQTT integration's requirement and the frontend a dependency of every start; both
# versions come from the constraints. The tests start Home Assistant with --skip-pip: nothing is
# fetched at run time.
"${pip[@]}" install --constraint "$wheels/constraints.txt" "$wheel" paho-mqtt home-assistant-frontend
echo "$version" > "$dir/face-edge-installed"
echo "Home Assistant $version: installed in $dir"
