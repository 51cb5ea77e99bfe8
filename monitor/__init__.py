"""batchmon: watch SuperOffice CRM batch tasks and report what they do."""

__version__ = "0.1.0"
__all__ = ["__version__"]
