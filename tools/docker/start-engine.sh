#!/usr/bin/env bash
# Start a Docker engine for ldm's `docker` isolation backend, by hand (no systemd needed).
#
# Idempotent: installs docker.io + debootstrap with apt when missing, starts dockerd in the
# background when nothing answers on the socket, waits until `docker info` works, and prints
# the DOCKER_HOST line to export. Safe to run from CI (no stdin) and when already running.
#
# Environment (all optional):
#   LDM_DOCKER_SOCK     unix socket path                      (/var/run/docker.sock)
#   LDM_DOCKER_DATA     dockerd --data-root                   (/var/lib/docker)
#   LDM_DOCKER_EXEC     dockerd --exec-root                   (/var/run/docker-exec)
#   LDM_DOCKER_PIDFILE  dockerd --pidfile                     ($LDM_DOCKER_EXEC.pid)
#   LDM_DOCKER_LOG      dockerd log file                      (/var/log/ldm-dockerd.log)
#   LDM_DOCKER_DRIVER   storage driver (overlay2, vfs, ...)   (auto: overlay2, then vfs)
#   LDM_DOCKER_WAIT     seconds to wait for the engine        (60)
#   LDM_DOCKER_GROUP    group owning the socket, if it exists (docker)
#   LDM_DOCKERD_EXTRA_ARGS  more dockerd flags, word-split (e.g. "--bridge=none --iptables=false")
#   LDM_DOCKER_NO_INSTALL=1   never call apt
#   LDM_DOCKER_STATE    what the host was like before this script started dockerd ($LDM_DOCKER_EXEC.ldm-state)
#   LDM_DOCKER_STOP_WAIT  seconds --stop waits for dockerd to exit before SIGKILL (30)
#
# Usage:  eval "$(tools/docker/start-engine.sh --export)"   # sets DOCKER_HOST in this shell
#         tools/docker/start-engine.sh --check              # also test memory/pids limits
#         tools/docker/start-engine.sh --stop               # undo what a start of this script did
#
# --stop undoes only what this script set up, from the state it recorded before starting dockerd:
# it stops that dockerd, deletes the bridges that appeared (docker0), the iptables/ip6tables
# rules and chains that appeared (DOCKER*, MASQUERADE), puts back the chain policies (FORWARD)
# and ip_forward as they were, and unmounts the data root's self-bind-mount. An engine this
# script did not start (no state) is left alone.
set -euo pipefail

SOCK="${LDM_DOCKER_SOCK:-/var/run/docker.sock}"
DATA="${LDM_DOCKER_DATA:-/var/lib/docker}"
EXEC="${LDM_DOCKER_EXEC:-/var/run/docker-exec}"
PIDFILE="${LDM_DOCKER_PIDFILE:-${EXEC}.pid}"
LOG="${LDM_DOCKER_LOG:-/var/log/ldm-dockerd.log}"
DRIVER="${LDM_DOCKER_DRIVER:-}"
WAIT="${LDM_DOCKER_WAIT:-60}"
GROUP="${LDM_DOCKER_GROUP:-docker}"
HOST="unix://${SOCK}"
STATE="${LDM_DOCKER_STATE:-${EXEC}.ldm-state}"
STOP_WAIT="${LDM_DOCKER_STOP_WAIT:-30}"

EXPORT_ONLY=0
CHECK=0
STOP=0
for arg in "$@"; do
    case "$arg" in
        --export) EXPORT_ONLY=1 ;;
        --check) CHECK=1 ;;
        --stop) STOP=1 ;;
        -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "start-engine.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

say() { echo "start-engine: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Prefer Debian's CLI when present: a newer static CLI elsewhere on PATH also works (the API
# version is negotiated), but the distro one matches the daemon we start.
DOCKER_CLI="$(command -v docker || true)"
[[ -x /usr/bin/docker ]] && DOCKER_CLI=/usr/bin/docker

engine_up() {
    [[ -n "$DOCKER_CLI" ]] || return 1
    timeout 10 "$DOCKER_CLI" -H "$HOST" info >/dev/null 2>&1
}

sudo_if_needed() {
    if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ "${LDM_DOCKER_NO_INSTALL:-0}" == 1 ]] && die "missing ${missing[*]} and LDM_DOCKER_NO_INSTALL=1"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]} with apt"
    # Wait (bounded) for another apt/dpkg to release its lock instead of failing.
    export DEBIAN_FRONTEND=noninteractive
    sudo_if_needed apt-get -o DPkg::Lock::Timeout=600 update -q </dev/null >&2
    sudo_if_needed apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        "${missing[@]}" </dev/null >&2
    DOCKER_CLI="$(command -v docker || true)"
    [[ -x /usr/bin/docker ]] && DOCKER_CLI=/usr/bin/docker
}

pick_driver() {
    # overlay2 needs the overlay filesystem and a data-root that is not itself on overlayfs.
    [[ -n "$DRIVER" ]] && { echo "$DRIVER"; return; }
    mkdir -p "$DATA"
    local fstype
    fstype="$(stat -fc %T "$DATA" 2>/dev/null || echo unknown)"
    if grep -qw overlay /proc/filesystems && [[ "$fstype" != overlayfs ]]; then
        echo overlay2
    else
        echo vfs
    fi
}

start_daemon() {
    local driver="$1"
    mkdir -p "$DATA" "$EXEC" "$(dirname "$SOCK")" "$(dirname "$LOG")" "$(dirname "$PIDFILE")"
    # A stale pidfile from a dead daemon makes dockerd refuse to start.
    if [[ -f "$PIDFILE" ]]; then
        local old
        old="$(cat "$PIDFILE" 2>/dev/null || true)"
        if [[ -n "$old" ]] && kill -0 "$old" 2>/dev/null; then
            say "dockerd pid $old is alive (pidfile $PIDFILE) but not answering yet; waiting"
            return 0
        fi
        rm -f "$PIDFILE"
    fi
    [[ -S "$SOCK" ]] && rm -f "$SOCK"
    local group_args=() extra_args=()
    if getent group "$GROUP" >/dev/null 2>&1; then group_args=(--group "$GROUP"); fi
    # shellcheck disable=SC2206  # word splitting wanted
    extra_args=(${LDM_DOCKERD_EXTRA_ARGS:-})
    say "starting dockerd (storage driver $driver, data $DATA, log $LOG)"
    # setsid + nohup: survive the CI step / shell that started it; stdin from /dev/null.
    setsid nohup dockerd \
        --host "$HOST" \
        --data-root "$DATA" \
        --exec-root "$EXEC" \
        --pidfile "$PIDFILE" \
        --storage-driver "$driver" \
        "${group_args[@]}" \
        "${extra_args[@]}" \
        </dev/null >>"$LOG" 2>&1 &
    DOCKERD_PID=$!
}

wait_engine() {
    local deadline=$((SECONDS + WAIT))
    while ((SECONDS < deadline)); do
        engine_up && return 0
        if [[ -n "${DOCKERD_PID:-}" ]] && ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            say "dockerd exited early; last lines of $LOG:"
            tail -n 30 "$LOG" >&2 || true
            return 1
        fi
        sleep 1
    done
    say "engine did not answer on $SOCK within ${WAIT}s; last lines of $LOG:"
    tail -n 30 "$LOG" >&2 || true
    return 1
}

check_limits() {
    # Fails loudly when cgroup limits are silently ignored (the sandbox would then be toothless).
    local img="${LDM_DOCKER_CHECK_IMAGE:-}"
    if [[ -z "$img" ]]; then
        img="$("$DOCKER_CLI" -H "$HOST" images --format '{{.Repository}}:{{.Tag}}' \
            | grep -m1 '^ldm-base:' || true)"
    fi
    if [[ -z "$img" ]]; then
        say "--check: no ldm-base image yet (build one first, or set LDM_DOCKER_CHECK_IMAGE)"
        return 0
    fi
    local out
    out="$("$DOCKER_CLI" -H "$HOST" run --rm --network none --memory 64m --pids-limit 32 "$img" \
        sh -c 'cat /sys/fs/cgroup/memory.max 2>/dev/null \
                 || cat /sys/fs/cgroup/memory/memory.limit_in_bytes;
               cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max')"
    say "--check with $img: memory limit/pids max = $(echo "$out" | tr '\n' ' ')"
    [[ "$(echo "$out" | head -n1)" == 67108864 ]] || die "memory limit not applied"
    [[ "$(echo "$out" | tail -n1)" == 32 ]] || die "pids limit not applied"
}

# -- the host's state before dockerd, and --stop putting it back --------------------------------

IPT_TABLES=(filter nat mangle raw)

ipt_families() {
    local cmd
    for cmd in iptables ip6tables; do
        if command -v "$cmd" >/dev/null 2>&1; then echo "$cmd"; fi
    done
}

bridges() {
    ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | sort || true
}

record_state() {
    # Written once, before dockerd starts; a start that finds a state already (an engine that
    # died without --stop) keeps the older one: that is the host as it was before this script.
    if [[ -d "$STATE" ]]; then
        say "keeping the earlier state in $STATE (it predates that engine)"
        return 0
    fi
    local tmp="${STATE}.tmp.$$" cmd table
    rm -rf "$tmp"
    mkdir -p "$tmp"
    cat /proc/sys/net/ipv4/ip_forward >"$tmp/ip_forward" 2>/dev/null || true
    cat /proc/sys/net/ipv6/conf/all/forwarding >"$tmp/ip6_forward" 2>/dev/null || true
    bridges >"$tmp/bridges"
    if mountpoint -q "$DATA" 2>/dev/null; then
        echo 1 >"$tmp/data_mounted"
    else
        echo 0 >"$tmp/data_mounted"
    fi
    for cmd in $(ipt_families); do
        for table in "${IPT_TABLES[@]}"; do
            "$cmd" -t "$table" -S >"$tmp/$cmd.$table" 2>/dev/null || rm -f "$tmp/$cmd.$table"
        done
    done
    mv "$tmp" "$STATE"
}

undo_iptables() {
    # Rules that appeared in chains that existed go one by one (`-A` -> `-D`); chains that
    # appeared are flushed, then deleted (they may jump to one another); policies go back.
    local cmd="$1" table="$2" before="$STATE/$1.$2" now line chain
    if [[ ! -f "$before" ]]; then return 0; fi
    if ! now="$("$cmd" -t "$table" -S 2>/dev/null)"; then return 0; fi
    local -a new_chains=()
    while IFS= read -r line; do
        if [[ "$line" == "-N "* ]] && ! grep -qxF -- "$line" "$before"; then
            new_chains+=("${line#-N }")
        fi
    done <<<"$now"
    while IFS= read -r line; do
        if [[ "$line" != "-A "* ]] || grep -qxF -- "$line" "$before"; then continue; fi
        chain="${line#-A }"
        chain="${chain%% *}"
        if [[ " ${new_chains[*]} " == *" $chain "* ]]; then continue; fi  # flushed below
        if ! eval "sudo_if_needed $cmd -t $table -D ${line#-A }"; then
            say "could not delete ($cmd -t $table) $line"
        fi
    done <<<"$now"
    for chain in "${new_chains[@]}"; do sudo_if_needed "$cmd" -t "$table" -F "$chain" || true; done
    for chain in "${new_chains[@]}"; do
        if ! sudo_if_needed "$cmd" -t "$table" -X "$chain"; then
            say "could not delete chain ($cmd -t $table) $chain"
        fi
    done
    while IFS= read -r line; do
        if [[ "$line" != "-P "* ]] || grep -qxF -- "$line" <<<"$now"; then continue; fi
        # shellcheck disable=SC2086  # "-P CHAIN POLICY": word splitting wanted
        if ! sudo_if_needed "$cmd" -t "$table" ${line}; then
            say "could not restore ($cmd -t $table) $line"
        fi
    done <"$before"
    if ((${#new_chains[@]})); then say "$cmd -t $table: removed chains ${new_chains[*]}"; fi
    return 0
}

write_sysctl() {  # file value
    if [[ -f "$1" ]] && [[ -n "$2" ]]; then sudo_if_needed sh -c "echo $2 >$1"; fi
}

stop_engine() {
    if [[ ! -d "$STATE" ]]; then
        say "nothing to stop: no state in $STATE (the engine on $SOCK, if any, was not started by this script)"
        return 0
    fi
    local pid="" waited=0 name cmd table
    # dockerd's own pidfile first: the pid recorded at start may be setsid's, had it forked
    pid="$(cat "$PIDFILE" 2>/dev/null || cat "$STATE/pid" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]; then
        say "stopping dockerd pid $pid"
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null && ((waited < STOP_WAIT)); do
            sleep 1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "dockerd did not exit within ${STOP_WAIT}s: SIGKILL"
            kill -KILL "$pid" || true
            sleep 1
        fi
    else
        say "dockerd ${pid:-(no pid recorded)} is not running"
    fi
    rm -f "$SOCK" "$PIDFILE"
    while IFS= read -r name; do
        if [[ -z "$name" ]] || grep -qxF -- "$name" "$STATE/bridges"; then continue; fi
        if sudo_if_needed ip link delete "$name"; then say "deleted bridge $name"; fi
    done < <(bridges)
    for cmd in $(ipt_families); do
        for table in "${IPT_TABLES[@]}"; do undo_iptables "$cmd" "$table"; done
    done
    write_sysctl /proc/sys/net/ipv4/ip_forward "$(cat "$STATE/ip_forward" 2>/dev/null || true)"
    write_sysctl /proc/sys/net/ipv6/conf/all/forwarding "$(cat "$STATE/ip6_forward" 2>/dev/null || true)"
    say "net.ipv4.ip_forward is $(cat /proc/sys/net/ipv4/ip_forward) (was $(cat "$STATE/ip_forward" 2>/dev/null || echo '?'))"
    if [[ "$(cat "$STATE/data_mounted" 2>/dev/null)" == 0 ]] && mountpoint -q "$DATA" 2>/dev/null; then
        if sudo_if_needed umount "$DATA"; then say "unmounted dockerd's bind mount of $DATA"; fi
    fi
    rm -rf "$STATE"
    say "stopped; the host is as it was before start-engine.sh started dockerd"
}

if [[ "$STOP" == 1 ]]; then
    stop_engine
    exit 0
fi

DOCKERD_PID=""
if engine_up; then
    say "engine already answering on $SOCK"
else
    install_packages
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found after install"
    driver="$(pick_driver)"
    record_state
    start_daemon "$driver"
    if [[ -n "$DOCKERD_PID" ]]; then echo "$DOCKERD_PID" >"$STATE/pid"; fi
    wait_engine || die "could not start dockerd"
    say "engine up: $("$DOCKER_CLI" -H "$HOST" info --format \
        'server {{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}' 2>/dev/null \
        || echo ok)"
fi

if [[ "$CHECK" == 1 ]]; then check_limits; fi

if [[ "$EXPORT_ONLY" == 1 ]]; then
    echo "export DOCKER_HOST=$HOST"
else
    echo "DOCKER_HOST=$HOST"
    say "run: export DOCKER_HOST=$HOST"
fi
