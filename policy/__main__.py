"""voice-agent's HIPAA policy pack: ``pulumi preview --policy-pack policy`` (docs/hipaa.md).

The CLI runs this file as ``python policy/``; constructing ``PolicyPack`` starts the analyzer's
gRPC server and serves until the CLI is done, so nothing else belongs here.
"""

import sys
from pathlib import Path

# The rules live in the repository (infra/guardrails.py), one level up from this pack.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from policy.hipaa_policies import PACK_NAME, hipaa_policies  # noqa: E402

PolicyPack(
    name=PACK_NAME,
    policies=hipaa_policies(),
    enforcement_level=EnforcementLevel.MANDATORY,
)
