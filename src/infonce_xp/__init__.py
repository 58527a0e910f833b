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

__all__ = [
    "Gradients",
    "InfoNCE",
    "Options",
    "SupervisedInfoNCE",
    "__version__",
    "info_nce",
    "info_nce_value_and_grad",
    "supervised_info_nce",
]
__version__ = "0.1.0"
