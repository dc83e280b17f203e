# Sourced by serve.sh, stop.sh, mlflow_ui.sh, e2e.sh, kill_rerun.sh: background services in their own process
# groups (setsid), pid files in .prefect/run/, and a stop that leaves no process behind (descendants included,
# also those that started a session of their own).
RUN_DIR="${DAPL_RUN_DIR:-$ROOT/.prefect/run}"
mkdir -p "$RUN_DIR"

descendants() {  # all descendant pids of $1, children before grandchildren
  local kids
  kids=$(ps -eo pid=,ppid= | awk -v p="$1" '$2 == p {print $1}')
  for k in $kids; do echo "$k"; descendants "$k"; done
}

group_gone() {  # PGID [SECONDS]: true once no live process (zombies awaiting their reaper don't count) is in the group
  local i=0
  while [ $i -lt $((${2:-10} * 5)) ]; do
    ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found=1} END {exit !found}' || return 0
    sleep 0.2; i=$((i + 1))
  done
  return 1
}

is_running() {  # NAME: its recorded leader or any process of its group is alive
  local f="$RUN_DIR/$1.pid"
  [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || kill -0 -- "-$pid" 2>/dev/null
}

start_group() {  # NAME CMD...: run CMD in a new session (pgid = pid), output in .prefect/run/NAME.log
  local name=$1; shift
  setsid "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

stop_group() {  # NAME [SECONDS]: SIGTERM the group and every descendant, SIGKILL what is left after SECONDS
  local name=$1 grace=${2:-20} f="$RUN_DIR/$1.pid"
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  local pids; pids="$pid $(descendants "$pid" | tr '\n' ' ')"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  local i=0
  while [ $i -lt $((grace * 5)) ]; do
    local left=0
    kill -0 -- "-$pid" 2>/dev/null && left=1
    for p in $pids; do kill -0 "$p" 2>/dev/null && left=1; done
    [ $left = 0 ] && break
    sleep 0.2; i=$((i + 1))
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  sleep 0.2
  rm -f "$f"
  for p in $pids; do
    if kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p" | cut -c1)" != Z ]; then
      echo "warning: process $p of $name is still alive" >&2; return 1
    fi
  done
  return 0
}

wait_http() {  # URL SECONDS: until URL answers 200 (flows/services.py)
  "$ROOT/.venv/bin/python" -m flows.services wait-http "$1" "${2:-120}"
}
