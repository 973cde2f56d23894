"""What a YOLOv5 trial asks of the cluster: one process on one GPU, a fraction of one, or the CPU.

Ultralytics trains on several GPUs only through DDP, which relaunches a generated script and fails inside a Ray
actor (trainable.py), so a trial never asks for more than one GPU.
"""

from detfuse.core.errors import UserError


def trial_workers(resources, where="trial config"):
    """1, or a UserError naming `where` when `resources` ({cpu, gpu}, validated) ask for several GPUs."""
    if resources["gpu"] > 1:
        raise UserError(f"{where}: resources.gpu = {resources['gpu']:g}: yolov5 trials take one GPU or a fraction of "
                        f"one (Ultralytics' DDP cannot run inside Ray); only detectron2 trials run DDP over several")
    return 1
