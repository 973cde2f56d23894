"""What a detectron2 trial asks of the cluster: above one GPU, one DDP worker per whole GPU (ddp.py)."""


def trial_workers(resources, where="trial config"):
    """The processes a trial with these `resources` ({cpu, gpu}, validated) trains in: one per whole GPU above
    one, else the trial's own process."""
    gpus = resources["gpu"]
    return int(gpus) if gpus > 1 else 1
