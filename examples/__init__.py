"""Runnable examples for ``lightning_lplr``: LightningModules, DataModules and offline data loaders.

Modules:

- :mod:`examples.datasets`: in-memory teacher-student data, scikit-learn's bundled 8×8 digits,
  and readers of local MNIST (IDX) and CIFAR-10 (binary and python) files. Nothing downloads.
- :mod:`examples.models`: an MLP (standard or NTK parameterisation) and a CIFAR ResNet-20.
- :mod:`examples.mlp`: full-batch gradient descent on a squared loss (``python examples/mlp.py``).
- :mod:`examples.cifar_resnet`: mini-batch SGD with momentum on a CIFAR-10 subset
  (``python examples/cifar_resnet.py``).

Both scripts take ``--fast`` for a seconds-long smoke run, and ``--config <yaml>`` to be driven by
Lightning's ``LightningCLI`` from a file under ``examples/configs/``.
"""

__all__: list[str] = []
