"""The HIPAA policy pack (``pulumi preview --policy-pack policy``); see docs/hipaa.md."""
