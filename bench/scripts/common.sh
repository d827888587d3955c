# Process helpers shared by the benchmark scripts (sourced; defines functions only).

is_running() { # alive and not a zombie
    local st
    # The process may exit between any two reads: every read of /proc may fail, quietly.
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st ]] || return 1
    st=${st##*) }
    [[ ${st%% *} != Z ]]
}

descendants() { # pid and all its descendants (bounded depth)
    local frontier=("$1") next=() all=("$1") depth p c
    for depth in 1 2 3 4; do
        next=()
        for p in "${frontier[@]}"; do
            for c in $(pgrep -P "$p" 2>/dev/null || true); do next+=("$c"); all+=("$c"); done
        done
        (( ${#next[@]} )) || break
        frontier=("${next[@]}")
    done
    echo "${all[@]}"
}

stop_pid() { # TERM the process tree, wait up to 5 s, then KILL what is left
    local pid=$1 tree i p
    tree=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        is_running "$pid" || break
        sleep 0.1
    done
    for p in $tree; do
        is_running "$p" && kill -KILL "$p" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
}

cpu_ticks() { # sum of utime+stime over the given pids; fails if one is gone
    local total=0 p st f
    for p in "$@"; do
        st=$(<"/proc/$p/stat") || return 1
        st=${st##*) }              # fields from 3 (state) on; comm may hold spaces
        read -r -a f <<<"$st"
        total=$(( total + f[11] + f[12] ))   # field 14 = f[11], field 15 = f[12]
    done
    echo "$total"
}

wait_port() { # bounded wait (10 s) for a listener on 127.0.0.1:PORT
    local i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

wait_port_closed() { # bounded wait (5 s) until nothing listens on 127.0.0.1:PORT
    local i
    for i in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

rss_kib() { # sum of VmRSS (kB) over the given pids
    local total=0 p v
    for p in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$(( total + ${v:-0} ))
    done
    echo "$total"
}

# Drop a pid from the caller's STARTED_PIDS array (the ones its exit trap stops).
forget_pid() {
    local keep=() p
    for p in "${STARTED_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    STARTED_PIDS=("${keep[@]}")
}
