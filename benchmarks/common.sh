# Sourced by the benchmark scripts after they check DATA and OUT: the repository on PYTHONPATH (as `here`), OUT
# created and made absolute (the scripts cd elsewhere), and `card_name`, the first GPU's name or "no GPU".
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

card_name() {
  local name
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
  echo "${name:-no GPU}"
}
