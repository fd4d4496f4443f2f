"""DICOM handling for XRayVision: reading stored instances and rendering their pixels."""
