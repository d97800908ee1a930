# Sourced by scripts/test: the non-Python tools the mobile-bridge tests and the chat-page test drive.
# cmake, g++, the JDK and node/npm come with the machine; from Debian (as root, when missing):
# kotlin (JVM test), gcc/g++-aarch64-linux-gnu + qemu-user (the arm64 cross build, run under
# qemu-aarch64), chromium + chromium-driver (the chat page in a headless browser, through selenium);
# from npm (cached): the Node-API headers and ohos-typescript (ArkTS type check).
MCV_APT=""
command -v kotlinc >/dev/null 2>&1 || MCV_APT="$MCV_APT kotlin"
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || MCV_APT="$MCV_APT gcc-aarch64-linux-gnu g++-aarch64-linux-gnu"
command -v qemu-aarch64 >/dev/null 2>&1 || MCV_APT="$MCV_APT qemu-user"
command -v chromium >/dev/null 2>&1 || MCV_APT="$MCV_APT chromium"
command -v chromedriver >/dev/null 2>&1 || MCV_APT="$MCV_APT chromium-driver"
if [ -n "$MCV_APT" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $MCV_APT) >/dev/null 2>&1 \
      || echo "warning: could not install$MCV_APT (apt-get)" >&2
  else
    echo "warning: install Debian's$MCV_APT for the mobile-bridge and chat-page tests" >&2
  fi
fi
MCV_NPM="${MINICPMV_EDGE_CACHE:-$HOME/.cache/minicpmv-edge}"
if [ ! -f "$MCV_NPM/napi/node_modules/node-api-headers/include/node_api.h" ] && command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix "$MCV_NPM/napi" node-api-headers@1 >/dev/null 2>&1 \
    || echo "warning: could not install node-api-headers from npm" >&2
fi
if [ ! -f "$MCV_NPM/ohos-typescript/node_modules/ohos-typescript/lib/typescript.js" ] && command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix "$MCV_NPM/ohos-typescript" ohos-typescript@4.9.5-r9 >/dev/null 2>&1 \
    || echo "warning: could not install ohos-typescript from npm" >&2
fi
