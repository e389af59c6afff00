"""Make ``python examples/<script>.py`` behave like ``python -m examples.<script>``.

Run as a file, a script has ``examples/`` itself as ``sys.path[0]``: the ``examples``
package is then not importable, and ``examples/datasets.py`` or ``models.py`` could
shadow top-level packages of the same name. Importing this module (only possible in
that situation, as a plain top-level ``_bootstrap``) replaces that entry by the
repository root.
"""

import sys
from pathlib import Path

_here, _root = Path(__file__).resolve().parent, str(Path(__file__).resolve().parents[1])
if sys.path and Path(sys.path[0] or ".").resolve() == _here:
    sys.path[0] = _root
elif _root not in sys.path:
    sys.path.insert(0, _root)
