#!/usr/bin/env bash
# Build an offline base image for the project image: Debian 12 (bookworm) minbase with Python 3.11,
# pip and venv, made with debootstrap and `docker import`. No image registry is needed: only a
# Debian package mirror (the one apt already uses on this host, by default). The image is made for
# linux/amd64 (what ml.m5 and ml.c5 instances run) whatever this host is.
#
#   docker/build_base_image.sh [--name NAME] [--platform PLATFORM] [--ca-bundle PATH] [--mirror URL]
#                              [--include PKGS] [--force] [--print-mirror]
#
#   --name NAME        image name (default: $BASE_IMAGE_NAME or fraud-detection-base:bookworm)
#   --ca-bundle PATH   copy this PEM bundle into the image as /etc/ssl/certs/ca-certificates.crt
#                      (default: none). Build hosts behind a TLS-inspecting proxy pass
#                      /etc/ssl/certs/ca-certificates.crt (the host's bundle, which trusts the proxy),
#                      or pip inside `docker build` fails with CERTIFICATE_VERIFY_FAILED.
#   --platform P       linux/amd64 (default) or linux/arm64. On a host of another architecture debootstrap
#                      runs its second stage under qemu-user-static, registered in binfmt_misc with the
#                      F flag ($BINFMT_MISC, default /proc/sys/fs/binfmt_misc).
#   --mirror URL       Debian mirror (default: $DEBIAN_MIRROR, else the URI of the Debian archive, not
#                      its -security one, that apt on this host uses: a URI ending in /debian in
#                      $APT_SOURCES_DIR/sources.list, sources.list.d/*.list or *.sources; APT_SOURCES_DIR
#                      defaults to /etc/apt). With none of these it stops: there is no built-in mirror.
#   --include PKGS     extra Debian packages, comma-separated (default: none)
#   --force            rebuild even when the image exists (default: skip when it exists)
#   --print-mirror     print the mirror it would use and exit (needs neither root nor Docker)
#
# Needs root, debootstrap and a running Docker engine (docker/ensure_engine.sh installs and starts one).
set -euo pipefail

SUITE=bookworm
NAME="${BASE_IMAGE_NAME:-fraud-detection-base:bookworm}"
CA_BUNDLE=""
PLATFORM=linux/amd64
MIRROR="${DEBIAN_MIRROR:-}"
APT_SOURCES_DIR="${APT_SOURCES_DIR:-/etc/apt}"
BINFMT_MISC="${BINFMT_MISC:-/proc/sys/fs/binfmt_misc}"
PRINT_MIRROR=0
EXTRA_INCLUDE=""
FORCE=0
PACKAGES="python3,python3-pip,python3-venv,ca-certificates"

die() { echo "build_base_image: error: $*" >&2; exit 1; }
log() { echo "build_base_image: $*" >&2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --name) [ $# -ge 2 ] || die "--name needs a value"; NAME="$2"; shift 2 ;;
        --name=*) NAME="${1#*=}"; shift ;;
        --ca-bundle) [ $# -ge 2 ] || die "--ca-bundle needs a path"; CA_BUNDLE="$2"; shift 2 ;;
        --ca-bundle=*) CA_BUNDLE="${1#*=}"; shift ;;
        --platform) [ $# -ge 2 ] || die "--platform needs a value"; PLATFORM="$2"; shift 2 ;;
        --platform=*) PLATFORM="${1#*=}"; shift ;;
        --mirror) [ $# -ge 2 ] || die "--mirror needs a URL"; MIRROR="$2"; shift 2 ;;
        --mirror=*) MIRROR="${1#*=}"; shift ;;
        --include) [ $# -ge 2 ] || die "--include needs a package list"; EXTRA_INCLUDE="$2"; shift 2 ;;
        --include=*) EXTRA_INCLUDE="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        --print-mirror) PRINT_MIRROR=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[ -n "$NAME" ] || die "the image name is empty"
case "$PLATFORM" in
    linux/amd64) ARCH=amd64; QEMU_ARCH=x86_64 ;;
    linux/arm64) ARCH=arm64; QEMU_ARCH=aarch64 ;;
    *) die "--platform $PLATFORM: not supported (linux/amd64 or linux/arm64)" ;;
esac

# The mirror apt uses on this host for the Debian archive (one-line .list or deb822 .sources).
host_mirror() {
    local files=() f
    for f in "$APT_SOURCES_DIR"/sources.list "$APT_SOURCES_DIR"/sources.list.d/*.list \
             "$APT_SOURCES_DIR"/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk '
        /^[[:space:]]*#/ { next }
        /^deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }
        /^URIs:/ { for (i = 2; i <= NF; i++) print $i }
    ' "${files[@]}" | grep -E '/debian/?$' | grep -v -- '-security' | head -n 1
}
# Sets MIRROR (and SECURITY_MIRROR) or stops: --mirror, else $DEBIAN_MIRROR, else the host's apt sources.
resolve_mirror() {
    if [ -z "$MIRROR" ]; then
        MIRROR="$(host_mirror || true)"
    fi
    [ -n "$MIRROR" ] \
        || die "no Debian mirror in $APT_SOURCES_DIR/sources.list or sources.list.d; pass --mirror URL or set DEBIAN_MIRROR"
    case "$MIRROR" in
        http://*|https://*|file://*) ;;
        *) die "mirror '$MIRROR' is not an http://, https:// or file:// URL; pass --mirror URL or set DEBIAN_MIRROR" ;;
    esac
    MIRROR="${MIRROR%/}"
    SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}"
}
if [ "$PRINT_MIRROR" -eq 1 ]; then
    resolve_mirror
    echo "$MIRROR"
    exit 0
fi

if [ -n "$CA_BUNDLE" ]; then
    [ -f "$CA_BUNDLE" ] || die "--ca-bundle $CA_BUNDLE: no such file"
    grep -q "BEGIN CERTIFICATE" "$CA_BUNDLE" || die "--ca-bundle $CA_BUNDLE: not a PEM bundle (no BEGIN CERTIFICATE)"
fi
command -v docker >/dev/null || die "docker is not installed (docker/ensure_engine.sh installs it on Debian)"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable ('docker info' fails); start it with docker/ensure_engine.sh"

if [ -n "$EXTRA_INCLUDE" ]; then PACKAGES="$PACKAGES,$EXTRA_INCLUDE"; fi
# What the image is made of: this script, the package list and the CA bundle. An existing image made
# from the same recipe is kept; one made from another recipe (an older script, a new bundle) is rebuilt.
recipe() { cat "$0"; echo "$SUITE $PLATFORM $PACKAGES"; if [ -n "$CA_BUNDLE" ]; then cat "$CA_BUNDLE"; fi; }
RECIPE="$(recipe | sha256sum | cut -c1-16)"
if [ "$FORCE" -eq 0 ] && docker image inspect "$NAME" >/dev/null 2>&1; then
    have="$(docker image inspect -f '{{ index .Config.Labels "fraud-detection.base.recipe" }}' "$NAME" 2>/dev/null || true)"
    if [ "$have" = "$RECIPE" ]; then
        log "image $NAME exists (recipe $RECIPE); skipping (--force rebuilds it)"
        exit 0
    fi
    log "image $NAME exists but was made from another recipe (${have:-unknown}, now $RECIPE); rebuilding"
fi

resolve_mirror
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root; run as root (or with sudo)"
command -v debootstrap >/dev/null \
    || die "debootstrap is not installed (apt-get install -y debootstrap; or, where a registry is reachable, build on python:3.11-slim instead: make image BASE_IMAGE=python:3.11-slim)"

# A root file system of another architecture: debootstrap unpacks it (--foreign), then runs its second
# stage in it under qemu, which binfmt_misc must start from outside the chroot (the F flag).
case "$(uname -m)" in
    x86_64) HOST_ARCH=amd64 ;;
    aarch64|arm64) HOST_ARCH=arm64 ;;
    *) HOST_ARCH="$(uname -m)" ;;
esac
FOREIGN=()
if [ "$HOST_ARCH" != "$ARCH" ]; then
    binfmt="$BINFMT_MISC/qemu-$QEMU_ARCH"
    { [ -f "$binfmt" ] && grep -qx enabled "$binfmt" && grep -q '^flags:.*F' "$binfmt"; } \
        || die "building $PLATFORM on this $HOST_ARCH host needs qemu-user-static in binfmt_misc with the F flag (no such entry at $binfmt): apt-get install -y qemu-user-static binfmt-support"
    FOREIGN=(--foreign)
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fraud-base.XXXXXX")"
ROOTFS="$WORK/rootfs"
cleanup() {
    # debootstrap leaves /proc and /sys mounted in the target when it fails half-way
    local m
    for m in $(awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

start=$(date +%s)
log "debootstrap --variant=minbase --arch=$ARCH${FOREIGN[*]:+ ${FOREIGN[*]}} $SUITE from $MIRROR (packages: $PACKAGES)"
if ! { debootstrap --variant=minbase --arch="$ARCH" "${FOREIGN[@]}" --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
       && { [ ${#FOREIGN[@]} -eq 0 ] || chroot "$ROOTFS" /debootstrap/debootstrap --second-stage; }; } \
       >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (mirror $MIRROR reachable? pass --mirror URL or set DEBIAN_MIRROR)"
fi
log "debootstrap done in $(( $(date +%s) - start ))s"

# apt sources for anyone who extends the image, and an empty package cache (it is rebuilt by apt-get update)
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS/debootstrap"
# Slim like Debian's own container images: no manuals, translations or docs (copyright files stay),
# now and for packages installed later with apt.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-container-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
find "$ROOTFS/usr/share/doc" -mindepth 1 \( -type f -o -type l \) ! -name copyright -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
# the container's own hostname and resolver come from Docker
: >"$ROOTFS/etc/hostname"
rm -f "$ROOTFS/etc/resolv.conf"

if [ -n "$CA_BUNDLE" ]; then
    log "adding CA bundle $CA_BUNDLE"
    install -m 0644 "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    # kept through a later update-ca-certificates (it appends local certificates to the bundle)
    install -m 0644 "$CA_BUNDLE" "$ROOTFS/usr/local/share/ca-certificates/build-host-bundle.crt"
fi

PYVER="$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
    || die "python3 does not run in the new root file system"

log "docker import -> $NAME (python $PYVER)"
tar --numeric-owner -C "$ROOTFS" -c . | docker import --platform "$PLATFORM" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.title=fraud-detection-base org.opencontainers.image.base.name=debian:$SUITE python.version=$PYVER fraud-detection.base.recipe=$RECIPE" \
    --message "debootstrap --variant=minbase --arch=$ARCH $SUITE + $PACKAGES" \
    - "$NAME" >/dev/null
log "built $NAME in $(( $(date +%s) - start ))s, $(docker image inspect -f '{{.Size}}' "$NAME" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
