"""vaelab: train variational autoencoders on images, generate with them, measure how they generalize.

Python API::

    from vaelab import RunConfig, check_images, load_config, train, load_run

    cfg = load_config(overrides=["train.epochs=2", "model.latent_dim=16"])
    result = train(cfg, "runs/quick")
    run = load_run("runs/quick")          # later, anywhere: no dataset needed
    images = run.sample(16, temperature=0.8)
    check = check_images(run, my_images)  # each image, and the set, judged against the training data
"""

from vaelab._version import __version__

from vaelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config
from vaelab.errors import VaelabError
from vaelab.runs import Run, load_run, load_run_data
from vaelab.evaluation.imagecheck import ImageCheck, check_images
from vaelab.training import TrainResult, resume, train
from vaelab.report.html import write_html_report

__all__ = [
    "DataConfig", "ImageCheck", "ModelConfig", "Run", "RunConfig", "TrainConfig", "TrainResult", "VaelabError",
    "__version__", "check_images", "load_config", "load_run", "load_run_data", "resume", "train", "write_html_report",
]
