# Sourced by scripts/test: the non-Python tools the mobile-bridge tests drive.
# cmake, g++, the JDK and node/npm come with the machine; kotlinc comes from Debian;
# the Node-API headers from the npm registry (cached).
if ! command -v kotlinc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kotlin) >/dev/null 2>&1 \
      || echo "warning: could not install kotlin (apt-get)" >&2
  else
    echo "warning: kotlinc not found; install Debian's 'kotlin' package for the JVM bridge test" >&2
  fi
fi
NAPI_DIR="${MINICPMV_EDGE_CACHE:-$HOME/.cache/minicpmv-edge}/napi"
if [ ! -f "$NAPI_DIR/node_modules/node-api-headers/include/node_api.h" ] && command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix "$NAPI_DIR" node-api-headers@1 >/dev/null 2>&1 \
    || echo "warning: could not install node-api-headers from npm" >&2
fi
