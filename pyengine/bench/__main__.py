"""``python -m pyengine.bench ...`` = ``pyengine bench ...``."""
import sys

from . import main

sys.exit(main())
