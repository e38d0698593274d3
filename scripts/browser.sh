#!/usr/bin/env bash
# Debian's chromium for the dashboard test (tests/test_history.py, driven by playwright from .venv), installed
# once with apt-get (as root). Nothing else is downloaded: playwright's own browser download is never used.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/browser.sh: installing chromium needs root (apt-get install chromium)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
