#!/usr/bin/env bash
# Install detectron2 into the Python given as $1 (default: .venv/bin/python).
#
# detectron2 has no PyPI release. Two routes, tried in order:
#   official  build its GitHub source at a pinned commit with --no-build-isolation (what cluster nodes run;
#             compiles detectron2's C++/CUDA operators against the installed torch)
#   fallback  where GitHub is unreachable: the PyPI sdist pb1-detectron2==0.6 carries detectron2 v0.6's Python
#             sources without its C++ operators. We build it with an operator-free `_C` extension of our own.
#             Faster R-CNN, RetinaNet and Cascade R-CNN (axis-aligned boxes) only use torchvision's ops, so they
#             train; deformable convolution and rotated boxes are unavailable on this route.
# Idempotent: does nothing when detectron2 already imports and works. DETECTRON2_ROUTE=official|fallback forces a
# route; DETECTRON2_SDIST=path/to/pb1-detectron2-0.6.tar.gz gives the fallback a local copy (no package index needed);
# PIP_TARGET=dir installs into that directory instead of the Python's site-packages.
set -euo pipefail
py=${1:-.venv/bin/python}
if [[ $py == */* ]]; then py=$(realpath -s "$py"); else py=$(command -v "$py"); fi  # absolute: the build cds
commit=${DETECTRON2_COMMIT:-a1ce2f9}
repo=https://github.com/facebookresearch/detectron2.git
route=${DETECTRON2_ROUTE:-auto}
here=$(cd "$(dirname "$0")/.." && pwd)
work="$here/third_party"

# importing these fails on an unpatched v0.6 (Image.LINEAR), which is then reinstalled
usable='import detectron2.data, detectron2.modeling'
if "$py" -c "$usable" >/dev/null 2>&1; then
  echo "detectron2: already installed ($("$py" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))'))"
  exit 0
fi
pip=("$py" -m pip install -q --no-build-isolation --no-deps)

official() {
  rm -rf "$work/detectron2"
  mkdir -p "$work"
  git clone -q "$repo" "$work/detectron2"
  git -C "$work/detectron2" checkout -q "$commit"
  "${pip[@]}" "$work/detectron2"
  echo "detectron2: installed from the official source at commit $commit (route: official)"
}

# detectron2 v0.6 uses Image.LINEAR (removed in Pillow 10) and numpy's aliases of builtins (np.bool, np.int,
# np.float, np.str, removed in numpy 1.24): rewrite them in the unpacked sources so the installed package works in
# any script, not only under detfuse. Its RetinaNetHead also probes a norm with 1 channel, which GroupNorm's 32
# groups refuse, so a GN head (MODEL.RETINANET.NORM) cannot be built. Upstream has made the same changes since v0.6. Each (file, old, new, count) is
# exact for the pinned sdist; any other count, or a removed name left anywhere in the package, stops the install.
patch_v06_sources() {
  "$py" - "$1" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
PATCHES = [
    ("detectron2/data/transforms/transform.py", "Image.LINEAR", "Image.BILINEAR", 1),
    ("detectron2/data/build.py", "np.int", "int", 2),
    ("detectron2/data/datasets/pascal_voc.py", "np.str", "str", 1),
    ("detectron2/evaluation/pascal_voc_evaluation.py", "np.bool", "bool", 2),
    ("detectron2/evaluation/sem_seg_evaluation.py", "np.int", "int", 2),
    ("detectron2/evaluation/sem_seg_evaluation.py", "np.float", "float", 5),
    ("detectron2/structures/masks.py", "np.bool", "bool", 3),
    ("detectron2/utils/visualizer.py", "np.bool", "bool", 3),
    ("detectron2/utils/video_visualizer.py", "np.bool", "bool", 1),
    ("detectron2/modeling/meta_arch/retinanet.py", "get_norm(norm, 1)", "get_norm(norm, 32)", 1),
]
REMOVED = re.compile(r"\bImage\.LINEAR\b|\bnp\.(bool|int|float|complex|object|str|long|unicode)\b")
for name, old, new, count in PATCHES:
    path = root / name
    text = path.read_text()
    pattern = re.compile(re.escape(old) + (r"\b" if old[-1].isalnum() else ""))  # np.int, not np.int64
    found = len(pattern.findall(text))
    if found != count:
        sys.exit(f"detectron2 patch: expected {count} x {old!r} in {name}, found {found}")
    path.write_text(pattern.sub(new, text))
left = [f"{p.relative_to(root)}:{i}" for p in sorted((root / "detectron2").rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1) if REMOVED.search(line)]
if left:
    sys.exit("detectron2 patch: removed Pillow/numpy names left unpatched at " + ", ".join(left))
PY
}

fallback() {
  local src="$work/pb1-detectron2"
  rm -rf "$src" "$work/sdist"
  mkdir -p "$work/sdist"
  # `pip download` refuses this sdist (its metadata declares a direct-URL extra), so fetch it through the
  # index's JSON simple API (or take DETECTRON2_SDIST, a local copy, on machines without an index) and check
  # it against the pinned sha256
  "$py" - "$work/sdist/pb1-detectron2-0.6.tar.gz" <<'PY'
import hashlib, json, os, sys, urllib.request
SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
local = os.environ.get("DETECTRON2_SDIST")
if local:
    source, data = local, open(local, "rb").read()
else:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(f"{index}/pb1-detectron2/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    files = json.load(urllib.request.urlopen(request, timeout=60))["files"]
    source = next(f["url"] for f in files if f["filename"] == "pb1-detectron2-0.6.tar.gz")
    data = urllib.request.urlopen(source, timeout=120).read()
if hashlib.sha256(data).hexdigest() != SHA256:
    sys.exit(f"pb1-detectron2-0.6.tar.gz from {source} does not match the pinned sha256 {SHA256}")
open(sys.argv[1], "wb").write(data)
PY
  tar -xzf "$work"/sdist/pb1-detectron2-0.6.tar.gz -C "$work"
  mv "$work/pb1-detectron2-0.6" "$src"
  # setup.py packs the model-zoo configs from ./configs; the sdist ships them inside the package
  if [[ -d $src/detectron2/model_zoo/configs && ! -d $src/configs ]]; then
    mv "$src/detectron2/model_zoo/configs" "$src/configs"
  fi
  patch_v06_sources "$src"
  mkdir -p "$src/detectron2/layers/csrc"
  cat > "$src/detectron2/layers/csrc/vision.cpp" <<'CPP'
// detectron2 v0.6 imports detectron2._C unconditionally. This build has no custom operators:
// the box-detection models use torchvision's roi_align and nms instead.
#include <torch/extension.h>
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "detectron2 operators are not built on this install route";
}
CPP
  (cd "$src" && FORCE_CUDA=0 "${pip[@]}" .)
  echo "detectron2: installed v0.6 from the PyPI sdist pb1-detectron2 without C++ operators (route: fallback;" \
       "GitHub unreachable). Deformable conv and rotated boxes are unavailable."
}

case $route in
  official) official ;;
  fallback) fallback ;;
  auto)
    if timeout 20 git ls-remote --exit-code "$repo" HEAD >/dev/null 2>&1; then
      official
    else
      echo "detectron2: $repo is unreachable; taking the PyPI fallback route"
      fallback
    fi ;;
  *) echo "DETECTRON2_ROUTE must be official, fallback or auto (got '$route')" >&2; exit 2 ;;
esac
"$py" -c "$usable; print('detectron2', detectron2.__version__, 'imports')"
