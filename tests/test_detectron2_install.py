"""detectron2 as installed by tools/install_detectron2.sh works on its own, in a user's script that never imports
detfuse: on the fallback route the installer patches v0.6's Pillow 10 and numpy 1.24 breakages into the sources."""

import subprocess
import sys
import textwrap

USER_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import transforms as T
    from detectron2.data.build import print_instances_class_histogram
    from detectron2.modeling import build_model
    from detectron2.structures import BitMasks, PolygonMasks
    import detectron2.utils.visualizer

    # Image.LINEAR was ExtentTransform's default; np.int, np.bool the histogram's and the masks' dtypes
    T.ExtentTransform((0, 0, 8, 8), (4, 4)).apply_image(np.zeros((8, 8, 3), np.uint8))
    print_instances_class_histogram([{"annotations": [{"category_id": 0}, {"category_id": 1}]}], ["a", "b"])
    BitMasks.from_polygon_masks(PolygonMasks([[np.array([0, 0, 4, 0, 4, 4], float)]]), 8, 8)

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    model = build_model(cfg).eval()
    with torch.no_grad():
        model([{"image": torch.zeros(3, 64, 64), "height": 64, "width": 64}])
    assert "detfuse" not in sys.modules
    print("ok")
""")


def test_detectron2_works_without_detfuse(tmp_path):
    # a fresh interpreter outside the repository: nothing detfuse does at import time can help
    done = subprocess.run([sys.executable, "-c", USER_SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
