"""InfoNCE contrastive loss for any array-API library: NumPy, PyTorch, JAX, CuPy, ..."""

from ._loss import Gradients, InfoNCE, info_nce, info_nce_value_and_grad
from ._options import Options

__all__ = [
    "Gradients",
    "InfoNCE",
    "Options",
    "__version__",
    "info_nce",
    "info_nce_value_and_grad",
]
__version__ = "0.1.0"
