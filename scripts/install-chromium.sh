#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the admin's browser test (tests/mailbox_app/admin/test_admin_browser.py).
# Idempotent. Never fails the caller: when it cannot install, it says why and exits 0, and the test
# then skips with a visible reason.
set -uo pipefail

CHROMIUM=${AWAKEN_CHROMIUM:-/usr/bin/chromium}
PACKAGES=(chromium fonts-liberation)

if [[ -x "$CHROMIUM" ]]; then
  echo "install-chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM") already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no apt-get on this machine; the browser test will be skipped"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install-chromium: not root and no password-less sudo; the browser test will be skipped"
    exit 0
  fi
fi

APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
echo "install-chromium: apt-get update"
"${APT[@]}" update || echo "install-chromium: apt-get update failed; trying the install anyway"
echo "install-chromium: apt-get install ${PACKAGES[*]}"
if ! "${APT[@]}" install -y --no-install-recommends "${PACKAGES[@]}"; then
  echo "install-chromium: could not install ${PACKAGES[*]}; the browser test will be skipped"
  exit 0
fi

if [[ -x "$CHROMIUM" ]]; then
  echo "install-chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
  echo "install-chromium: installed, but $CHROMIUM is still missing; the browser test will be skipped"
fi
exit 0
