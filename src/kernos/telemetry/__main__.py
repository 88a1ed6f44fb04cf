"""``python -m kernos.telemetry``: the span exporter sidecar a worker starts (see ``_sidecar``)."""

import sys

from kernos.telemetry._sidecar import main

sys.exit(main())
