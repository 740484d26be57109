"""Models: loading (HF/mlx-community directories, GGUF), LoRA, quantization, value head, tiny models.

Importing this package registers LazyFox with mlx-lm as `mlx_lm.models.lazyfox`, so that mlx-lm's
own loader builds it like any other family.
"""

import sys

from lazarus.models import lazyfox as _lazyfox

sys.modules.setdefault("mlx_lm.models.lazyfox", _lazyfox)
