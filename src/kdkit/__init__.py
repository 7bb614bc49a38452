"""kdkit: knowledge distillation of pre-trained language models.

Python API::

    import kdkit
    result = kdkit.distill("configs/sst2_minilm2l_from_minilm6_kd.yaml", ["train.lr=5e-5"])
    print(result.output_dir, result.metrics["validation"])
"""

from kdkit.commands.evaluate import evaluate_saved as evaluate
from kdkit.config import Config, DataConfig, EvalConfig, ModelConfig, TrainConfig, load_config
from kdkit.errors import KdkitError
from kdkit.methods import METHODS
from kdkit.retrieval.predictor import ReAugPredictor
from kdkit.train.run import RunResult, distill, finetune
from kdkit.validate import validate
from kdkit.version import __version__

__all__ = [
    "METHODS",
    "Config",
    "DataConfig",
    "EvalConfig",
    "KdkitError",
    "ModelConfig",
    "ReAugPredictor",
    "RunResult",
    "TrainConfig",
    "__version__",
    "distill",
    "evaluate",
    "finetune",
    "load_config",
    "validate",
]
