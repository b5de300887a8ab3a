"""The whole suite: embedded Rays leave Ray's dashboard out (CLUSTUNE_RAY_DASHBOARD=0), since
with ray[default] installed it costs each of the suite's many Ray starts about 5 CPU-seconds;
the tests of the dashboard and of Ray Jobs ask for it themselves."""

import os

os.environ.setdefault("CLUSTUNE_RAY_DASHBOARD", "0")
