"""planc: a declarative plan compiler and verifier for deploying large neural networks.

`import planc` and parsing, compiling and verifying never import torch; the torch backend lives
under `planc.backends.torch` and is an optional extra.
"""

from __future__ import annotations

__version__ = "0.1.0"
