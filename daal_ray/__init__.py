"""daal-ray: DAAL deep active learning on Ray."""

__version__ = "0.1.0"
