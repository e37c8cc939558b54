#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv with the pinned stack.
#
#   scripts/setup.sh                     # CPU stack (default): torch 2.13.0 CPU + fbgemm-gpu-cpu 1.8.0
#   RECSYS_ACCEL=cuda scripts/setup.sh   # GPU machine: torch 2.13.0 CUDA + fbgemm-gpu 1.8.0
#
# Called by `make run` / `make test`; it does nothing when .venv is already up to date
# (a stamp holds a hash of the pins and pyproject.toml).
#
# Why the order: torchrec 1.8.0's metadata requires the CUDA package `fbgemm-gpu`, which must
# never sit next to `fbgemm-gpu-cpu` (they ship the same files). So torch and the right fbgemm
# go first, torchrec is installed with --no-deps, and its real needs come from the lock file.
set -euo pipefail
cd "$(dirname "$0")/.."

accel="${RECSYS_ACCEL:-cpu}"
case "$accel" in
  cpu)  fbgemm="fbgemm-gpu-cpu==1.8.0" ;;
  cuda) fbgemm="fbgemm-gpu==1.8.0" ;;
  *) echo "RECSYS_ACCEL=$accel is not supported; use cpu (default) or cuda" >&2; exit 2 ;;
esac

python="${PYTHON:-python3}"
venv=.venv
stamp="$venv/.recsys-setup"
want="$accel $(cat requirements/lock-cpu.txt pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "setting up $venv ($accel stack); this takes about two minutes the first time" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ "$accel" = cuda ] && "$venv/bin/python" -m pip show fbgemm-gpu-cpu >/dev/null 2>&1; then
  "$venv/bin/python" -m pip uninstall --yes --quiet fbgemm-gpu-cpu
fi
if [ "$accel" = cpu ] && "$venv/bin/python" -m pip show fbgemm-gpu >/dev/null 2>&1; then
  "$venv/bin/python" -m pip uninstall --yes --quiet fbgemm-gpu
fi
"${pip[@]}" torch==2.13.0
"${pip[@]}" "$fbgemm"
"${pip[@]}" --no-deps torchrec==1.8.0
"${pip[@]}" --no-deps -r requirements/lock-cpu.txt
"${pip[@]}" --no-deps -e .
# The only expected complaint is torchrec's declared (and deliberately absent) CUDA `fbgemm-gpu`.
if ! problems=$("$venv/bin/python" -m pip check 2>&1); then
  unexpected=$(printf '%s\n' "$problems" | grep -v 'requires fbgemm-gpu, which is not installed' || true)
  if [ -n "$unexpected" ]; then
    printf 'pip check found broken requirements:\n%s\n' "$unexpected" >&2
    exit 1
  fi
fi
echo "$want" > "$stamp"
