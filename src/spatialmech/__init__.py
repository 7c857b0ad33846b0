"""spatialmech: where and how a vision-language model computes spatial relations.

Data flows one way: tasks -> models (adapters) -> engine -> experiments -> report.
"""

__version__ = "0.1.0"
