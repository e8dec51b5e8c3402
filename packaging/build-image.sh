#!/usr/bin/env bash
# Build the container image offline from the real Dockerfile, then run it against the simulator.
#
# The Dockerfile's builder base (rust:1-bookworm) and final base
# (gcr.io/distroless/cc-debian12:nonroot) cannot be pulled without a registry. This script keeps
# the Dockerfile's final stage and replaces only what cannot be pulled:
#
#   FROM <distroless base>              ->  FROM scratch + the files of that base the binary needs:
#                                           the shared libraries `ldd` names, CA certificates,
#                                           /etc/passwd and /etc/group with the nonroot user
#   COPY --from=builder /kapso-exporter ->  COPY of the binary cargo already built
#
# Every other line of the final stage (USER, EXPOSE, ENTRYPOINT, ...) is copied as it is, and the
# script proves it: it extracts USER, EXPOSE, ENTRYPOINT and CMD from both files and fails unless
# they are identical, then checks the built image's config against them. Then it starts the
# image's entrypoint in a container (`buildah run --isolation chroot`, no OCI runtime needed) with
# `--demo`, waits until /metrics answers `kapso_up ... 1`, and stops it.
#
# Needs buildah (Debian package `buildah`), curl and root. Image storage lives in a temporary
# directory (vfs driver), so nothing is left in the system's container storage.
#
# Usage: packaging/build-image.sh [--binary PATH] [--port N] [--timeout SECONDS]
#                                  [--archive FILE.tar] [--no-run]
#   --binary PATH   kapso-exporter binary to put in the image
#                   (default: ${CARGO_TARGET_DIR:-target}/release/kapso-exporter)
#   --port N        loopback port of the smoke run (default: a free one)
#   --timeout S     how long the smoke run may take to answer (default: 60)
#   --archive FILE  also write the image as a docker-archive (`docker load -i FILE`)
#   --no-run        build and check the image, do not run it
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dockerfile="$repo/Dockerfile"
image="localhost/kapso-exporter:ci"

binary="${CARGO_TARGET_DIR:-$repo/target}/release/kapso-exporter"
port=""
timeout=60
archive=""
run=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --archive) archive="$2"; shift 2 ;;
    --no-run) run=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done

log() { echo "build-image: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

command -v buildah >/dev/null || die "buildah is not installed (Debian package buildah)"
command -v curl >/dev/null || die "curl is not installed"
[ -f "$dockerfile" ] || die "no Dockerfile at $dockerfile"
[ -x "$binary" ] || die "no executable binary at $binary (cargo build --release, or --binary)"

work="$(mktemp -d "${TMPDIR:-/tmp}/kapso-image.XXXXXX")"
bah=(buildah --root "$work/storage" --runroot "$work/runroot" --storage-driver vfs)
container=""
runpid=""

stop_run() {
  [ -n "$runpid" ] || return 0
  if kill -0 "$runpid" 2>/dev/null; then
    # buildah forwards SIGTERM to the process in the container; the process group (setsid
    # below) is the fallback after 15 s.
    kill -TERM "$runpid" 2>/dev/null || true
    local until=$((SECONDS + 15))
    while kill -0 "$runpid" 2>/dev/null && [ "$SECONDS" -lt "$until" ]; do sleep 0.2; done
    if kill -0 "$runpid" 2>/dev/null; then
      log "the container did not stop on SIGTERM within 15 s; killing its process group"
      kill -KILL -- "-$runpid" 2>/dev/null || true
    fi
  fi
  wait "$runpid" 2>/dev/null || true
  runpid=""
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_run
  if [ -n "$container" ]; then "${bah[@]}" rm "$container" >/dev/null 2>&1 || true; fi
  "${bah[@]}" rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. the final stage of the real Dockerfile -----------------------------------------------
# Lines from the last FROM on; comments and blank lines dropped.
final_stage() {
  awk '
    /^[ \t]*#/ || /^[ \t]*$/ { next }
    toupper($1) == "FROM" { n = 0 }
    { stage[n++] = $0 }
    END { for (i = 0; i < n; i++) print stage[i] }
  ' "$1"
}
final_stage "$dockerfile" > "$work/final-stage"
grep -q . "$work/final-stage" || die "no FROM in $dockerfile"
if grep -q '\\$' "$work/final-stage"; then
  die "the final stage has line continuations, which this script does not translate"
fi
# No secret is baked in: no instruction of the Dockerfile names a key, token or password.
if grep -v '^[[:space:]]*#' "$dockerfile" | grep -Eiq 'api[_-]?key|secret|token|passw'; then
  die "the Dockerfile mentions a key, secret, token or password outside comments"
fi

# --- 2. the offline Containerfile ------------------------------------------------------------
ctx="$work/context"
mkdir -p "$ctx/base-rootfs/etc"
containerfile="$ctx/Containerfile"
{
  echo "# Generated by packaging/build-image.sh from Dockerfile's final stage; do not edit."
  while IFS= read -r line; do
    read -r instr rest <<<"$line"
    case "${instr^^}" in
      FROM)
        base="${rest%% *}"
        echo "# was: FROM $base (cannot be pulled offline); scratch plus what the binary uses of it"
        echo "FROM scratch"
        echo "COPY base-rootfs/ /"
        ;;
      COPY)
        # COPY --from=<stage> <src> <dst>: only the binary is built outside, by cargo.
        read -r -a words <<<"$rest"
        case "${words[0]}" in --from=*) ;; *) die "COPY from the build context in the final stage: $line" ;; esac
        [ "${#words[@]}" -eq 3 ] || die "cannot translate: $line"
        [ "${words[1]}" = "/kapso-exporter" ] || die "the final stage copies ${words[1]}, not /kapso-exporter"
        echo "COPY kapso-exporter ${words[2]}"
        ;;
      USER|EXPOSE|ENTRYPOINT|CMD|LABEL|ENV|WORKDIR|ARG|STOPSIGNAL|HEALTHCHECK)
        echo "$line"
        ;;
      *)
        die "the final stage uses $instr, which cannot be reproduced on scratch: $line"
        ;;
    esac
  done < "$work/final-stage"
} > "$containerfile"

# Prove that USER, EXPOSE, ENTRYPOINT and CMD are the same in both files.
runtime_lines() { grep -E '^(USER|EXPOSE|ENTRYPOINT|CMD)[[:space:]]' "$1" || true; }
runtime_lines "$work/final-stage" > "$work/runtime.dockerfile"
runtime_lines "$containerfile" > "$work/runtime.containerfile"
for want in USER EXPOSE ENTRYPOINT; do
  grep -q "^$want " "$work/runtime.dockerfile" || die "the Dockerfile's final stage has no $want"
done
if ! diff -u "$work/runtime.dockerfile" "$work/runtime.containerfile" >&2; then
  die "USER/EXPOSE/ENTRYPOINT/CMD of the Containerfile differ from the Dockerfile's"
fi
log "USER, EXPOSE, ENTRYPOINT and CMD are identical in Dockerfile and the offline Containerfile:"
sed 's/^/    /' "$work/runtime.dockerfile" >&2

# --- 3. the build context: binary and the files of the base it needs -------------------------
if command -v strip >/dev/null; then
  strip --strip-debug -o "$ctx/kapso-exporter" "$binary"
else
  cp "$binary" "$ctx/kapso-exporter"
fi
chmod 0755 "$ctx/kapso-exporter"
# Shared libraries and the dynamic loader (none for a static binary, where ldd fails).
libs="$( (ldd "$binary" 2>/dev/null || true) | grep -o '/[^ ]*' | sort -u || true)"
for lib in $libs; do
  cp -L --parents "$lib" "$ctx/base-rootfs/"
done
# CA certificates, for HTTPS to the Kapso API (distroless ships the same bundle).
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$ctx/base-rootfs/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/base-rootfs/etc/ssl/certs/"
fi
# The users of distroless's :nonroot variant.
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
  'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$ctx/base-rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' > "$ctx/base-rootfs/etc/group"

log "Containerfile:"
sed 's/^/    /' "$containerfile" >&2

# --- 4. build --------------------------------------------------------------------------------
"${bah[@]}" build --quiet --pull=never --isolation chroot --format oci \
  -f "$containerfile" -t "$image" "$ctx" >/dev/null
log "built $image ($("${bah[@]}" images --noheading --format '{{.Size}}' "$image"))"

# The built image's config carries the Dockerfile's values and no secret.
inspect() { "${bah[@]}" inspect --type image --format "$1" "$image"; }
want_user="$(sed -n 's/^USER[[:space:]]\{1,\}//p' "$work/runtime.dockerfile")"
want_port="$(sed -n 's/^EXPOSE[[:space:]]\{1,\}//p' "$work/runtime.dockerfile")"
[[ "$want_port" == */* ]] || want_port="$want_port/tcp"
# ENTRYPOINT ["a", "b"] -> [a b], as Go templates print a list.
want_entrypoint="$(sed -n 's/^ENTRYPOINT[[:space:]]\{1,\}//p' "$work/runtime.dockerfile" \
  | sed -e 's/^\[//' -e 's/\]$//' -e 's/"[[:space:]]*,[[:space:]]*"/ /g' -e 's/"//g')"
want_entrypoint="[$want_entrypoint]"
got_user="$(inspect '{{.OCIv1.Config.User}}')"
# shellcheck disable=SC2016 # a Go template, not a shell expansion
got_ports="$(inspect '{{range $p, $v := .OCIv1.Config.ExposedPorts}}{{$p}} {{end}}')"
got_ports="${got_ports% }"
got_entrypoint="$(inspect '{{.OCIv1.Config.Entrypoint}}')"
got_env="$(inspect '{{.OCIv1.Config.Env}}')"
[ "$got_user" = "$want_user" ] || die "image user is '$got_user', the Dockerfile says '$want_user'"
[ "$got_ports" = "$want_port" ] || die "image exposes '$got_ports', the Dockerfile says '$want_port'"
[ "$got_entrypoint" = "$want_entrypoint" ] || die "image entrypoint is $got_entrypoint, the Dockerfile says $want_entrypoint"
case "${got_user%%:*}" in
  ''|0|root) die "the image runs as root" ;;
  *[!0-9]*) die "the image user '$got_user' is not numeric" ;;
esac
if grep -Eiq 'key|secret|token|passw' <<<"$got_env"; then die "the image's environment holds a secret: $got_env"; fi
log "image config: user $got_user, exposes $got_ports, entrypoint $got_entrypoint, env $got_env"

if [ -n "$archive" ]; then
  "${bah[@]}" push --quiet "$image" "docker-archive:$archive:kapso-exporter:latest" >/dev/null
  log "wrote $archive (docker load -i $archive)"
fi

[ "$run" -eq 1 ] || { log "OK (built, not run)"; exit 0; }

# --- 5. run the image's entrypoint with --demo until /metrics answers ------------------------
if [ -z "$port" ]; then
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
read -r -a entrypoint <<<"${want_entrypoint:1:-1}"
container="$("${bah[@]}" from --pull=never --name "kapso-exporter-smoke-$$" "$image")"
# Host network: the exporter listens on the loopback only, for curl below.
setsid "${bah[@]}" run --isolation chroot --network host "$container" -- \
  "${entrypoint[@]}" --demo --web.listen-address "127.0.0.1:$port" \
  > "$work/run.log" 2>&1 &
runpid=$!
log "started ${entrypoint[*]} --demo in container $container (buildah pid $runpid), port $port"

deadline=$((SECONDS + timeout))
while :; do
  if curl -fsS --max-time 2 -o "$work/metrics" "http://127.0.0.1:$port/metrics" 2>/dev/null \
    && awk '/^kapso_up[{ ]/ && $NF + 0 == 1 { found = 1 } END { exit !found }' "$work/metrics"; then
    break
  fi
  if ! kill -0 "$runpid" 2>/dev/null; then
    cat "$work/run.log" >&2
    die "the exporter in the container exited before /metrics answered"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    cat "$work/run.log" >&2
    die "/metrics did not answer kapso_up 1 within ${timeout}s"
  fi
  sleep 0.5
done
log "/metrics answered: $(grep -E '^kapso_up' "$work/metrics" | tr '\n' ' ')"
for path in /-/healthy /-/ready; do
  curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$port$path" || die "$path did not answer 200"
done

# The process serving the port runs as the image's user, not root.
uid="$(ps -eo pgid=,uid=,comm= | awk -v g="$runpid" '$1 == g && $3 == "kapso-exporter" { print $2; exit }')"
[ -n "$uid" ] || die "found no kapso-exporter process in the container's process group"
[ "$uid" = "${got_user%%:*}" ] || die "the exporter runs as uid $uid, the image says $got_user"
log "the exporter in the container runs as uid $uid"

stop_run
log "OK: image built offline from Dockerfile, served /metrics with kapso_up 1, stopped"
