#!/usr/bin/env bash
# shelfwatch installer for Debian/Ubuntu edge boxes (x86-64 with an NVIDIA GPU, or a Jetson).
#
#   sudo deploy/install.sh                    install, or upgrade an existing install
#   sudo deploy/install.sh --uninstall        remove the app and unit; keep config and state
#   sudo deploy/install.sh --uninstall --purge   ... and config, state, cache and the user
#
# Options:
#   --gpu auto|cuda|none   onnxruntime CUDA provider: auto = when an NVIDIA GPU is present (default)
#   --tarball FILE         install a prebuilt tree (package.json, package-lock.json, dist/, ...)
#                          instead of building this checkout; see deploy/GPU.md
#   --node PATH            node binary for the unit (default: `command -v node`), Node >= 20
#   --no-start             enable the service but do not (re)start it
#   --prefix DIR           install into DIR as a staging root, like DESTDIR: every file goes
#                          under DIR, the unit still names the real paths; no user is created
#                          and systemd is not touched (those steps are printed, not run)
#   --dry-run              print every step without changing anything
#   -h, --help
# Environment: SHELFWATCH_NPM=<command> replaces npm (tests use a stand-in);
#   SHELFWATCH_FFMPEG=<command> is the ffmpeg to look for (default: ffmpeg on PATH).
#
# Idempotent: run it again to upgrade. It never overwrites /etc/shelfwatch/shelfwatch.yaml or
# shelfwatch.env, and starts the service only once the config differs from the example.
set -euo pipefail

readonly USER_NAME=shelfwatch
readonly UNIT_NAME=shelfwatch.service
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
readonly SCRIPT_DIR SOURCE_DIR

MODE=install
GPU=auto
PREFIX=
DRY_RUN=false
PURGE=false
TARBALL=
NODE_BIN=
START=true
NPM=${SHELFWATCH_NPM:-npm}
FFMPEG=${SHELFWATCH_FFMPEG:-ffmpeg}
FRESH_CONFIG=false

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
step() { printf '==> %s\n' "$*"; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while (($#)); do
  case $1 in
    --gpu) [[ $# -ge 2 ]] || die "--gpu needs a value: auto, cuda or none"; GPU=$2; shift ;;
    --gpu=*) GPU=${1#*=} ;;
    --tarball) [[ $# -ge 2 ]] || die "--tarball needs a file"; TARBALL=$2; shift ;;
    --node) [[ $# -ge 2 ]] || die "--node needs a path"; NODE_BIN=$2; shift ;;
    --prefix) [[ $# -ge 2 ]] || die "--prefix needs a directory"; PREFIX=$2; shift ;;
    --prefix=*) PREFIX=${1#*=} ;;
    --dry-run) DRY_RUN=true ;;
    --no-start) START=false ;;
    --uninstall) MODE=uninstall ;;
    --purge) PURGE=true ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
case $GPU in auto|cuda|none) ;; *) die "--gpu must be auto, cuda or none, got '$GPU'" ;; esac
[[ $PURGE == false || $MODE == uninstall ]] || die "--purge only goes with --uninstall"
if [[ -n $PREFIX ]]; then
  [[ $PREFIX == /* ]] || PREFIX=$PWD/$PREFIX
  PREFIX=${PREFIX%/}
  [[ -n $PREFIX ]] || die "--prefix / is the real system: leave --prefix out instead"
fi

readonly ROOT=$PREFIX
readonly APP_DIR=$ROOT/opt/shelfwatch
readonly ETC_DIR=$ROOT/etc/shelfwatch
readonly STATE_DIR=$ROOT/var/lib/shelfwatch
readonly CACHE_DIR=$ROOT/var/cache/shelfwatch
readonly UNIT_PATH=$ROOT/etc/systemd/system/$UNIT_NAME

quote() {
  local out=() a
  for a in "$@"; do out+=("$(printf '%q' "$a")"); done
  printf '%s' "${out[*]}"
}
# Every change goes through one of these: printed first, executed unless --dry-run.
run() { printf '+ %s\n' "$(quote "$@")"; $DRY_RUN || "$@"; }
run_in() { local dir=$1; shift; printf '+ (cd %s && %s)\n' "$(quote "$dir")" "$(quote "$@")"; $DRY_RUN || (cd "$dir" && "$@"); }
# Changes to the machine itself (users, ownership, systemd): printed only under --prefix.
system() {
  if [[ -n $ROOT ]]; then printf '+ %s   # skipped: --prefix\n' "$(quote "$@")"; else run "$@"; fi
}

preflight() {
  if [[ -z $ROOT && $DRY_RUN == false && $EUID -ne 0 ]]; then
    die "installing into the system needs root: run it with sudo (or try --dry-run, or --prefix DIR)"
  fi
}

check_node() {
  NODE_BIN=${NODE_BIN:-$(command -v node || true)}
  [[ -n $NODE_BIN ]] || die "node not found: install Node.js >= 20 (e.g. https://github.com/nodesource/distributions), or pass --node PATH"
  [[ -x $NODE_BIN ]] || die "--node $NODE_BIN is not an executable file"
  local version major
  version=$("$NODE_BIN" -p 'process.versions.node') || die "$NODE_BIN does not run"
  major=${version%%.*}
  ((major >= 20)) || die "Node.js >= 20 needed, $NODE_BIN is $version"
  case $NODE_BIN in
    /home/*|/root/*|/run/user/*)
      local why="$NODE_BIN is under a home directory, which the unit hides from the service (ProtectHome=yes): install Node.js system-wide or pass --node"
      if [[ -n $ROOT ]]; then warn "$why"; else die "$why"; fi ;;
  esac
  step "node $version at $NODE_BIN"
}

# `stream` cameras (RTSP, V4L2 devices, video files) run ffmpeg from the service's PATH. Without
# it each such camera fails at start, and the agent exits with an error once every camera has
# stopped (systemd restarts it, over and over). Optional for snapshot, folder and replay cameras:
# a warning, like the WebGPU libraries, not a refusal.
check_ffmpeg() {
  local found config=$ETC_DIR/shelfwatch.yaml uses=""
  if [[ -f $config ]] && grep -Eq '^[^#]*type:[[:space:]]*stream\b' "$config" 2>/dev/null; then
    uses=" — and $config has stream cameras, which cannot start without it"
  fi
  found=$(command -v "$FFMPEG" 2>/dev/null || true)
  if [[ -z $found ]]; then
    warn "ffmpeg not found: \`stream\` cameras (RTSP, V4L2, video files) need it$uses: apt-get install ffmpeg"
    return
  fi
  case $found in
    /usr/bin/*|/usr/local/bin/*|/bin/*|/usr/sbin/*|/usr/local/sbin/*|/sbin/*) step "ffmpeg at $found" ;;
    *) warn "ffmpeg is $found, outside the service's PATH (/usr/local/bin:/usr/bin:/bin ...): \`stream\` cameras would not find it$uses; apt-get install ffmpeg" ;;
  esac
}

# Plain JPEG frames decode through libturbojpeg directly (models/turbojpeg.ts) when it is
# installed: the same pixels as libvips for about a third of the CPU. Optional, hence a warning.
check_turbojpeg() {
  if ! ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*libturbojpeg\.so\.0 "; then
    warn "libturbojpeg.so.0 not found: JPEG frames will decode through libvips, with about 2.5× the CPU: apt-get install libturbojpeg0 (Ubuntu, Jetson: libturbojpeg)"
  fi
}

# WebGPU (the provider after CUDA) reaches an NVIDIA GPU through Dawn → Vulkan, and NVIDIA's
# Vulkan driver (libGLX_nvidia.so.0) loads through GLVND. Minimal hosts and containers lack these;
# this set made WebGPU work on an NVIDIA H200 box where it had found no adapter (deploy/GPU.md).
WEBGPU_LIBS=(libvulkan.so.1 libGLdispatch.so.0 libGLX.so.0 libEGL.so.1)
check_webgpu_libs() {
  local have missing=() lib
  have=$(ldconfig -p 2>/dev/null || true)
  for lib in "${WEBGPU_LIBS[@]}"; do grep -q "^[[:space:]]*$lib " <<<"$have" || missing+=("$lib"); done
  if ((${#missing[@]})); then
    warn "WebGPU needs ${missing[*]} to reach the NVIDIA GPU (Vulkan loader and GLVND): apt-get install libvulkan1 libglvnd0 libglx0 libegl1"
  fi
}

# Sets ORT_INSTALL: the value of ONNXRUNTIME_NODE_INSTALL for onnxruntime-node's install script.
choose_gpu() {
  local arch found=false
  arch=$(uname -m)
  if [[ -e /dev/nvidia0 || -e /dev/nvgpu || -e /dev/nvhost-gpu ]] || command -v nvidia-smi >/dev/null 2>&1; then found=true; fi
  local want=$GPU
  [[ $want != auto ]] || { $found && want=cuda || want=none; }
  if [[ $want == cuda && $arch != x86_64 ]]; then
    # onnxruntime-node 1.30 publishes its CUDA provider for linux/x64 only (install-metadata.js).
    local why="onnxruntime-node has no prebuilt CUDA provider for linux/$arch (Jetson): the agent will use WebGPU or the CPU; see deploy/GPU.md"
    [[ $GPU == auto ]] || die "$why"
    warn "$why"
    want=none
  fi
  $found && check_webgpu_libs
  if [[ $want == cuda ]]; then
    ORT_INSTALL=cuda12
    step "GPU: installing onnxruntime's CUDA 12 provider (needs CUDA 12.x + cuDNN 9.x libraries at run time; deploy/GPU.md)"
    $found || warn "--gpu cuda, but no NVIDIA GPU is visible on this machine"
  else
    ORT_INSTALL=skip
    step "GPU: none (onnxruntime CPU and WebGPU providers only)"
  fi
}

create_user() {
  if [[ -z $ROOT ]] && id -u "$USER_NAME" >/dev/null 2>&1; then
    step "user $USER_NAME exists"
  else
    step "create system user $USER_NAME"
    system useradd --system --user-group --home-dir /var/lib/shelfwatch --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
  fi
  # GPU (Jetson: /dev/nvhost-*), /dev/dri/renderD* and /dev/video* are group-accessible.
  local group
  for group in video render; do
    if getent group "$group" >/dev/null 2>&1; then system usermod --append --groups "$group" "$USER_NAME"; fi
  done
}

make_dir() { # mode owner:group dir
  run install -d -m "$1" "$3"
  system chown "$2" "$3"
}

create_dirs() {
  step "directories"
  local dir
  for dir in "$ROOT/opt" "$ROOT/etc/systemd/system"; do
    if [[ ! -d $dir ]]; then run install -d -m 0755 "$dir"; fi
  done
  make_dir 0750 "root:$USER_NAME" "$ETC_DIR"
  make_dir 0750 "$USER_NAME:$USER_NAME" "$STATE_DIR"
  make_dir 0750 "$USER_NAME:$USER_NAME" "$STATE_DIR/models"
  make_dir 0750 "$USER_NAME:$USER_NAME" "$STATE_DIR/outbox"
  make_dir 0750 "$USER_NAME:$USER_NAME" "$CACHE_DIR"
}

# Builds the new app tree next to the old one, then swaps them: a failed build leaves the
# installed version untouched.
install_app() {
  local stage=$APP_DIR.new
  command -v "$NPM" >/dev/null 2>&1 || die "npm not found ('$NPM'): it comes with Node.js"
  step "application → $APP_DIR"
  run rm -rf "$stage"
  run install -d -m 0755 "$stage"
  if [[ -n $TARBALL ]]; then
    [[ -f $TARBALL ]] || die "--tarball $TARBALL: no such file"
    run tar -xzf "$TARBALL" -C "$stage" --no-same-owner
    run_in "$stage" env "ONNXRUNTIME_NODE_INSTALL=$ORT_INSTALL" "$NPM" ci --omit=dev --no-audit --no-fund
  else
    [[ -f $SOURCE_DIR/package.json && -f $SOURCE_DIR/package-lock.json ]] || die "$SOURCE_DIR is not a shelfwatch checkout (no package.json/package-lock.json)"
    local item
    for item in package.json package-lock.json tsconfig.json README.md LICENSE agent models pipelines deploy systemd; do
      if [[ -e $SOURCE_DIR/$item ]]; then run cp -R "$SOURCE_DIR/$item" "$stage/"; fi
    done
    # Dev dependencies (TypeScript) are needed for the build only; prune drops them after.
    run_in "$stage" env "ONNXRUNTIME_NODE_INSTALL=$ORT_INSTALL" "$NPM" ci --no-audit --no-fund
    run_in "$stage" "$NPM" run build
    run_in "$stage" "$NPM" prune --omit=dev --no-audit --no-fund
  fi
  if [[ $DRY_RUN == false ]]; then
    [[ -f $stage/dist/agent/cli.js ]] || die "the build made no $stage/dist/agent/cli.js"
    local cuda_lib=$stage/node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so
    [[ $ORT_INSTALL != cuda12 || -f $cuda_lib ]] || warn "no CUDA provider at $cuda_lib: the download failed or was blocked; the agent will fall back (deploy/GPU.md)"
  fi
  if [[ -e $APP_DIR ]]; then
    run rm -rf "$APP_DIR.old"
    run mv "$APP_DIR" "$APP_DIR.old"
  fi
  run mv "$stage" "$APP_DIR"
  run rm -rf "$APP_DIR.old"
}

install_config() {
  step "configuration in $ETC_DIR"
  local src dst pair
  for pair in "deploy/shelfwatch.example.yaml:shelfwatch.yaml" "systemd/shelfwatch.env.example:shelfwatch.env"; do
    src=$SOURCE_DIR/${pair%%:*}
    dst=$ETC_DIR/${pair#*:}
    [[ -f $src ]] || src=$APP_DIR/${pair%%:*}
    if [[ -e $dst ]]; then
      step "keeping $dst"
    else
      [[ $dst != */shelfwatch.yaml ]] || FRESH_CONFIG=true
      run install -m 0640 "$src" "$dst"
      system chown "root:$USER_NAME" "$dst"
    fi
  done
}

install_unit() {
  step "systemd unit → $UNIT_PATH"
  local src=$SOURCE_DIR/systemd/$UNIT_NAME
  [[ -f $src ]] || src=$APP_DIR/systemd/$UNIT_NAME
  local sed_expr="s|^ExecStart=/usr/bin/node |ExecStart=$(printf '%s' "$NODE_BIN" | sed 's/[&|\\]/\\&/g') |"
  printf "+ sed -e '%s' %s > %s\n" "$sed_expr" "$(quote "$src")" "$(quote "$UNIT_PATH")"
  if [[ $DRY_RUN == false ]]; then
    sed -e "$sed_expr" "$src" >"$UNIT_PATH.tmp"
    grep -qF "ExecStart=$NODE_BIN " "$UNIT_PATH.tmp" || die "could not put $NODE_BIN into the ExecStart of $src"
    chmod 0644 "$UNIT_PATH.tmp"
    mv "$UNIT_PATH.tmp" "$UNIT_PATH"
  fi
}

start_service() {
  system systemctl daemon-reload
  system systemctl enable "$UNIT_NAME"
  local example=$SOURCE_DIR/deploy/shelfwatch.example.yaml
  [[ -f $example ]] || example=$APP_DIR/deploy/shelfwatch.example.yaml
  if [[ $START == false ]]; then
    step "not starting (--no-start): systemctl restart $UNIT_NAME"
  elif [[ $FRESH_CONFIG == true ]] || cmp -s "$example" "$ETC_DIR/shelfwatch.yaml"; then
    step "$ETC_DIR/shelfwatch.yaml is still the example: edit it (and shelfwatch.env), then: systemctl start $UNIT_NAME"
  else
    system systemctl restart "$UNIT_NAME"
  fi
}

do_install() {
  check_node
  check_ffmpeg
  check_turbojpeg
  choose_gpu
  create_user
  create_dirs
  install_app
  install_config
  install_unit
  start_service
  local manifest=$APP_DIR/package.json version
  [[ -f $manifest ]] || manifest=$SOURCE_DIR/package.json
  version=$("$NODE_BIN" -p 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).version' "$manifest" 2>/dev/null || true)
  step "done: shelfwatch ${version:-?} ${ROOT:+in $ROOT }— logs: journalctl -u shelfwatch -f"
}

do_uninstall() {
  step "uninstall"
  if [[ -n $ROOT || -e $UNIT_PATH ]]; then
    # A unit that is already stopped or gone is fine: this step must not stop the uninstall.
    system systemctl disable --now "$UNIT_NAME" || warn "systemctl disable --now $UNIT_NAME failed; continuing"
  fi
  run rm -f "$UNIT_PATH"
  system systemctl daemon-reload
  run rm -rf "$APP_DIR" "$APP_DIR.new" "$APP_DIR.old"
  if [[ $PURGE == true ]]; then
    run rm -rf "$ETC_DIR" "$STATE_DIR" "$CACHE_DIR"
    if [[ -n $ROOT ]] || id -u "$USER_NAME" >/dev/null 2>&1; then system userdel "$USER_NAME"; fi
  else
    step "kept $ETC_DIR (config, secrets) and $STATE_DIR (models, outbox); --purge removes them"
  fi
  step "done"
}

if [[ $DRY_RUN == true ]]; then step "dry run: nothing is changed"; fi
preflight
if [[ $MODE == install ]]; then do_install; else do_uninstall; fi
