# strata: the memory this VM or container has *now* (sourced, POSIX sh).
# A VM's memory changes over its life (resize) and a container's limit is set at run time, so
# heap sizes and NodeManager memory are derived from this when a node boots or a daemon starts,
# never frozen into the image.

# Total memory in MiB: the cgroup limit when one is set (containers), else MemTotal.
strata_memory_mb() {
    limit=""
    if [ -r /sys/fs/cgroup/memory.max ]; then
        limit=$(cat /sys/fs/cgroup/memory.max)
    elif [ -r /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
        limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
    fi
    total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    total_mb=$((total_kb / 1024))
    case "$limit" in
        ""|max) echo "$total_mb" ;;
        *)
            limit_mb=$((limit / 1024 / 1024))
            if [ "$limit_mb" -lt "$total_mb" ]; then echo "$limit_mb"; else echo "$total_mb"; fi
            ;;
    esac
}

# Heap for one daemon in MiB: a quarter of memory, at least 256, at most 4096 (override with
# STRATA_HEAP_MB).
strata_heap_mb() {
    if [ -n "${STRATA_HEAP_MB:-}" ]; then echo "$STRATA_HEAP_MB"; return; fi
    m=$(strata_memory_mb)
    h=$((m / 4))
    [ "$h" -lt 256 ] && h=256
    [ "$h" -gt 4096 ] && h=4096
    echo "$h"
}

# Memory YARN may hand to containers on this node, in MiB: what is left after the OS and the
# node's daemons (half of memory, at least 512; override with STRATA_NM_MEMORY_MB).
strata_nm_memory_mb() {
    if [ -n "${STRATA_NM_MEMORY_MB:-}" ]; then echo "$STRATA_NM_MEMORY_MB"; return; fi
    m=$(strata_memory_mb)
    n=$((m / 2))
    [ "$n" -lt 512 ] && n=512
    echo "$n"
}
