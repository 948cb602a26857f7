"""ordercheck: checks HL7 v2 imaging orders against clinical imaging guidelines.

The advisory it produces supports a clinician's decision; it never blocks or changes an order.
"""

__version__ = "0.2.0"
__all__ = ["__version__"]
