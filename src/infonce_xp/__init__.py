"""InfoNCE contrastive loss for any array-API library: NumPy, PyTorch, JAX, CuPy, ..."""

from ._loss import (
    Gradients,
    InfoNCE,
    SupervisedInfoNCE,
    info_nce,
    info_nce_value_and_grad,
    supervised_info_nce,
)
from ._options import Options
from ._sigmoid_loss import (
    SigmoidGradients,
    SigmoidLoss,
    sigmoid_loss,
    sigmoid_loss_value_and_grad,
)

__all__ = [
    "Gradients",
    "InfoNCE",
    "Options",
    "SigmoidGradients",
    "SigmoidLoss",
    "SupervisedInfoNCE",
    "__version__",
    "info_nce",
    "info_nce_value_and_grad",
    "sigmoid_loss",
    "sigmoid_loss_value_and_grad",
    "supervised_info_nce",
]
__version__ = "0.1.0"
