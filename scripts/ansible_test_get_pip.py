"""Stand-in for the get-pip.py bootstrap that ansible-test downloads from a host we cannot reach.

ansible-test runs its bootstrap script inside each empty sanity virtualenv with pip-install
arguments (``pip==X --no-setuptools --no-wheel ...``). This does the same with what Python
ships (ensurepip's bundled pip, no network) and then installs the pip version asked for from
the package index. scripts/setup.sh copies it into ansible-test's cache.
"""

import ensurepip
import os
import subprocess
import sys

# ensurepip's older bundled pip ignores the machine's pip.conf `cert` here; name the system CA
# bundle (as the rest of the machine uses it) for this one install of the requested pip.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if os.path.exists(SYSTEM_CA_BUNDLE):
    args = ["--cert", SYSTEM_CA_BUNDLE, *args]
ensurepip.bootstrap(upgrade=True)
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
