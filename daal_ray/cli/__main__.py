"""``python -m daal_ray.cli``: the ``daal-ray`` command line."""

import sys

from daal_ray.cli import main

sys.exit(main())
