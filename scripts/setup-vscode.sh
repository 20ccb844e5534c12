#!/usr/bin/env bash
# Everything the VS Code extension's tests need, installed offline but for the package
# registries (npm, Debian): code-server 4.100.3 (VS Code 1.100.3), playwright-core, Debian's
# Chromium and ripgrep, and the extension's own node_modules. Idempotent: a second run that
# finds everything in place takes about a second. See /work/shared/VSCODE.md for why each step.
#
# Installs into .cache/vscode-test-env/ (git-ignored; VIBRANT_VSCODE_ENV moves it).
# Usage: scripts/setup-vscode.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CODE_SERVER_VERSION=4.100.3
PLAYWRIGHT_VERSION=1.65.1
ENV_DIR=${VIBRANT_VSCODE_ENV:-$ROOT/.cache/vscode-test-env}
EXT_DIR=$ROOT/editors/vscode
APT_PACKAGES=(libkrb5-dev ripgrep chromium)

log() { printf '== setup-vscode: %s\n' "$*" >&2; }
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

# -- Debian packages ------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# -- code-server and playwright-core --------------------------------------------------------
STAMP=$ENV_DIR/.installed-code-server-$CODE_SERVER_VERSION-playwright-$PLAYWRIGHT_VERSION
CS=$ENV_DIR/node_modules/code-server
if [ ! -f "$STAMP" ]; then
    log "installing code-server $CODE_SERVER_VERSION and playwright-core $PLAYWRIGHT_VERSION into $ENV_DIR"
    mkdir -p "$ENV_DIR"
    rm -f "$ENV_DIR"/.installed-*
    [ -f "$ENV_DIR/package.json" ] || echo '{"name": "vibrant-vscode-test-env", "private": true}' \
        >"$ENV_DIR/package.json"
    # Its install scripts would download ripgrep from GitHub and need root's --unsafe-perm:
    # run none, then build what needs building by hand.
    (cd "$ENV_DIR" && npm install --no-save --ignore-scripts --loglevel=error \
        "code-server@$CODE_SERVER_VERSION" "playwright-core@$PLAYWRIGHT_VERSION")
    (cd "$ENV_DIR" && npm rebuild argon2 --loglevel=error >/dev/null)
    (
        cd "$CS/lib/vscode"
        npm install --omit=dev --ignore-scripts --loglevel=error
        mkdir -p node_modules/@vscode/ripgrep/bin
        ln -sf "$(command -v rg)" node_modules/@vscode/ripgrep/bin/rg
        # Without npm_config_yes, node-pty's script stops at an `npx node-gyp` prompt.
        npm_config_yes=true npm rebuild --unsafe-perm=true --loglevel=error >/dev/null
        # What code-server's own postinstall would have done.
        ln -sfn node_modules node_modules.asar
        (cd bin/remote-cli && ln -sfn code-linux.sh code-server)
        (cd bin/helpers && ln -sfn browser-linux.sh browser.sh)
        (cd extensions && npm install --omit=dev --unsafe-perm=true --loglevel=error >/dev/null)
    )
    touch "$STAMP"
fi

# -- the extension's own dependencies (typescript, @types/vscode, languageclient, vsce) -------
EXT_STAMP=$EXT_DIR/node_modules/.vibrant-lock-hash
lock_hash=$(sha256sum "$EXT_DIR/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$EXT_STAMP" 2>/dev/null)" != "$lock_hash" ]; then
    log "npm ci in editors/vscode"
    (cd "$EXT_DIR" && npm ci --loglevel=error)
    echo "$lock_hash" >"$EXT_STAMP"
fi

# The paths the test harness reads.
cat >"$ENV_DIR/paths.json" <<EOF
{
  "codeServer": "$CS/out/node/entry.js",
  "playwrightCore": "$ENV_DIR/node_modules/playwright-core",
  "chromium": "$(command -v chromium)"
}
EOF
log "ready: $ENV_DIR"
