"""XRayVision: real-time radiology triage for X-rays (DICOM in, vision-LLM findings, live dashboard)."""

__version__ = "0.1.0"
