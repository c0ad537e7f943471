"""`python -m remediation.cli`: the `remediation` command."""

import sys

from remediation.cli import main

sys.exit(main())
