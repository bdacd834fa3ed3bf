"""tvm-winograd: Winograd minimal-filtering convolution for Apache TVM (Relax + MetaSchedule)."""

from .api import conv2d
from .workload import Conv2dSpec, make_spec

__version__ = "0.1.0"
__all__ = ["conv2d", "Conv2dSpec", "make_spec", "__version__"]
