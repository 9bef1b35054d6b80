#!/usr/bin/env bash
# Installs the S3 server the s3 plugin's tests run against: moto[server] (a real S3 HTTP
# server, in memory) and boto3 (the interop client), in a venv under target/ so the
# system's Python stays untouched and `cargo clean` removes it.
#
# Usage: scripts/setup-s3-test-server.sh [VENV_DIR]   (default: target/moto-venv)
# The tests find the venv at $PLUGFS_MOTO_VENV or <repo>/target/moto-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-${PLUGFS_MOTO_VENV:-${CARGO_TARGET_DIR:-target}/moto-venv}}

# Already installed: nothing to do (the check imports what the tests import).
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import moto.server, boto3, flask_cors' 2>/dev/null; then
    exit 0
fi
command -v python3 >/dev/null || { echo "setup-s3-test-server: python3 missing (apt-get install python3 python3-venv)" >&2; exit 1; }
python3 -c 'import venv, ensurepip' 2>/dev/null || {
    echo "setup-s3-test-server: python3 cannot make venvs (apt-get install python3-venv python3-pip)" >&2
    exit 1
}
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6' 'boto3>=1.34,<2'
"$venv/bin/python" -c 'import moto.server, boto3' 
echo "setup-s3-test-server: moto and boto3 installed in $venv"
